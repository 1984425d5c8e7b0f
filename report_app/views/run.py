"""The Run page: one run's status and headline figures, then a tab each for its overview
(model, data, stages), scores and galleries, ranking, one sample, accuracy and APFD of each
label source, and the metamorphic attribution; only the open tab is laid out."""

from __future__ import annotations

import streamlit as st

from report_app.cached import (
    dataset_of,
    details_of,
    gallery_of,
    label_sources_of,
    random_samples_of,
)
from report_app.views.accuracy import accuracy_section
from report_app.views.attribution import attribution_section
from report_app.views.ranking import ranking_section
from report_app.views.samples import sample_section
from report_app.widgets import (
    SECTION_KEY,
    chart,
    esc,
    open_run,
    pick_run,
    show_error,
    table_height,
)
from testprio.errors import TestprioError
from testprio.layout import run_status
from testprio.report import charts
from testprio.report import data as reportdata

GALLERY_COLUMNS = 5


def show_gallery(items: list[dict], metric: str) -> None:
    for start in range(0, len(items), GALLERY_COLUMNS):
        columns = st.columns(GALLERY_COLUMNS)
        for column, item in zip(columns, items[start : start + GALLERY_COLUMNS], strict=False):
            with column:
                if item["image"] is not None:
                    st.image(item["image"], width=96)
                st.caption(
                    esc(
                        f"#{item['rank']} · id {item['sample_id']} · predicted "
                        f"{item['predicted']} · {metric} {item['score']:.3f}"
                        + (f" · label {item['label']}" if item["label"] else "")
                    )
                )
                probabilities = ", ".join(
                    f"{p['class']}: {p['probability']:.3f}" for p in item["top_probabilities"]
                )
                st.caption(esc(f"{probabilities} · {item['source']}"))


def model_section(details: reportdata.RunDetails) -> None:
    st.header("Model")
    summary = reportdata.model_summary(details.model)
    if summary is None:
        st.info("This run has no model/model.json (it stopped before convert).")
        return
    left, right = st.columns(2)
    with left:
        st.dataframe(summary["facts"], hide_index=True, height=table_height(len(summary["facts"])))
    with right:
        tensors = summary["inputs"] + summary["outputs"]
        st.dataframe(tensors, hide_index=True, height=table_height(len(tensors)))
        st.dataframe(
            summary["ops"], hide_index=True, height=table_height(len(summary["ops"]), most=8)
        )
    if summary["checks"]:
        st.subheader("Parity and model checks")
        st.dataframe(summary["checks"], hide_index=True)


def data_section(root: str, details: reportdata.RunDetails) -> None:
    st.header("Data")
    dataset = dataset_of(root, details.run_id)
    if dataset is None:
        st.info("This run has no data/manifest.json (it stopped before ingest).")
        return
    stats = dataset["stats"]
    columns = st.columns(6)
    columns[0].metric("samples", f"{dataset['samples']:,}")
    columns[1].metric("quarantined", f"{dataset['quarantined']:,}")
    columns[2].metric("shape", "×".join(str(dim) for dim in dataset["shape"]))
    columns[3].metric("tensor bytes", reportdata.format_bytes(dataset["tensor_bytes"]))
    columns[4].metric("mean", "-" if stats["mean"] is None else f"{stats['mean']:.4f}")
    columns[5].metric("std", "-" if stats["std"] is None else f"{stats['std']:.4f}")
    if dataset["stats_estimated"]:
        st.caption(f"Value statistics from the first {stats['rows']:,} samples.")
    st.caption(
        f"Preprocessing: {reportdata.md_escape(dataset['preprocessing'] or 'none')} · "
        "exact duplicates: "
        f"{dataset['duplicates']:,} (kept and ranked; listed in data/duplicates.parquet)"
    )
    left, right = st.columns(2)
    with left:
        st.subheader("Class balance")
        balance = dataset["class_balance"]
        st.dataframe(balance, hide_index=True, height=table_height(len(balance)))
    with right:
        st.subheader("Quarantine")
        if dataset["quarantine_reasons"]:
            st.dataframe(dataset["quarantine_reasons"], hide_index=True)
        else:
            st.write("No sample was quarantined.")
    st.subheader("Random samples")
    samples = random_samples_of(root, details.run_id, 16)
    columns = st.columns(8)
    for index, item in enumerate(samples):
        with columns[index % 8]:
            st.image(item["image"], width=64)
            st.caption(
                esc(f"id {item['sample_id']}" + (f" · {item['label']}" if item["label"] else ""))
            )


# The Run page's tabs, in order; each lays out one part of a ranking run.
OVERVIEW, SCORES, RANKING, SAMPLE, ACCURACY, ATTRIBUTION = (
    "Overview",
    "Scores",
    "Ranking",
    "Sample",
    "Accuracy and APFD",
    "Attribution",
)


