"""Labelling round trip: export a rank range of a finished run for labelling, import the labels.

**Export** (``export_labels``) writes into a folder (local or ``gs://``):

- ``labels.csv``: rank, sample_id, source, image, predicted, predicted_name, confidence, the
  run's metric score and ``label`` (the current label: an imported one, else the pool's);
- ``label_studio_tasks.json``: Label Studio tasks whose ``data.image`` is the exported image
  (a path relative to the folder, or under a URL prefix), carrying sample_id and rank in
  ``data`` and ``meta``, with the model's class as a pre-annotation (``predictions``) of a
  ``Choices`` control over the class names;
- ``label_studio_config.xml``: that labelling interface;
- ``images/rank-NNNNNNN_sample-ID.EXT``: the ORIGINAL files of an image-folder pool, copied
  from the run's data source; array pools have no files, so their preprocessed tensors are
  rendered to PNG instead (``README.txt`` says which);
- ``README.txt``.

Image files are named by rank and sample id only: an image folder's class folder would tell
the labeller the pool's label.

**Import** (``import_labels``) reads a Label Studio JSON export or a CSV with ``sample_id`` and
``label`` columns, maps class names (or indices) to class indices, merges the labels into
``{run}/labels.parquet`` (sample_id, label, imported_at; the shards are never touched) and
records accuracy and APFD of the labelled samples in ``run.json`` under ``labelled``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow as pa

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import sources
from testprio.layout import RunLayout, record_in_run
from testprio.log import get_logger
from testprio.report import data as reportdata
from testprio.summary import apfd

log = get_logger("labels")

LABELS_FILE = "labels.parquet"
CSV_NAME = "labels.csv"
TASKS_NAME = "label_studio_tasks.json"
CONFIG_NAME = "label_studio_config.xml"
README_NAME = "README.txt"
IMAGES_FOLDER = "images"
# Names of the Label Studio controls: the Choices control ``label`` on the Image ``image``.
FROM_NAME = "label"
TO_NAME = "image"
RENDER_CHUNK = 256  # samples whose tensors are in memory at once when rendering PNGs
LABELS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64()),
        pa.field("label", pa.int32()),
        pa.field("imported_at", pa.timestamp("ms", tz="UTC")),
    ]
)


def labels_uri(layout: RunLayout) -> str:
    """``{run}/labels.parquet``: the labels imported into a run."""
    return storage.join(layout.uri, LABELS_FILE)


def open_run(run_uri: str) -> RunLayout:
    """The run folder ``ROOT/RUN_ID`` (local or gs://) as a layout; it must hold a run.json."""
    layout = RunLayout(storage.normalize_root(run_uri))
    if not storage.exists(layout.run_json):
        raise TestprioError(
            f"--run {run_uri} holds no run.json, so it is not a run; give ROOT/RUN_ID as "
            "testprio run printed it."
        )
    return layout


# --- which ranks ------------------------------------------------------------------------


@dataclass(frozen=True)
class RankRange:
    """Ranks ``first``..``last`` (1-based, inclusive; ``last`` None: to the end)."""

    first: int = 1
    last: int | None = None

    def __str__(self) -> str:
        return f"{self.first}-{'' if self.last is None else self.last}"


_RANKS_PATTERN = re.compile(r"^\s*(\d+)\s*(?:-|\.\.)\s*(\d+)\s*$")


def parse_ranks(text: str) -> RankRange:
    """``"A-B"`` or ``"A..B"`` -> ranks A to B inclusive, 1 <= A <= B."""
    match = _RANKS_PATTERN.match(str(text))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise TestprioError(
            f"--ranks '{text}' is not a range of ranks; write FIRST-LAST with "
            "1 <= FIRST <= LAST, e.g. 1-100."
        )
    return RankRange(int(match[1]), int(match[2]))


def rank_range(*, top_k: int | None = None, ranks: str | RankRange | None = None) -> RankRange:
    """The ranks to export: ``--top-k K`` (1..K) or ``--ranks A-B``, not both."""
    if top_k is not None and ranks is not None:
        raise TestprioError("give --top-k or --ranks, not both.")
    if ranks is not None:
        return ranks if isinstance(ranks, RankRange) else parse_ranks(ranks)
    if top_k is None:
        raise TestprioError("say which samples to export: --top-k K or --ranks A-B.")
    if top_k <= 0:
        raise TestprioError(f"--top-k {top_k} must be a positive number of samples.")
    return RankRange(1, top_k)


# --- classes ----------------------------------------------------------------------------


def choice_names(details: reportdata.RunDetails) -> list[str]:
    """One unique Label Studio choice per class index: the run's class names, else the index.

    When the names repeat (or some are missing), ``reportdata.class_label`` ("3 cat") keeps
    them apart.
    """
    count = int(details.summary["num_classes"])
    names = reportdata.class_names(details) or []
    count = max(count, len(names))
    plain = [names[i] if i < len(names) and names[i] != "" else str(i) for i in range(count)]
    if len(set(plain)) == count:
        return plain
    return [reportdata.class_label(i, names) for i in range(count)]


def _class_lookup(details: reportdata.RunDetails) -> dict[str, int]:
    lookup: dict[str, int] = {}
    for index, name in enumerate(choice_names(details)):
        lookup.setdefault(name, index)
    for index, name in enumerate(reportdata.class_names(details) or []):
        lookup.setdefault(str(name), index)
    return lookup


# --- export -----------------------------------------------------------------------------


@dataclass
class LabelExport:
    """What an export holds, before (``plan_export``) and after it is written.

    ``rows``: one dict per sample in rank order (the ``labels.csv`` columns).
    ``image_mode``: ``original`` (files copied from the pool) or ``rendered`` (tensor PNGs);
    ``image_note``: why, in one sentence, for ``README.txt``.
    """

    run_id: str
    metric: str
    ranks: RankRange
    rows: list[dict]
    choices: list[str]
    image_mode: str
    image_note: str
    data_uri: str
    url_prefix: str = ""
    uri: str | None = None
    _originals: dict[str, str] = field(default_factory=dict, repr=False)  # image -> source
    _direct_base: str | None = field(default=None, repr=False)

    @property
    def columns(self) -> list[str]:
        return [
            "rank",
            "sample_id",
            "source",
            "image",
            "predicted",
            "predicted_name",
            "confidence",
            self.metric,
            "label",
        ]

    def csv_bytes(self) -> bytes:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            # Sources and class names are pool content: defuse spreadsheet formulas.
            cells = {key: reportdata.csv_cell(value) for key, value in row.items()}
            writer.writerow({**cells, "label": "" if row["label"] is None else row["label"]})
        return text.getvalue().encode()

    def image_url(self, image: str) -> str:
        if not self.url_prefix:
            return image
        return self.url_prefix.rstrip("/") + "/" + image

    def tasks(self) -> list[dict]:
        """Label Studio tasks: the image, ids in ``data`` and ``meta``, the model's guess as
        a prediction (pre-annotation) of the Choices control."""
        tasks = []
        for row in self.rows:
            tasks.append(
                {
                    "data": {
                        "image": self.image_url(row["image"]),
                        "sample_id": row["sample_id"],
                        "rank": row["rank"],
                        "predicted": row["predicted_name"],
                        "confidence": row["confidence"],
                        self.metric: row[self.metric],
                    },
                    "meta": {
                        "run_id": self.run_id,
                        "sample_id": row["sample_id"],
                        "rank": row["rank"],
                        "source": row["source"],
                    },
                    "predictions": [
                        {
                            "model_version": f"testprio {self.run_id}",
                            "score": row["confidence"],
                            "result": [
                                {
                                    "from_name": FROM_NAME,
                                    "to_name": TO_NAME,
                                    "type": "choices",
                                    "value": {"choices": [row["predicted_name"]]},
                                }
                            ],
                        }
                    ],
                }
            )
        return tasks

    def tasks_bytes(self) -> bytes:
        return json.dumps(self.tasks(), indent=1).encode() + b"\n"

    def config_xml(self) -> str:
        choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in self.choices)
        return (
            "<View>\n"
            f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" '
            'showInLine="true">\n'
            f"{choices}\n"
            "  </Choices>\n"
            "</View>\n"
        )

    def readme(self) -> str:
        last = self.rows[-1]["rank"] if self.rows else self.ranks.first
        return README.format(
            run_id=self.run_id,
            first=self.ranks.first,
            last=last,
            count=len(self.rows),
            metric=self.metric,
            data_uri=self.data_uri,
            image_note=self.image_note,
            images=f"{IMAGES_FOLDER}/rank-NNNNNNN_sample-ID.EXT",
        )


