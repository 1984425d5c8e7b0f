"""Neuron coverage of hidden-layer activations, and the two orderings built on it.

Pure NumPy: activations in, scores and orderings out. The criteria and their cell layouts
follow ``dnn_tip.neuron_coverage`` 0.1.1 (Weiss & Tonella, "Simple techniques work
surprisingly well for neural network test prioritization", ISSTA 2022), which the tests use
as the oracle:

========  ==========================================================  ======================
metric    a cell of one unit is covered by a sample when ...           cells per unit
========  ==========================================================  ======================
``nac``   activation ``> threshold``                                    1
``kmnc``  activation in section ``i`` of ``[min, max)`` cut into           ``sections``
          ``sections`` equal parts (``lo_i <= a < lo_{i+1}``)
``nbc``   activation ``<= min - scaler*std`` (cell 0) or                2
          ``>= max + scaler*std`` (cell 1)
``snac``  activation ``>= max + scaler*std``                             1
``tknc``  the unit is among the ``top_neurons`` largest of its layer       1
========  ==========================================================  ======================

``min``, ``max`` and ``std`` are per-unit statistics of a reference pool
(:class:`NeuronProfile`). A sample's score (CTM, coverage-total) is how many cells it
covers; higher means the sample exercises more (or more unusual) behaviour, so it comes
first. CAM (coverage-additional) orders greedily by how many cells a sample adds to those
already covered by the samples before it.

Every function takes activations as a list with one ``(N, units)`` array per layer (see
:func:`testprio.activations.flatten_activation`) and works on one batch at a time, so
scoring a pool needs memory for one batch only; CAM needs the covered cells of every sample,
which it keeps packed 8 cells per byte (optionally in a file, see :func:`score_coverage`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from testprio.errors import TestprioError

# --- reference statistics ------------------------------------------------------------------


class NeuronProfile:
    """Per-unit ``min``, ``max``, ``mean`` and ``std`` of reference activations, streamed.

    ``update`` merges one batch at a time (Chan et al.'s parallel form of Welford's
    algorithm, float64), so memory depends on the number of units, never on the reference
    size. ``std`` is the population standard deviation (``ddof=0``, as ``np.std``).
    """

    def __init__(self, layer_names: list[str] | None = None):
        self.layer_names = list(layer_names) if layer_names is not None else None
        self.count = 0
        self.units: list[int] | None = None
        self.mins: list[np.ndarray] = []
        self.maxs: list[np.ndarray] = []
        self.means: list[np.ndarray] = []
        self._m2: list[np.ndarray] = []
        self.stds: list[np.ndarray] = []

    def update(self, activations: list[np.ndarray]) -> NeuronProfile:
        """Add one batch: a list of ``(n, units)`` arrays, one per layer."""
        layers = [np.asarray(a, dtype=np.float64) for a in activations]
        if self.units is None:
            if self.layer_names is not None and len(self.layer_names) != len(layers):
                raise TestprioError(
                    f"reference activations have {len(layers)} layers but the profile names "
                    f"{len(self.layer_names)}; pass one array per layer name."
                )
            for a in layers:
                _check_2d(a, "reference activations")
            self.units = [a.shape[1] for a in layers]
            self.mins = [np.full(u, np.inf) for u in self.units]
            self.maxs = [np.full(u, -np.inf) for u in self.units]
            self.means = [np.zeros(u) for u in self.units]
            self._m2 = [np.zeros(u) for u in self.units]
        _check_layers(layers, self.units, "reference activations")
        n = layers[0].shape[0] if layers else 0
        if n == 0:
            return self
        total = self.count + n
        for i, a in enumerate(layers):
            np.minimum(self.mins[i], a.min(axis=0), out=self.mins[i])
            np.maximum(self.maxs[i], a.max(axis=0), out=self.maxs[i])
            batch_mean = a.mean(axis=0)
            batch_m2 = ((a - batch_mean) ** 2).sum(axis=0)
            delta = batch_mean - self.means[i]
            self.means[i] = self.means[i] + delta * (n / total)
            self._m2[i] = self._m2[i] + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total
        return self

    def finish(self) -> NeuronProfile:
        """Compute ``stds``; call after the last ``update``."""
        if self.count == 0:
            raise TestprioError(
                "the reference pool gave no activations; pass a non-empty --train-data."
            )
        self.stds = [np.sqrt(m2 / self.count) for m2 in self._m2]
        return self

    @classmethod
    def fit(
        cls, batches: Iterable[list[np.ndarray]], layer_names: list[str] | None = None
    ) -> NeuronProfile:
        """Profile of all ``batches`` (each a list of ``(n, units)`` arrays)."""
        profile = cls(layer_names)
        for batch in batches:
            profile.update(batch)
        return profile.finish()

    def to_dict(self) -> dict:
        """JSON-serialisable form (floats round-trip exactly through ``json``)."""
        if not self.stds:
            self.finish()
        return {
            "layer_names": self.layer_names,
            "count": self.count,
            "units": self.units,
            "min": [a.tolist() for a in self.mins],
            "max": [a.tolist() for a in self.maxs],
            "mean": [a.tolist() for a in self.means],
            "std": [a.tolist() for a in self.stds],
        }

    @classmethod
    def from_dict(cls, data: dict) -> NeuronProfile:
        profile = cls(data.get("layer_names"))
        profile.count = int(data["count"])
        profile.units = [int(u) for u in data["units"]]
        profile.mins = [np.asarray(a, dtype=np.float64) for a in data["min"]]
        profile.maxs = [np.asarray(a, dtype=np.float64) for a in data["max"]]
        profile.means = [np.asarray(a, dtype=np.float64) for a in data["mean"]]
        profile.stds = [np.asarray(a, dtype=np.float64) for a in data["std"]]
        profile._m2 = [s**2 * profile.count for s in profile.stds]
        return profile


def _check_2d(a: np.ndarray, what: str) -> None:
    if a.ndim != 2:
        raise TestprioError(
            f"{what} must be (N, units) arrays but one has shape {a.shape}; flatten each "
            "layer with testprio.activations.flatten_activation first."
        )


def _check_layers(layers: list[np.ndarray], units: list[int] | None, what: str) -> None:
    if not layers:
        raise TestprioError(f"{what} name no layer; pass at least one layer (see --layers).")
    for a in layers:
        _check_2d(a, what)
    if units is not None and [a.shape[1] for a in layers] != list(units):
        raise TestprioError(
            f"{what} have units {[a.shape[1] for a in layers]} per layer but the reference "
            f"profile has {list(units)}; use the same --layers for the pool and the reference."
        )
    if len({a.shape[0] for a in layers}) > 1:
        raise TestprioError(
            f"{what} have different sample counts per layer ({[a.shape[0] for a in layers]}); "
            "pass one batch of the same samples for every layer."
        )


def _joined(profile: NeuronProfile | None, field: str, name: str) -> np.ndarray:
    if profile is None or not profile.stds:
        raise TestprioError(
            f"coverage metric {name!r} needs a finished reference profile (min/max/std); "
            "pass --train-data."
        )
    return np.concatenate(getattr(profile, field))


def _flat(activations: list[np.ndarray], profile: NeuronProfile | None) -> np.ndarray:
    layers = [np.asarray(a) for a in activations]
    _check_layers(layers, profile.units if profile is not None else None, "activations")
    return np.concatenate(layers, axis=1)


# --- criteria: (activations, profile, **params) -> (scores (N,), covered (N, cells)) --------


def _result(covered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    covered = covered.reshape(covered.shape[0], -1)
    return covered.sum(axis=1, dtype=np.int64), covered


def _positive(value, name: str, param: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise TestprioError(
            f"coverage metric {name!r} needs a positive integer {param}, got {value!r}."
        )


def nac(
    activations: list[np.ndarray], profile: NeuronProfile | None = None, *, threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Neuron activation coverage: one cell per unit, covered when ``a > threshold``."""
    return _result(_flat(activations, profile) > threshold)


