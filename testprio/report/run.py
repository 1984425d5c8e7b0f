"""One run's JSON records (``RunDetails``, read by ``load_run``) and its class names.

Every view of a run starts from a ``RunDetails``: it holds the small JSON records (run.json,
model.json, the data manifest, summary.json, report.json), never a ranking or a shard.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.report.paths import read_json_or_none, run_file, shard_file


@dataclass
class RunDetails:
    """The JSON records of one run; any but ``record`` may be missing (None)."""

    layout: RunLayout
    record: dict
    model: dict | None = None
    manifest: dict | None = None
    summary: dict | None = None
    report: dict | None = None
    _num_rows: int | None = field(default=None, repr=False)

    @property
    def run_id(self) -> str:
        return self.layout.run_id

    @property
    def parameters(self) -> dict:
        return self.record.get("parameters") or {}

    @property
    def metric(self) -> str:
        if self.summary:
            return self.summary["metric"]
        return str(self.parameters.get("metric", "gini"))

    @property
    def has_ranking(self) -> bool:
        return self.summary is not None

    @property
    def has_labels(self) -> bool:
        return bool(self.summary and self.summary.get("labels"))

    @property
    def num_rows(self) -> int:
        if self._num_rows is None:
            with storage.open_parquet(run_file(self.layout, self.layout.ranking)) as parquet:
                self._num_rows = parquet.metadata.num_rows
        return self._num_rows


def load_run(layout: RunLayout) -> RunDetails:
    """Read a run's records; a folder without ``run.json`` is not a run."""
    record = read_json_or_none(run_file(layout, layout.run_json))
    if not isinstance(record, dict):
        raise TestprioError(f"{layout.uri} holds no readable run.json; it is not a run.")
    uris = [layout.model_json, layout.data_manifest, layout.summary, layout.report_json]
    uris = [run_file(layout, uri) for uri in uris]  # refused before anything is read
    with ThreadPoolExecutor(max_workers=4) as pool:
        model, manifest, summary, report = pool.map(read_json_or_none, uris)
    for shard in (manifest or {}).get("shards") or []:
        shard_file(layout, "data", shard.get("name") if isinstance(shard, dict) else shard)
    if summary is not None:
        _check_summary(summary, layout.summary)
    details = RunDetails(layout, record, model, manifest, summary, report)
    if summary is not None:
        details._num_rows = summary["counts"]["ranked"]
    return details


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _summary_problem(summary: Any) -> str | None:
    """What makes ``summary`` (a parsed summary.json) unusable by the pages, or None."""
    if not isinstance(summary, dict):
        return "it is not a JSON object"
    counts, metric = summary.get("counts"), summary.get("metric")
    if not isinstance(counts, dict) or not all(
        _whole(counts.get(key)) for key in ("samples", "ranked", "quarantined")
    ):
        return "its counts are not whole numbers"
    if not isinstance(metric, str):
        return "it names no metric"
    if not _whole(summary.get("num_classes")) or not summary["num_classes"]:
        return "its number of classes is not a positive whole number"
    histograms = summary.get("histograms")
    histogram = histograms.get(metric) if isinstance(histograms, dict) else None
    if not isinstance(histogram, dict) or not isinstance(histogram.get("edges"), list):
        return f"it has no histogram of its metric {metric!r}"
    if not isinstance(histogram.get("mean"), (int, float)) or not histogram["edges"]:
        return f"its histogram of {metric!r} has no mean or no edges"
    return None


def _check_summary(summary: Any, uri: str) -> None:
    """Refuse a summary.json the pages cannot show, in one sentence, instead of failing on
    its first missing field (the file may hold anything: it is read, not trusted)."""
    problem = _summary_problem(summary)
    if problem is not None:
        raise TestprioError(
            f"{uri} is not a summary the report can show ({problem}); move the run folder aside "
            "or run it again under a new --run-id."
        )


def class_names(details: RunDetails) -> list[str] | None:
    """Class names stored with the run (model.json, summary.json or the data manifest's
    ``class_names``: an image folder's class subfolders), if any."""
    for source in (details.model, details.summary, details.manifest):
        names = (source or {}).get("class_names")
        if isinstance(names, list) and names:
            return [str(name) for name in names]
    return None


def class_label(index: int | None, names: list[str] | None) -> str:
    """``"3"``, or ``"3 cat"`` when the run names its classes."""
    if index is None:
        return ""
    index = int(index)
    if names and 0 <= index < len(names) and names[index] not in ("", str(index)):
        return f"{index} {names[index]}"
    return str(index)  # also for class folders named by their number
