"""What format a pool file has: told by extension *and* content.

A file whose bytes contradict its extension (a PNG named ``pool.npy``) is an error, and a
file with no known extension is read by what its bytes are. Also the names of the formats
(``FORMATS``, ``ARCHIVES``), of image files, and of the label column a table defaults to.
"""

from __future__ import annotations

import codecs
import lzma
import os
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterable

from testprio.errors import TestprioError

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
LABEL_COLUMNS = ("label", "labels", "y")  # the names --label-column defaults to


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


DESCRIPTIONS = {
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


def sniff(path: str) -> str:
    """What the bytes of ``path`` are: a key of ``DESCRIPTIONS``."""
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


def detect_kind(path: str, name: str) -> str:
    """One of ``FORMATS`` or ``ARCHIVES`` for ``path``, whose extension is read from ``name``."""
    if os.path.isdir(path):
        return "images"
    claimed = _extension_kind(name)
    found = sniff(path)
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
            f"cannot tell the format of {name} (it holds {DESCRIPTIONS[found]}); "
            f"{_KNOWN_FORMATS_HINT}."
        )
    raise TestprioError(
        f"{name} is named like {DESCRIPTIONS[claimed]} but holds {DESCRIPTIONS[found]}; "
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
    kind = detect_kind(path, name)
    if kind in ARCHIVES:
        raise TestprioError(
            f"{name} is {DESCRIPTIONS[kind]}; open it with testprio.ingest.sources.resolve, which "
            "extracts it."
        )
    return kind


def is_visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def visible_entries(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if is_visible(name))


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)
