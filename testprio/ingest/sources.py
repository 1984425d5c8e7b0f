"""Where the pool is: ``resolve(data_uri)`` and ``check_data_uri``, the face of the sources.

``resolve(data_uri)`` turns what the user passed as the pool into one local file or folder
and its format. It accepts a local file or folder, ``gs://bucket/object``,
``gs://bucket/prefix`` (a "folder": every object under it is downloaded; both in
``local_sources``), ``http(s)://...`` (streamed to a temporary file; non-public addresses
refused unless allowed, within a deadline and a minimum rate: ``downloads``) and archives
(``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``) of any of these
(``archives``). Downloads and extracted archives live in temporary folders that are
removed when the ``with`` block ends; the input itself is only ever read.
``check_data_uri`` is the cheap check for a run's first task: it downloads and extracts
nothing.

Formats (``FORMATS``) are told by extension and content (``formats``). The readers of CSV
files (``csv_reader``) and image folders (``image_folders``), and the names above, are
re-exported here for the modules that read a pool through ``sources``.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from testprio import scratch as scratch_folders
from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest.archives import (
    DEFAULT_ARCHIVE_LIMITS,
    ArchiveLimits,
    extract_archive,
)
from testprio.ingest.byte_budget import COPY_BLOCK_BYTES, DEFAULT_MAX_DOWNLOAD_BYTES
from testprio.ingest.csv_reader import CSV_BLOCK_BYTES, read_csv
from testprio.ingest.downloads import DEFAULT_DOWNLOAD_LIMITS, DownloadLimits, fetch_http
from testprio.ingest.formats import (
    ARCHIVES,
    EXTENSIONS,
    FORMATS,
    IMAGE_EXTENSIONS,
    LABEL_COLUMNS,
    default_label_column,
    detect_format,
    detect_kind,
    is_image_name,
    visible_entries,
)
from testprio.ingest.image_folders import (
    GRAY_MODES,
    MAX_NUMERIC_CLASS,
    PILLOW_FORMATS,
    ImageLoader,
    open_image_folder,
)
from testprio.ingest.local_sources import (
    GCS_DOWNLOAD_THREADS,
    MAX_FOLDER_DEPTH,
    fetch_gcs,
    fetch_local,
    local_name,
)
from testprio.ingest.messages import redact_url

__all__ = [
    "ARCHIVES",
    "COPY_BLOCK_BYTES",
    "CSV_BLOCK_BYTES",
    "DEFAULT_ARCHIVE_LIMITS",
    "DEFAULT_DOWNLOAD_LIMITS",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "EXTENSIONS",
    "FORMATS",
    "GCS_DOWNLOAD_THREADS",
    "GRAY_MODES",
    "IMAGE_EXTENSIONS",
    "LABEL_COLUMNS",
    "MAX_FOLDER_DEPTH",
    "MAX_NUMERIC_CLASS",
    "PILLOW_FORMATS",
    "ArchiveLimits",
    "DownloadLimits",
    "ImageLoader",
    "Resolved",
    "check_data_uri",
    "default_label_column",
    "detect_format",
    "extract_archive",
    "open_image_folder",
    "read_csv",
    "redact_url",
    "resolve",
]


@dataclass
class Resolved:
    """A pool on local disk: ``path`` (file or folder), its ``format`` (one of ``FORMATS``)
    and ``name``, the user's basename for messages and sample sources (``pool.zip``,
    ``digits/``)."""

    path: str
    format: str
    name: str


def _scheme(data_uri: str) -> str:
    if "://" not in data_uri:
        return "local"
    scheme = data_uri.split("://", 1)[0].lower()
    if scheme in ("gs", "http", "https"):
        return scheme
    raise TestprioError(
        f"{redact_url(data_uri)} uses the unsupported scheme '{scheme}://'; give a local "
        "path, gs://, http:// or https://."
    )


def check_data_uri(data_uri: str) -> None:
    """Fail with one sentence unless ``data_uri`` can plausibly be read as a pool.

    A local path must exist and look like a known format (archives are judged by extension
    and magic bytes, not extracted); ``gs://`` and ``http(s)://`` URIs only need to be well
    formed: nothing is downloaded.
    """
    if not data_uri or not data_uri.strip():
        raise TestprioError(
            "no pool was given; pass a file, a folder, a gs:// URI or an http(s):// URL."
        )
    scheme = _scheme(data_uri)
    if scheme == "gs":
        storage.split_gcs_uri(data_uri)
        return
    if scheme in ("http", "https"):
        try:
            parts = urllib.parse.urlsplit(data_uri)
            host, _port = parts.hostname, parts.port  # .port raises on a malformed port
        except ValueError as exc:
            raise TestprioError(
                f"{redact_url(data_uri)} is not a valid URL ({exc}); correct it."
            ) from None
        if not host:
            raise TestprioError(
                f"{redact_url(data_uri)} names no host; write it as {scheme}://HOST/PATH."
            )
        return
    path, name = local_name(data_uri)
    if not os.path.isdir(path):
        detect_kind(path, name)
        return
    entries = visible_entries(path)
    if not entries:
        raise TestprioError(f"{name} is an empty folder; put the pool's files in it.")
    only = os.path.join(path, entries[0])
    if len(entries) == 1 and os.path.isfile(only) and not is_image_name(entries[0]):
        detect_kind(only, f"{name}{entries[0]}")


@contextlib.contextmanager
def resolve(
    data_uri: str,
    *,
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    archive_limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
    download_limits: DownloadLimits = DEFAULT_DOWNLOAD_LIMITS,
) -> Iterator[Resolved]:
    """The pool at ``data_uri`` as a local file or folder, valid inside the ``with`` block.

    Downloads (``gs://``, ``http(s)://``, at most ``max_download_bytes`` in all; http(s)
    within ``download_limits``, which refuse non-public addresses unless allowed) and
    archives (within ``archive_limits``) go to temporary folders removed on exit. Inside an
    archive: a single file of a known format is that file, a single top-level folder is
    descended into, anything else is an image folder. A folder holding one data file (or one
    archive) is that file. Read the pool inside the block: its files go away afterwards.
    """
    with contextlib.ExitStack() as cleanup:

        def scratch() -> str:
            folder = scratch_folders.make("data")
            cleanup.callback(scratch_folders.remove, folder)
            return folder

        fetch = _FETCHERS[_scheme(data_uri)]
        path, name = fetch(data_uri, scratch, max_download_bytes, download_limits)
        yield _resolve_path(path, name, name, scratch, archive_limits, in_archive=False)


def _resolve_path(
    path: str,
    name: str,
    shown: str,
    scratch: Callable[[], str],
    limits: ArchiveLimits,
    *,
    in_archive: bool,
) -> Resolved:
    """``shown`` is what messages call ``path`` (``pool.zip/inner.npy``); ``name`` the user's."""
    if os.path.isdir(path):
        return _resolve_folder(path, name, shown, scratch, limits, in_archive=in_archive)
    kind = detect_kind(path, shown)
    if kind not in ARCHIVES:
        return Resolved(path, kind, name)
    if in_archive:
        raise TestprioError(
            f"{shown} is an archive inside an archive; extract the outer one yourself and "
            "pass the inner archive or its contents."
        )
    folder = scratch()
    extract_archive(path, folder, shown, limits)
    return _resolve_folder(folder, name, shown, scratch, limits, in_archive=True)


def _resolve_folder(
    folder: str,
    name: str,
    shown: str,
    scratch: Callable[[], str],
    limits: ArchiveLimits,
    *,
    in_archive: bool,
) -> Resolved:
    entries = visible_entries(folder)
    if len(entries) == 1:
        only = os.path.join(folder, entries[0])
        inner = f"{shown.rstrip('/')}/{entries[0]}"
        if os.path.isfile(only) and not is_image_name(entries[0]):
            return _resolve_path(only, name, inner, scratch, limits, in_archive=in_archive)
        # Archives usually wrap their content in one folder; a user's folder with a single
        # subfolder is an image folder with a single class.
        if os.path.isdir(only) and in_archive:
            return _resolve_folder(only, name, inner + "/", scratch, limits, in_archive=True)
    return Resolved(folder, "images", name)


_FETCHERS: dict[str, Callable[[str, Callable[[], str], int, DownloadLimits], tuple[str, str]]] = {
    "local": fetch_local,
    "gs": fetch_gcs,
    "http": fetch_http,
    "https": fetch_http,
}
