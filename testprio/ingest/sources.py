"""Where the pool is, what format it has, and readers for CSV files and image folders.

``resolve(data_uri)`` turns what the user passed as the pool into one local file or folder
and its format. It accepts a local file or folder, ``gs://bucket/object``,
``gs://bucket/prefix`` (a "folder": every object under it is downloaded),
``http(s)://...`` (streamed to a temporary file; non-public addresses refused unless
allowed, within a deadline and a minimum rate: see ``DownloadLimits``) and archives
(``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``) of any of these.
Downloads and extracted archives live in temporary folders that are removed when the
``with`` block ends; the input itself is only ever read. ``check_data_uri`` is the cheap
check for a run's first task: it downloads and extracts nothing.

Formats (``FORMATS``) are told by extension *and* content: a file whose bytes contradict
its extension (a PNG named ``pool.npy``) is an error, and a file with no known extension
is read by what its bytes are.

Archives are never handed to ``extractall``: every entry is checked first, and the bytes of
each regular file are copied by this module. Rejected: entries whose path is absolute or
leads outside the target folder, links (symbolic and hard), devices, FIFOs and any other
special entry, encrypted entries, more entries than ``ArchiveLimits.max_entries``, a
declared expanded size over ``ArchiveLimits.max_bytes`` and entries that expand more than
``ArchiveLimits.max_ratio`` times (see ``ArchiveLimits``). Declared sizes can lie, so the
size and ratio limits are enforced again on the bytes actually written.
"""

from __future__ import annotations

import base64
import codecs
import concurrent.futures
import contextlib
import csv
import http.client
import ipaddress
import itertools
import lzma
import os
import posixpath
import re
import shutil
import socket
import ssl
import stat
import tarfile
import tempfile
import threading
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from PIL import Image

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest.pool import ArrayPool, BadSample, Chunk, FilePool
from testprio.log import get_logger

log = get_logger("ingest")

FORMATS = ("npy", "npz", "parquet", "csv", "images")
ARCHIVES = ("zip", "tar")
EXTENSIONS = {
    ".npy": "npy",
    ".npz": "npz",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".zip": "zip",
    ".tar": "tar",
    ".tar.gz": "tar",
    ".tgz": "tar",
    ".tar.bz2": "tar",
    ".tbz2": "tar",
    ".tar.xz": "tar",
    ".txz": "tar",
}
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
)
# Pillow may only use these decoders: a file named .png that is really, say, PostScript is
# not handed to a plugin that runs an external program.
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "GIF", "WEBP", "TIFF")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
LABEL_COLUMNS = ("label", "labels", "y")  # the names --label-column defaults to

DEFAULT_MAX_DOWNLOAD_BYTES = 20 * 2**30
GCS_DOWNLOAD_THREADS = 8
COPY_BLOCK_BYTES = 1 << 20
CSV_BLOCK_BYTES = 4 << 20
MAX_NUMERIC_CLASS = 100_000


@dataclass
class Resolved:
    """A pool on local disk: ``path`` (file or folder), its ``format`` (one of ``FORMATS``)
    and ``name``, the user's basename for messages and sample sources (``pool.zip``,
    ``digits/``)."""

    path: str
    format: str
    name: str


def default_label_column(names: Iterable[str], name: str, what: str) -> str | None:
    """The one of ``LABEL_COLUMNS`` among ``names`` (columns or arrays of ``name``), if any;
    two of them is an error rather than a silent pick."""
    found = [label for label in LABEL_COLUMNS if label in set(names)]
    if len(found) > 1:
        raise TestprioError(
            f"{name} has {what} named both '{found[0]}' and '{found[1]}', so the labels are "
            "ambiguous; keep one of them or choose it with --label-column."
        )
    return found[0] if found else None


@dataclass(frozen=True)
class ArchiveLimits:
    """How far an archive may expand before extraction stops with an error.

    ``max_bytes``: total size of the extracted files. ``max_entries``: files, folders and
    anything else listed in the archive. ``max_ratio``: an entry that expands to more than
    ``ratio_min_bytes`` may be at most ``max_ratio`` times its compressed size; deflate
    cannot exceed about 1032:1, so real data is stopped only when it is nearly one repeated
    byte. Tar members are not compressed one by one, so for a tar the archive's expanded
    total is measured against the archive file's size instead.

    ``max_total_ratio``: the whole archive, once past ``ratio_min_bytes``, may expand to at
    most this many times its own size (zip and tar alike), since many entries each under
    ``ratio_min_bytes`` would otherwise pass one by one: real pools of images, arrays or
    CSV compress a few to a few tens of times. ``max_depth``: folders nested in one entry's
    path (deeper trees are refused before anything is written).
    """

    max_bytes: int = 20 * 2**30
    max_entries: int = 2_000_000
    max_ratio: int = 1000
    ratio_min_bytes: int = 64 * 2**20
    max_total_ratio: int = 200
    max_depth: int = 100


DEFAULT_ARCHIVE_LIMITS = ArchiveLimits()
MAX_FOLDER_DEPTH = DEFAULT_ARCHIVE_LIMITS.max_depth  # for gs:// prefixes too


@dataclass(frozen=True)
class DownloadLimits:
    """Where an http(s) download may connect and how long it may take.

    ``allow_private``: connect to non-public addresses too: loopback, private (RFC 1918,
    IPv6 unique-local ``fc00::/7``), shared (carrier-grade NAT ``100.64.0.0/10``),
    link-local (``169.254.0.0/16`` and ``fe80::/10``, where cloud metadata servers answer)
    and reserved ones. Off by default: a pipeline in a cluster would otherwise fetch
    internal services for whoever can pass it a URL. ``allowed_networks``: CIDR blocks
    reachable even so (``("10.1.2.0/24",)`` for one internal data server).

    ``deadline_s``: the whole download, redirects and headers included. ``min_bytes_per_s``
    (0: none): the body must arrive at least this fast, averaged over every
    ``rate_window_s`` seconds, so a server trickling bytes cannot hold a run for days.
    ``idle_timeout_s``: no byte at all for this long. ``max_redirects``: redirects followed.
    """

    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()
    deadline_s: float = 4 * 3600.0
    min_bytes_per_s: float = 16 * 1024
    rate_window_s: float = 60.0
    idle_timeout_s: float = 60.0
    max_redirects: int = 5


DEFAULT_DOWNLOAD_LIMITS = DownloadLimits()


# --- formats -------------------------------------------------------------------------------

