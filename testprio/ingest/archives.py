"""Safe extraction of zip and tar archives (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``,
``.tar.bz2``, ``.tar.xz``).

Archives are never handed to ``extractall``: every entry is checked first, and the bytes of
each regular file are copied by this module. Rejected: entries whose path is absolute or
leads outside the target folder, links (symbolic and hard), devices, FIFOs and any other
special entry, encrypted entries, more entries than ``ArchiveLimits.max_entries`` (or
than the archive's size allows, ``ArchiveLimits.min_bytes_per_entry``), a
declared expanded size over ``ArchiveLimits.max_bytes`` and entries that expand more than
``ArchiveLimits.max_ratio`` times (see ``ArchiveLimits``). Declared sizes can lie, so the
size and ratio limits are enforced again on the bytes actually written.
"""

from __future__ import annotations

import lzma
import os
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from testprio.errors import TestprioError
from testprio.ingest.byte_budget import COPY_BLOCK_BYTES
from testprio.ingest.formats import DESCRIPTIONS, sniff
from testprio.ingest.messages import short


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

    ``min_bytes_per_entry``: past the first ``free_entries``, an archive may list at most
    one entry per this many bytes of its own size. Each entry costs a file, a decode and a
    quarantine row, while a compressed tar of empty files spends under 8 bytes on one (94
    KB held 20,000); real images spend more (8x8 PNGs of one colour: about 25 bytes, of
    noise: about 95). A zip spends at least 76 bytes on every entry, so this binds tars.
    """

    max_bytes: int = 20 * 2**30
    max_entries: int = 2_000_000
    free_entries: int = 10_000
    min_bytes_per_entry: int = 16
    max_ratio: int = 1000
    ratio_min_bytes: int = 64 * 2**20
    max_total_ratio: int = 200
    max_depth: int = 100


DEFAULT_ARCHIVE_LIMITS = ArchiveLimits()


def safe_parts(entry: str) -> list[str] | None:
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
    parts = safe_parts(entry)
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
            f"data archive {archive} has an entry '{short(entry, 60)}' nested "
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
            f"data archive {archive} has the entry '{short(entry, 80)}' more than once; "
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
        limits = self.limits
        allowed = max(limits.free_entries, self.archive_bytes // limits.min_bytes_per_entry)
        if self.entries > allowed:
            raise TestprioError(
                f"data archive {self.archive} has more than {allowed:,} entries for its "
                f"{self.archive_bytes:,} bytes (at most one entry per "
                f"{limits.min_bytes_per_entry} bytes of archive past the first "
                f"{limits.free_entries:,}); this looks like an archive bomb of empty or "
                "near-empty files: re-create the archive without them, or extract it "
                "yourself and pass the folder."
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


def check_zip_members(
    archive: zipfile.ZipFile,
    members: list[str],
    name: str,
    archive_bytes: int,
    limits: ArchiveLimits,
) -> None:
    """The zip entries ``members`` (an ``.npz``'s arrays), read where they are rather than
    extracted, held to an extracted archive's limits: their declared sizes within
    ``limits.max_bytes``, each entry's ratio and the whole's. zipfile never hands over more
    bytes than an entry declares, so the declared sizes bound what reading them produces."""
    expansion = _Expansion(name, limits, archive_bytes)
    for member in members:
        info = archive.getinfo(member)
        expansion.declare(member, info.file_size)
        expansion.check_ratio(member, info.file_size, info.compress_size)
        expansion.check_total(member, expansion.declared)


def _damaged(archive: str, entry: str | None, exc: BaseException) -> TestprioError:
    where = f"entry '{entry}': " if entry else ""
    return TestprioError(
        f"data archive {archive} cannot be extracted ({where}{short(exc)}); it is damaged or "
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
    kind = sniff(path)
    extractors = {"zip": _extract_zip, "npz": _extract_zip, "tar": _extract_tar}
    if kind not in extractors:
        raise TestprioError(
            f"{name} is not a zip or tar archive (it holds {DESCRIPTIONS[kind]}); give a "
            ".zip, .tar, .tar.gz, .tar.bz2 or .tar.xz file."
        )
    extractors[kind](path, folder, name, limits)
