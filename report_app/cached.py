"""The app's reads of a run folder, cached by root and run id (finished runs never change):
each page asks these, never ``testprio.report.data`` directly for what a rerun would read
again."""

from __future__ import annotations

import pyarrow as pa
import streamlit as st

from testprio import labels
from testprio.report import data as reportdata

CACHE_SECONDS = 15
SCORE_COLUMN_RUNS = 4  # runs whose score columns (24 bytes a sample) stay in memory


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def runs_of(root: str) -> list[dict]:
    return reportdata.list_runs(root)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def details_of(root: str, run_id: str) -> reportdata.RunDetails:
    return reportdata.load_run(reportdata.resolve_run(root, run_id))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def imported_labels_of(root: str, run_id: str) -> reportdata.ImportedLabels | None:
    """The labels imported into the run (labels.parquet), None before any import."""
    return reportdata.read_imported_labels(details_of(root, run_id))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def label_sources_of(root: str, run_id: str) -> list[reportdata.LabelSource]:
    """The run's label sources (imported first, then the pool's) with their figures."""
    details = details_of(root, run_id)
    imported = imported_labels_of(root, run_id)
    return reportdata.label_sources(details, imported, reportdata.class_names(details))


def forget_labels() -> None:
    """Drop every cached read that shows labels, after labels were imported."""
    for cached in (runs_of, details_of, imported_labels_of, label_sources_of, gallery_of):
        cached.clear()
    ranking_page_of.clear()
    sample_of.clear()


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def dataset_of(root: str, run_id: str) -> dict | None:
    return reportdata.dataset_summary(details_of(root, run_id))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def random_samples_of(root: str, run_id: str, count: int) -> list[dict]:
    return reportdata.random_samples(details_of(root, run_id), count)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def gallery_of(root: str, run_id: str, which: str, k: int) -> list[dict]:
    imported = imported_labels_of(root, run_id)
    return reportdata.gallery(details_of(root, run_id), which, k, imported=imported)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def ranking_page_of(
    root: str,
    run_id: str,
    page: int,
    page_size: int,
    filters: reportdata.RankingFilter,
) -> reportdata.RankingPage:
    details = details_of(root, run_id)
    result = reportdata.ranking_page(
        details,
        page=page,
        page_size=page_size,
        filters=filters,
        imported=imported_labels_of(root, run_id),
    )
    ids = result.rows.column("sample_id").to_pylist()
    # One read of the page's samples for both columns; tensors only for the thumbnailed rows.
    shown = ids[: reportdata.THUMBNAIL_ROWS]
    samples = reportdata.read_samples(details, shown, columns=("x", "source"))
    if len(ids) > len(shown):
        samples.update(reportdata.read_samples(details, ids[len(shown) :], columns=("source",)))
    result.rows = reportdata.with_sources(details, result.rows, samples=samples)
    images = reportdata.thumbnails(details, ids, samples=samples)  # bounded: first rows only
    result.rows = result.rows.add_column(0, "image", pa.array(images, pa.string()))
    return result


@st.cache_resource(ttl=CACHE_SECONDS, max_entries=SCORE_COLUMN_RUNS, show_spinner=False)
def score_columns_of(root: str, run_id: str) -> reportdata.ScoreColumns:
    """Every metric's scores of a run, read once: a sample's ranks are then counts.
    A resource, not data: the arrays are shared between sessions, never copied."""
    return reportdata.score_columns(details_of(root, run_id))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def sample_of(root: str, run_id: str, rank: int | None, sample_id: int | None) -> dict:
    details = details_of(root, run_id)
    columns = score_columns_of(root, run_id)
    detail = reportdata.sample_detail(
        details,
        columns,
        rank=rank,
        sample_id=sample_id,
        imported=imported_labels_of(root, run_id),
    )
    original = labels.original_image(details, detail["sample_id"], detail["source"])
    detail["original"] = original is not None
    detail["image"] = (
        reportdata.upscale(original, min_side=192)
        if original is not None
        else reportdata.upscale(reportdata.display_image(detail["x"]), min_side=192)
    )
    return detail


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def evaluation_of(root: str, run_id: str) -> dict:
    return reportdata.load_evaluation(reportdata.resolve_run(root, run_id))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def comparison_of(root: str, a: str, b: str) -> dict:
    return reportdata.compare_runs(details_of(root, a), details_of(root, b))
