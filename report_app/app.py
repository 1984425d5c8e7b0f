"""testprio report: browse the runs under a root (a local folder or gs://bucket/prefix).

Start it with ``testprio report --root ROOT``. Layout only: every table and figure comes from
``testprio.report.data`` and every chart from ``testprio.report.charts``. The root is fixed when the
app starts (``--root`` after ``--`` or ``TESTPRIO_REPORT_ROOT``); URL parameters choose a
page and runs by id, and ``reportdata.resolve_run`` refuses anything but a run id under the
root, and every file of a run is read through ``reportdata.run_file``/``shard_file``, which
refuse real paths outside the root. Text that comes from a run (run ids, metric and class
names, sources, error sentences) goes through ``reportdata.md_escape`` wherever Streamlit
reads it as Markdown (captions, alerts, titles, widget and metric labels). Uncaught
exceptions show no message or traceback in the browser (``client.showErrorDetails``).
"""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import streamlit as st

from testprio import labels, storage
from testprio.errors import TestprioError
from testprio.layout import run_status
from testprio.report import charts
from testprio.report import data as reportdata

ROOT_ENV = "TESTPRIO_REPORT_ROOT"
PAGES = {
    "runs": "Runs",
    "run": "Run",
    "evaluation": "Evaluation",
    "compare": "Compare",
    "downloads": "Downloads",
}
# The page that opens a run of each kind (run.json's parameters.kind).
PAGE_OF_KIND = {reportdata.RANKING_KIND: "run", reportdata.EVALUATION_KIND: "evaluation"}
# What each retraining method (evaluation.json's retraining.method) trained, said by the app
# itself: a head-only retraining must never pass for a whole-model fine-tuning.
RETRAINING_SCOPE = {
    "onnx": "Head-only retraining: only the classifier head (the ONNX model's last linear "
    "layer) was retrained; every layer before it stayed frozen. The gains show what "
    "retraining the head alone gives, not what fine-tuning the whole model would.",
    "pytorch": "Whole-model retraining: every layer of the PyTorch model was fine-tuned.",
    "tensorflow": "Whole-model retraining: every layer of the Keras model was fine-tuned.",
}
# Said under the budget-points chart of an evaluation written before curves were kept.
FAULT_POINTS_TEXT = (
    "This evaluation.json was written before evaluations kept each prioritizer's curve: it "
    "holds the faults found at each budget only, so this chart joins the evaluated budgets "
    "by straight lines; it is not the full fault-detection curve (evaluate again to get the "
    "curves). APFD (right) does cover each whole order."
)
CURVES_TEXT = (
    "Each line: the share of the pool's misclassified samples found while inspecting the "
    "pool in that prioritizer's order (random: the mean over seeds). Dashed: what a random "
    "order finds on average (the diagonal) and the ideal order (every fault first)."
)
CACHE_SECONDS = 15
GALLERY_COLUMNS = 5
PAGE_SIZES = (25, 50, 100, 500)
SCORE_COLUMN_RUNS = 4  # runs whose score columns (24 bytes a sample) stay in memory
# The toolbar without developer options: no Deploy button, no "Record a screencast".
TOOLBAR_MODE = "viewer"
APFD_TEXT = """
APFD (Average Percentage of Faults Detected) says how early the ranking puts the
misclassified inputs (the faults). With n ranked inputs, k of them misclassified at
1-based ranks r₁ … rₖ:

APFD = 1 − (r₁ + … + rₖ) / (k · n) + 1 / (2n)

It is the area under the curve of mistakes found against inputs inspected. Raw APFD can
only lie between the worst order (every fault last: k / 2n) and the best (every fault first:
1 − k / 2n), so it depends on how many faults there are. Normalized APFD maps that range
onto 0..1: 1 is the best possible order, 0 the worst. 0.5 is what a random order scores on
average (raw and normalized alike): a ranking is useful when it scores clearly above 0.5.
"""
esc = reportdata.md_escape


def report_root() -> str:
    args = sys.argv[1:]
    if "--root" in args and args.index("--root") + 1 < len(args):
        return args[args.index("--root") + 1]
    return os.environ.get(ROOT_ENV, "runs")