def kmnc(
    activations: list[np.ndarray], profile: NeuronProfile, *, sections: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """k-multisection coverage: ``sections`` cells per unit splitting ``[min, max)``.

    Cells are unit-major (``unit * sections + section``). A value equal to the reference
    max (or outside the range) covers no cell, as in dnn-tip.
    """
    _positive(sections, "kmnc", "sections")
    lo, hi = _joined(profile, "mins", "kmnc"), _joined(profile, "maxs", "kmnc")
    a = _flat(activations, profile)
    # The same expressions as dnn-tip, so boundary values fall in the same section.
    jumps = (hi - lo) / sections
    bounds = [lo + jumps * i for i in range(sections + 1)]
    covered = np.empty((a.shape[0], a.shape[1], sections), dtype=bool)
    for i in range(sections):
        np.logical_and(bounds[i] <= a, a < bounds[i + 1], out=covered[..., i])
    return _result(covered)


def nbc(
    activations: list[np.ndarray], profile: NeuronProfile, *, scaler: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Neuron boundary coverage: per unit, cell 0 ``a <= min - scaler*std``, cell 1
    ``a >= max + scaler*std``."""
    std = _joined(profile, "stds", "nbc")
    low = _joined(profile, "mins", "nbc") - scaler * std
    high = _joined(profile, "maxs", "nbc") + scaler * std
    a = _flat(activations, profile)
    covered = np.empty((a.shape[0], a.shape[1], 2), dtype=bool)
    np.less_equal(a, low, out=covered[..., 0])
    np.greater_equal(a, high, out=covered[..., 1])
    return _result(covered)


def snac(
    activations: list[np.ndarray], profile: NeuronProfile, *, scaler: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Strong neuron activation coverage: one cell per unit, ``a >= max + scaler*std``."""
    high = _joined(profile, "maxs", "snac") + scaler * _joined(profile, "stds", "snac")
    return _result(_flat(activations, profile) >= high)


def tknc(
    activations: list[np.ndarray], profile: NeuronProfile | None = None, *, top_neurons: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k neuron coverage: per layer, the ``top_neurons`` largest units are covered.

    Every sample covers the same number of cells, so its CTM order is by sample id only;
    use it with CAM. Equal activations: the lower unit index wins (a stable sort; dnn-tip's
    unstable ``argsort`` may pick another of the tied units).
    """
    _positive(top_neurons, "tknc", "top_neurons")
    layers = [np.asarray(a) for a in activations]
    _check_layers(layers, profile.units if profile is not None else None, "activations")
    parts = []
    for a in layers:
        k = min(top_neurons, a.shape[1])
        top = np.argsort(-a, axis=1, kind="stable")[:, :k]
        part = np.zeros(a.shape, dtype=bool)
        np.put_along_axis(part, top, True, axis=1)
        parts.append(part)
    return _result(np.concatenate(parts, axis=1))


CoverageFn = Callable[..., tuple[np.ndarray, np.ndarray]]

COVERAGE_METRICS: dict[str, CoverageFn] = {
    "nac": nac,
    "kmnc": kmnc,
    "nbc": nbc,
    "snac": snac,
    "tknc": tknc,
}

COVERAGE_DEFAULTS: dict[str, dict] = {
    "nac": {"threshold": 0.0},
    "kmnc": {"sections": 10},
    "nbc": {"scaler": 0.5},
    "snac": {"scaler": 0.5},
    "tknc": {"top_neurons": 1},
}

# Cells per unit of each criterion (tknc/nac/snac: one).
_CELLS_PER_UNIT: dict[str, Callable[..., int]] = {
    "nac": lambda **p: 1,
    "kmnc": lambda *, sections=10, **p: int(sections),
    "nbc": lambda **p: 2,
    "snac": lambda **p: 1,
    "tknc": lambda **p: 1,
}


def _metric(name: str) -> CoverageFn:
    try:
        return COVERAGE_METRICS[name]
    except KeyError:
        raise TestprioError(
            f"unknown coverage metric {name!r}; choose one of {', '.join(COVERAGE_METRICS)}."
        ) from None


def coverage_cells(name: str, units: list[int], **params) -> int:
    """Number of cells one sample has under metric ``name`` for layers of ``units``."""
    _metric(name)
    return _CELLS_PER_UNIT[name](**params) * int(sum(units))


# --- streaming over a pool --------------------------------------------------------------


@dataclass
class CoverageResult:
    """Scores ``(N,)`` int64 and covered cells packed by ``np.packbits(axis=1)``:
    ``(N, ceil(n_cells / 8))`` uint8 (an ``np.memmap`` when written to a file)."""

    scores: np.ndarray
    packed: np.ndarray
    n_cells: int


def score_coverage(
    batches: Iterable[list[np.ndarray]],
    name: str,
    profile: NeuronProfile | None,
    *,
    cells_path: str | os.PathLike | None = None,
    **params,
) -> CoverageResult:
    """Score every batch with metric ``name``; keep only scores and packed cells.

    Peak memory: one batch's dense cells plus the packed cells of the pool (``n_cells / 8``
    bytes per sample); with ``cells_path`` the packed rows are appended to that file and
    returned as a read-only memory map, so memory stays flat in the pool size.
    """
    fn = _metric(name)
    scores: list[np.ndarray] = []
    packed: list[np.ndarray] = []
    n_cells = None
    sink = open(cells_path, "wb") if cells_path is not None else None  # noqa: SIM115
    try:
        for batch in batches:
            batch_scores, covered = fn(batch, profile, **params)
            n_cells = covered.shape[1]
            scores.append(batch_scores)
            rows = np.packbits(covered, axis=1)
            if sink is not None:
                sink.write(rows.tobytes())
            else:
                packed.append(rows)
    finally:
        if sink is not None:
            sink.close()
    if n_cells is None:
        raise TestprioError(f"coverage metric {name!r} got no samples; pass a non-empty pool.")
    all_scores = np.concatenate(scores)
    width = (n_cells + 7) // 8
    if cells_path is not None:
        matrix = np.memmap(cells_path, dtype=np.uint8, mode="r", shape=(len(all_scores), width))
    else:
        matrix = np.concatenate(packed)
    return CoverageResult(all_scores, matrix, n_cells)


# --- orderings ----------------------------------------------------------------------------


def _ids(sample_ids, n: int) -> np.ndarray:
    ids = np.asarray(sample_ids)
    if ids.shape != (n,):
        raise TestprioError(
            f"got {ids.shape[0] if ids.ndim else 0} sample ids for {n} scores; pass one id "
            "per sample."
        )
    return ids


def ctm_order(scores: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
    """Coverage-total order: sample ids by score descending, ties by sample id ascending."""
    scores = np.asarray(scores)
    ids = _ids(sample_ids, len(scores))
    return ids[np.lexsort((ids, -scores))]


def _popcount_rows(packed: np.ndarray, chunk: int = 8192) -> np.ndarray:
    counts = np.empty(len(packed), dtype=np.int64)
    for start in range(0, len(packed), chunk):
        block = np.asarray(packed[start : start + chunk])
        counts[start : start + chunk] = np.bitwise_count(block).sum(axis=1, dtype=np.int64)
    return counts


def cam_order(
    covered: np.ndarray,
    scores: np.ndarray,
    sample_ids: np.ndarray,
    *,
    n_cells: int | None = None,
) -> np.ndarray:
    """Coverage-additional order of sample ids, most new coverage first.

    ``covered`` is ``(N, cells)`` bool, or the same packed by ``np.packbits(axis=1)``
    (``(N, ceil(cells/8))`` uint8, an ``np.memmap`` is fine). Greedy: the next sample is the
    one covering the most cells not yet covered (ties: lowest sample id); when no sample
    adds a cell, the rest follow in :func:`ctm_order` of ``scores``. This is
    ``dnn_tip.prioritizers.cam`` when ids ascend with position (dnn-tip breaks ties of the
    remaining samples by an unstable sort instead).

    Cost, N samples and C cells: memory is a cell-major packed copy (``C * N / 8`` bytes,
    the size of the packed input, which itself may stay on disk as a memmap) plus O(N)
    gains and a block of at most 2048 dense rows while transposing; time is one pass to
    transpose, O(N) per pick to find the best sample, and at most ``C * N`` bit updates
    over the whole run (each newly covered cell subtracts its column once). dnn-tip's
    version holds ``C * N`` dense booleans and rescans columns per pick.
    """
    scores = np.asarray(scores)
    ids = _ids(sample_ids, len(scores))
    packed, n_cells = _packed(covered, len(scores), n_cells)
    selected = _greedy(packed, ids, n_cells)
    taken = np.zeros(len(ids), dtype=bool)
    taken[selected] = True
    rest = np.flatnonzero(~taken)
    rest = rest[np.lexsort((ids[rest], -scores[rest]))]
    return ids[np.concatenate([np.asarray(selected, dtype=np.int64), rest])]


def _packed(covered: np.ndarray, n: int, n_cells: int | None) -> tuple[np.ndarray, int]:
    """``covered`` as packbits rows (packing bool input in chunks) and its cell count."""
    if covered.dtype == bool:
        if covered.ndim != 2 or len(covered) != n:
            raise TestprioError(
                f"covered cells have shape {covered.shape} for {n} scores; pass (N, cells) "
                "booleans."
            )
        chunks = [np.packbits(covered[i : i + 8192], axis=1) for i in range(0, n, 8192)]
        width = (covered.shape[1] + 7) // 8
        packed = np.concatenate(chunks) if chunks else np.zeros((0, width), dtype=np.uint8)
        return packed, covered.shape[1]
    if covered.dtype != np.uint8:
        raise TestprioError(
            f"covered cells must be bool or np.packbits uint8, got {covered.dtype}."
        )
    if n_cells is None or covered.ndim != 2 or covered.shape[1] != (n_cells + 7) // 8:
        raise TestprioError(
            f"packed covered cells of shape {covered.shape} need n_cells with ceil(n_cells/8) "
            "columns; pass the n_cells they were packed from."
        )
    if len(covered) != n:
        raise TestprioError(
            f"covered cells have {len(covered)} rows for {n} scores; pass one row per sample."
        )
    return covered, n_cells


def _by_cell(packed: np.ndarray, n_cells: int, chunk: int = 2048) -> np.ndarray:
    """Cell-major copy of row-packed cells: ``(n_cells, ceil(N/8))``, bit j = sample j."""
    n = len(packed)
    columns = np.zeros((n_cells, (n + 7) // 8), dtype=np.uint8)
    for start in range(0, n, chunk):  # chunk is a multiple of 8: whole bytes per block
        dense = np.unpackbits(np.asarray(packed[start : start + chunk]), axis=1, count=n_cells)
        block = np.packbits(dense.T, axis=1)
        columns[:, start // 8 : start // 8 + block.shape[1]] = block
    return columns


def _greedy(
    packed: np.ndarray, ids: np.ndarray, n_cells: int, cells_per_step: int = 256
) -> list[int]:
    """Positions picked greedily by new cells (ties: lowest id), until none adds a cell.

    Exact gains are kept for every sample; a pick subtracts, for each cell it newly
    covers, that cell's column of samples. Over the whole run each cell is subtracted at
    most once, so the updates cost at most ``n_cells * N`` bit operations in total (not per
    pick), read from a cell-major copy of the packed matrix.
    """
    n = len(packed)
    gains = _popcount_rows(packed)
    columns = _by_cell(packed, n_cells)
    id_rank = np.empty(n, dtype=np.int64)
    id_rank[np.argsort(ids, kind="stable")] = np.arange(n)
    uncovered = np.ones(n_cells, dtype=bool)
    selected: list[int] = []
    while n:
        best = gains.max()
        if best <= 0:
            break
        tied = np.flatnonzero(gains == best)
        pos = int(tied[np.argmin(id_rank[tied])])
        selected.append(pos)
        row = np.unpackbits(np.asarray(packed[pos]), count=n_cells).astype(bool)
        new_cells = np.flatnonzero(row & uncovered)
        uncovered[new_cells] = False
        for start in range(0, len(new_cells), cells_per_step):
            bits = np.unpackbits(
                columns[new_cells[start : start + cells_per_step]], axis=1, count=n
            )
            gains -= bits.sum(axis=0, dtype=np.int64)
    return selected
