"""Export a rank range of a finished run for labelling: plan the rows and images
(``plan_export``), write them into a folder (``export_labels``) or a zip in memory whose
tasks carry their images (``export_zip_bytes``)."""

from __future__ import annotations

import io
import os
import zipfile

from testprio import storage
from testprio.errors import TestprioError
from testprio.labels.export_files import LabelExport
from testprio.labels.formats import (
    CONFIG_NAME,
    CSV_NAME,
    README_NAME,
    TASKS_NAME,
    choice_names,
    imported_labels,
)
from testprio.labels.images import (
    IMAGE_WRITERS,
    EmbeddingSink,
    direct_base,
    image_name,
    safe_source,
)
from testprio.labels.ranks import RankRange, rank_range
from testprio.labels.sinks import FolderSink, Sink, ZipSink
from testprio.layout import RunLayout
from testprio.log import get_logger
from testprio.report import data as reportdata

log = get_logger("labels")
# Images embedded in one zip's tasks at most: Label Studio takes an import of up to 200 MB,
# and base64 adds a third.
EMBED_MAX_BYTES = 64 << 20


def plan_export(
    layout: RunLayout,
    *,
    ranks: RankRange,
    url_prefix: str = "",
    data_uri: str | None = None,
    download: bool = True,
    pre_annotate: bool = False,
) -> LabelExport:
    """Rows, classes and image plan of an export of ``ranks``; nothing is written.

    ``data_uri`` replaces the pool recorded in ``run.json`` (a pool that has moved).
    ``download``: an image folder inside an archive or behind http(s) is fetched again when
    the images are written; without it those images are rendered from the tensors instead.
    ``pre_annotate``: labels.csv and the tasks carry the model's answer (else: blind).
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
    imported = imported_labels(layout)
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
        first_source = safe_source(source_of.get(ids[0], ""), ids[0])
        direct = direct_base(data_uri, first_source) if data_uri else None
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
            source = safe_source(source, sample_id)
            image = image_name(row["rank"], sample_id, os.path.splitext(source)[1].lower())
            originals[image] = source
        else:
            image = image_name(row["rank"], sample_id, ".png")
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
        pre_annotate=pre_annotate,
        originals=originals,
        direct_base=direct,
    )


def write_export(
    export: LabelExport, layout: RunLayout, sink: Sink, *, embed_max_bytes: int | None = None
) -> None:
    """Write the export's images, then labels.csv, the Label Studio files and README.txt.

    ``embed_max_bytes``: the tasks carry each image as a ``data:`` URI (up to that many
    bytes of images in all), so that they load in Label Studio as they are.
    """
    if embed_max_bytes is None:
        IMAGE_WRITERS[export.image_mode](export, sink, layout)
    else:
        embedding = EmbeddingSink(sink, embed_max_bytes)
        IMAGE_WRITERS[export.image_mode](export, embedding, layout)
        export.image_urls = embedding.uris
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
    pre_annotate: bool = False,
) -> bytes:
    """The export of ``export_labels`` as one zip, in memory (a download button's bytes).

    Without ``url_prefix`` the tasks carry their images as ``data:`` URIs, so that the zip's
    tasks load in any Label Studio as they are (at most ``EMBED_MAX_BYTES`` of images); with
    it they address each image under that prefix. Without ``download`` an archived or
    downloaded image folder's images are rendered from the tensors, so that no request
    fetches the whole pool again.
    """
    export = plan_export(
        layout,
        ranks=rank_range(top_k=top_k, ranks=ranks),
        url_prefix=url_prefix,
        download=download,
        pre_annotate=pre_annotate,
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        write_export(
            export,
            layout,
            ZipSink(archive),
            embed_max_bytes=None if url_prefix else EMBED_MAX_BYTES,
        )
    return buffer.getvalue()


def export_ranks(
    layout: RunLayout, *, top_k: int | None, ranks: str | RankRange | None
) -> RankRange:
    """The ranks to export: ``top_k`` or ``ranks``, else the run's own ``top_k`` (default
    10), as its report shows it."""
    if top_k is None and ranks is None:
        top_k = int(storage.read_json(layout.run_json).get("parameters", {}).get("top_k") or 10)
    return rank_range(top_k=top_k, ranks=ranks)


def export_labels(
    layout: RunLayout,
    out: str,
    *,
    top_k: int | None = None,
    ranks: str | RankRange | None = None,
    url_prefix: str = "",
    data_uri: str | None = None,
    pre_annotate: bool = False,
) -> LabelExport:
    """Export ranks 1..``top_k`` (or ``ranks``) of a ranked run into the folder ``out``.

    Without ``top_k`` and ``ranks`` the run's ``top_k`` parameter is used (default 10).
    ``out`` is a local folder or gs:// prefix; ``url_prefix`` goes before each image's
    relative path in the Label Studio tasks. ``pre_annotate``: labels.csv and the tasks
    carry the model's answer (else: blind). Returns the export (``uri`` set to ``out``).
    """
    chosen = export_ranks(layout, top_k=top_k, ranks=ranks)
    out = storage.normalize_root(out)
    if storage.exists(storage.join(out, CSV_NAME)):
        raise TestprioError(
            f"--out {out} already holds a labelling export ({CSV_NAME}); choose an empty folder."
        )
    export = plan_export(
        layout, ranks=chosen, url_prefix=url_prefix, data_uri=data_uri, pre_annotate=pre_annotate
    )
    write_export(export, layout, FolderSink(out))
    export.uri = out
    log.info(
        "labels: ranks %s of %s (%d samples, %s images, %s) exported to %s",
        export.ranks,
        layout.run_id,
        len(export.rows),
        export.image_mode,
        "pre-annotated" if pre_annotate else "blind",
        out,
    )
    return export
