"""An export's images: the original files of an image-folder pool (found where the pool is,
or fetched again from an archive or a download), else the preprocessed tensors rendered to
PNG; each as a browser shows it (``web_image``), and kept as ``data:`` URIs for tasks that
carry their images (``EmbeddingSink``); and one sample's original image for the report app."""

from __future__ import annotations

import base64
import contextlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import sources
from testprio.labels.export_files import LabelExport
from testprio.labels.formats import IMAGES_FOLDER
from testprio.labels.sinks import Sink
from testprio.layout import RunLayout
from testprio.report import data as reportdata

RENDER_CHUNK = 256  # samples whose tensors are in memory at once when rendering PNGs


def safe_source(source: str, sample_id: int) -> str:
    """``source`` if it is a relative path inside the image folder, else an error."""
    parts = source.split("/")
    if not source or source.startswith("/") or "\\" in source or ".." in parts:
        raise TestprioError(
            f"sample {sample_id} has the source '{source}', which is not a path inside its "
            "image folder; rerun the ingest stage of this run."
        )
    return source


def image_name(rank: int, sample_id: int, extension: str) -> str:
    """The image's path in an export: by rank and sample id only, never the class folder."""
    return f"{IMAGES_FOLDER}/rank-{rank:07d}_sample-{sample_id}{extension}"


def direct_base(data_uri: str, first_source: str) -> str | None:
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
# What browsers (and so Label Studio's image tag and its uploads) show, by extension.
WEB_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}


def web_image(name: str, data: bytes) -> tuple[str, str, bytes]:
    """An export's image ``name`` with bytes ``data`` as a browser shows it: ``(name, MIME
    type, bytes)``, unchanged for PNG, JPEG, GIF, BMP and WebP; another format of an image
    folder (TIFF, PNM) is converted to PNG, and its name then ends in ``.png``."""
    root, extension = os.path.splitext(name)
    mime = WEB_IMAGE_TYPES.get(extension.lower())
    if mime is not None:
        return name, mime, data
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        raise TestprioError(
            f"the exported image {name} cannot be read as an image, so it cannot be shown in "
            "Label Studio; check that file in the pool."
        ) from None
    return root + ".png", "image/png", buffer.getvalue()


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
        source = safe_source(source, sample_id)
    except TestprioError:
        return None
    base = direct_base(data_uri, source) if data_uri else None
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


@dataclass
class EmbeddingSink:
    """Images passed on to ``inner`` and kept as ``data:`` URIs in ``uris`` (image name ->
    URI), for tasks that carry their images inline; at most ``max_bytes`` of images in all."""

    inner: Sink
    max_bytes: int
    uris: dict[str, str] = field(default_factory=dict)
    total: int = 0

    def put_bytes(self, name: str, data: bytes) -> None:
        self.inner.put_bytes(name, data)
        _, mime, shown = web_image(name, data)
        self.total += len(shown)
        if self.total > self.max_bytes:
            raise TestprioError(
                f"the images of this export take more than {self.max_bytes >> 20} MiB, too "
                "much to embed in the Label Studio tasks; export fewer samples, give an image "
                "URL prefix where you serve the images, or use testprio labels push, which "
                "uploads them."
            )
        self.uris[name] = f"data:{mime};base64,{base64.b64encode(shown).decode()}"

    def put_file(self, name: str, uri: str) -> None:
        self.put_bytes(name, storage.read_bytes(uri))


@contextlib.contextmanager
def original_folder(export: LabelExport) -> Iterator[str]:
    """The folder (local or gs://) under which the sources of the export's images lie."""
    if export.direct_base is not None:
        yield export.direct_base
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


def write_originals(export: LabelExport, sink: Sink, layout: RunLayout) -> None:
    """Copy each image's original file from the pool into ``sink``."""
    with original_folder(export) as folder:
        for image, source in export.originals.items():
            uri = storage.join(folder, source)
            if not storage.exists(uri):
                raise TestprioError(
                    f"the original image {source} is not in the pool {export.data_uri} any "
                    "more; pass --data with the pool's current location."
                )
            sink.put_file(image, uri)


def write_renderings(export: LabelExport, sink: Sink, layout: RunLayout) -> None:
    """Render each sample's preprocessed tensor to PNG into ``sink``."""
    details = reportdata.load_run(layout)
    for start in range(0, len(export.rows), RENDER_CHUNK):
        chunk = export.rows[start : start + RENDER_CHUNK]
        ids = [row["sample_id"] for row in chunk]
        samples = reportdata.read_samples(details, ids, columns=("x",))
        for row in chunk:
            image = reportdata.upscale(reportdata.display_image(samples[row["sample_id"]]["x"]))
            sink.put_bytes(row["image"], reportdata.encode_png(image))


IMAGE_WRITERS: dict[str, Callable[[LabelExport, Sink, RunLayout], None]] = {
    "original": write_originals,
    "rendered": write_renderings,
}