_DESCRIPTIONS = {
    "npy": "a NumPy .npy array",
    "npz": "a NumPy .npz file",
    "parquet": "a Parquet file",
    "csv": "text (CSV)",
    "zip": "a zip archive",
    "tar": "a tar archive",
    "image": "an image",
    "compressed": "compressed data that is not a tar archive",
    "empty": "nothing (it is empty)",
    "not-utf8": "text that is not UTF-8",
    "unknown": "binary data of an unknown format",
}
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_IMAGE_MAGIC = (
    re.compile(rb"\x89PNG\r\n\x1a\n"),
    re.compile(rb"\xff\xd8\xff"),
    re.compile(rb"GIF8[79]a"),
    re.compile(rb"BM.{4}\x00\x00\x00\x00", re.DOTALL),
    re.compile(rb"RIFF.{4}WEBP", re.DOTALL),
    re.compile(rb"II\*\x00|MM\x00\*"),
    re.compile(rb"P[1-7]\s"),
)
_KNOWN_FORMATS_HINT = (
    "give a .npy, .npz, .parquet or .csv file, a folder of images, or a .zip or .tar(.gz) "
    "archive of one"
)


def _extension_kind(name: str) -> str | None:
    lower = name.lower().rstrip("/")
    for extension in sorted(EXTENSIONS, key=len, reverse=True):
        if lower.endswith(extension):
            return EXTENSIONS[extension]
    return None


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


_NPZ_PROBLEMS = {
    "damaged": "{name} is a truncated or corrupt .npz file (its zip directory cannot be "
    "read); copy it again or re-save it with numpy.savez(x=..., y=...).",
    "empty": "{name} is an .npz file with no arrays; save the inputs in it as x "
    "(numpy.savez(path, x=..., y=...)).",
}


def _zip_state(path: str) -> str:
    """``damaged`` (no readable zip directory) or ``empty`` (a zip holding no files)."""
    try:
        with zipfile.ZipFile(path):
            return "empty"
    except (zipfile.BadZipFile, OSError):
        return "damaged"


def _zip_names(path: str) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return [n for n in archive.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError):
        return []


def _is_compressed_tar(path: str) -> bool:
    try:
        with tarfile.open(path, "r:*") as archive:
            return archive.next() is not None
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError):
        return False


def _sniff(path: str) -> str:
    """What the bytes of ``path`` are: a key of ``_DESCRIPTIONS``."""
    with open(path, "rb") as handle:
        head = handle.read(8192)
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4))
        tail = handle.read(4)
    if not head:
        return "empty"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        names = _zip_names(path)
        npz = bool(names) and all(n.endswith(".npy") for n in names) and "x.npy" in names
        return "npz" if npz else "zip"
    if head.startswith(b"PAR1") and tail == b"PAR1":
        return "parquet"
    if head[257:262] == b"ustar":
        return "tar"
    if head.startswith(_COMPRESSED_MAGIC):
        return "tar" if _is_compressed_tar(path) else "compressed"
    if any(magic.match(head) for magic in _IMAGE_MAGIC):
        return "image"
    if _is_text(head):
        return "csv"
    if tarfile.is_tarfile(path):  # old (v7) tars carry no magic string
        return "tar"
    if _is_legacy_text(head):
        return "not-utf8"
    return "unknown"


def _is_legacy_text(head: bytes) -> bool:
    """Text in a one-byte encoding (Latin-1, Windows-1252): no NUL, hardly any controls."""
    controls = sum(1 for byte in head if byte < 0x20 and byte not in b"\t\n\r\f")
    return b"\x00" not in head and controls <= len(head) // 100


def _detect_kind(path: str, name: str) -> str:
    """One of ``FORMATS`` or ``ARCHIVES`` for ``path``, whose extension is read from ``name``."""
    if os.path.isdir(path):
        return "images"
    claimed = _extension_kind(name)
    found = _sniff(path)
    if found == "empty":
        raise TestprioError(f"{name} is empty; give a pool with at least one sample.")
    if found == "not-utf8" and claimed in (None, "csv"):
        raise TestprioError(
            f"{name} is text but not UTF-8 (likely Latin-1 or Windows-1252); re-save it as "
            "UTF-8 (in Excel: Save As 'CSV UTF-8'; in pandas: to_csv(..., encoding='utf-8'))."
        )
    if claimed == "npz" and found in ("zip", "npz"):
        names = _zip_names(path)
        if names and all(n.endswith(".npy") for n in names):
            return "npz"  # the .npz reader names a missing x.npy itself
        if not names:
            raise TestprioError(_NPZ_PROBLEMS[_zip_state(path)].format(name=name))
    elif claimed in ARCHIVES and found in ARCHIVES:
        return found  # a .tar.gz named .zip is still an archive
    elif claimed == "zip" and found == "npz":
        return "npz"  # content beats extension: a renamed .npz
    elif claimed is None or claimed == found:
        if found in FORMATS or found in ARCHIVES:
            return found
        if found == "image":
            raise TestprioError(
                f"{name} is a single image; put the images in a folder (one subfolder per "
                "class for labelled images) and pass the folder."
            )
        raise TestprioError(
            f"cannot tell the format of {name} (it holds {_DESCRIPTIONS[found]}); "
            f"{_KNOWN_FORMATS_HINT}."
        )
    raise TestprioError(
        f"{name} is named like {_DESCRIPTIONS[claimed]} but holds {_DESCRIPTIONS[found]}; "
        "rename it to match its content or give the intended file."
    )


def detect_format(path: str, name: str) -> str:
    """The format of the local file or folder ``path`` (one of ``FORMATS``).

    By extension (read from ``name``) and content: ``.npy`` starts with ``\\x93NUMPY``, a
    ``.npz`` is a zip of ``.npy`` members, Parquet starts and ends with ``PAR1``, CSV is
    text, a folder is an image folder. A file of no known extension is told by content
    alone; an extension its content contradicts is an error. Archives are an error here:
    ``resolve`` extracts them.
    """
    kind = _detect_kind(path, name)
    if kind in ARCHIVES:
        raise TestprioError(
            f"{name} is {_DESCRIPTIONS[kind]}; open it with testprio.ingest.sources.resolve, which "
            "extracts it."
        )
    return kind


def _visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def _visible_entries(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if _visible(name))


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# --- where the pool is ---------------------------------------------------------------------


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
    path, name = _local_name(data_uri)
    if not os.path.isdir(path):
        _detect_kind(path, name)
        return
    entries = _visible_entries(path)
    if not entries:
        raise TestprioError(f"{name} is an empty folder; put the pool's files in it.")
    only = os.path.join(path, entries[0])
    if len(entries) == 1 and os.path.isfile(only) and not _is_image_name(entries[0]):
        _detect_kind(only, f"{name}{entries[0]}")


def _local_name(data_uri: str) -> tuple[str, str]:
    path = os.path.abspath(data_uri)
    if not os.path.exists(path):
        raise TestprioError(f"the pool {data_uri} does not exist; check the path.")
    name = os.path.basename(path)
    return path, name + "/" if os.path.isdir(path) else name


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
            folder = tempfile.mkdtemp(prefix="testprio-data-")
            cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
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
    kind = _detect_kind(path, shown)
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
    entries = _visible_entries(folder)
    if len(entries) == 1:
        only = os.path.join(folder, entries[0])
        inner = f"{shown.rstrip('/')}/{entries[0]}"
        if os.path.isfile(only) and not _is_image_name(entries[0]):
            return _resolve_path(only, name, inner, scratch, limits, in_archive=in_archive)
        # Archives usually wrap their content in one folder; a user's folder with a single
        # subfolder is an image folder with a single class.
        if os.path.isdir(only) and in_archive:
            return _resolve_folder(only, name, inner + "/", scratch, limits, in_archive=True)
    return Resolved(folder, "images", name)