# --- cached reads (keyed by root and run id; finished runs never change) -----------------


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def runs_of(root: str) -> list[dict]:
    return reportdata.list_runs(root)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def details_of(root: str, run_id: str) -> reportdata.RunDetails:
    return reportdata.load_run(reportdata.resolve_run(root, run_id))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def dataset_of(root: str, run_id: str) -> dict | None:
    return reportdata.dataset_summary(details_of(root, run_id))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def random_samples_of(root: str, run_id: str, count: int) -> list[dict]:
    return reportdata.random_samples(details_of(root, run_id), count)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def gallery_of(root: str, run_id: str, which: str, k: int) -> list[dict]:
    return reportdata.gallery(details_of(root, run_id), which, k)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def ranking_page_of(
    root: str,
    run_id: str,
    page: int,
    page_size: int,
    filters: reportdata.RankingFilter,
) -> reportdata.RankingPage:
    details = details_of(root, run_id)
    result = reportdata.ranking_page(details, page=page, page_size=page_size, filters=filters)
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
    detail = reportdata.sample_detail(details, columns, rank=rank, sample_id=sample_id)
    original = labels.original_image(details, detail["sample_id"], detail["source"])
    detail["original"] = original is not None
    detail["image"] = (
        reportdata.upscale(original, min_side=192)
        if original is not None
        else reportdata.upscale(reportdata.display_image(detail["x"]), min_side=192)
    )
    return detail


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def fault_curve_of(root: str, run_id: str) -> dict | None:
    return reportdata.run_fault_curve(details_of(root, run_id))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def evaluation_of(root: str, run_id: str) -> dict:
    return reportdata.load_evaluation(reportdata.resolve_run(root, run_id))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def comparison_of(root: str, a: str, b: str) -> dict:
    return reportdata.compare_runs(details_of(root, a), details_of(root, b))


# --- helpers ----------------------------------------------------------------------------


def show_errors_of(page, *args) -> None:
    """Run a page; a refused or unreadable file stops it with its one sentence."""
    try:
        page(*args)
    except TestprioError as exc:
        show_error(str(exc))


def show_error(text: str) -> None:
    st.error(esc(text))


def query_run(name: str, run_ids: list[str]) -> str | None:
    """The run id in URL parameter ``name`` if it names one of ``run_ids``, else None."""
    value = st.query_params.get(name)
    if value is None:
        return None
    try:
        reportdata.resolve_run(ROOT, value)
    except TestprioError as exc:
        show_error(str(exc))
        return None
    if value not in run_ids:
        show_error(f"there is no run '{value}' under {ROOT}; pick one from the list.")
        return None
    return value


def pick_run(label: str, param: str, run_ids: list[str], *, default: int = 0) -> str | None:
    if not run_ids:
        st.info(f"No runs under {esc(ROOT)} yet; start one with `testprio run`.")
        return None
    chosen = query_run(param, run_ids)
    key = f"pick-{param}"
    if st.session_state.get(key) not in run_ids:
        st.session_state[key] = chosen or run_ids[min(default, len(run_ids) - 1)]
    run_id = st.selectbox(label, run_ids, key=key)
    st.query_params[param] = run_id
    return run_id


def open_run(run_id: str, page: str = "run") -> None:
    """Button callback: show ``run_id`` on ``page`` (runs before the next script run)."""
    st.session_state["page"] = page
    st.session_state["pick-run"] = run_id
    st.query_params.update(page=page, run=run_id)


def table_height(rows: int, *, most: int = 12) -> int:
    """Pixels that show ``rows`` rows (at most ``most``) of an ``st.dataframe`` unscrolled."""
    return 38 + 35 * max(1, min(rows, most))


def chart(spec) -> None:
    st.altair_chart(spec, width="stretch")


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


# --- pages --------------------------------------------------------------------------------


