"""Report: a ranked run -> ``report/`` for people and for the Kubeflow UI.

Writes, into the run folder:

- ``report/report.json``: figures for the Streamlit app (KFP metrics, confusion matrix,
  fault-detection curve, pool statistics), so that opening a run reads no large file;
- ``report/report.html``: one self-contained page (inline CSS, charts as inline SVG,
  thumbnails as ``data:`` PNGs, no scripts), which the Kubeflow UI shows in a sandboxed
  iframe as the HTML output;
- ``report/report.md``: key figures and the top-10 table (the Markdown output);
- ``report/export.zip``: the ranking as Parquet and CSV, every shard's per-sample scores
  and probabilities, ``report.html``, ``run.json``, ``model.json``, ``summary.json`` and
  ``labelling/``: the top-k labelling export of ``testprio.labels`` (labels.csv, Label
  Studio tasks and config, images). ``report.html`` carries the same CSV and Label Studio
  JSON inline, as text and as ``data:`` download links.

Every text that comes from the run (run id, file names, sources, class names) is escaped:
Jinja2 autoescaping in HTML, ``reportdata.md_escape`` in Markdown.
"""

from __future__ import annotations

import base64
import json
import shutil
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow.compute as pc

from testprio import labels as label_export
from testprio import prioritizers, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout, finished_record
from testprio.log import get_logger
from testprio.report import charts
from testprio.report import data as reportdata
from testprio.report.text import as_text

log = get_logger("report")

THUMBNAIL_MAX_SIDE = 128
RANDOM_SAMPLES = 16
EXPORT_README = """\
testprio export of run {run_id}

ranking.parquet / ranking.csv   every ranked sample, most uncertain first (rank from 1)
scores/shard-NNNNN.parquet      per-sample scores and class probabilities (probs), per shard
summary.json                    histograms, per-class figures, accuracy and APFD
report.html                     the report, one self-contained page
run.json                        parameters, status and stage timings
model.json                      the model's facts (producer, opsets, inputs, outputs, ...)
labelling/                      the top-k for labelling: labels.csv, Label Studio tasks and
                                config, images/ (see labelling/README.txt)
"""
LABELLING_FOLDER = "labelling/"


@dataclass
class ReportResult:
    """What the report component hands to KFP's HTML, Markdown and metrics outputs."""

    html: str
    markdown: str
    metrics: dict[str, float]
    confusion: dict | None  # {"categories": [str], "matrix": [[int]]} when labels exist
    uri: str


# --- figures ----------------------------------------------------------------------------


def ranked_by(summary: dict) -> tuple[str, str]:
    """The prioritizer a ranking was made by (``--metric``) and what it puts first."""
    name = summary.get("prioritizer", summary["metric"])
    return name, prioritizers.meaning(name)


def share_above(layout: RunLayout, metric: str, threshold: float = 0.5) -> float | None:
    """Share of ranked samples whose ``metric`` exceeds ``threshold`` (one column read)."""
    scores = storage.read_table(layout.ranking, columns=[metric]).column(metric)
    if not len(scores):
        return None
    return round(pc.sum(pc.greater(scores, threshold)).as_py() / len(scores), 6)


def run_metrics(summary: dict, share_above_half: float | None) -> dict[str, float]:
    """The KFP Metrics output: counts, mean score, share above 0.5; accuracy and APFD."""
    counts = summary["counts"]
    metric = summary["metric"]
    metrics: dict[str, float] = {
        "samples": counts["samples"],
        "ranked": counts["ranked"],
        "quarantined": counts["quarantined"],
    }
    mean = summary["histograms"][metric]["mean"]
    if mean is not None:
        metrics["mean_score"] = mean
    if share_above_half is not None:
        metrics["share_above_0_5"] = share_above_half
    labels = summary.get("labels")
    if labels:
        metrics["accuracy"] = labels["accuracy"]
        metrics["misclassified"] = labels["misclassified"]
        if labels["apfd"]:
            metrics["apfd"] = round(labels["apfd"]["raw"], 6)
            if labels["apfd"]["normalized"] is not None:
                metrics["apfd_normalized"] = round(labels["apfd"]["normalized"], 6)
    return metrics


