"""Samples of a run: their tensors, sources and probabilities read from the data and scores
shards (one row group of one shard per sample, never every probability of a run), the
galleries, random samples, thumbnails of a ranking page, and one sample's drill-down.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest.shards import shard_sample_shape, shard_tensors
from testprio.metrics import METRICS
from testprio.report.images import THUMBNAIL_SIDE, display_image, encode_png, upscale
from testprio.report.label_sources import ImportedLabels, overlay_labels, sample_label
from testprio.report.paths import run_file, shard_file
from testprio.report.ranking import group_statistics, ranking_rows, row_group_starts
from testprio.report.run import RunDetails, class_label, class_names

THUMBNAIL_ROWS = 100  # ranking rows per page that get a thumbnail
SCORE_METRICS = tuple(METRICS)  # every metric a sample gets a rank under


def _rows_by_id(uri: str, sample_ids: list[int], columns: list[str]) -> dict[int, dict]:
    """The rows of the Parquet file ``uri`` with these sample ids (absent ids are skipped)."""
    found: dict[int, dict] = {}
    with storage.open_parquet(uri) as parquet:
        ids = parquet.read(columns=["sample_id"]).column("sample_id").to_numpy()
        if not len(ids):
            return found
        order = np.argsort(ids, kind="stable")  # shards are in id order; this keeps it safe
        sorted_ids = ids[order]
        wanted = np.asarray(list(sample_ids), dtype=np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
        hit = sorted_ids[at] == wanted
        positions = {
            int(sample_id): int(order[index])
            for sample_id, index, present in zip(wanted, at, hit, strict=True)
            if present
        }
        if not positions:
            return found
        starts = row_group_starts(parquet.metadata)
        by_group: dict[int, list[tuple[int, int]]] = {}
        for sample_id, position in positions.items():
            group = int(np.searchsorted(starts, position, side="right") - 1)
            by_group.setdefault(group, []).append((sample_id, position - int(starts[group])))
        shape = shard_sample_shape(parquet.schema_arrow) if "x" in columns else None
        for group, members in by_group.items():
            table = parquet.read_row_group(group, columns=columns)
            picked = table.take(pa.array([local for _, local in members]))
            for (sample_id, _), row in zip(members, _rows_of(picked, shape), strict=True):
                found[sample_id] = row
    return found


def _rows_of(table: pa.Table, shape: tuple[int, ...] | None) -> list[dict]:
    rows = []
    arrays = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name == "x":
            flat = shard_tensors(column, table.schema)  # any shard format
            arrays[name] = flat.reshape((table.num_rows, *(shape or (-1,))))
        elif name == "probs":
            arrays[name] = [np.asarray(value, dtype=np.float32) for value in column.to_pylist()]
        else:
            arrays[name] = column.to_pylist()
    for i in range(table.num_rows):
        rows.append({name: values[i] for name, values in arrays.items()})
    return rows


def _shard_of(details: RunDetails, sample_ids: Iterable[int]) -> dict[str, list[int]]:
    """Which shard file holds each sample id: ``{shard name: [ids]}``.

    Shard ``i`` holds ids ``[i * shard_size, (i + 1) * shard_size)`` less the quarantined
    ones (ingest cuts shards by position in the source, before quarantining). Without a
    known shard size the shards' ``sample_id`` statistics decide.
    """
    manifest = details.manifest or {}
    shards = manifest.get("shards") or []
    shard_size = int(details.parameters.get("shard_size") or 0)
    groups: dict[str, list[int]] = {}
    if shard_size > 0:
        for sample_id in sample_ids:
            index = int(sample_id) // shard_size
            if 0 <= index < len(shards):
                groups.setdefault(shards[index]["name"], []).append(int(sample_id))
        return groups
    bounds = []
    for shard in shards:
        if not shard["rows"]:
            continue
        with storage.open_parquet(shard_file(details.layout, "data", shard["name"])) as pq_:
            low = min(
                group_statistics(pq_.metadata, g, "sample_id")[0]
                for g in range(pq_.metadata.num_row_groups)
            )
            high = max(
                group_statistics(pq_.metadata, g, "sample_id")[1]
                for g in range(pq_.metadata.num_row_groups)
            )
        bounds.append((low, high, shard["name"]))
    for sample_id in sample_ids:
        for low, high, name in bounds:
            if low <= sample_id <= high:
                groups.setdefault(name, []).append(int(sample_id))
                break
    return groups


def read_samples(
    details: RunDetails, sample_ids: Iterable[int], *, columns=("x", "label", "source")
) -> dict[int, dict]:
    """``{sample_id: {"x": (shape) float32, "label", "source"}}`` read from the data shards."""
    result: dict[int, dict] = {}
    for name, ids in _shard_of(details, sample_ids).items():
        uri = shard_file(details.layout, "data", name)
        result.update(_rows_by_id(uri, ids, ["sample_id", *columns]))
    return result


def read_probabilities(details: RunDetails, sample_ids: Iterable[int]) -> dict[int, np.ndarray]:
    """``{sample_id: (K,) probabilities}`` read from the scores shards."""
    result: dict[int, np.ndarray] = {}
    for name, ids in _shard_of(details, sample_ids).items():
        uri = shard_file(details.layout, "scores", name)
        rows = _rows_by_id(uri, ids, ["sample_id", "probs"])
        result.update({sample_id: row["probs"] for sample_id, row in rows.items()})
    return result


def with_sources(
    details: RunDetails, rows: pa.Table, *, samples: dict[int, dict] | None = None
) -> pa.Table:
    """``rows`` (with ``sample_id``) plus each sample's ``source``, read from the data shards
    (or taken from ``samples``, a ``read_samples`` result that holds them)."""
    ids = rows.column("sample_id").to_pylist()
    sources = samples if samples is not None else read_samples(details, ids, columns=("source",))
    values = [sources.get(sample_id, {}).get("source") for sample_id in ids]
    return rows.append_column("source", pa.array(values, pa.string()))


def _top_probabilities(probs: np.ndarray | None, names, count: int) -> list[dict]:
    if probs is None:
        return []
    order = np.argsort(-probs, kind="stable")[:count]
    return [{"class": class_label(int(i), names), "probability": float(probs[i])} for i in order]


def gallery(
    details: RunDetails,
    which: str = "top",
    k: int = 8,
    *,
    top: int = 3,
    imported: ImportedLabels | None = None,
) -> list[dict]:
    """The ``k`` most (``top``) or least (``bottom``) uncertain samples, ready to show.

    Each item: rank, sample_id, predicted (label text), label (the run's: the ``imported``
    one, else the pool's), score, source, ``image`` (uint8, enlarged) and the ``top`` class
    probabilities.
    """
    if which not in ("top", "bottom"):
        raise TestprioError(f"gallery '{which}' is not one of top, bottom.")
    if not details.has_ranking or k <= 0:
        return []
    metric = details.metric
    n = details.num_rows
    start, stop = (0, k) if which == "top" else (max(0, n - k), n)
    columns = ["rank", "sample_id", "predicted", "label", metric]
    rows = overlay_labels(ranking_rows(details.layout, start, stop, columns), imported)
    rows = rows.to_pylist()
    ids = [row["sample_id"] for row in rows]
    samples = read_samples(details, ids, columns=("x", "source"))
    probabilities = read_probabilities(details, ids)
    names = class_names(details)
    items = []
    for row in rows:
        sample = samples.get(row["sample_id"])
        items.append(
            {
                "rank": row["rank"],
                "sample_id": row["sample_id"],
                "predicted": class_label(row["predicted"], names),
                "label": class_label(row["label"], names),
                "score": row[metric],
                "source": sample["source"] if sample else "",
                "image": upscale(display_image(sample["x"])) if sample else None,
                "top_probabilities": _top_probabilities(
                    probabilities.get(row["sample_id"]), names, top
                ),
            }
        )
    return items


def random_samples(details: RunDetails, count: int = 16, *, seed: int = 0) -> list[dict]:
    """``count`` ingested samples drawn at random (seeded): sample_id, source, label, image."""
    manifest = details.manifest
    if not manifest or not manifest["ingested"]:
        return []
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(manifest["ingested"], min(count, manifest["ingested"]), False))
    names = class_names(details)
    starts = np.concatenate([[0], np.cumsum([shard["rows"] for shard in manifest["shards"]])])
    items = []
    for index, shard in enumerate(manifest["shards"]):
        inside = picks[(picks >= starts[index]) & (picks < starts[index + 1])] - starts[index]
        if not len(inside):
            continue
        uri = shard_file(details.layout, "data", shard["name"])
        with storage.open_parquet(uri) as parquet:
            shape = shard_sample_shape(parquet.schema_arrow)
            group_starts = row_group_starts(parquet.metadata)
            for position in inside.tolist():
                group = int(np.searchsorted(group_starts, position, side="right") - 1)
                table = parquet.read_row_group(group, columns=["sample_id", "x", "label", "source"])
                row = _rows_of(table.slice(position - int(group_starts[group]), 1), shape)[0]
                items.append(
                    {
                        "sample_id": row["sample_id"],
                        "source": row["source"],
                        "label": class_label(row["label"], names),
                        "image": upscale(display_image(row["x"]), min_side=64),
                    }
                )
    return items


# --- one sample: drill-down ----------------------------------------------------------------


@dataclass
class ScoreColumns:
    """Every metric's scores in ranking order, read once per run, so that a sample's rank
    under each metric is a count (``ranks_of``), not a sort of the pool per look.

    ``sample_id`` ``(N,)`` int64 and each ``scores[metric]`` ``(N,)`` float32 are in the
    run's ranking order; ``position`` maps a sample id to its row (-1: not ranked).
    """

    sample_id: np.ndarray
    scores: dict[str, np.ndarray]
    position: np.ndarray

    @property
    def nbytes(self) -> int:
        return (
            self.sample_id.nbytes
            + self.position.nbytes
            + sum(values.nbytes for values in self.scores.values())
        )


def score_columns(details: RunDetails) -> ScoreColumns:
    """The ranking's ``sample_id`` and metric columns (``SCORE_METRICS`` it holds)."""
    uri = run_file(details.layout, details.layout.ranking)
    with storage.open_parquet(uri) as parquet:
        # The run's own ranking key too, when it is another prioritizer's column.
        wanted = dict.fromkeys([*SCORE_METRICS, details.metric])
        names = [name for name in wanted if name in parquet.schema_arrow.names]
        table = parquet.read(columns=["sample_id", *names])
    ids = table.column("sample_id").to_numpy().astype(np.int64, copy=False)
    position = np.full(int(ids.max(initial=-1)) + 1, -1, dtype=np.int64)
    position[ids] = np.arange(len(ids))
    scores = {name: table.column(name).to_numpy().astype(np.float32, copy=False) for name in names}
    return ScoreColumns(ids, scores, position)


def ranks_of(columns: ScoreColumns, sample_id: int) -> dict[str, int]:
    """``{metric: rank}`` (1 = most uncertain) of one sample under every metric, as the rank
    stage orders: score descending, ties by sample_id ascending. O(N) per metric."""
    row = _position(columns, sample_id)
    ids = columns.sample_id
    ranks = {}
    for name, values in columns.scores.items():
        value = values[row]
        tied = values == value
        ahead = np.count_nonzero(values > value) + np.count_nonzero(tied & (ids < sample_id))
        ranks[name] = int(ahead) + 1
    return ranks


def _position(columns: ScoreColumns, sample_id: int) -> int:
    sample_id = int(sample_id)
    row = columns.position[sample_id] if 0 <= sample_id < len(columns.position) else -1
    if row < 0:
        raise TestprioError(
            f"sample {sample_id} is not among the {len(columns.sample_id):,} ranked samples "
            "of this run (a quarantined sample is not ranked); give a sample id from the "
            "ranking."
        )
    return int(row)


def probability_rows(probs: np.ndarray | None, names: list[str] | None) -> list[dict]:
    """``[{"class", "class_index", "probability", "predicted"}]`` of one sample's ``(K,)``
    probabilities, for a bar chart (``predicted`` marks the largest)."""
    if probs is None or not len(probs):
        return []
    top = int(np.argmax(probs))
    return [
        {
            "class": class_label(index, names),
            "class_index": index,
            "probability": round(float(value), 6),
            "predicted": index == top,
        }
        for index, value in enumerate(probs)
    ]


def sample_detail(
    details: RunDetails,
    columns: ScoreColumns,
    *,
    rank: int | None = None,
    sample_id: int | None = None,
    imported: ImportedLabels | None = None,
) -> dict:
    """One ranked sample by ``rank`` (1-based, in this run's ranking) or ``sample_id``.

    Returns rank, sample_id, predicted, confidence, label (text with class name: the run's
    label, the ``imported`` one else the pool's), ``label_source`` (``imported``, ``pool``,
    None), source, ``scores`` and ``ranks`` (``{metric: value}``, ``{metric: rank}`` under
    every metric), ``probabilities`` (``probability_rows``), ``x`` (the preprocessed tensor)
    and ``wrong`` (True/False with a label, None without).
    """
    if (rank is None) == (sample_id is None):
        raise TestprioError("give a rank or a sample id, not both.")
    total = len(columns.sample_id)
    if rank is not None:
        if not 1 <= int(rank) <= total:
            raise TestprioError(
                f"rank {rank} is not a rank of this run; choose one from 1 to {total:,}."
            )
        row = int(rank) - 1
        sample_id = int(columns.sample_id[row])
    else:
        row = _position(columns, int(sample_id))
    sample_id = int(sample_id)
    scored = _rows_by_id(
        shard_file(details.layout, "scores", _shard_name_of(details, sample_id)),
        [sample_id],
        ["sample_id", "predicted", "confidence", "label", "probs"],
    ).get(sample_id)
    data = read_samples(details, [sample_id], columns=("x", "source")).get(sample_id)
    if scored is None or data is None:
        raise TestprioError(
            f"sample {sample_id} is ranked but missing from the shards of run "
            f"{details.run_id}; the run folder was changed after it was ranked."
        )
    names = class_names(details)
    label, label_source = sample_label(scored.get("label"), sample_id, imported)
    return {
        "rank": row + 1,
        "sample_id": sample_id,
        "predicted": class_label(scored["predicted"], names),
        "predicted_index": int(scored["predicted"]),
        "confidence": float(scored["confidence"]),
        "label": class_label(label, names) if label is not None else "",
        "label_source": label_source,
        "wrong": None if label is None else int(label) != int(scored["predicted"]),
        "source": str(data.get("source") or ""),
        "scores": {name: float(values[row]) for name, values in columns.scores.items()},
        "ranks": ranks_of(columns, sample_id),
        "probabilities": probability_rows(scored.get("probs"), names),
        "x": data["x"],
    }


def _shard_name_of(details: RunDetails, sample_id: int) -> str:
    names = list(_shard_of(details, [sample_id]))
    if not names:
        raise TestprioError(
            f"no shard of run {details.run_id} holds sample {sample_id}; give a sample id "
            "from the ranking."
        )
    return names[0]


def thumbnails(
    details: RunDetails,
    sample_ids: list[int],
    *,
    limit: int = THUMBNAIL_ROWS,
    side: int = THUMBNAIL_SIDE,
    samples: dict[int, dict] | None = None,
) -> list[str | None]:
    """A small PNG ``data:`` URI of each of the first ``limit`` samples (None after them,
    and for a sample whose tensor is gone): a page of the ranking, never the pool.
    ``samples``: a ``read_samples`` result holding their ``x`` (read here otherwise)."""
    wanted = [int(sample_id) for sample_id in sample_ids[: max(0, limit)]]
    if samples is None:
        samples = read_samples(details, wanted, columns=("x",)) if wanted else {}
    uris: list[str | None] = []
    for sample_id in sample_ids:
        sample = samples.get(int(sample_id)) if len(uris) < len(wanted) else None
        if sample is None:
            uris.append(None)
            continue
        png = encode_png(upscale(display_image(sample["x"]), min_side=side))
        uris.append("data:image/png;base64," + base64.b64encode(png).decode("ascii"))
    return uris