def run_page(root: str, rows: list[dict]) -> None:
    run_id = pick_run(root, "Run", "run", [row["run_id"] for row in rows])
    if run_id is None:
        return
    try:
        details = details_of(root, run_id)
    except TestprioError as exc:
        show_error(str(exc))
        return
    # The effective status: a "running" run whose owner process is gone is "unfinished".
    row = {
        **reportdata.run_row(details.record),
        "status": run_status(details.layout, details.record),
    }
    st.title(f"Run {esc(run_id)}")
    st.caption(
        esc(
            f"{row['status']} · model {row['model']} · pool {row['dataset']} · "
            f"metric {row['metric']} · started {row['started']} · {row['duration']}"
        )
    )
    if row["status"] == "failed":
        show_error(f"{row['failed_stage']} failed: {row['error']}")
    evaluation = row["kind"] == reportdata.EVALUATION_KIND
    if evaluation:
        st.info(
            "This is an evaluation run (testprio evaluate): its results are on the Evaluation page."
        )
        st.button("Open the evaluation", on_click=open_run, args=(run_id, "evaluation"))
    sources = label_sources_of(root, run_id) if details.summary else []
    if details.summary:
        headline(details, sources)
    attribution = reportdata.ranking_attribution_view(details.summary)
    tabs = [OVERVIEW]
    if details.summary:
        tabs += [SCORES, RANKING, SAMPLE, ACCURACY]
    if attribution is not None:
        tabs.append(ATTRIBUTION)
    if len(tabs) == 1:
        overview(root, details)
        if not details.summary and not evaluation:
            st.info("This run has no ranking yet, so there are no scores to show.")
        return
    sections = {
        OVERVIEW: lambda: overview(root, details),
        SCORES: lambda: scores(root, details),
        RANKING: lambda: ranking_section(root, details),
        SAMPLE: lambda: sample_section(root, details),
        ACCURACY: lambda: accuracy_section(root, details),
        ATTRIBUTION: lambda: attribution_section(attribution),
    }
    # Only the open tab runs: a tab of a million-sample run reads only what it shows.
    for name, tab in zip(tabs, st.tabs(tabs, key=SECTION_KEY, bind="query-params"), strict=True):
        if tab.open:
            with tab:
                sections[name]()


def headline(details: reportdata.RunDetails, sources: list[reportdata.LabelSource]) -> None:
    """Samples ranked and quarantined, the mean score, and each label source's accuracy and
    APFD (the imported labels first: they are the run's labels)."""
    summary, metric = details.summary, details.metric
    columns = st.columns(3 + 2 * max(1, len(sources)))
    columns[0].metric("ranked", f"{summary['counts']['ranked']:,}")
    columns[1].metric("quarantined", f"{summary['counts']['quarantined']:,}")
    mean = summary["histograms"][metric]["mean"]
    columns[2].metric(f"mean {esc(metric)}", "-" if mean is None else f"{mean:.4f}")
    for index, source in enumerate(sources):
        suffix = f" ({source.text})" if len(sources) > 1 or source.source != "pool" else ""
        accuracy, apfd = source.figures["accuracy"], source.figures["apfd"]
        columns[3 + 2 * index].metric(
            f"accuracy{suffix}", "-" if accuracy is None else f"{accuracy:.4f}"
        )
        columns[4 + 2 * index].metric(f"APFD{suffix}", "-" if apfd is None else f"{apfd:.4f}")


def overview(root: str, details: reportdata.RunDetails) -> None:
    model_section(details)
    data_section(root, details)
    st.header("Stages")
    timeline = reportdata.stage_timeline(details)
    if timeline:
        chart(charts.stage_timeline(timeline))
    else:
        st.write("No stage has finished yet.")


def scores(root: str, details: reportdata.RunDetails) -> None:
    """The score figures and the galleries of the most and least uncertain samples."""
    names = reportdata.class_names(details)
    metric, run_id = details.metric, details.run_id
    st.header("Scores")
    left, right = st.columns(2)
    with left:
        chart(charts.score_histogram(reportdata.score_histogram(details.summary), metric))
    with right:
        chart(charts.per_class_mean(reportdata.per_class_means(details.summary, names), metric))
    chart(
        charts.class_score_heatmap(reportdata.class_score_heatmap(details.summary, names), metric)
    )
    st.header("Most and least uncertain")
    k = st.slider("Samples per gallery", 5, 30, 10, step=5, key="gallery-k")
    st.subheader(f"Top {k}: label these first")
    st.button(
        "Export the top of the ranking for labelling (Labels page)",
        on_click=open_run,
        args=(run_id, "labels"),
        key="scores-label",
    )
    show_gallery(gallery_of(root, run_id, "top", k), metric)
    st.subheader(f"Bottom {k}: the model is surest about these")
    show_gallery(gallery_of(root, run_id, "bottom", k), metric)
