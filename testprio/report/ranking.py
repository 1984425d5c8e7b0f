"""The ranking, a page at a time: filters by predicted class, score, label and mistakes,
reading only the row groups of ``ranking.parquet`` (65,536 rows each) a page needs and,
filtered, only those whose column statistics may match.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.report.label_sources import ImportedLabels, overlay_labels
from testprio.report.paths import run_file
from testprio.report.run import RunDetails

RANKING_VIEW_COLUMNS = ("rank", "sample_id", "predicted", "confidence", "label")


@dataclass(frozen=True)
class RankingFilter:
    """Rows to keep: predicted class in ``classes`` (None = all), score in [low, high]."""

    classes: tuple[int, ...] | None = None
    score_min: float | None = None
    score_max: float | None = None
    labels: tuple[int, ...] | None = None  # true label in these (unlabelled rows drop out)
    misclassified: bool = False  # only labelled rows whose prediction differs from the label

    @property
    def active(self) -> bool:
        return (
            self.classes is not None
            or self.score_min is not None
            or self.score_max is not None
            or self.labels is not None
            or self.misclassified
        )

    @property
    def needs_labels(self) -> bool:
        return self.labels is not None or self.misclassified


@dataclass
class RankingPage:
    rows: pa.Table
    total: int
    page: int
    pages: int
    page_size: int


def row_group_starts(metadata) -> np.ndarray:
    """First row of each row group of a Parquet file, and its row count last: ``(G + 1,)``."""
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


def ranking_rows(layout: RunLayout, start: int, stop: int, columns: Iterable[str]) -> pa.Table:
    """Rows ``[start, stop)`` of the ranking (0-based), reading only the row groups they lie in."""
    columns = list(columns)
    with storage.open_parquet(run_file(layout, layout.ranking)) as parquet:
        starts = row_group_starts(parquet.metadata)
        start, stop = max(0, start), min(int(starts[-1]), stop)
        if stop <= start:
            return parquet.schema_arrow.empty_table().select(columns)
        first = int(np.searchsorted(starts, start, side="right") - 1)
        last = int(np.searchsorted(starts, stop - 1, side="right") - 1)
        table = parquet.read_row_groups(list(range(first, last + 1)), columns=columns)
    return table.slice(start - int(starts[first]), stop - start)


def group_statistics(metadata, group: int, column: str):
    """``(min, max)`` of ``column`` in row group ``group``; None when not recorded."""
    schema = metadata.schema
    index = schema.names.index(column) if column in schema.names else -1
    if index < 0:
        return None
    stats = metadata.row_group(group).column(index).statistics
    if stats is None or not stats.has_min_max:
        return None
    return stats.min, stats.max


def _group_may_match(
    metadata, group: int, metric: str, filters: RankingFilter, *, imported: bool = False
) -> bool:
    if filters.classes is not None:
        bounds = group_statistics(metadata, group, "predicted")
        if bounds and not any(bounds[0] <= cls <= bounds[1] for cls in filters.classes):
            return False
    # The pool's label statistics say nothing of labels imported after the run.
    if filters.labels is not None and not imported:
        bounds = group_statistics(metadata, group, "label")
        if bounds and not any(bounds[0] <= cls <= bounds[1] for cls in filters.labels):
            return False
    bounds = group_statistics(metadata, group, metric)
    if bounds:
        if filters.score_min is not None and bounds[1] < filters.score_min:
            return False
        if filters.score_max is not None and bounds[0] > filters.score_max:
            return False
    return True


def _match_mask(table: pa.Table, metric: str, filters: RankingFilter) -> pa.Array:
    mask = pa.array(np.ones(table.num_rows, dtype=bool))
    if filters.classes is not None:
        mask = pc.and_(mask, pc.is_in(table.column("predicted"), pa.array(filters.classes)))
    score = table.column(metric)
    if filters.score_min is not None:
        mask = pc.and_(mask, pc.greater_equal(score, pa.scalar(filters.score_min, pa.float32())))
    if filters.score_max is not None:
        mask = pc.and_(mask, pc.less_equal(score, pa.scalar(filters.score_max, pa.float32())))
    if filters.labels is not None:
        label = table.column("label")
        mask = pc.and_(mask, pc.fill_null(pc.is_in(label, pa.array(filters.labels)), False))
    if filters.misclassified:
        wrong = pc.not_equal(table.column("predicted"), table.column("label"))
        mask = pc.and_(mask, pc.fill_null(wrong, False))
    return mask


def ranking_page(
    details: RunDetails,
    *,
    page: int = 0,
    page_size: int = 50,
    filters: RankingFilter | None = None,
    columns: Iterable[str] | None = None,
    imported: ImportedLabels | None = None,
) -> RankingPage:
    """Page ``page`` (0-based) of the ranking in rank order, after ``filters``.

    Unfiltered, reads the row groups the page lies in. Filtered, reads the two filter
    columns of row groups whose statistics may match (to count), and full rows only of the
    row groups that hold the page.

    ``imported``: labels imported into the run; each row's ``label`` is then the run's label
    (the imported one, else the pool's) with its ``label_source`` beside it, and the label
    filters match those labels.
    """
    if page_size <= 0:
        raise TestprioError(f"page size {page_size} must be a positive number of rows.")
    metric = details.metric
    columns = list(columns or (*RANKING_VIEW_COLUMNS[:4], metric, "label"))
    if imported is not None and "label" in columns and "sample_id" not in columns:
        columns.insert(0, "sample_id")  # the imported labels are found by sample id
    filters = filters or RankingFilter()
    if not filters.active:
        total = details.num_rows
        pages = max(1, math.ceil(total / page_size))
        page = min(max(page, 0), pages - 1)
        rows = ranking_rows(details.layout, page * page_size, (page + 1) * page_size, columns)
        return RankingPage(_overlaid(rows, imported), total, page, pages, page_size)

    with storage.open_parquet(run_file(details.layout, details.layout.ranking)) as parquet:
        metadata = parquet.metadata
        masks: dict[int, pa.Array] = {}
        for group in range(metadata.num_row_groups):
            if _group_may_match(metadata, group, metric, filters, imported=imported is not None):
                needed = ["predicted", metric]
                if filters.needs_labels:
                    needed += ["label"] + (["sample_id"] if imported is not None else [])
                table = parquet.read_row_group(group, columns=needed)
                if filters.needs_labels:
                    table = overlay_labels(table, imported)
                masks[group] = _match_mask(table, metric, filters)
        counts = {group: pc.sum(mask).as_py() or 0 for group, mask in masks.items()}
        total = sum(counts.values())
        pages = max(1, math.ceil(total / page_size))
        page = min(max(page, 0), pages - 1)
        first, last = page * page_size, (page + 1) * page_size
        pieces, seen = [], 0
        for group, mask in masks.items():
            count = counts[group]
            if count and seen < last and seen + count > first:
                table = parquet.read_row_group(group, columns=columns).filter(mask)
                lo = max(first - seen, 0)
                pieces.append(table.slice(lo, min(last - seen, count) - lo))
            seen += count
        empty = parquet.schema_arrow.empty_table().select(columns)
    rows = pa.concat_tables(pieces) if pieces else empty
    return RankingPage(_overlaid(rows, imported), total, page, pages, page_size)


def _overlaid(rows: pa.Table, imported: ImportedLabels | None) -> pa.Table:
    """``rows`` with the run's labels (``overlay_labels``) when labels were imported."""
    if imported is None or "label" not in rows.column_names:
        return rows
    return overlay_labels(rows, imported)
