"""A run's labels by where they came from, and which one is the run's label of a sample.

Two sources:

- ``pool``: the labels the pool came with (the ``label`` column of the data and of
  ``ranking.parquet``; their figures are summary.json's ``labels``);
- ``imported``: labels imported after the run (``{run}/labels.parquet``, written by
  ``testprio labels import``, ``labels pull`` and the app's upload; their figures are also
  recorded in run.json under ``labelled``).

An imported label is the run's label of its sample; the pool's label stands where none was
imported. Figures (accuracy, misclassified, APFD, the fault-detection curve, per-class
accuracy) are given per source, imported first, each over its own labelled samples in rank
order, so that where both exist both are shown, each named by its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from testprio import storage
from testprio.report.label_views import fault_curve, per_class_accuracy, run_fault_curve
from testprio.report.paths import run_file
from testprio.report.run import RunDetails, class_label
from testprio.summary import apfd

# testprio.labels.LABELS_FILE: testprio.labels imports the report's data, so the name is
# repeated here rather than imported (tests check that the two agree).
IMPORTED_LABELS_FILE = "labels.parquet"
IMPORTED, POOL = "imported", "pool"
SOURCE_TEXT = {IMPORTED: "imported labels", POOL: "pool labels"}


@dataclass(frozen=True)
class ImportedLabels:
    """The labels imported into a run: ``sample_ids`` ``(M,)`` int64 ascending and their
    class indices ``labels`` ``(M,)`` int64."""

    sample_ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.sample_ids)

    def lookup(self, sample_ids: Any) -> np.ndarray:
        """The imported label of each of ``sample_ids`` ``(N,)``; -1 where none was imported."""
        wanted = np.asarray(sample_ids, dtype=np.int64)
        found = np.full(wanted.shape, -1, dtype=np.int64)
        if not len(self.sample_ids) or not wanted.size:
            return found
        at = np.minimum(np.searchsorted(self.sample_ids, wanted), len(self.sample_ids) - 1)
        hit = self.sample_ids[at] == wanted
        found[hit] = self.labels[at[hit]]
        return found


def imported_labels_uri(details: RunDetails) -> str:
    """``{run}/labels.parquet``, refused if it leads out of the report's root."""
    return run_file(details.layout, storage.join(details.layout.uri, IMPORTED_LABELS_FILE))


def read_imported_labels(details: RunDetails) -> ImportedLabels | None:
    """The labels imported into the run; None when none were (no labels.parquet)."""
    uri = imported_labels_uri(details)
    if not storage.exists(uri):
        return None
    table = storage.read_table(uri, columns=["sample_id", "label"]).combine_chunks()
    ids = table.column("sample_id").to_numpy(zero_copy_only=False).astype(np.int64)
    labels = table.column("label").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = labels >= 0
    if not keep.any():
        return None
    order = np.argsort(ids[keep], kind="stable")
    return ImportedLabels(ids[keep][order], labels[keep][order])


# --- the run's label of each sample --------------------------------------------------------


def overlay_labels(table: pa.Table, imported: ImportedLabels | None) -> pa.Table:
    """``table`` (with ``sample_id`` and ``label``) with each sample's run label in ``label``:
    the imported one, else the pool's. With imported labels a ``label_source`` column
    (``imported``, ``pool`` or null) follows ``label``."""
    if imported is None or "label" not in table.column_names:
        return table
    ids = table.column("sample_id").to_numpy(zero_copy_only=False)
    pool = table.column("label").cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
    mine = imported.lookup(ids)
    label = np.where(mine >= 0, mine, pool)
    source = np.where(mine >= 0, IMPORTED, np.where(pool >= 0, POOL, None))
    at = table.column_names.index("label")
    table = table.set_column(at, "label", pa.array(label, pa.int32(), mask=label < 0))
    return table.add_column(at + 1, "label_source", pa.array(source.tolist(), pa.string()))


def sample_label(
    pool_label: int | None, sample_id: int, imported: ImportedLabels | None
) -> tuple[int | None, str | None]:
    """One sample's run label and its source (``imported``, ``pool``; None without one)."""
    if imported is not None:
        mine = int(imported.lookup([sample_id])[0])
        if mine >= 0:
            return mine, IMPORTED
    if pool_label is None:
        return None, None
    return int(pool_label), POOL


# --- figures per source ------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _figures(samples, accuracy, misclassified, apfd_figures, **extra) -> dict:
    apfd_figures = apfd_figures if isinstance(apfd_figures, dict) else {}
    return {
        "samples": _count(samples),
        "accuracy": _number(accuracy),
        "misclassified": _count(misclassified),
        "apfd": _number(apfd_figures.get("raw")),
        "apfd_normalized": _number(apfd_figures.get("normalized")),
        **extra,
    }