README = """\
testprio labelling export of run {run_id}: ranks {first}-{last} ({count} samples), ranked by
{metric} (most uncertain first).

labels.csv                  rank, sample_id, source, image, predicted (class index),
                            predicted_name, confidence, {metric}, label (current label, if
                            known). Fill in the label column (class name or index) and bring
                            it back with: testprio labels import --run RUN labels.csv
label_studio_tasks.json     Label Studio tasks (Import in a project); the model's class is a
                            pre-annotation
label_studio_config.xml     the project's labelling interface (Settings > Labeling Interface
                            > Code)
{images}
                            the images, named by rank and sample id only

Images: {image_note}
Pool: {data_uri}

After labelling in Label Studio: Export > JSON, then
  testprio labels import --run RUN EXPORTED.json
"""


def _safe_source(source: str, sample_id: int) -> str:
    parts = source.split("/")
    if not source or source.startswith("/") or "\\" in source or ".." in parts:
        raise TestprioError(
            f"sample {sample_id} has the source '{source}', which is not a path inside its "
            "image folder; rerun the ingest stage of this run."
        )
    return source


def _image_name(rank: int, sample_id: int, extension: str) -> str:
    return f"{IMAGES_FOLDER}/rank-{rank:07d}_sample-{sample_id}{extension}"