def runs_page(rows: list[dict]) -> None:
    st.title("testprio runs")
    st.caption(esc(f"Root: {ROOT}"))
    query = st.text_input(
        "Search runs", placeholder="name, model, dataset, metric, status, start time, duration"
    )
    shown = reportdata.filter_runs(rows, query)
    st.write(f"{len(shown)} of {len(rows)} runs")
    table = [
        {
            **{name: row[name] for name in reportdata.RUN_COLUMNS},
            **{name: row.get(name) for name in reportdata.RUN_FIGURE_COLUMNS},
            "open": f"?page={PAGE_OF_KIND[row['kind']]}&run={row['run_id']}",
            "error": row["error"],
        }
        for row in shown
    ]
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "run_id": st.column_config.TextColumn("name"),
            "samples": st.column_config.NumberColumn("samples", format="localized"),
            "accuracy": st.column_config.NumberColumn("accuracy", format="%.4f"),
            "apfd": st.column_config.NumberColumn("APFD", format="%.4f"),
            "baseline_accuracy": st.column_config.NumberColumn(
                "baseline accuracy", format="%.4f", help="evaluations: the model as given"
            ),
            "best_prioritizer": st.column_config.TextColumn(
                "best prioritizer", help="evaluations: highest normalized APFD"
            ),
            "open": st.column_config.LinkColumn("open", display_text="open"),
        },
    )
    for row in shown:
        if row["status"] == "failed":
            show_error(f"{row['run_id']} failed in {row['failed_stage']}: {row['error']}")
        elif row["status"] == "refused":
            show_error(row["error"])
    if shown:
        run_id = st.selectbox("Run", [row["run_id"] for row in shown], key="runs-open")
        kind = next(row["kind"] for row in shown if row["run_id"] == run_id)
        st.button("Open run", on_click=open_run, args=(run_id, PAGE_OF_KIND[kind]))


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


def ranking_section(root: str, details: reportdata.RunDetails) -> None:
    st.header("Ranking")
    metric = details.metric
    summary = details.summary
    names = reportdata.class_names(details)
    labels = [reportdata.class_label(i, names) for i in range(summary["num_classes"])]
    upper = float(summary["histograms"][metric]["edges"][-1])
    left, middle, right = st.columns([2, 2, 1])
    chosen = left.multiselect("Predicted class", labels, key="rank-classes")
    low, high = middle.slider(
        f"{esc(metric)} range", 0.0, upper, (0.0, upper), step=upper / 100 or 0.01, key="rank-range"
    )
    page_size = right.selectbox("Rows per page", PAGE_SIZES, index=1, key="rank-size")
    true_labels, wrong_only = None, False
    if details.has_labels:
        left, right = st.columns([4, 1])
        chosen_truth = left.multiselect("True label", labels, key="rank-labels")
        true_labels = tuple(labels.index(label) for label in chosen_truth) or None
        wrong_only = right.checkbox("Misclassified only", key="rank-wrong")
    filters = reportdata.RankingFilter(
        classes=tuple(labels.index(label) for label in chosen) if chosen else None,
        score_min=low if low > 0.0 else None,
        score_max=high if high < upper else None,
        labels=true_labels,
        misclassified=wrong_only,
    )
    first = ranking_page_of(root, details.run_id, 0, page_size, filters)
    page = st.number_input(
        f"Page (of {first.pages:,})", min_value=1, max_value=first.pages, value=1, key="rank-page"
    )
    result = (
        first
        if page == 1
        else ranking_page_of(root, details.run_id, int(page) - 1, page_size, filters)
    )
    rows = result.rows.to_pandas()
    if details.has_labels:
        wrong = rows["label"].notna() & (rows["predicted"] != rows["label"])
        rows.insert(1, "wrong", wrong.map({True: "✗", False: ""}))
    st.caption(
        f"{result.total:,} matching samples, most uncertain first. Thumbnails for the first "
        f"{reportdata.THUMBNAIL_ROWS} rows of a page"
        + ("; ✗ marks a prediction that differs from the label." if details.has_labels else ".")
    )
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "image": st.column_config.ImageColumn("image", width="small"),
            "wrong": st.column_config.TextColumn("wrong", help="✗: predicted ≠ label"),
        },
    )


def sample_section(root: str, details: reportdata.RunDetails) -> None:
    """One sample: its image, probabilities, and its rank under every metric."""
    st.header("Sample")
    left, right = st.columns([1, 2])
    by = left.radio("Find by", ["rank", "sample id"], horizontal=True, key="sample-by")
    # Empty until asked: the ranks under every metric read the run's score columns, which
    # the page would otherwise pay for on every open.
    if by == "rank":
        number = right.number_input(
            "Rank", min_value=1, max_value=max(1, details.num_rows), value=None, key="sample-rank"
        )
        chosen = (int(number), None) if number is not None else None
    else:
        number = right.number_input("Sample id", min_value=0, value=None, key="sample-id")
        chosen = (None, int(number)) if number is not None else None
    if chosen is None:
        st.caption("Enter a rank or a sample id to see that sample.")
        return
    detail = sample_of(root, details.run_id, *chosen)
    left, middle, right = st.columns([1, 2, 2])
    with left:
        st.image(detail["image"], width=192)
        st.caption(
            esc(
                ("original file " if detail["original"] else "preprocessed tensor ")
                + detail["source"]
            )
        )
    with middle:
        facts = [
            ("rank", f"{detail['rank']:,}"),
            ("sample id", str(detail["sample_id"])),
            ("predicted", detail["predicted"]),
            ("confidence", f"{detail['confidence']:.4f}"),
            ("label", detail["label"] or "unknown"),
        ]
        if detail["wrong"] is not None:
            facts.append(("misclassified", "yes" if detail["wrong"] else "no"))
        st.dataframe(
            [{"fact": name, "value": value} for name, value in facts],
            hide_index=True,
            height=table_height(len(facts)),
        )
        ranks = [
            {
                "metric": metric,
                "score": round(detail["scores"][metric], 6),
                "rank": rank,
                "of": details.num_rows,
            }
            for metric, rank in detail["ranks"].items()
        ]
        st.dataframe(ranks, hide_index=True, height=table_height(len(ranks)))
    with right:
        if detail["probabilities"]:
            chart(charts.probabilities(detail["probabilities"]))