class _ByteBudget:
    """Bytes written so far against a limit; thread-safe. ``overflow`` builds the error."""

    def __init__(self, limit: int, overflow: Callable[[], TestprioError]):
        self.limit = limit
        self.used = 0
        self._overflow = overflow
        self._lock = threading.Lock()

    def take(self, count: int) -> None:
        with self._lock:
            self.used += count
            if self.used > self.limit:
                raise self._overflow()


def _copy_within(source: BinaryIO, path: str, budget: _ByteBudget) -> int:
    written = 0
    with open(path, "wb") as target:
        while block := source.read(COPY_BLOCK_BYTES):
            budget.take(len(block))
            target.write(block)
            written += len(block)
    return written


def _too_large(what: str, limit: int) -> Callable[[], TestprioError]:
    return lambda: TestprioError(
        f"{what} is larger than the download limit of {limit:,} bytes; raise it with "
        "--max-data-gb or give a smaller pool."
    )


def _fetch_local(
    data_uri: str, scratch: Callable[[], str], limit: int, limits: DownloadLimits
) -> tuple[str, str]:
    return _local_name(data_uri)


def _fetch_gcs(
    data_uri: str, scratch: Callable[[], str], limit: int, limits: DownloadLimits
) -> tuple[str, str]:
    bucket, blob = storage.split_gcs_uri(data_uri)
    root = f"gs://{bucket}/{blob}" if blob else f"gs://{bucket}"
    budget = _ByteBudget(limit, _too_large(data_uri, limit))
    if blob and not data_uri.endswith("/") and not storage.is_folder(root):
        name = posixpath.basename(blob)
        path = os.path.join(scratch(), name)
        with storage.open_read(root) as source:
            _copy_within(source, path, budget)
        return path, name
    name = (posixpath.basename(blob) if blob else bucket) + "/"
    # Folder placeholders (objects named "prefix/") are no files.
    names = [n for n in storage.list_tree(root) if n and not n.endswith("/")]
    if not names:
        raise TestprioError(f"{data_uri} holds no objects; check the bucket and the prefix.")
    folder = os.path.join(scratch(), name.rstrip("/"))
    targets = {}
    for object_name in names:
        parts = _safe_parts(object_name)
        if parts is None:
            raise TestprioError(
                f"{data_uri} has an object '{object_name}' whose name leads outside the "
                "folder; rename or remove that object."
            )
        if len(parts) > MAX_FOLDER_DEPTH:
            raise TestprioError(
                f"{data_uri} has an object '{_short(object_name, 60)}' nested "
                f"{len(parts) - 1:,} folders deep, more than the limit of "
                f"{MAX_FOLDER_DEPTH - 1:,}; give a prefix with a flatter folder tree."
            )
        targets[object_name] = os.path.join(folder, *parts)

    def download(object_name: str) -> None:
        os.makedirs(os.path.dirname(targets[object_name]), exist_ok=True)
        with storage.open_read(storage.join(root, object_name)) as source:
            _copy_within(source, targets[object_name], budget)

    with concurrent.futures.ThreadPoolExecutor(GCS_DOWNLOAD_THREADS) as pool:
        futures = [pool.submit(download, object_name) for object_name in names]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return folder, name


def redact_url(uri: str) -> str:
    """``uri`` as it may be recorded (run.json, logs, reports, error sentences).

    For http(s) URLs: without ``user:password@``, query string and fragment, because signed
    URLs carry their secrets there (``X-Goog-Signature``, ``X-Amz-Signature``, ``sig``,
    ``token``...); the whole query goes, as no list of secret names is complete. Local paths
    and ``gs://`` URIs (whose object names may hold ``?`` or ``#``) are returned unchanged.
    """
    if not uri or "://" not in uri:
        return uri
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        return uri
    try:
        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname or ""
    except ValueError:
        return f"{scheme}://(an unparsable URL)"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    with contextlib.suppress(ValueError):  # a malformed port is left out
        if parts.port:
            host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme.lower(), host, parts.path, "", ""))


def _url_basename(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    name = posixpath.basename(urllib.parse.unquote(parts.path))
    if not name or name in (".", "..") or "\x00" in name:
        return parts.hostname or "download"
    return name[-200:]


_REDIRECTS = (301, 302, 303, 307, 308)
# Names that mean "this machine" or a cloud metadata server whatever DNS says.
_INTERNAL_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "metadata", "metadata.google.internal", "metadata.goog"}
)
_INTERNAL_SUFFIXES = (".localhost", ".internal")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# The first kind that applies names a refused address in the error sentence.
_ADDRESS_KINDS: tuple[tuple[str, Callable[[ipaddress._BaseAddress], bool]], ...] = (
    ("unspecified", lambda a: a.is_unspecified),
    ("loopback", lambda a: a.is_loopback),
    ("link-local (cloud metadata)", lambda a: a.is_link_local),
    ("multicast", lambda a: a.is_multicast),
    ("private", lambda a: a.is_private),
    ("non-public", lambda a: not a.is_global),  # 100.64.0.0/10, reserved blocks
)
_PRIVATE_HINT = (
    "testprio does not download from non-public addresses by default, as they reach "
    "internal services; pass --allow-private-urls if this server is meant to be used"
)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64, the old
    IPv4-compatible form): ``::ffff:127.0.0.1`` reaches 127.0.0.1."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` is refused (``loopback``, ``private``...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None and _address_kind(inner) is not None:
            return _address_kind(inner)
    return next((kind for kind, test in _ADDRESS_KINDS if test(address)), None)