def _direct_base(data_uri: str, first_source: str) -> str | None:
    """``data_uri`` when the image folder's files can be read under it as they are (a local
    folder or a gs:// prefix), else None (an archive, an http(s) URL, a moved pool)."""
    if "://" in data_uri and not data_uri.startswith(storage.GCS_SCHEME):
        return None
    try:
        if storage.exists(storage.join(data_uri, first_source)):
            return data_uri
    except TestprioError:
        return None
    return None


ORIGINAL_IMAGE_MAX_BYTES = 32 << 20


def original_image(details: reportdata.RunDetails, sample_id: int, source: str):
    """The original file of an image-folder sample as a decoded ``(H, W[, 3])`` uint8 image,
    or None: an array pool, a pool that is an archive, a download or gone, or a file that
    is not an image Pillow can read. Only decoded pixels leave here, never the file's
    bytes, because the pool lies outside the report's root.
    """
    if (details.manifest or {}).get("format") != "images":
        return None
    data_uri = str(details.parameters.get("data") or "")
    try:
        source = _safe_source(source, sample_id)
    except TestprioError:
        return None
    base = _direct_base(data_uri, source) if data_uri else None
    if base is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with storage.open_read(storage.join(base, source)) as handle:
            data = handle.read(ORIGINAL_IMAGE_MAX_BYTES + 1)
        if len(data) > ORIGINAL_IMAGE_MAX_BYTES:
            return None
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((reportdata.GALLERY_MAX_SIDE, reportdata.GALLERY_MAX_SIDE))
            return np.asarray(image.convert("L" if image.mode in ("1", "L", "I;16") else "RGB"))
    except (TestprioError, OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def plan_export(
    layout: RunLayout,
    *,
    ranks: RankRange,
    url_prefix: str = "",
    data_uri: str | None = None,
    download: bool = True,
) -> LabelExport:
    """Rows, classes and image plan of an export of ``ranks``; nothing is written.

    ``data_uri`` replaces the pool recorded in ``run.json`` (a pool that has moved).
    ``download``: an image folder inside an archive or behind http(s) is fetched again when
    the images are written; without it those images are rendered from the tensors instead.
    """
    details = reportdata.load_run(layout)
    if details.summary is None or not storage.exists(layout.ranking):
        raise TestprioError(
            f"{layout.uri} has no ranking yet, so there is nothing to export for labelling; "
            "let the run finish its rank stage first."
        )
    total = details.num_rows
    if ranks.first > total:
        raise TestprioError(
            f"rank {ranks.first} is past the last of the {total:,} ranked samples of run "
            f"{layout.run_id}; choose ranks from 1 to {total:,}."
        )
    last = total if ranks.last is None else min(ranks.last, total)
    metric = details.metric
    columns = ["rank", "sample_id", "predicted", "confidence", metric, "label"]
    ranked = reportdata.ranking_rows(layout, ranks.first - 1, last, columns).to_pylist()
    ids = [row["sample_id"] for row in ranked]
    source_of = {
        sample_id: str(row.get("source") or "")
        for sample_id, row in reportdata.read_samples(details, ids, columns=("source",)).items()
    }
    imported = _imported_labels(layout)
    choices = choice_names(details)
    data_uri = data_uri or str(details.parameters.get("data") or "")
    is_image_folder = (details.manifest or {}).get("format") == "images"

    mode, note, direct = "rendered", "", None
    if not is_image_folder:
        fmt = (details.manifest or {}).get("format") or "unknown"
        note = (
            f"the pool is an array pool ({fmt}) without image files, so each image is the "
            "sample's preprocessed tensor rendered to PNG (values stretched from the "
            "sample's min..max to 0..255, enlarged by pixel repetition), not an original file."
        )
    elif ranked:
        first_source = _safe_source(source_of.get(ids[0], ""), ids[0])
        direct = _direct_base(data_uri, first_source) if data_uri else None
        if direct is not None or download:
            mode = "original"
            note = f"the original files, copied from {data_uri}."
        else:
            note = (
                f"the pool {data_uri} is an archive or a download, which the report stage "
                "does not fetch again, so each image is the sample's preprocessed tensor "
                "rendered to PNG; testprio labels export copies the original files."
            )

    rows, originals = [], {}
    for row in ranked:
        sample_id = int(row["sample_id"])
        source = source_of.get(sample_id, "")
        if mode == "original":
            source = _safe_source(source, sample_id)
            image = _image_name(row["rank"], sample_id, os.path.splitext(source)[1].lower())
            originals[image] = source
        else:
            image = _image_name(row["rank"], sample_id, ".png")
        label = imported.get(sample_id, row["label"])
        rows.append(
            {
                "rank": int(row["rank"]),
                "sample_id": sample_id,
                "source": source,
                "image": image,
                "predicted": int(row["predicted"]),
                "predicted_name": choices[int(row["predicted"])],
                "confidence": round(float(row["confidence"]), 6),
                metric: round(float(row[metric]), 6),
                "label": None if label is None else int(label),
            }
        )
    return LabelExport(
        run_id=layout.run_id,
        metric=metric,
        ranks=RankRange(ranks.first, last),
        rows=rows,
        choices=choices,
        image_mode=mode,
        image_note=note,
        data_uri=data_uri,
        url_prefix=url_prefix,
        _originals=originals,
        _direct_base=direct,
    )


class _Sink(Protocol):
    """Where an export's files go: a folder (local or gs://) or a zip archive."""

    def put_bytes(self, name: str, data: bytes) -> None: ...
    def put_file(self, name: str, uri: str) -> None: ...


@dataclass
class FolderSink:
    folder: str

    def put_bytes(self, name: str, data: bytes) -> None:
        storage.write_bytes(storage.join(self.folder, name), data)

    def put_file(self, name: str, uri: str) -> None:
        storage.copy_file(uri, storage.join(self.folder, name))


@dataclass
class ZipSink:
    archive: zipfile.ZipFile
    prefix: str = ""

    def put_bytes(self, name: str, data: bytes) -> None:
        self.archive.writestr(self.prefix + name, data)

    def put_file(self, name: str, uri: str) -> None:
        # Already-compressed image formats gain nothing from deflate.
        info = zipfile.ZipInfo(
            self.prefix + name, date_time=datetime.now(timezone.utc).timetuple()[:6]
        )
        with storage.open_read(uri) as source, self.archive.open(info, "w") as target:
            shutil.copyfileobj(source, target, length=1 << 20)


@contextlib.contextmanager
def _original_folder(export: LabelExport) -> Iterator[str]:
    """The folder (local or gs://) under which the sources of the export's images lie."""
    if export._direct_base is not None:
        yield export._direct_base
        return
    if not export.data_uri:
        raise TestprioError(
            f"run {export.run_id} records no pool in run.json; pass --data with the pool's "
            "location to copy its images."
        )
    with sources.resolve(export.data_uri) as resolved:
        if resolved.format != "images":
            raise TestprioError(
                f"the pool {export.data_uri} is {resolved.format} data now, not the image "
                f"folder run {export.run_id} ranked; pass --data with that image folder."
            )
        yield resolved.path


def _write_originals(export: LabelExport, sink: _Sink, layout: RunLayout) -> None:
    with _original_folder(export) as folder:
        for image, source in export._originals.items():
            uri = storage.join(folder, source)
            if not storage.exists(uri):
                raise TestprioError(
                    f"the original image {source} is not in the pool {export.data_uri} any "
                    "more; pass --data with the pool's current location."
                )
            sink.put_file(image, uri)


def _write_renderings(export: LabelExport, sink: _Sink, layout: RunLayout) -> None:
    details = reportdata.load_run(layout)
    for start in range(0, len(export.rows), RENDER_CHUNK):
        chunk = export.rows[start : start + RENDER_CHUNK]
        ids = [row["sample_id"] for row in chunk]
        samples = reportdata.read_samples(details, ids, columns=("x",))
        for row in chunk:
            image = reportdata.upscale(reportdata.display_image(samples[row["sample_id"]]["x"]))
            sink.put_bytes(row["image"], reportdata.encode_png(image))


IMAGE_WRITERS: dict[str, Callable[[LabelExport, _Sink, RunLayout], None]] = {
    "original": _write_originals,
    "rendered": _write_renderings,
}


def write_export(export: LabelExport, layout: RunLayout, sink: _Sink) -> None:
    """Write the export's images, then labels.csv, the Label Studio files and README.txt."""
    IMAGE_WRITERS[export.image_mode](export, sink, layout)
    sink.put_bytes(CSV_NAME, export.csv_bytes())
    sink.put_bytes(TASKS_NAME, export.tasks_bytes())
    sink.put_bytes(CONFIG_NAME, export.config_xml().encode())
    sink.put_bytes(README_NAME, export.readme().encode())


def export_zip_bytes(
    layout: RunLayout,
    *,
    top_k: int | None = None,
    ranks: str | RankRange | None = None,
    url_prefix: str = "",
    download: bool = False,
) -> bytes:
    """The export of ``export_labels`` as one zip, in memory (a download button's bytes).

    Without ``download`` an archived or downloaded image folder's images are rendered from
    the tensors, so that no request fetches the whole pool again.
    """
    export = plan_export(
        layout, ranks=rank_range(top_k=top_k, ranks=ranks), url_prefix=url_prefix, download=download
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        write_export(export, layout, ZipSink(archive))
    return buffer.getvalue()


def export_labels(
    layout: RunLayout,
    out: str,
    *,
    top_k: int | None = None,
    ranks: str | RankRange | None = None,
    url_prefix: str = "",
    data_uri: str | None = None,
) -> LabelExport:
    """Export ranks 1..``top_k`` (or ``ranks``) of a ranked run into the folder ``out``.

    Without ``top_k`` and ``ranks`` the run's ``top_k`` parameter is used (default 10).
    ``out`` is a local folder or gs:// prefix; ``url_prefix`` goes before each image's
    relative path in the Label Studio tasks. Returns the export (``uri`` set to ``out``).
    """
    if top_k is None and ranks is None:  # the run's own top-k, as its report shows it
        top_k = int(storage.read_json(layout.run_json).get("parameters", {}).get("top_k") or 10)
    chosen = rank_range(top_k=top_k, ranks=ranks)
    out = storage.normalize_root(out)
    if storage.exists(storage.join(out, CSV_NAME)):
        raise TestprioError(
            f"--out {out} already holds a labelling export ({CSV_NAME}); choose an empty folder."
        )
    export = plan_export(layout, ranks=chosen, url_prefix=url_prefix, data_uri=data_uri)
    write_export(export, layout, FolderSink(out))
    export.uri = out
    log.info(
        "labels: ranks %s of %s (%d samples, %s images) exported to %s",
        export.ranks,
        layout.run_id,
        len(export.rows),
        export.image_mode,
        out,
    )
    return export


# --- import -----------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What an import did: labels read from the file, how they changed ``labels.parquet``,
    and the figures now recorded in ``run.json`` under ``labelled``."""

    file: str
    read: int  # samples with a label in the file
    skipped: int  # rows or tasks without a label
    added: int
    changed: int
    labelled: dict
    uri: str

    def sentence(self) -> str:
        figures = self.labelled
        text = (
            f"Imported {self.read:,} labels from {self.file} ({self.added:,} new, "
            f"{self.changed:,} changed, {self.skipped:,} without a label skipped) into "
            f"{self.uri}. On the {figures['samples']:,} labelled samples (ranks "
            f"{figures['first_rank']}-{figures['last_rank']}): accuracy "
            f"{figures['accuracy']:.4f}, {figures['misclassified']:,} misclassified"
        )
        if figures["apfd"]:
            text += f", APFD {figures['apfd']['raw']:.4f}"
            if figures["apfd"]["normalized"] is not None:
                text += f" (normalized {figures['apfd']['normalized']:.4f})"
        else:
            text += ", no APFD (no misclassified sample)"
        return text + "."


@dataclass(frozen=True)
class _Label:
    sample_id: int
    value: Any  # a class name, an index, or its text
    where: str  # for messages: "line 4" or "task 3"


def _sample_id(value: Any, where: str, uri: str) -> int:
    if isinstance(value, bool) or value is None:
        ok = False
    elif isinstance(value, int):
        ok = True
    else:
        ok = bool(re.fullmatch(r"\s*\d+\s*", str(value)))
    if not ok:
        raise TestprioError(
            f"{where} of {uri} has the sample_id {value!r}, which is not a sample id (a "
            "whole number); keep the sample_id column as testprio exported it."
        )
    return int(value)


def _read_text(uri: str, data: bytes | None = None) -> str:
    if data is None:
        if not storage.exists(uri):
            raise TestprioError(f"the label file {uri} does not exist; check the path.")
        data = storage.read_bytes(uri)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TestprioError(
            f"{uri} is not UTF-8 text; save it as UTF-8 (JSON from Label Studio or CSV)."
        ) from None


def _choice_of(task: dict, where: str, uri: str) -> Any | None:
    """The one class the task's annotations chose (None: not labelled)."""
    chosen: list[Any] = []
    for annotation in task.get("annotations") or []:
        if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
            continue
        for result in annotation.get("result") or []:
            value = result.get("value") if isinstance(result, dict) else None
            choices = value.get("choices") if isinstance(value, dict) else None
            if choices is None:
                continue
            if not isinstance(choices, list) or len(choices) != 1:
                raise TestprioError(
                    f"{where} of {uri} chose {choices!r}, not one class; label every image "
                    "with exactly one class."
                )
            chosen.append(choices[0])
    distinct = list(dict.fromkeys(str(choice) for choice in chosen))
    if len(distinct) > 1:
        raise TestprioError(
            f"{where} of {uri} has annotations with conflicting labels "
            f"({', '.join(distinct)}); keep one annotation per task in Label Studio and "
            "export again."
        )
    return chosen[0] if chosen else None


def _read_label_studio(uri: str, text: str) -> tuple[list[_Label], int]:
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TestprioError(
            f"{uri} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "export the project from Label Studio again as JSON."
        ) from None
    if not isinstance(tasks, list):
        raise TestprioError(
            f"{uri} is JSON but not a Label Studio export (a list of tasks); export the "
            "project from Label Studio as JSON."
        )
    labels, skipped = [], 0
    for number, task in enumerate(tasks, 1):
        where = f"task {number}"
        if not isinstance(task, dict):
            raise TestprioError(
                f"{where} of {uri} is not a JSON object; export the project from Label "
                "Studio as JSON."
            )
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        meta = task.get("meta") if isinstance(task.get("meta"), dict) else {}
        # JSON-MIN exports flatten data and the choice onto the task itself.
        raw_id = data.get("sample_id", meta.get("sample_id", task.get("sample_id")))
        if raw_id is None:
            raise TestprioError(
                f"{where} of {uri} has no data.sample_id; label the tasks from "
                f"{TASKS_NAME} that testprio labels export wrote, which carry it."
            )
        sample_id = _sample_id(raw_id, where, uri)
        if "annotations" in task:
            choice = _choice_of(task, f"{where} (sample {sample_id})", uri)
        else:
            choice = task.get(FROM_NAME)
        if choice is None or choice == "":
            skipped += 1
            continue
        labels.append(_Label(sample_id, choice, where))
    return labels, skipped


def _read_csv(uri: str, text: str) -> tuple[list[_Label], int]:
    reader = csv.DictReader(io.StringIO(text))
    header = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    if "sample_id" not in header or "label" not in header:
        raise TestprioError(
            f"{uri} has no sample_id and label columns (found: "
            f"{', '.join(n for n in header if n) or 'none'}); give a CSV with a header line "
            "holding both, like the labels.csv that testprio labels export wrote."
        )
    labels, skipped = [], 0
    try:
        for row in reader:
            where = f"line {reader.line_num}"
            value = (row.get(header["label"]) or "").strip()
            raw_id = (row.get(header["sample_id"]) or "").strip()
            if not value:
                skipped += 1
                continue
            sample_id = _sample_id(raw_id, where, uri)
            labels.append(_Label(sample_id, value, where))
    except csv.Error as exc:
        raise TestprioError(
            f"{uri} is not a readable CSV file ({exc} near line {reader.line_num}); save it "
            "as CSV again."
        ) from None
    return labels, skipped


LABEL_READERS: dict[str, Callable[[str, str], tuple[list[_Label], int]]] = {
    "json": _read_label_studio,
    "csv": _read_csv,
}


def _file_kind(uri: str, text: str) -> str:
    extension = os.path.splitext(uri)[1].lower().lstrip(".")
    if extension in LABEL_READERS:
        return extension
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"


def _class_index(label: _Label, lookup: dict[str, int], count: int, run_id: str, uri: str):
    value = label.value
    if isinstance(value, str) and value.strip() in lookup:
        return lookup[value.strip()]
    text = str(value).strip()
    if not isinstance(value, bool) and re.fullmatch(r"-?\d+", text):
        index = int(text)
        if 0 <= index < count:
            return index
        raise TestprioError(
            f"{label.where} (sample {label.sample_id}) of {uri} has the label {index}, but "
            f"run {run_id} has classes 0 to {count - 1}; use a class index in that range or "
            "a class name."
        )
    shown = ", ".join(list(lookup)[:12]) + (", ..." if len(lookup) > 12 else "")
    raise TestprioError(
        f"{label.where} (sample {label.sample_id}) of {uri} has the label '{value}', which "
        f"is not a class of run {run_id}; use one of its class names ({shown}) or a class index."
    )


def read_label_file(
    layout: RunLayout, uri: str, *, data: bytes | None = None
) -> tuple[dict[int, int], int]:
    """``{sample_id: class index}`` from a Label Studio JSON export or a CSV, and how many
    tasks or rows had no label. Checks classes, duplicates and sample ids against the run.

    ``data``: the file's bytes when it is stored nowhere (an upload); ``uri`` then only
    names it (its extension says JSON or CSV)."""
    details = reportdata.load_run(layout)
    if details.summary is None:
        raise TestprioError(
            f"{layout.uri} has no ranking yet, so labels cannot be checked against it; let "
            "the run finish its rank stage first."
        )
    text = _read_text(uri, data)
    if not text.strip():
        raise TestprioError(f"{uri} is empty; give a Label Studio JSON export or a CSV.")
    entries, skipped = LABEL_READERS[_file_kind(uri, text)](uri, text)
    lookup = _class_lookup(details)
    count = len(choice_names(details))
    labels: dict[int, int] = {}
    first_where: dict[int, str] = {}
    for entry in entries:
        index = _class_index(entry, lookup, count, layout.run_id, uri)
        previous = labels.get(entry.sample_id)
        if previous is not None and previous != index:
            names = choice_names(details)
            raise TestprioError(
                f"sample {entry.sample_id} has two different labels in {uri} "
                f"({names[previous]} at {first_where[entry.sample_id]}, {names[index]} at "
                f"{entry.where}); keep one of them."
            )
        labels[entry.sample_id] = index
        first_where.setdefault(entry.sample_id, entry.where)
    if not labels:
        raise TestprioError(
            f"{uri} holds no labels ({skipped:,} tasks or rows without one); label some "
            "samples first."
        )
    ranked = storage.read_table(layout.ranking, columns=["sample_id"]).column("sample_id")
    wanted = np.fromiter(labels, dtype=np.int64, count=len(labels))
    unknown = wanted[~np.isin(wanted, ranked.to_numpy())]
    if len(unknown):
        shown = ", ".join(str(i) for i in sorted(unknown.tolist())[:5])
        raise TestprioError(
            f"{uri} labels sample_id {shown}{', ...' if len(unknown) > 5 else ''}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not among the {len(ranked):,} ranked "
            f"samples of run {layout.run_id}; import labels exported from this run's pool."
        )
    return labels, skipped


def _imported_labels(layout: RunLayout) -> dict[int, int]:
    uri = labels_uri(layout)
    if not storage.exists(uri):
        return {}
    table = storage.read_table(uri, columns=["sample_id", "label"])
    return dict(
        zip(table.column("sample_id").to_pylist(), table.column("label").to_pylist(), strict=True)
    )


def labelled_figures(layout: RunLayout, labels: dict[int, int]) -> dict:
    """Accuracy and APFD of the labelled samples, taken in rank order.

    APFD is that of the labelled samples alone: position 1 is the best-ranked labelled one.
    """
    ranking = storage.read_table(layout.ranking, columns=["sample_id", "rank", "predicted"])
    ids = ranking.column("sample_id").to_numpy()
    keep = np.isin(ids, np.fromiter(labels, dtype=np.int64, count=len(labels)))
    ranks = ranking.column("rank").to_numpy()[keep]
    predicted = ranking.column("predicted").to_numpy()[keep]
    truth = np.array([labels[int(i)] for i in ids[keep]], dtype=np.int64)
    order = np.argsort(ranks, kind="stable")  # the ranking is in rank order already
    wrong = truth[order] != predicted[order]
    return {
        "samples": int(len(wrong)),
        "accuracy": round(float(1.0 - wrong.mean()), 6),
        "misclassified": int(wrong.sum()),
        "apfd": apfd(wrong),
        "first_rank": int(ranks.min()),
        "last_rank": int(ranks.max()),
    }


def import_labels(layout: RunLayout, uri: str, *, data: bytes | None = None) -> ImportResult:
    """Merge the labels of ``uri`` into ``{run}/labels.parquet``; record figures in run.json.

    A label for a sample that already has one replaces it. Nothing is written when the file
    has any problem. ``data``: the file's bytes when it is stored nowhere (an upload in the
    report app); ``uri`` is then its name, for messages and the record.
    """
    labels, skipped = read_label_file(layout, uri, data=data)
    before = _imported_labels(layout)
    now = datetime.now(timezone.utc)
    previous_times: dict[int, Any] = {}
    if before:
        table = storage.read_table(labels_uri(layout))
        previous_times = dict(
            zip(
                table.column("sample_id").to_pylist(),
                table.column("imported_at").to_pylist(),
                strict=True,
            )
        )
    merged = {**before, **labels}
    ids = sorted(merged)
    table = pa.table(
        {
            "sample_id": ids,
            "label": [merged[i] for i in ids],
            "imported_at": [now if i in labels else previous_times[i] for i in ids],
        },
        schema=LABELS_SCHEMA,
    )
    storage.write_table(labels_uri(layout), table)
    figures = labelled_figures(layout, merged)
    figures.update(labels=LABELS_FILE, file=uri, imported_at=now.isoformat(timespec="seconds"))
    record_in_run(layout, "labelled", figures)
    added = sum(1 for i in labels if i not in before)
    changed = sum(1 for i in labels if i in before and before[i] != labels[i])
    result = ImportResult(
        file=uri,
        read=len(labels),
        skipped=skipped,
        added=added,
        changed=changed,
        labelled=figures,
        uri=labels_uri(layout),
    )
    log.info("labels: %s", result.sentence())
    return result