def labels_section(root: str, details: reportdata.RunDetails) -> None:
    labels = details.summary["labels"]
    st.header("Labels")
    apfd = labels["apfd"] or {}
    columns = st.columns(4)
    columns[0].metric("accuracy", f"{labels['accuracy']:.4f}")
    columns[1].metric("misclassified", f"{labels['misclassified']:,}")
    columns[2].metric("APFD", f"{apfd['raw']:.4f}" if apfd else "-")
    normalized = apfd.get("normalized")
    columns[3].metric("APFD normalized", f"{normalized:.4f}" if normalized is not None else "-")
    curve = fault_curve_of(root, details.run_id)
    left, right = st.columns(2)
    with left:
        if curve:
            chart(charts.fault_curve(reportdata.fault_curve_rows(curve)))
        else:
            st.write("No misclassified sample: nothing to find.")
    with right:
        st.markdown(APFD_TEXT)
    names = reportdata.class_names(details)
    chart(charts.per_class_accuracy(reportdata.per_class_accuracy(details.summary, names)))
    compared = reportdata.prioritizer_apfd_rows(details.summary)
    if compared:
        st.subheader("APFD of every prioritizer")
        st.caption(
            "The same labelled samples in the order of each prioritizer this run's scores "
            "allow (✓: the order of this ranking)."
        )
        st.dataframe(
            compared,
            hide_index=True,
            height=table_height(len(compared), most=20),
            column_config=APFD_COLUMNS,
        )


APFD_COLUMNS = {
    "apfd": st.column_config.NumberColumn("APFD", format="%.4f"),
    "apfd_normalized": st.column_config.NumberColumn("APFD normalized", format="%.4f"),
}


def run_page(root: str, run_ids: list[str]) -> None:
    run_id = pick_run("Run", "run", run_ids)
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
    if details.summary:
        summary, metric = details.summary, details.metric
        columns = st.columns(5)
        columns[0].metric("ranked", f"{summary['counts']['ranked']:,}")
        columns[1].metric("quarantined", f"{summary['counts']['quarantined']:,}")
        mean = summary["histograms"][metric]["mean"]
        columns[2].metric(f"mean {esc(metric)}", "-" if mean is None else f"{mean:.4f}")
        if summary["labels"]:
            columns[3].metric("accuracy", f"{summary['labels']['accuracy']:.4f}")
            apfd = summary["labels"]["apfd"]
            columns[4].metric("APFD", f"{apfd['raw']:.4f}" if apfd else "-")

    model_section(details)
    data_section(root, details)

    st.header("Stages")
    timeline = reportdata.stage_timeline(details)
    if timeline:
        chart(charts.stage_timeline(timeline))
    else:
        st.write("No stage has finished yet.")

    if not details.summary:
        if not evaluation:
            st.info("This run has no ranking yet, so there are no scores to show.")
        return
    names = reportdata.class_names(details)
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
    show_gallery(gallery_of(root, run_id, "top", k), metric)
    st.subheader(f"Bottom {k}: the model is surest about these")
    show_gallery(gallery_of(root, run_id, "bottom", k), metric)

    ranking_section(root, details)
    sample_section(root, details)
    if details.has_labels:
        labels_section(root, details)
    attribution = reportdata.ranking_attribution_view(details.summary)
    if attribution is not None:
        attribution_section(attribution)