def recorded_imported_figures(record: Any) -> dict | None:
    """The imported labels' figures run.json records under ``labelled`` (None where there
    are none, or the entry holds no accuracy): samples, accuracy, misclassified, APFD raw
    and normalized, the first and last labelled rank."""
    labelled = record.get("labelled") if isinstance(record, dict) else None
    if not isinstance(labelled, dict) or _number(labelled.get("accuracy")) is None:
        return None
    return _figures(
        labelled.get("samples"),
        labelled.get("accuracy"),
        labelled.get("misclassified"),
        labelled.get("apfd"),
        first_rank=_count(labelled.get("first_rank")),
        last_rank=_count(labelled.get("last_rank")),
    )


def pool_figures(summary: Any) -> dict | None:
    """The pool labels' figures of a summary.json (None for a pool without labels)."""
    labels = summary.get("labels") if isinstance(summary, dict) else None
    if not isinstance(labels, dict):
        return None
    return _figures(
        labels.get("labeled"),
        labels.get("accuracy"),
        labels.get("misclassified"),
        labels.get("apfd"),
    )


@dataclass
class LabelSource:
    """What one source's labels show of a run: ``figures`` (``samples``, ``accuracy``,
    ``misclassified``, ``apfd``, ``apfd_normalized``), the fault-detection ``curve`` (None
    without a misclassified sample) and ``per_class`` accuracy rows."""

    source: str
    figures: dict
    curve: dict | None
    per_class: list[dict]

    @property
    def text(self) -> str:
        return SOURCE_TEXT[self.source]


def imported_source(
    details: RunDetails, imported: ImportedLabels, names: list[str] | None = None
) -> LabelSource:
    """The imported labels' figures, taken over the imported samples in rank order (APFD of
    the labelled samples alone: position 1 is the best-ranked labelled one), as ``testprio
    labels import`` records them."""
    table = storage.read_table(
        run_file(details.layout, details.layout.ranking), columns=["sample_id", "predicted"]
    )
    truth = imported.lookup(table.column("sample_id").to_numpy(zero_copy_only=False))
    positions = np.flatnonzero(truth >= 0)  # the ranking is stored in rank order
    truth = truth[positions]
    predicted = table.column("predicted").to_numpy(zero_copy_only=False)[positions]
    wrong = truth != predicted
    samples = len(positions)
    classes = max(
        int((details.summary or {}).get("num_classes") or 0),
        int(truth.max(initial=-1)) + 1,
        len(names or []),
    )
    totals = np.bincount(truth, minlength=classes)
    right = np.bincount(truth[~wrong], minlength=classes)
    per_class = [
        {
            "class": class_label(cls, names),
            "class_index": cls,
            "accuracy": float(right[cls] / count),
        }
        for cls, count in enumerate(totals.tolist())
        if count
    ]
    figures = _figures(
        samples,
        round(float(1.0 - wrong.mean()), 6) if samples else None,
        int(wrong.sum()),
        apfd(wrong),
        first_rank=int(positions[0]) + 1 if samples else None,
        last_rank=int(positions[-1]) + 1 if samples else None,
    )
    return LabelSource(IMPORTED, figures, fault_curve(wrong), per_class)


def pool_source(details: RunDetails, names: list[str] | None = None) -> LabelSource | None:
    """The pool labels' figures from summary.json (None for a pool without labels)."""
    figures = pool_figures(details.summary) if details.has_labels else None
    if figures is None:
        return None
    return LabelSource(
        POOL, figures, run_fault_curve(details), per_class_accuracy(details.summary, names)
    )


def label_sources(
    details: RunDetails, imported: ImportedLabels | None, names: list[str] | None = None
) -> list[LabelSource]:
    """The run's label sources, imported first (the run's labels where they exist)."""
    sources = [imported_source(details, imported, names)] if imported is not None else []
    pool = pool_source(details, names)
    return sources + ([pool] if pool is not None else [])


def label_figure_rows(details: RunDetails, sources: list[LabelSource]) -> list[dict]:
    """One table row per source of a run: run, labels (the source), samples, accuracy,
    misclassified, APFD raw and normalized; for Compare and the Accuracy and APFD tab."""
    return [
        {
            "run": details.run_id,
            "labels": source.text,
            "metric": details.metric,
            **{
                name: source.figures[name]
                for name in ("samples", "accuracy", "misclassified", "apfd", "apfd_normalized")
            },
        }
        for source in sources
    ]


def fault_curves_by_run(sources_by_run: dict[str, list[LabelSource]]) -> dict[str, dict | None]:
    """Each run's fault-detection curve per label source, keyed by the line's name: the run
    id, followed by its source where any run has labels of more than one source."""
    both = any(len(sources) > 1 for sources in sources_by_run.values()) or (
        len({source.source for sources in sources_by_run.values() for source in sources}) > 1
    )
    return {
        (f"{run_id} · {source.text}" if both else run_id): source.curve
        for run_id, sources in sources_by_run.items()
        for source in sources
    }