def _allowed_networks(
    limits: DownloadLimits,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for text in limits.allowed_networks:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise TestprioError(
                f"allowed network '{text}' is not a CIDR block; write it like 10.1.2.0/24."
            ) from None
    return networks


def _checked_addresses(host: str, port: int, limits: DownloadLimits, shown: str) -> list[str]:
    """Every address ``host`` resolves to, each checked; the download connects only to these
    (never resolving again, so DNS cannot answer differently between check and use)."""
    name = host.rstrip(".").lower()
    if not limits.allow_private and (name in _INTERNAL_NAMES or name.endswith(_INTERNAL_SUFFIXES)):
        raise TestprioError(f"{shown} names the internal host '{name}'; {_PRIVATE_HINT}.")
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TestprioError(
            f"cannot download {shown} (its host '{host}' cannot be resolved: {_short(exc)}); "
            "check the URL and the network."
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if limits.allow_private:
        return addresses
    allowed = _allowed_networks(limits)
    for text in addresses:
        address = ipaddress.ip_address(text)
        if any(address.version == net.version and address in net for net in allowed):
            continue
        kind = _address_kind(address)
        if kind is not None:
            article = "an" if kind[0] in "aeiou" else "a"
            raise TestprioError(
                f"{shown} resolves to {text}, {article} {kind} address; {_PRIVATE_HINT}."
            )
    return addresses


class _Deadline:
    """The whole download's time limit. When it passes, the open connection is shut down,
    which ends a read however slowly the server trickles bytes (a socket timeout only
    bounds the wait for each byte)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._end = time.monotonic() + seconds
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return max(self._end - time.monotonic(), 0.001)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                self._shut(self._sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        # socket.socket's own shutdown: SSLSocket's would drop its TLS state under a reader
        # in another thread. A closed socket has no descriptor left, so nothing else is hit.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to ``address``, checked beforehand, while Host names the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float, deadline: _Deadline):
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.deadline = deadline

    def _connect_socket(self) -> socket.socket:
        return socket.create_connection(
            (self.address, self.port), min(self.timeout, self.deadline.remaining())
        )

    def connect(self) -> None:
        self.sock = self._connect_socket()
        self.sock.settimeout(self.timeout)
        self.deadline.watch(self.sock)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = http.client.HTTPS_PORT

    def connect(self) -> None:
        raw = self._connect_socket()
        raw.settimeout(self.timeout)
        context = ssl.create_default_context()
        # SNI and certificate check use the URL's host name, not the address connected to.
        self.sock = context.wrap_socket(
            raw, server_hostname=self.host, do_handshake_on_connect=False
        )
        self.deadline.watch(self.sock)  # a handshake trickled byte by byte ends there too
        self.sock.do_handshake()


_CONNECTIONS = {"http": _PinnedHTTPConnection, "https": _PinnedHTTPSConnection}


def _split_http_url(url: str, shown: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and the request target (path and query) of ``url``; the user
    name and password are left out (they go in an Authorization header, if anywhere)."""
    try:
        parts = urllib.parse.urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise TestprioError(f"{shown} is not a valid URL ({_short(exc)}); correct it.") from None
    if scheme not in _CONNECTIONS or not host:
        raise TestprioError(f"{shown} is not an http(s) URL with a host; correct it.")
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return scheme, host, port, target


def _basic_auth(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return None
    pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def _open_http(
    url: str, limits: DownloadLimits, deadline: _Deadline, shown: str
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """The connection and response of the first non-redirect answer to GET ``url``.

    Every hop is resolved and checked anew and connected to by a checked address.
    Credentials from the URL go only to the URL's own scheme, host and port.
    """
    origin = _split_http_url(url, shown)[:3]
    authorization = _basic_auth(url)
    current, what = url, shown
    for _hop in range(limits.max_redirects + 1):
        scheme, host, port, target = _split_http_url(current, what)
        headers = {"User-Agent": "testprio", "Accept-Encoding": "identity"}
        if authorization and (scheme, host, port) == origin:
            headers["Authorization"] = authorization
        connection, response = _request(scheme, host, port, target, headers, limits, deadline, what)
        if response.status not in _REDIRECTS:
            return connection, response
        location = response.getheader("Location", "")
        response.close()
        connection.close()
        following = urllib.parse.urljoin(current, location.strip())
        next_scheme = following.split("://", 1)[0].lower() if "://" in following else ""
        if not location or next_scheme not in _CONNECTIONS:
            raise TestprioError(
                f"{shown} redirects to {redact_url(following) or 'nowhere'}, which is not an "
                "http(s) URL; give the final URL of the file."
            )
        if scheme == "https" and next_scheme == "http":
            raise TestprioError(
                f"{shown} redirects from https to plain http ({redact_url(following)}); give "
                "an https URL that does not leave https."
            )
        current, what = following, f"{shown} (redirected to {redact_url(following)})"
    raise TestprioError(
        f"{shown} redirects more than {limits.max_redirects} times; give the final URL of the file."
    )


def _request(
    scheme: str,
    host: str,
    port: int,
    target: str,
    headers: dict[str, str],
    limits: DownloadLimits,
    deadline: _Deadline,
    shown: str,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET ``target`` from the first checked address of ``host`` that accepts a connection."""
    addresses = _checked_addresses(host, port, limits, shown)
    reason: BaseException = OSError("no address")
    for address in addresses:
        connection = _CONNECTIONS[scheme](host, port, address, limits.idle_timeout_s, deadline)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            reason = exc
            if deadline.expired:
                break
            continue
        connection.request("GET", target, headers=headers)
        return connection, connection.getresponse()
    if deadline.expired:
        raise _past_deadline(shown, limits)
    raise TestprioError(
        f"cannot download {shown} ({_short(reason)}); check the URL and that its server can be "
        "reached from here."
    )


def _past_deadline(shown: str, limits: DownloadLimits) -> TestprioError:
    return TestprioError(
        f"downloading {shown} took longer than the limit of {limits.deadline_s:g} s; use a "
        "faster server or a smaller pool, or raise --download-timeout-s."
    )


def _read_body(
    response: http.client.HTTPResponse,
    path: str,
    budget: _ByteBudget,
    limits: DownloadLimits,
    shown: str,
) -> int:
    """Copy the body to ``path``; stop when it arrives slower than ``min_bytes_per_s``."""
    received = 0
    window_start, window_bytes = time.monotonic(), 0
    with open(path, "wb") as target:
        # read1 returns what one receive brings, so the rate is checked even when the
        # server sends a byte at a time (read(n) would wait for all n bytes).
        while block := response.read1(COPY_BLOCK_BYTES):
            budget.take(len(block))
            target.write(block)
            received += len(block)
            window_bytes += len(block)
            elapsed = time.monotonic() - window_start
            if elapsed >= limits.rate_window_s:
                if window_bytes < limits.min_bytes_per_s * elapsed:
                    raise TestprioError(
                        f"downloading {shown} is too slow ({window_bytes / elapsed:,.0f} "
                        f"bytes/s over {elapsed:.0f} s, the minimum is "
                        f"{limits.min_bytes_per_s:,.0f}); retry later, use a faster server, "
                        "or lower --download-min-bytes-per-s."
                    )
                window_start, window_bytes = time.monotonic(), 0
    return received


def _fetch_http(
    url: str, scratch: Callable[[], str], limit: int, limits: DownloadLimits
) -> tuple[str, str]:
    shown = redact_url(url)
    name = _url_basename(url)
    path = os.path.join(scratch(), name)
    with _Deadline(limits.deadline_s) as deadline:
        connection = None
        try:
            connection, response = _open_http(url, limits, deadline, shown)
            if response.status != 200:
                raise TestprioError(
                    f"downloading {shown} failed with HTTP {response.status} {response.reason}; "
                    "check the URL and that the file can be read without logging in."
                )
            declared = _content_length(response)
            if declared is not None and declared > limit:
                raise TestprioError(
                    f"{shown} is {declared:,} bytes, more than the download limit of "
                    f"{limit:,} bytes; raise it with --max-data-gb or give a smaller pool."
                )
            budget = _ByteBudget(limit, _too_large(shown, limit))
            received = _read_body(response, path, budget, limits, shown)
        except TestprioError:
            raise
        except (http.client.HTTPException, OSError) as exc:
            if deadline.expired:
                raise _past_deadline(shown, limits) from None
            if isinstance(exc, TimeoutError):
                raise TestprioError(
                    f"downloading {shown} timed out (no data for {limits.idle_timeout_s:g} s); "
                    "retry, or check the server and the network."
                ) from None
            raise TestprioError(
                f"downloading {shown} failed ({_short(exc)}); retry, or check the server and "
                "the network."
            ) from None
        finally:
            if connection is not None:
                connection.close()
    if deadline.expired or (declared is not None and received < declared):
        if deadline.expired:
            raise _past_deadline(shown, limits)
        raise TestprioError(
            f"the download of {shown} ended after {received:,} of {declared:,} bytes; retry, "
            "or check the server."
        )
    return path, name


def _content_length(response) -> int | None:
    try:
        length = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None


_FETCHERS: dict[str, Callable[[str, Callable[[], str], int, DownloadLimits], tuple[str, str]]] = {
    "local": _fetch_local,
    "gs": _fetch_gcs,
    "http": _fetch_http,
    "https": _fetch_http,
}


def _short(value: object, limit: int = 120) -> str:
    text = str(value).strip().splitlines()[0] if str(value).strip() else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- archives ------------------------------------------------------------------------------


def _safe_parts(entry: str) -> list[str] | None:
    """Path components of a relative entry name (``[]`` for the top); None when it leads
    outside. Backslashes count as separators: archives made on Windows use them."""
    normal = posixpath.normpath(entry.replace("\\", "/"))
    if normal == ".." or normal.startswith(("../", "/")) or re.match(r"[A-Za-z]:", normal):
        return None
    return [] if normal == "." else normal.split("/")


def _entry_target(folder: str, archive: str, entry: str, max_depth: int) -> str | None:
    """Where ``entry`` is written under ``folder`` (None: the folder itself)."""
    clean = entry.replace("\\", "/")
    if clean.startswith("/") or re.match(r"[A-Za-z]:", clean):
        raise TestprioError(
            f"data archive {archive} has an entry '{entry}' with an absolute path; re-create "
            "the archive with paths relative to its top folder."
        )
    parts = _safe_parts(entry)
    outside = TestprioError(
        f"data archive {archive} has an entry '{entry}' that points outside the archive; "
        "remove it and re-create the archive."
    )
    if parts is None:
        raise outside
    if not parts:
        return None
    if len(parts) > max_depth:
        # Deeper trees exhaust recursion in folder walks and cleanup, and no pool needs them.
        raise TestprioError(
            f"data archive {archive} has an entry '{_short(entry, 60)}' nested "
            f"{len(parts) - 1:,} folders deep, more than the limit of {max_depth - 1:,}; "
            "re-create the archive with a flatter folder tree."
        )
    target = os.path.join(folder, *parts)
    top = os.path.realpath(folder)
    # Belt and braces: whatever the name says, nothing is written outside the folder.
    if os.path.commonpath([os.path.realpath(target), top]) != top:
        raise outside
    return target


def _reject_special(archive: str, entry: str, kind: str) -> None:
    if kind not in ("file", "folder"):
        raise TestprioError(
            f"data archive {archive} has a {kind} '{entry}'; testprio extracts only files and "
            "folders: put the file itself there (or remove the entry) and re-create the "
            "archive."
        )


def _reject_duplicate(
    archive: str, entry: str, target: str | None, kind: str, seen: dict[str, str]
) -> None:
    """A file listed twice (or a file and a folder of one name) would silently overwrite:
    which copy is the pool's is unknowable, so the archive is refused."""
    if target is None:
        return
    before = seen.get(target)
    seen[target] = kind
    if before is not None and not before == kind == "folder":
        raise TestprioError(
            f"data archive {archive} has the entry '{_short(entry, 80)}' more than once; "
            "keep one of them and re-create the archive."
        )


class _Expansion:
    """What an archive expands to, checked against the limits: declared sizes before any
    byte is written, then the bytes actually written (declared sizes can lie)."""

    def __init__(self, archive: str, limits: ArchiveLimits, archive_bytes: int):
        self.archive = archive
        self.limits = limits
        self.archive_bytes = max(archive_bytes, 1)
        self.entries = 0
        self.declared = 0
        self.written = 0

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise TestprioError(
                f"data archive {self.archive} has more than {self.limits.max_entries:,} "
                "entries; split the pool into smaller archives."
            )

    def declare(self, entry: str, size: int) -> None:
        self.declared += size
        if self.declared > self.limits.max_bytes:
            raise self._too_large(entry)

    def check_ratio(self, entry: str, expanded: int, compressed: int | None) -> None:
        """``compressed=None``: a tar, measured as a whole against the archive's size."""
        base = self.archive_bytes if compressed is None else max(compressed, 1)
        if expanded <= self.limits.ratio_min_bytes or expanded <= self.limits.max_ratio * base:
            return
        what = f"has an entry '{entry}' that expands" if compressed is not None else "expands"
        raise TestprioError(
            f"data archive {self.archive} {what} {expanded / base:,.0f} times (to "
            f"{expanded:,} bytes{'' if compressed is not None else f' at entry {entry!r}'}), "
            f"more than the limit of {self.limits.max_ratio:,} times; this looks like a "
            "compression bomb: re-create the archive without it."
        )

    def check_total(self, entry: str, expanded: int) -> None:
        """The whole archive's ratio: ``expanded`` bytes so far against the archive's size."""
        limit = self.limits.max_total_ratio
        if expanded <= self.limits.ratio_min_bytes or expanded <= limit * self.archive_bytes:
            return
        raise TestprioError(
            f"data archive {self.archive} expands {expanded / self.archive_bytes:,.0f} times "
            f"in all (to {expanded:,} bytes at entry '{entry}'), more than the limit of "
            f"{limit:,} times for a whole archive; this looks like a compression bomb: "
            "re-create the archive without it, or extract it yourself and pass the folder."
        )

    def copy(self, source: BinaryIO, path: str, entry: str, compressed: int | None) -> None:
        """Write ``entry`` to ``path``, counting the bytes actually written."""
        entry_written = 0
        with open(path, "wb") as target:
            while block := source.read(COPY_BLOCK_BYTES):
                self.written += len(block)
                entry_written += len(block)
                if self.written > self.limits.max_bytes:
                    raise self._too_large(entry)
                self.check_ratio(
                    entry, entry_written if compressed is not None else self.written, compressed
                )
                self.check_total(entry, self.written)
                target.write(block)

    def _too_large(self, entry: str) -> TestprioError:
        return TestprioError(
            f"data archive {self.archive} expands to more than {self.limits.max_bytes:,} bytes "
            f"(at entry '{entry}'); split the pool into smaller archives or raise "
            "--max-data-gb."
        )


def _damaged(archive: str, entry: str | None, exc: BaseException) -> TestprioError:
    where = f"entry '{entry}': " if entry else ""
    return TestprioError(
        f"data archive {archive} cannot be extracted ({where}{_short(exc)}); it is damaged or "
        "uses an unsupported feature: re-create the archive."
    )


_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,  # an unsupported zip compression method
    RuntimeError,  # zipfile: an encrypted entry
    OSError,
)

_ZIP_TYPES = {
    stat.S_IFLNK: "symbolic link",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFSOCK: "socket",
}


def _zip_entry_kind(info: zipfile.ZipInfo) -> str:
    # Unix zips keep st_mode in the high 16 bits; archives made elsewhere leave them 0.
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type in (0, stat.S_IFREG, stat.S_IFDIR):
        return "folder" if info.is_dir() else "file"
    return _ZIP_TYPES.get(file_type, f"special entry (mode {file_type:o})")


def _tar_entry_kind(member: tarfile.TarInfo) -> str:
    kinds = (
        (member.isreg, "file"),
        (member.isdir, "folder"),
        (member.issym, "symbolic link"),
        (member.islnk, "hard link"),
        (member.ischr, "character device"),
        (member.isblk, "block device"),
        (member.isfifo, "FIFO (named pipe)"),
    )
    return next((kind for test, kind in kinds if test()), f"special entry (type {member.type!r})")


def _extract_zip(path: str, folder: str, name: str, limits: ArchiveLimits) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except _ARCHIVE_ERRORS as exc:
        raise _damaged(name, None, exc) from None
    with archive:
        expansion = _Expansion(name, limits, os.path.getsize(path))
        plan = []
        seen: dict[str, str] = {}  # target -> kind
        for info in archive.infolist():  # check every entry before writing anything
            expansion.count_entry()
            target = _entry_target(folder, name, info.filename, limits.max_depth)
            kind = _zip_entry_kind(info)
            _reject_special(name, info.filename, kind)
            _reject_duplicate(name, info.filename, target, kind, seen)
            if info.flag_bits & 0x1:
                raise TestprioError(
                    f"data archive {name} has an encrypted entry '{info.filename}'; re-create "
                    "the archive without a password."
                )
            if kind == "file":
                expansion.declare(info.filename, info.file_size)
                expansion.check_ratio(info.filename, info.file_size, info.compress_size)
                expansion.check_total(info.filename, expansion.declared)
            plan.append((info, kind, target))
        for info, kind, target in plan:
            if target is None:
                continue
            try:
                if kind == "folder":
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with archive.open(info) as source:
                    expansion.copy(source, target, info.filename, info.compress_size)
            except _ARCHIVE_ERRORS as exc:
                raise _damaged(name, info.filename, exc) from None


def _extract_tar(path: str, folder: str, name: str, limits: ArchiveLimits) -> None:
    try:
        archive = tarfile.open(path, "r:*")
    except _ARCHIVE_ERRORS as exc:
        raise _damaged(name, None, exc) from None
    with archive:
        expansion = _Expansion(name, limits, os.path.getsize(path))
        seen: dict[str, str] = {}  # target -> kind
        entry = None
        while True:
            # A compressed tar is one stream: each member is checked as it comes, before
            # its bytes are written.
            try:
                member = archive.next()
            except _ARCHIVE_ERRORS as exc:
                raise _damaged(name, entry, exc) from None
            if member is None:
                return
            archive.members = []  # tarfile would otherwise keep every header in memory
            entry = member.name
            expansion.count_entry()
            target = _entry_target(folder, name, entry, limits.max_depth)
            kind = _tar_entry_kind(member)
            _reject_special(name, entry, kind)
            _reject_duplicate(name, entry, target, kind, seen)
            if target is None:
                continue
            try:
                if kind == "folder":
                    os.makedirs(target, exist_ok=True)
                    continue
                expansion.declare(entry, member.size)
                expansion.check_ratio(entry, expansion.declared, None)
                expansion.check_total(entry, expansion.declared)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                source = archive.extractfile(member)
                expansion.copy(source, target, entry, None)
            except _ARCHIVE_ERRORS as exc:
                raise _damaged(name, entry, exc) from None


def extract_archive(
    path: str, folder: str, name: str, limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS
) -> None:
    """Extract the zip or tar archive ``path`` into the existing ``folder``, safely.

    Rejects, with one sentence naming the archive (``name``) and the entry: paths that are
    absolute or lead outside ``folder``, links, devices, FIFOs and other special entries,
    encrypted entries, and anything over ``limits``. Files are written with default
    permissions; owners, modes and times in the archive are ignored.
    """
    kind = _sniff(path)
    extractors = {"zip": _extract_zip, "npz": _extract_zip, "tar": _extract_tar}
    if kind not in extractors:
        raise TestprioError(
            f"{name} is not a zip or tar archive (it holds {_DESCRIPTIONS[kind]}); give a "
            ".zip, .tar, .tar.gz, .tar.bz2 or .tar.xz file."
        )
    extractors[kind](path, folder, name, limits)


# --- CSV -----------------------------------------------------------------------------------

_NUMBER = r"^[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:nan|inf|infinity))$"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_header(path: str, name: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except UnicodeDecodeError:
        raise TestprioError(f"{name} is not UTF-8 text; save the CSV file as UTF-8.") from None
    except csv.Error as exc:
        raise TestprioError(
            f"the header row of {name} cannot be read ({exc}); its first line must name the "
            "columns, separated by commas."
        ) from None
    columns = [cell.strip() for cell in header or []]
    if not any(columns):
        raise TestprioError(
            f"{name} has no header row; its first line must name the columns (for example "
            "f0,f1,label)."
        )
    if "" in columns:
        raise TestprioError(
            f"column {columns.index('') + 1} of {name} has no name (often a saved DataFrame "
            "index); remove it (DataFrame.to_csv(index=False)) or name it."
        )
    # Header cells are file content (a token file's first line is its "header"): errors
    # name columns by position, never by their text.
    repeated = next((i for i, c in enumerate(columns) if c in columns[:i]), None)
    if repeated is not None:
        raise TestprioError(
            f"column {repeated + 1} of {name} has the same name as column "
            f"{columns.index(columns[repeated]) + 1}; give every column its own name."
        )
    # pandas names unnamed columns 0..n-1; any other all-numeric first row is data.
    if all(map(_looks_numeric, columns)) and columns != [str(i) for i in range(len(columns))]:
        raise TestprioError(
            f"the first line of {name} holds numbers, not column names; add a header row "
            "(for example f0,f1,label)."
        )
    return columns


def _parse_column(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 values (NaN where empty or not a number), empty mask, not-a-number mask."""
    text = pc.utf8_trim_whitespace(column)
    empty = pc.fill_null(pc.equal(text, ""), True)
    numeric = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False)
    values = pc.cast(pc.if_else(numeric, text, pa.scalar(None, pa.string())), pa.float64())
    empty_np = empty.to_numpy(zero_copy_only=False)
    numeric_np = numeric.to_numpy(zero_copy_only=False)
    return values.to_numpy(zero_copy_only=False), empty_np, ~(empty_np | numeric_np)


# Arrow's CSV messages can quote the offending row, so a message is chosen by what Arrow
# says went wrong and never passed on.
_CSV_PROBLEMS = (
    (
        "UTF8",
        "{name} is not UTF-8 text past its first lines; re-save it as UTF-8 (in Excel: Save "
        "As 'CSV UTF-8'; in pandas: to_csv(..., encoding='utf-8')).",
    ),
    (
        "block size",
        "{name} has a line longer than 4 MiB or no line after its header; put one sample "
        "per line, with a header row first.",
    ),
)


def _csv_problem(name: str, message: str) -> str:
    for needle, sentence in _CSV_PROBLEMS:
        if needle in message:
            return sentence.format(name=name)
    return (
        f"{name} is not a readable CSV file (a row cannot be parsed, often an unclosed "
        "quote); save it as comma-separated UTF-8 text with a header row."
    )


class _CsvRows:
    """Turns parsed CSV batches into chunks with line numbers and bad rows.

    With ``newlines_in_values`` and ``ignore_empty_lines`` off, each physical line is one
    row, except rows with the wrong number of values: the parser drops those and reports
    their line numbers to ``on_invalid_row`` before it hands over their batch, so the walk
    puts them back as bad samples where they were. A row with every cell empty (a blank
    line) is no sample.
    """

    def __init__(self, name: str, columns: list[str], features: list[str], label: str | None):
        self.name = name
        self.features = features
        self.label = label
        self.positions = {c: i + 1 for i, c in enumerate(columns)}  # 1-based, as in a sheet
        self.line = 1  # the header
        self.invalid: dict[int, str] = {}  # line -> reason, for lines the parser dropped

    def on_invalid_row(self, row) -> str:
        self.invalid[row.number] = (
            f"row has {row.actual_columns} values but the header has {row.expected_columns} columns"
        )
        return "skip"

    def chunk(self, batch: pa.RecordBatch) -> Chunk:
        n = batch.num_rows
        x = np.empty((n, len(self.features)), dtype=np.float64)
        y = None
        blank = np.ones(n, dtype=bool)
        reasons: dict[int, str] = {}
        for j, column_name in enumerate([*self.features, *([self.label] if self.label else [])]):
            position = self.positions[column_name]
            values, empty, bad = _parse_column(batch.column(column_name))
            if j < len(self.features):
                x[:, j] = values
            else:
                y = values
            blank &= empty
            for i in np.flatnonzero(bad).tolist():  # the cell's text stays out of the reason
                reasons.setdefault(i, f"a value that is not a number in column {position}")
        rows: list[int | str] = []  # a row of the batch, or the reason for a dropped line
        lines: list[int] = []
        for i in range(n):
            self.line += 1
            while self.line in self.invalid:
                rows.append(self.invalid.pop(self.line))
                lines.append(self.line)
                self.line += 1
            if not blank[i]:
                rows.append(i)
                lines.append(self.line)
        return self._assemble(x, y, rows, lines, reasons)

    def rest(self) -> Chunk | None:
        """The dropped lines after the last parsed row."""
        if not self.invalid:
            return None
        lines = sorted(self.invalid)
        rows: list[int | str] = [self.invalid.pop(line) for line in lines]
        x = np.empty((0, len(self.features)))
        return self._assemble(x, None if self.label is None else np.empty(0), rows, lines, {})

    def _assemble(self, x, y, rows: list[int | str], lines: list[int], reasons) -> Chunk:
        index = np.array([row if isinstance(row, int) else -1 for row in rows], dtype=np.int64)
        valid = index >= 0
        out_x = np.full((len(rows), len(self.features)), np.nan)
        out_x[valid] = x[index[valid]]
        out_y = None
        if self.label is not None:
            out_y = np.full(len(rows), np.nan)
            out_y[valid] = y[index[valid]]
        bad = {
            position: row if isinstance(row, str) else reasons[row]
            for position, row in enumerate(rows)
            if isinstance(row, str) or row in reasons
        }
        sources = [f"{self.name}:line {line}" for line in lines]
        return Chunk(out_x, out_y, sources, bad or None)


def _slice_chunk(chunk: Chunk, start: int, stop: int) -> Chunk:
    bad = {i - start: r for i, r in (chunk.bad or {}).items() if start <= i < stop}
    return Chunk(
        chunk.x[start:stop],
        None if chunk.y is None else chunk.y[start:stop],
        None if chunk.sources is None else chunk.sources[start:stop],
        bad or None,
    )


def _join_chunks(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    bad, offset = {}, 0
    for chunk in chunks:
        bad.update({offset + i: r for i, r in (chunk.bad or {}).items()})
        offset += len(chunk.x)
    return Chunk(
        np.concatenate([c.x for c in chunks]),
        None if chunks[0].y is None else np.concatenate([c.y for c in chunks]),
        [s for c in chunks for s in c.sources or []],
        bad or None,
    )


def _rechunk(pieces: Iterator[Chunk], rows: int) -> Iterator[Chunk]:
    """Chunks of exactly ``rows`` samples (the last one shorter) from pieces of any size."""
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    buffer: list[Chunk] = []
    buffered = 0
    for piece in pieces:
        start = 0
        while start < len(piece.x):
            take = min(rows - buffered, len(piece.x) - start)
            buffer.append(_slice_chunk(piece, start, start + take))
            buffered += take
            start += take
            if buffered == rows:
                yield _join_chunks(buffer)
                buffer, buffered = [], 0
    if buffered:
        yield _join_chunks(buffer)


def read_csv(path: str, name: str, *, label_column: str = "") -> ArrayPool:
    """A CSV file with a header row as an array pool, streamed in constant memory.

    The label column is ``label_column`` if given, else ``label`` or ``y`` if present, else
    none; every other column is a feature, so a sample has shape ``(num_features,)``. An
    empty cell is NaN (ingest quarantines non-finite rows; an empty label is unknown), a cell
    that is not a number or a row with the wrong number of values makes that row a bad
    sample, and a blank line is skipped. Sources are ``name:line N`` (the header is line 1).
    ``count`` is None: it is known only after reading.
    """
    columns = _csv_header(path, name)
    if label_column:
        if label_column not in columns:
            raise TestprioError(
                f"none of the {len(columns)} columns in the header row of {name} is named "
                f"'{label_column}'; give one of its columns as the label column."
            )
        label = label_column
    else:
        label = default_label_column(columns, name, "columns")
    features = [c for c in columns if c != label]
    if not features:
        raise TestprioError(
            f"{name} has no feature columns (only '{label}'); add the sample values as columns."
        )

    def pieces() -> Iterator[Chunk]:
        walk = _CsvRows(name, columns, features, label)
        try:
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(
                    skip_rows=1,
                    column_names=columns,
                    use_threads=False,  # the row handler then sees line numbers in order
                    block_size=CSV_BLOCK_BYTES,
                ),
                parse_options=pacsv.ParseOptions(
                    invalid_row_handler=walk.on_invalid_row, ignore_empty_lines=False
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(columns, pa.string()),
                    strings_can_be_null=False,
                ),
            )
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                yield walk.chunk(batch)
        except pa.ArrowInvalid as exc:
            raise TestprioError(_csv_problem(name, str(exc))) from None
        rest = walk.rest()
        if rest is not None:
            yield rest

    def read_chunks(rows: int) -> Iterator[Chunk]:
        return _rechunk(pieces(), rows)

    return ArrayPool(name, None, (len(features),), label is not None, read_chunks)


# --- image folders -------------------------------------------------------------------------


def _class_labels(folders: list[str], name: str) -> tuple[list[str], list[int], list[str]]:
    """Class folders in label order, their labels, and the class names (index -> name).

    All-integer names are their own labels ("0", "1", "10" -> 0, 1, 10); otherwise labels
    are positions in sorted order, as torchvision's ``ImageFolder`` numbers them.
    """
    if not all(re.fullmatch(r"[0-9]+", folder) for folder in folders):
        ordered = sorted(folders)
        return ordered, list(range(len(ordered))), ordered
    ordered = sorted(folders, key=lambda folder: (int(folder), folder))
    labels = [int(folder) for folder in ordered]
    for previous, folder in itertools.pairwise(ordered):
        if int(previous) == int(folder):
            raise TestprioError(
                f"class folders '{previous}' and '{folder}' in {name} both mean class "
                f"{int(folder)}; rename one of them."
            )
    if labels[-1] >= MAX_NUMERIC_CLASS:
        raise TestprioError(
            f"class folder '{ordered[-1]}' in {name} is a number too large for a class label "
            f"(at most {MAX_NUMERIC_CLASS - 1:,}); number the classes from 0."
        )
    class_names = [str(i) for i in range(labels[-1] + 1)]
    for folder, label in zip(ordered, labels, strict=True):
        class_names[label] = folder
    return ordered, labels, class_names


def _walk_images(root: str, sub: str) -> tuple[list[str], int]:
    """Image paths under ``root/sub`` relative to ``root`` (sorted), and how many visible
    files were skipped for not being images."""
    images, skipped = [], 0
    # A stack, not os.walk: Python 3.11's os.walk recurses once per level and fails on
    # folders nested about a thousand deep.
    pending = [sub]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(root, relative)) as entries:
            for entry in entries:
                if not _visible(entry.name):
                    continue
                if entry.is_dir():
                    if not entry.is_symlink():  # as os.walk: linked folders are not entered
                        pending.append(f"{relative}/{entry.name}")
                elif _is_image_name(entry.name):
                    images.append(f"{relative}/{entry.name}")
                else:
                    skipped += 1
    return sorted(images), skipped


@contextlib.contextmanager
def _open_image(path: str) -> Iterator[Image.Image]:
    """The decoded image at ``path``; raises ``BadSample`` with a short reason."""
    try:
        with Image.open(path, formats=PILLOW_FORMATS) as image:
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a warning filter
            # would be process-wide (not thread-safe), so check the size here.
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and image.width * image.height > limit:
                raise BadSample("image too large (decompression bomb)")
            image.load()
            yield image
    except BadSample:
        raise
    except Image.DecompressionBombError:
        raise BadSample("image too large (decompression bomb)") from None
    except Exception as exc:  # any decoder failure quarantines this one file, nothing more
        if "truncated" in str(exc):
            raise BadSample("truncated image file") from None
        # Pillow names the file by its full (often temporary) path: the sample's source
        # column already says which file it is.
        detail = str(exc).replace(f"'{path}'", "").replace(path, "").strip(" :")
        raise BadSample(
            f"not a readable image ({_short(detail or type(exc).__name__, 80)})"
        ) from None


def _to_mode(image: Image.Image, mode: str) -> np.ndarray:
    """``(H, W)`` (mode L) or ``(H, W, 3)`` (mode RGB) uint8; 16-bit gray is scaled down."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "F":  # 16-bit gray (PNG, PGM, TIFF) -> 8 bits
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return np.array(image.convert(mode), dtype=np.uint8)


def _pool_mode(root: str, files: list[str], name: str) -> str:
    for relative in files:
        try:
            with _open_image(os.path.join(root, relative)) as image:
                return "L" if image.mode in GRAY_MODES else "RGB"
        except BadSample:
            continue
    raise TestprioError(
        f"none of the {len(files):,} images in {name} can be decoded; check that the files "
        f"are images ({', '.join(IMAGE_EXTENSIONS)})."
    )


def open_image_folder(path: str, name: str) -> FilePool:
    """An image folder as a file pool.

    Class subfolders give labels (see ``_class_labels``; images nested deeper belong to
    their class folder); a flat folder of images has no labels. Hidden files and folders
    are ignored, other files without an image extension are skipped with a warning. Files
    are sorted by class, then path. Every image is decoded to the mode of the first image
    that decodes: ``L`` for grayscale modes, else ``RGB`` (alpha dropped, palettes expanded,
    first frame of animations). ``load`` is thread-safe and raises ``BadSample``.
    """
    entries = _visible_entries(path)
    folders = [e for e in entries if os.path.isdir(os.path.join(path, e))]
    top_images = [e for e in entries if e not in folders and _is_image_name(e)]
    skipped = len(entries) - len(folders) - len(top_images)
    if folders and top_images:
        raise TestprioError(
            f"{name} mixes image files ('{top_images[0]}') and folders ('{folders[0]}') at "
            "its top level; put every image in a class folder, or use one flat folder of "
            "images."
        )
    files: list[str] = []
    labels: list[int] | None = None
    class_names: list[str] | None = None
    if folders:
        ordered, class_labels, class_names = _class_labels(folders, name)
        labels = []
        for folder, label in zip(ordered, class_labels, strict=True):
            images, skipped_here = _walk_images(path, folder)
            if not images:
                log.warning("class folder '%s' in %s holds no images", folder, name)
            files += images
            labels += [label] * len(images)
            skipped += skipped_here
    else:
        files = top_images
    if skipped:
        log.warning(
            "skipped %d non-image file(s) in %s (image extensions: %s)",
            skipped,
            name,
            " ".join(IMAGE_EXTENSIONS),
        )
    if not files:
        raise TestprioError(
            f"{name} holds no images; put image files ({', '.join(IMAGE_EXTENSIONS)}) in it, "
            "in one subfolder per class for labelled images."
        )
    mode = _pool_mode(path, files, name)

    return FilePool(name, path, files, labels, class_names, ImageLoader(path, mode))


@dataclass(frozen=True)
class ImageLoader:
    """Decodes one image of a folder into the pool's mode; picklable, so that ingest can
    decode in worker processes. Thread-safe; raises ``BadSample``."""

    root: str
    mode: str

    def __call__(self, relative: str) -> np.ndarray:
        with _open_image(os.path.join(self.root, relative)) as image:
            return _to_mode(image, self.mode)