def evaluation_page(root: str, rows: list[dict]) -> None:
    """One ``testprio evaluate`` run: which prioritizer finds the faults and pays off."""
    runs = [row["run_id"] for row in rows if row["kind"] == reportdata.EVALUATION_KIND]
    if not runs:
        st.title("Evaluation")
        st.info(f"No evaluation runs under {esc(ROOT)} yet; start one with `testprio evaluate`.")
        return
    if st.query_params.get("run") in {row["run_id"] for row in rows} - set(runs):
        # A ranking run chosen on another page: start from the newest evaluation instead.
        del st.query_params["run"]
    run_id = pick_run("Evaluation run", "run", runs)
    if run_id is None:
        return
    row = next(row for row in rows if row["run_id"] == run_id)
    st.title(f"Evaluation {esc(run_id)}")
    st.caption(
        esc(
            f"{row['status']} · model {row['model']} · pool {row['dataset']} · "
            f"started {row['started']} · {row['duration']}"
        )
    )
    if row["status"] == "failed":
        show_error(f"{row['failed_stage']} failed: {row['error']}")
        return
    try:
        view = evaluation_of(root, run_id)
    except TestprioError as exc:
        show_error(str(exc))
        return
    evaluation_summary(view)
    st.header("Best per budget")
    st.dataframe(
        view["winners"],
        hide_index=True,
        column_config={
            "budget": st.column_config.NumberColumn("budget %", format="%g"),
            "by_accuracy": st.column_config.TextColumn("best by retrained accuracy"),
            "accuracy_mean": st.column_config.NumberColumn("accuracy (mean)", format="%.4f"),
            "by_faults": st.column_config.TextColumn("best by faults found"),
            "found": st.column_config.NumberColumn("faults found", format="%g"),
        },
    )
    st.caption(
        esc(
            f"Ties list every prioritizer sharing first place; random competes like the rest. "
            f"Faults found are of the pool's {view['misclassified']:,} misclassified samples."
        )
    )
    st.header("Fault detection")
    left, right = st.columns(2)
    with left:
        fault_detection_chart(view)
    with right:
        if view["apfd"]:
            chart(charts.apfd_bars(view["apfd"]))
        else:
            st.write("The pool has no misclassified sample: APFD is undefined.")
    st.dataframe(
        view["faults_table"],
        hide_index=True,
        column_config={
            "prioritizer": st.column_config.TextColumn("faults found in the top"),
            **{
                f"{budget:g}%": st.column_config.NumberColumn(f"{budget:g}%", format="%g")
                for budget in view["budgets"]
            },
        },
    )
    st.caption(
        esc(
            f"Faults found among each prioritizer's top b% of the pool, of "
            f"{view['misclassified']:,}; random: the mean over seeds."
        )
    )
    retraining_section(view)
    st.header("Prioritizers")
    st.dataframe(
        view["prioritizers"],
        hide_index=True,
        height=table_height(len(view["prioritizers"]), most=20),
        column_config={
            **APFD_COLUMNS,
            "seconds": st.column_config.NumberColumn("seconds to order", format="%.2f"),
        },
    )
    if view["layers"]:
        layers = view["layers"]
        st.caption(
            esc(
                f"Hidden layers ({layers['chosen']}): coverage {', '.join(layers['coverage'])}; "
                f"surprise {layers['surprise']}."
            )
        )
    if view["attribution"] is not None:
        attribution_section(view["attribution"])
    timings = " · ".join(f"{name} {seconds:.1f} s" for name, seconds in view["timings"].items())
    if timings:
        st.caption(esc(f"Timings: {timings}"))


def fault_detection_chart(view: dict) -> None:
    """The prioritizers' whole fault-detection curves; an evaluation written before curves
    were kept gets the faults at its budgets, and says it is not the full curve."""
    if view["curves"] is None:
        chart(charts.faults_at_budgets(view["faults"]))
        st.caption(f"Dashed: what a random order finds on average. {FAULT_POINTS_TEXT}")
    elif view["curves"]:
        chart(charts.fault_detection_curves(view["curves"], view["curve_references"]))
        st.caption(CURVES_TEXT)
    else:
        st.write("The pool has no misclassified sample: there is no fault-detection curve.")