def report_figures(details: reportdata.RunDetails) -> dict:
    """Everything ``report.json`` holds; reads the ranking's label columns and the pool once."""
    summary = details.summary
    # A share above 0.5 means something for class-probability metrics only (all in [0, 1]).
    by_class = prioritizers.lookup(ranked_by(summary)[0]).family == prioritizers.CLASS_FAMILY
    share = share_above(details.layout, summary["metric"]) if by_class else None
    metrics = run_metrics(summary, share)
    labels = (
        reportdata.label_figures(details.layout, summary["num_classes"])
        if details.has_labels
        else None
    )
    manifest = details.manifest or {"shards": []}
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metric": summary["metric"],
        "metrics": metrics,
        "labels": labels,
        "dataset": {
            "stats": reportdata.dataset_stats(details.layout, manifest),
            "label_counts": labels["label_counts"] if labels else None,
        },
    }


def confusion_output(figures: dict, names: list[str] | None) -> dict | None:
    labels = figures.get("labels")
    if not labels:
        return None
    matrix = labels["confusion"]
    categories = [reportdata.class_label(i, names) for i in range(len(matrix))]
    return {"categories": categories, "matrix": matrix}


# --- HTML -------------------------------------------------------------------------------


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("testprio.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def thumbnail(image: np.ndarray, *, max_side: int = THUMBNAIL_MAX_SIDE) -> np.ndarray:
    """Shrink a large image by whole-pixel striding so the page stays small."""
    step = max(1, -(-max(image.shape[:2]) // max_side))
    return image[::step, ::step]


def png_data_uri(image: np.ndarray | None) -> str | None:
    if image is None:
        return None
    encoded = base64.b64encode(reportdata.encode_png(thumbnail(image))).decode()
    return "data:image/png;base64," + encoded


def _svg(chart) -> Any:
    from markupsafe import Markup

    # vl-convert writes every text (titles, labels, tooltips) escaped as XML.
    return Markup(charts.to_svg(chart))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _chart_svgs(details: reportdata.RunDetails, figures: dict, record: dict) -> dict[str, Any]:
    summary, metric = details.summary, details.metric
    names = reportdata.class_names(details)
    timeline = reportdata.stage_timeline(reportdata.RunDetails(details.layout, record))
    svgs = {
        "histogram": _svg(charts.score_histogram(reportdata.score_histogram(summary), metric)),
        "heatmap": _svg(
            charts.class_score_heatmap(reportdata.class_score_heatmap(summary, names), metric)
        ),
        "class_means": _svg(
            charts.per_class_mean(reportdata.per_class_means(summary, names), metric)
        ),
        "timeline": _svg(charts.stage_timeline(timeline)) if timeline else None,
        "fault_curve": None,
        "class_accuracy": None,
        "confusion": None,
    }
    labels = figures.get("labels")
    if labels:
        if labels["fault_curve"]:
            rows = reportdata.fault_curve_rows(labels["fault_curve"])
            svgs["fault_curve"] = _svg(charts.fault_curve(rows))
        svgs["class_accuracy"] = _svg(
            charts.per_class_accuracy(reportdata.per_class_accuracy(summary, names))
        )
        matrix = labels["confusion"]
        categories = [reportdata.class_label(i, names) for i in range(len(matrix))]
        svgs["confusion"] = _svg(charts.confusion_matrix(matrix, categories))
    return svgs


def _imported_context(details: reportdata.RunDetails, record: dict) -> dict | None:
    """The labels imported after the run (``labels.parquet``): their figures over the
    labelled samples in rank order, and their charts; None before any import."""
    imported = reportdata.read_imported_labels(details)
    if imported is None:
        return None
    names = reportdata.class_names(details)
    source = reportdata.label_sources(details, imported, names)[0]  # imported come first
    labelled = record.get("labelled") if isinstance(record.get("labelled"), dict) else {}
    charts_of = {"fault_curve": None, "class_accuracy": None}
    if source.curve:
        rows = reportdata.fault_curve_rows(source.curve)
        charts_of["fault_curve"] = _svg(charts.fault_curve(rows))
    if source.per_class:
        charts_of["class_accuracy"] = _svg(charts.per_class_accuracy(source.per_class))
    return {
        "figures": source.figures,
        "file": labelled.get("file"),
        "imported_at": labelled.get("imported_at"),
        "charts": charts_of,
    }


def _labelling_plan(layout: RunLayout, top_k: int) -> label_export.LabelExport | None:
    """The top ``top_k`` as the report's labelling section offers them. The report does not
    fetch an archived or downloaded pool again: images of such pools are rendered from the
    tensors (``testprio labels export`` copies them)."""
    if not top_k:
        return None
    return label_export.plan_export(layout, ranks=label_export.RankRange(1, top_k), download=False)


def refresh_report_html(layout: RunLayout) -> str | None:
    """Render ``report.html`` again, with the labels imported since (``testprio labels
    import``, ``labels pull``, the app's upload); None where the run has no report yet."""
    if not storage.exists(layout.report_html):
        return None
    details = reportdata.load_run(layout)
    if details.summary is None or not isinstance(details.record, dict):
        return None
    try:
        figures = storage.read_json(layout.report_json)
    except (TestprioError, ValueError):
        figures = report_figures(details)
    details.report = figures
    top_k = int((details.record.get("parameters") or {}).get("top_k") or 10)
    labelling = _labelling_plan(layout, top_k)
    html = render_html(details, figures, details.record, top_k=top_k, labelling=labelling)
    storage.write_bytes(layout.report_html, html.encode())
    log.info("report: %s rendered again with the imported labels", layout.report_html)
    return layout.report_html


def _gallery_rows(items: list[dict]) -> list[dict]:
    return [
        {
            **item,
            "image_uri": png_data_uri(item["image"]),
            "score_text": _fmt(item["score"]),
            "probabilities": ", ".join(
                f"{p['class']}: {p['probability']:.3f}" for p in item["top_probabilities"]
            ),
        }
        for item in items
    ]


def _data_href(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _labelling_context(export: label_export.LabelExport | None) -> dict | None:
    """The labelling export as text and ``data:`` links: a sandboxed iframe (the Kubeflow
    UI's) blocks downloads, so the page shows the text too."""
    if export is None or not export.rows:
        return None
    files = [
        (label_export.CSV_NAME, "text/csv", export.csv_bytes()),
        (label_export.TASKS_NAME, "application/json", export.tasks_bytes()),
        (label_export.CONFIG_NAME, "application/xml", export.config_xml().encode()),
    ]
    return {
        "count": len(export.rows),
        "image_note": export.image_note,
        "folder": LABELLING_FOLDER,
        "files": [
            {"name": name, "href": _data_href(mime, data), "text": data.decode()}
            for name, mime, data in files
        ],
    }


def render_html(
    details: reportdata.RunDetails,
    figures: dict,
    record: dict,
    *,
    top_k: int = 10,
    labelling: label_export.LabelExport | None = None,
) -> str:
    """The self-contained ``report.html`` of a ranked run."""
    summary, metric = details.summary, details.metric
    ranked_name, meaning = ranked_by(summary)
    row = reportdata.run_row(record)
    dataset = reportdata.dataset_summary(details)
    labels = summary.get("labels")
    key_figures = [
        ("samples", _fmt(summary["counts"]["samples"])),
        ("ranked", _fmt(summary["counts"]["ranked"])),
        ("quarantined", _fmt(summary["counts"]["quarantined"])),
        (f"mean {metric}", _fmt(figures["metrics"].get("mean_score"))),
    ]
    if "share_above_0_5" in figures["metrics"]:
        key_figures.append(
            (f"share with {metric} > 0.5", _fmt(figures["metrics"]["share_above_0_5"]))
        )
    if labels:
        key_figures += [
            ("accuracy", _fmt(labels["accuracy"])),
            ("misclassified", _fmt(labels["misclassified"])),
            ("APFD", _fmt(figures["metrics"].get("apfd"))),
            ("APFD normalized", _fmt(figures["metrics"].get("apfd_normalized"))),
        ]
    samples = reportdata.random_samples(details, RANDOM_SAMPLES)
    imported = _imported_context(details, record)
    context = {
        "run": row,
        "record": record,
        "parameters": [
            {"name": str(key), "value": as_text(value)}
            for key, value in (record.get("parameters") or {}).items()
        ],
        "metric": ranked_name,
        "metric_meaning": meaning,
        "key_figures": key_figures,
        "model": reportdata.model_summary(details.model),
        "dataset": dataset,
        "stats": {key: _fmt(value) for key, value in (dataset or {}).get("stats", {}).items()},
        "tensor_bytes": reportdata.format_bytes((dataset or {}).get("tensor_bytes")),
        "samples": [{**item, "image_uri": png_data_uri(item["image"])} for item in samples],
        "timeline": reportdata.stage_timeline(reportdata.RunDetails(details.layout, record)),
        "charts": _chart_svgs(details, figures, record),
        "top": _gallery_rows(reportdata.gallery(details, "top", top_k)),
        "bottom": _gallery_rows(reportdata.gallery(details, "bottom", top_k)),
        "top_k": top_k,
        "labels": labels,
        "imported": imported,
        "labelling": _labelling_context(labelling),
        "compared": reportdata.prioritizer_apfd_rows(summary),
        "attribution": reportdata.ranking_attribution_view(summary),
        "fmt": _fmt,
        "generated": figures["created"],
    }
    return _environment().get_template("report.html.j2").render(**context)


# --- Markdown ---------------------------------------------------------------------------


def render_markdown(details: reportdata.RunDetails, metrics: dict, *, top_k: int = 10) -> str:
    """Key figures and the top-``top_k`` table as Markdown (the KFP Markdown output)."""
    esc = reportdata.md_escape
    metric = details.metric
    ranked_name, meaning = ranked_by(details.summary)
    names = reportdata.class_names(details)
    row = reportdata.run_row(details.record)
    lines = [
        f"# testprio report: {esc(details.run_id)}",
        "",
        f"Model **{esc(row['model'])}**, pool **{esc(row['dataset'])}**, ranked by "
        f"**{esc(ranked_name)}** ({meaning}).",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    names_of = {
        "mean_score": f"mean {metric}",
        "share_above_0_5": f"share with {metric} > 0.5",
        "apfd": "APFD",
        "apfd_normalized": "APFD normalized",
    }
    lines += [
        f"| {esc(names_of.get(name, name.replace('_', ' ')))} | {_fmt(value)} |"
        for name, value in metrics.items()
    ]
    compared = reportdata.prioritizer_apfd_rows(details.summary)
    if compared:
        lines += [
            "",
            "## Every prioritizer on the same labels",
            "",
            "| prioritizer | APFD | APFD normalized |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {esc(row['prioritizer'])}{' (this ranking)' if row['ranking'] else ''} | "
            f"{_fmt(row['apfd'])} | {_fmt(row['apfd_normalized'])} |"
            for row in compared
        ]
    rows = reportdata.top_k_rows(details, top_k)
    lines += [
        "",
        f"## Top {len(rows)}: the inputs to label first",
        "",
        f"| rank | sample_id | predicted | confidence | {esc(metric)} | label | source |",
        "|---:|---:|---|---:|---:|---|---|",
    ]
    for item in rows:
        label = reportdata.class_label(item["label"], names) if item["label"] is not None else "-"
        lines.append(
            f"| {item['rank']} | {item['sample_id']} | "
            f"{esc(reportdata.class_label(item['predicted'], names))} | "
            f"{item['confidence']:.4f} | {item[metric]:.4f} | {esc(label)} | "
            f"{esc(item['source'])} |"
        )
    lines += [
        "",
        "The full report is the HTML output; the ranking, scores and probabilities are in "
        "`report/export.zip` of the run folder.",
        "",
    ]
    return "\n".join(lines)


# --- export.zip -------------------------------------------------------------------------


def _add_file(archive: zipfile.ZipFile, uri: str, name: str, *, compress: bool) -> None:
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info = zipfile.ZipInfo(name, date_time=datetime.now(timezone.utc).timetuple()[:6])
    info.compress_type = method
    with storage.open_read(uri) as source, archive.open(info, "w", force_zip64=True) as target:
        shutil.copyfileobj(source, target, length=1 << 20)


def write_export(
    layout: RunLayout, record: dict, *, labelling: label_export.LabelExport | None = None
) -> None:
    """``report/export.zip``: ranking (Parquet, CSV), scores, report.html, run/model JSON,
    and the labelling export under ``labelling/``."""
    with storage.atomic_path(layout.export_zip) as path:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            archive.writestr("README.txt", EXPORT_README.format(run_id=layout.run_id))
            _add_file(archive, layout.ranking, "ranking.parquet", compress=False)
            with archive.open("ranking.csv", "w", force_zip64=True) as entry:
                reportdata.write_ranking_csv(layout, entry)
            for name in storage.list_names(layout.scores_dir):
                if name.endswith(".parquet"):
                    uri = storage.join(layout.scores_dir, name)
                    _add_file(archive, uri, f"scores/{name}", compress=False)
            _add_file(archive, layout.summary, "summary.json", compress=True)
            _add_file(archive, layout.report_html, "report.html", compress=True)
            archive.writestr("run.json", json.dumps(record, indent=2) + "\n")
            if storage.exists(layout.model_json):
                _add_file(archive, layout.model_json, "model.json", compress=True)
            if labelling is not None and labelling.rows:
                label_export.write_export(
                    labelling, layout, label_export.ZipSink(archive, prefix=LABELLING_FOLDER)
                )


# --- the stage --------------------------------------------------------------------------


def build_report(layout: RunLayout, *, top_k: int = 10) -> ReportResult:
    """Write ``report/`` (json, html, md, export.zip) of a ranked run; return the outputs."""
    if top_k < 0:
        raise TestprioError(f"--top-k {top_k} must be zero or a positive number of samples.")
    details = reportdata.load_run(layout)
    if details.summary is None:
        raise TestprioError(
            f"{layout.uri} has no summary.json, so there is nothing to report; rerun the rank "
            "stage of this run first."
        )
    figures = report_figures(details)
    details.report = figures
    storage.write_json(layout.report_json, figures)
    # The record as the run will end (status succeeded, every stage before this one).
    record = finished_record(layout)
    labelling = _labelling_plan(layout, top_k)
    html = render_html(details, figures, record, top_k=top_k, labelling=labelling)
    storage.write_bytes(layout.report_html, html.encode())
    markdown = render_markdown(details, figures["metrics"], top_k=top_k)
    storage.write_bytes(layout.report_markdown, markdown.encode())
    write_export(layout, record, labelling=labelling)
    log.info("report: %s (%s bytes), export.zip written", layout.report_html, f"{len(html):,}")
    names = reportdata.class_names(details)
    return ReportResult(
        html=html,
        markdown=markdown,
        metrics=figures["metrics"],
        confusion=confusion_output(figures, names),
        uri=layout.report_html,
    )