def evaluation_summary(view: dict) -> None:
    columns = st.columns(4)
    columns[0].metric("baseline accuracy", f"{view['baseline_accuracy']:.4f}")
    columns[1].metric("pool accuracy", f"{view['pool_accuracy']:.4f}")
    columns[2].metric("misclassified in the pool", f"{view['misclassified']:,}")
    best = view["best"]["apfd_normalized"]
    columns[3].metric("best normalized APFD", "-" if best is None else f"{best:.4f}")
    model, samples = view["model"], view["samples"]
    kind = " ".join(dict.fromkeys((model["framework"], model["format"])))  # "onnx", not "onnx onnx"
    budgets = ", ".join(f"{budget:g}%" for budget in view["budgets"])
    seeds = view["seeds"]
    st.caption(
        esc(
            f"Best prioritizer by normalized APFD: {view['best']['text'] or 'none'} · model "
            f"{model['name']} ({kind}, {model['classes']} classes) · pool "
            f"{samples['pool']:,} samples · test split {samples['test']:,} samples "
            f"({view['test_split']}) · training data {samples['train']:,} samples · "
            f"budgets {budgets} · {seeds} seed{'s' if seeds != 1 else ''}. Baseline accuracy: "
            "the model as given, on the test split."
        )
    )


def retraining_section(view: dict) -> None:
    retraining = view["retraining"]
    st.header("Retraining")
    scope = RETRAINING_SCOPE.get(retraining["method"])
    epochs = retraining["epochs"]
    if scope:
        st.info(scope)
    st.caption(
        esc(
            f"Retraining method {retraining['method']}: {retraining['description']}. "
            f"{epochs} epoch{'s' if epochs != 1 else ''}, batch size "
            f"{retraining['batch_size']}, learning rate {retraining['learning_rate']}; the "
            "training data plus each prioritizer's top b% with their labels, once per seed."
        )
    )
    left, right = st.columns(2)
    with left:
        chart(charts.retraining_gain(view["retrain"]))
    with right:
        st.caption(
            esc(
                "Accuracy after retraining minus the baseline accuracy (dashed at 0); band: "
                f"the interval over seeds ({retraining['interval']})."
            )
        )
    st.dataframe(
        view["retrain"],
        hide_index=True,
        column_order=("prioritizer", "budget", "accuracy_mean", "ci_low", "ci_high", "gain"),
        column_config={
            "budget": st.column_config.NumberColumn("budget %", format="%g"),
            "accuracy_mean": st.column_config.NumberColumn("accuracy (mean)", format="%.4f"),
            "ci_low": st.column_config.NumberColumn("95% CI low", format="%.4f"),
            "ci_high": st.column_config.NumberColumn("95% CI high", format="%.4f"),
            "gain": st.column_config.NumberColumn("gain", format="%+.4f"),
        },
    )


def attribution_section(attribution: dict) -> None:
    """The instability prioritizer's metamorphic follow-ups: which transforms flip classes."""
    st.header("Metamorphic attribution (instability)")
    rate = attribution["violation_rate"]
    st.caption(
        esc(
            f"{attribution['followups']} follow-ups per pool sample from "
            f"{', '.join(attribution['transforms'])}"
            + (" (narrow ranges for tiny images)" if attribution["tiny_image_ranges"] else "")
            + ("" if rate is None else f"; {rate:.1%} of them change the class")
            + ". Violation rate: share of follow-ups applying the transform whose class "
            "changes (without it: rate without). ATE: the difference, with its "
            f"{attribution['confidence'] or 0.95:.0%} cluster-bootstrap interval "
            f"({attribution['n_boot']} replicates). Shapley: the transform's share of the "
            "difference between the violation rates with every transform and with none."
        )
    )
    if attribution["error"]:
        show_error(attribution["error"])
    if attribution["rows"]:
        probability = {
            name: st.column_config.NumberColumn(format="%.4f")
            for name in attribution["rows"][0]
            if name != "transform"
        }
        st.dataframe(
            attribution["rows"],
            hide_index=True,
            height=table_height(len(attribution["rows"])),
            column_config={
                **probability,
                "violation_rate": st.column_config.NumberColumn("violation rate", format="%.4f"),
                "rate_without": st.column_config.NumberColumn("rate without", format="%.4f"),
                "ate": st.column_config.NumberColumn("ATE", format="%+.4f"),
                "ate_ci_low": st.column_config.NumberColumn("ATE CI low", format="%+.4f"),
                "ate_ci_high": st.column_config.NumberColumn("ATE CI high", format="%+.4f"),
                "shapley": st.column_config.NumberColumn("Shapley", format="%+.4f"),
                "shapley_ci_low": st.column_config.NumberColumn("Shapley CI low", format="%+.4f"),
                "shapley_ci_high": st.column_config.NumberColumn("Shapley CI high", format="%+.4f"),
            },
        )


def compare_page(root: str, rows: list[dict]) -> None:
    st.title("Compare two runs")
    ranked = [
        row["run_id"]
        for row in rows
        if row["status"] == "succeeded" and row["kind"] == reportdata.RANKING_KIND
    ]
    if len(ranked) < 2:
        st.info("Comparing needs two finished runs on the same data.")
        return
    left, right = st.columns(2)
    with left:
        a = pick_run("Run A", "a", ranked, default=0)
    with right:
        other = next(index for index, run_id in enumerate(ranked) if run_id != a)
        b = pick_run("Run B", "b", ranked, default=other)
    if a == b:
        st.info("Pick two different runs.")
        return
    first, second = details_of(root, a), details_of(root, b)
    pool = reportdata.pool_identity(first, second)
    if not pool["same"]:
        # One sentence, and nothing that pairs the samples of the two pools.
        show_error(
            f"Runs {a} and {b} ranked different pools (compared: {pool['compared']}), so "
            "their samples are not compared; pick two runs of the same pool."
        )
        return
    st.caption(esc(f"Same pool; compared: {pool['compared']}."))
    st.subheader("Accuracy and APFD")
    figures = [reportdata.run_figures(details) for details in (first, second)]
    st.dataframe(
        figures,
        hide_index=True,
        column_config={
            "accuracy": st.column_config.NumberColumn(format="%.4f"),
            "apfd": st.column_config.NumberColumn("APFD", format="%.4f"),
            "apfd_normalized": st.column_config.NumberColumn("APFD normalized", format="%.4f"),
        },
    )
    curves = {run_id: fault_curve_of(root, run_id) for run_id in (a, b)}
    if any(curves.values()):
        left, right = st.columns(2)
        with left:
            chart(charts.fault_curves(reportdata.fault_curves_rows(curves)))
        with right:
            st.markdown(APFD_TEXT)
    else:
        st.write("Neither run has misclassified labelled samples: no fault-detection curve.")
    result = comparison_of(root, a, b)
    st.subheader("Rankings")
    for warning in result["warnings"]:
        st.warning(esc(warning))
    columns = st.columns(3)
    spearman = result["spearman"]
    columns[0].metric("Spearman rank correlation", "-" if spearman is None else f"{spearman:.4f}")
    columns[1].metric("shared samples", f"{result['shared']:,}")
    columns[2].metric("metrics", " vs ".join(result["metrics"]))
    st.caption(esc(f"models: {result['models'][0]} vs {result['models'][1]}"))
    left, right = st.columns(2)
    with left:
        st.subheader("Top-k overlap")
        st.dataframe(result["overlaps"], hide_index=True)
        chart(charts.top_k_overlap(result["overlaps"]))
    with right:
        chart(charts.rank_scatter(result["scatter"], a, b))
    st.subheader("Samples that moved most")
    st.dataframe(result["moved"], hide_index=True)


def labelling_section(root: str, details: reportdata.RunDetails) -> None:
    """Export the top k for Label Studio; import labels and show the labelled part's figures."""
    st.subheader("Label in Label Studio")
    st.caption(
        "A zip with labels.csv, label_studio_tasks.json, label_studio_config.xml, the images "
        "and a README (see the labelling docs). Import the labelled file below."
    )
    top = max(1, min(details.num_rows, 10_000))
    left, right = st.columns([1, 2])
    k = int(
        left.number_input(
            "Top k to label",
            min_value=1,
            max_value=top,
            value=min(top, int(details.parameters.get("top_k") or 10)),
            key="label-k",
        )
    )
    layout = details.layout
    right.download_button(
        f"Labelling export of the top {k} (zip)",
        data=lambda: labels.export_zip_bytes(layout, top_k=k),
        file_name=f"{details.run_id}-label-top-{k}.zip",
        mime="application/zip",
        on_click="ignore",
    )
    upload = st.file_uploader(
        "Labels to import (Label Studio JSON or JSON-MIN export, or a CSV with sample_id and "
        "label)",
        type=["json", "csv"],
        key="label-upload",
    )
    if upload is not None and st.session_state.get("label-imported") != upload.file_id:
        try:
            result = labels.import_labels(layout, upload.name, data=upload.getvalue())
        except TestprioError as exc:
            show_error(str(exc))
        else:
            st.session_state["label-imported"] = upload.file_id
            st.success(esc(result.sentence()))
    record = storage.read_json(reportdata.run_file(layout, layout.run_json))
    show_labelled(record.get("labelled"))


def show_labelled(figures: dict | None) -> None:
    if not figures:
        st.caption("No labels imported into this run yet.")
        return
    st.caption(
        esc(
            f"Imported labels ({figures.get('file', '')}): {figures['samples']:,} labelled "
            f"samples, ranks {figures['first_rank']}-{figures['last_rank']}. APFD of the "
            "labelled samples alone, in rank order."
        )
    )
    apfd = figures.get("apfd") or {}
    columns = st.columns(4)
    columns[0].metric("labelled accuracy", f"{figures['accuracy']:.4f}")
    columns[1].metric("labelled misclassified", f"{figures['misclassified']:,}")
    columns[2].metric("labelled APFD", f"{apfd['raw']:.4f}" if apfd else "-")
    normalized = apfd.get("normalized")
    columns[3].metric(
        "labelled APFD normalized", "-" if normalized is None else f"{normalized:.4f}"
    )


def downloads_page(root: str, run_ids: list[str]) -> None:
    st.title("Downloads")
    run_id = pick_run("Run", "run", run_ids)
    if run_id is None:
        return
    details = details_of(root, run_id)
    if not details.has_ranking:
        st.info("This run has no ranking to download.")
        return
    layout = details.layout
    st.subheader("Ranking")
    left, right = st.columns(2)
    left.download_button(
        "Ranking as CSV",
        data=lambda: reportdata.ranking_csv(layout),
        file_name=f"{run_id}-ranking.csv",
        mime="text/csv",
        on_click="ignore",
    )
    right.download_button(
        "Ranking as Parquet",
        data=lambda: reportdata.ranking_parquet(details),
        file_name=f"{run_id}-ranking.parquet",
        mime="application/octet-stream",
        on_click="ignore",
    )
    st.subheader("Top-k for labeling")
    k = int(
        st.number_input(
            "k", min_value=1, max_value=max(1, min(details.num_rows, 10_000)), value=100
        )
    )
    left, right = st.columns(2)
    left.download_button(
        f"Top {k} as CSV (sample ids and sources)",
        data=lambda: reportdata.rows_to_csv(reportdata.top_k_rows(details, k)),
        file_name=f"{run_id}-top-{k}.csv",
        mime="text/csv",
        on_click="ignore",
    )
    right.download_button(
        f"Top {k} images (zip of PNGs and the CSV)",
        data=lambda: reportdata.top_k_images_zip(details, k),
        file_name=f"{run_id}-top-{k}-images.zip",
        mime="application/zip",
        on_click="ignore",
    )
    labelling_section(root, details)
    st.subheader("Everything")
    export = reportdata.export_zip_file(details)  # refused here if it links out of the root
    if export is not None:
        st.download_button(
            "export.zip (ranking, scores and probabilities, report.html, run.json, model.json)",
            data=lambda: storage.read_bytes(export),
            file_name=f"{run_id}-export.zip",
            mime="application/zip",
            on_click="ignore",
        )
    else:
        st.write("This run has no report/export.zip (its report stage has not run).")


# --- the app ------------------------------------------------------------------------------

st.set_page_config(page_title="testprio report", layout="wide")
# "none", not the legacy false: false still sends the traceback (file paths) to the browser.
st.set_option("client.showErrorDetails", "none")
st.set_option("client.toolbarMode", TOOLBAR_MODE)  # `testprio report` passes it too
ROOT = report_root()
try:
    ROOT = storage.normalize_root(ROOT)
    all_runs = runs_of(ROOT)
except TestprioError as exc:
    show_error(str(exc))
    st.stop()

if st.session_state.get("page") not in PAGES:
    requested = st.query_params.get("page", "runs")
    st.session_state["page"] = requested if requested in PAGES else "runs"
page_key = st.sidebar.radio("Page", list(PAGES), format_func=PAGES.get, key="page")
st.query_params["page"] = page_key
st.sidebar.caption(esc(f"Root: {ROOT}"))
ids = [row["run_id"] for row in all_runs]

if page_key == "runs":
    show_errors_of(runs_page, all_runs)
elif page_key == "run":
    show_errors_of(run_page, ROOT, ids)
elif page_key == "evaluation":
    show_errors_of(evaluation_page, ROOT, all_runs)
elif page_key == "compare":
    show_errors_of(compare_page, ROOT, all_runs)
else:
    show_errors_of(downloads_page, ROOT, ids)
