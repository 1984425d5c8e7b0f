"""One interface over local folders and ``gs://bucket/prefix`` roots.

Every other module names files by URI (a local path or ``gs://...``) and goes through the
functions here, so the pipeline runs unchanged on a laptop and in a cluster.

Publishing is atomic: a local file is written under a temporary name in the same folder and
moved into place with ``os.replace``; a GCS object is uploaded in one request, or, for a
Parquet file written a batch at a time (``parquet_writer``), streamed as a resumable upload
``UPLOAD_CHUNK`` at a time with no local copy, and GCS makes an object visible only once its
upload has completed (a failed one is cancelled). A reader therefore never sees half a
file, and a file that exists is complete.

For GCS the client honours ``STORAGE_EMULATOR_HOST`` (used by the tests with
``gcp-storage-emulator``); otherwise it uses the ambient Google credentials (Workload
Identity in a cluster, ``gcloud auth application-default login`` on a laptop).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from testprio import scratch
from testprio.errors import TestprioError

GCS_SCHEME = "gs://"
# A streamed upload's piece (GCS wants multiples of 256 KiB): the memory a streamed write holds.
UPLOAD_CHUNK = 8 << 20


class Backend(Protocol):
    def exists(self, uri: str) -> bool: ...
    def list_names(self, uri: str) -> list[str]: ...
    def list_folders(self, uri: str) -> list[str]: ...
    def list_tree(self, uri: str) -> list[str]: ...
    def open_read(self, uri: str) -> BinaryIO: ...
    def staging_path(self, uri: str) -> str: ...
    def publish(self, staged: str, uri: str) -> None: ...
    def delete(self, uri: str) -> None: ...
    def local_copy(self, uri: str, folder: str) -> str: ...
    def create_exclusive(self, uri: str, data: bytes) -> Any | None: ...
    def read_versioned(self, uri: str) -> tuple[bytes, Any] | None: ...
    def replace_versioned(
        self, uri: str, data: bytes, version: Any, *, holder: bool = False
    ) -> Any | None: ...
    def delete_versioned(self, uri: str, version: Any) -> None: ...


class LocalBackend:
    def exists(self, uri: str) -> bool:
        return os.path.exists(uri)

    def list_names(self, uri: str) -> list[str]:
        if not os.path.isdir(uri):
            return []
        return sorted(name for name in os.listdir(uri) if os.path.isfile(os.path.join(uri, name)))

    def list_folders(self, uri: str) -> list[str]:
        if not os.path.isdir(uri):
            return []
        return sorted(entry.name for entry in os.scandir(uri) if entry.is_dir())

    def list_tree(self, uri: str) -> list[str]:
        names = self.list_names(uri)
        for folder in self.list_folders(uri):
            names += [f"{folder}/{name}" for name in self.list_tree(join(uri, folder))]
        return sorted(names)

    def open_read(self, uri: str) -> BinaryIO:
        try:
            return open(uri, "rb")
        except FileNotFoundError:
            raise TestprioError(f"{uri} does not exist; check the path.") from None
        except OSError as exc:  # a folder, no permission: one sentence, not a traceback
            raise TestprioError(
                f"{uri} cannot be read ({exc.strerror}); check that it is a file you may read."
            ) from None

    def staging_path(self, uri: str) -> str:
        # Same folder as the target, so that os.replace is a rename on one filesystem.
        folder = os.path.dirname(os.path.abspath(uri))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise TestprioError(
                f"cannot create the folder {folder} ({exc.strerror}); choose a --root you can "
                "write to."
            ) from None
        # Named as STAGED_NAME expects: remove_staged finds what a killed writer left.
        return os.path.join(folder, f".{os.path.basename(uri)}.tmp-{uuid.uuid4().hex[:12]}")

    def publish(self, staged: str, uri: str) -> None:
        os.replace(staged, uri)

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(uri)

    def local_copy(self, uri: str, folder: str) -> str:
        if not os.path.exists(uri):
            raise TestprioError(f"{uri} does not exist; check the path.")
        return uri

    # Versioned writes for the run lock. A local file's version is its content: a compare
    # then a rename, safe against a reader but not against two writers racing within
    # microseconds, which only the run's owner and a takeover of a dead owner's lock could be.
    def create_exclusive(self, uri: str, data: bytes) -> bytes | None:
        staged = self.staging_path(uri)
        with open(staged, "wb") as handle:
            handle.write(data)
        try:
            os.link(staged, uri)  # fails when uri exists; readers see all of data or nothing
        except FileExistsError:
            return None
        finally:
            os.remove(staged)
        return data

    def read_versioned(self, uri: str) -> tuple[bytes, bytes] | None:
        try:
            with open(uri, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return data, data

    def replace_versioned(
        self, uri: str, data: bytes, version: bytes, *, holder: bool = False
    ) -> bytes | None:
        current = self.read_versioned(uri)
        if current is None or current[1] != version:
            return None
        if holder:  # the lock's holder refreshing it: the file never disappears
            self.write(uri, data)
            return data
        # A takeover moves the old file aside first: only one process can move one file,
        # so of two processes taking over the same stale lock only one wins.
        aside = f"{uri}.old-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(uri, aside)
        except FileNotFoundError:
            return None
        try:
            with open(aside, "rb") as handle:
                moved = handle.read()
            if moved != version:  # another writer got there first: put its file back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, uri)
                return None
            return self.create_exclusive(uri, data)
        finally:
            os.remove(aside)

    def write(self, uri: str, data: bytes) -> None:
        staged = self.staging_path(uri)
        with open(staged, "wb") as handle:
            handle.write(data)
        self.publish(staged, uri)

    def delete_versioned(self, uri: str, version: bytes) -> None:
        current = self.read_versioned(uri)
        if current is not None and current[1] == version:
            self.delete(uri)


# The longest file name most filesystems take (ext4, XFS, APFS: 255 bytes).
MAX_FILE_NAME_BYTES = 255


def object_parts(name: str) -> list[str] | None:
    """The parts of an object name (``a/b.npy`` -> ``["a", "b.npy"]``) as local path parts,
    or None when one cannot be a file name: empty (``a//b``, ``/a``), ``.`` or ``..`` (a
    folder itself or its parent), holding a NUL byte, or over 255 bytes.

    A gs:// object name is free text (``a/..`` is an object of its own there): make a
    local path of one only through this, never by joining it as it is.
    """
    parts = name.split("/")
    for part in parts:
        size = len(part.encode("utf-8", "surrogatepass"))
        if part in ("", ".", "..") or "\0" in part or size > MAX_FILE_NAME_BYTES:
            return None
    return parts


def _file_name_refused(uri: str, name: str) -> TestprioError:
    return TestprioError(
        f"{uri} has the name '{name}', which cannot be a file name (empty, '.', '..', a NUL "
        f"byte or over {MAX_FILE_NAME_BYTES} bytes); rename the object."
    )


def object_file_name(uri: str) -> str:
    """The last part of ``uri``'s object name, checked to be a plain file name."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if object_parts(name) is None:
        raise _file_name_refused(uri, name)
    return name


# The temporary a local write stages its bytes in, beside its target (LocalBackend).
STAGED_NAME = re.compile(r"^\.(?P<target>.+)\.tmp-[0-9a-f]{12}$")


def remove_staged(folder: str, owns: Callable[[str], bool]) -> list[str]:
    """Delete the temporaries that local writes of the files ``owns`` says yes to (by
    name) left in ``folder``; return their names.

    A write that ends, well or not, removes its temporary; one whose process was killed
    (SIGKILL, a lost node) leaves it. Call this only where no other process writes those
    files at the time (the stage that alone writes them). A gs:// folder holds none: writes
    there stage in this machine's temporary folder.
    """
    if folder.startswith(GCS_SCHEME) or not os.path.isdir(folder):
        return []
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = STAGED_NAME.match(entry.name)
            if match and owns(match.group("target")) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)
                removed.append(entry.name)
    return sorted(removed)


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = uri[len(GCS_SCHEME) :]
    bucket, _, blob = rest.partition("/")
    if not bucket:
        raise TestprioError(f"{uri} names no bucket; write it as gs://BUCKET/PREFIX.")
    return bucket, blob.strip("/")


@functools.lru_cache(maxsize=1)
def _gcs_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="testprio-emulator", credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except Exception as exc:  # google.auth raises several unrelated types here
        raise TestprioError(
            f"cannot connect to Google Cloud Storage ({exc}); run "
            "'gcloud auth application-default login' or give the pod a Workload Identity."
        ) from None


def _gcs_error(uri: str, exc: BaseException) -> TestprioError | None:
    """The one-sentence error for an exception of the GCS client about ``uri`` (or None)."""
    from google.api_core import exceptions as gexc
    from requests import exceptions as rexc

    if isinstance(exc, gexc.NotFound):
        bucket = split_gcs_uri(uri)[0]
        return TestprioError(
            f"{uri} cannot be reached: bucket '{bucket}' or the object does not exist "
            f"({exc.message}); create the bucket or correct the URI."
        )
    if isinstance(exc, gexc.Forbidden | gexc.Unauthorized):
        return TestprioError(
            f"access to {uri} was refused ({exc.message}); give the pipeline's service "
            "account read/write access to the bucket."
        )
    if isinstance(
        exc, rexc.ConnectionError | rexc.Timeout | gexc.ServiceUnavailable | gexc.RetryError
    ):
        return TestprioError(
            f"Google Cloud Storage could not be reached for {uri} ({type(exc).__name__}); "
            "check the network (or STORAGE_EMULATOR_HOST) and retry."
        )
    return None


def _gcs_errors(method):
    """Turn the GCS client's exceptions into one sentence naming the URI and what to do."""

    @functools.wraps(method)
    def wrapper(self, uri: str, *args, **kwargs):
        try:
            return method(self, uri, *args, **kwargs)
        except Exception as exc:
            sentence = _gcs_error(uri, exc)
            if sentence is None:
                raise
            raise sentence from None

    return wrapper


class GcsBackend:
    def _blob(self, uri: str):
        bucket, name = split_gcs_uri(uri)
        return _gcs_client().bucket(bucket).blob(name)

    @_gcs_errors
    def exists(self, uri: str) -> bool:
        bucket, name = split_gcs_uri(uri)
        if name and self._blob(uri).exists():
            return True
        # A "folder" exists when any object lies under it.
        prefix = name + "/" if name else ""
        return any(True for _ in _gcs_client().list_blobs(bucket, prefix=prefix, max_results=1))

    @_gcs_errors
    def list_names(self, uri: str) -> list[str]:
        bucket, name = split_gcs_uri(uri)
        prefix = name + "/" if name else ""
        blobs = _gcs_client().list_blobs(bucket, prefix=prefix, delimiter="/")
        return sorted(blob.name[len(prefix) :] for blob in blobs)

    @_gcs_errors
    def list_tree(self, uri: str) -> list[str]:
        bucket, name = split_gcs_uri(uri)
        prefix = name + "/" if name else ""
        blobs = _gcs_client().list_blobs(bucket, prefix=prefix)
        return sorted(blob.name[len(prefix) :] for blob in blobs)

    @_gcs_errors
    def list_folders(self, uri: str) -> list[str]:
        bucket, name = split_gcs_uri(uri)
        prefix = name + "/" if name else ""
        blobs = _gcs_client().list_blobs(bucket, prefix=prefix, delimiter="/")
        for _ in blobs.pages:  # the folder names arrive page by page, beside the objects
            pass
        return sorted(folder[len(prefix) :].rstrip("/") for folder in blobs.prefixes)

    @_gcs_errors
    def open_read(self, uri: str) -> BinaryIO:
        blob = self._blob(uri)
        if not blob.exists():
            raise TestprioError(f"{uri} does not exist; check the bucket and object name.")
        return blob.open("rb")

    def staging_path(self, uri: str) -> str:
        handle, path = tempfile.mkstemp(prefix="testprio-", suffix="-" + os.path.basename(uri))
        os.close(handle)
        return path

    def publish(self, staged: str, uri: str) -> None:
        try:
            self._upload(uri, staged)
        finally:
            os.remove(staged)

    @_gcs_errors
    def open_write(self, uri: str) -> BinaryIO:
        """A file whose bytes upload to ``uri`` as they are written (a resumable upload):
        ``close()`` makes the object, ``terminate()`` cancels it."""
        return self._blob(uri).open("wb", chunk_size=UPLOAD_CHUNK, ignore_flush=True)

    @_gcs_errors
    def _upload(self, uri: str, staged: str) -> None:
        self._blob(uri).upload_from_filename(staged)

    @_gcs_errors
    def delete(self, uri: str) -> None:
        if not split_gcs_uri(uri)[1]:
            raise TestprioError(f"{uri} is a whole bucket; testprio deletes single objects only.")
        blob = self._blob(uri)
        if blob.exists():
            blob.delete()

    @_gcs_errors
    def local_copy(self, uri: str, folder: str) -> str:
        path = os.path.join(folder, object_file_name(uri))  # checked before any request
        blob = self._blob(uri)
        if not blob.exists():
            raise TestprioError(f"{uri} does not exist; check the bucket and object name.")
        blob.download_to_filename(path)
        return path

    # Versioned writes for the run lock: the object's generation, with GCS preconditions
    # (``if_generation_match``) so that of two writers exactly one succeeds.
    @_gcs_errors
    def create_exclusive(self, uri: str, data: bytes) -> int | None:
        from google.api_core import exceptions as gexc

        blob = self._blob(uri)
        # Checked first as well: a backend that ignores preconditions (the emulator) still
        # refuses an existing object.
        if blob.exists():
            return None
        try:
            blob.upload_from_string(data, if_generation_match=0)
        except gexc.PreconditionFailed:
            return None
        return blob.generation

    @_gcs_errors
    def read_versioned(self, uri: str) -> tuple[bytes, int] | None:
        bucket, name = split_gcs_uri(uri)
        blob = _gcs_client().bucket(bucket).get_blob(name)
        if blob is None:
            return None
        from google.api_core import exceptions as gexc

        generation = blob.generation  # before the download, which may reset it
        try:
            return blob.download_as_bytes(if_generation_match=generation), generation
        except (gexc.NotFound, gexc.PreconditionFailed):
            return None

    @_gcs_errors
    def replace_versioned(
        self, uri: str, data: bytes, version: int, *, holder: bool = False
    ) -> int | None:
        from google.api_core import exceptions as gexc

        blob = self._blob(uri)
        try:
            blob.upload_from_string(data, if_generation_match=version)
        except (gexc.PreconditionFailed, gexc.NotFound):
            return None
        return blob.generation

    @_gcs_errors
    def delete_versioned(self, uri: str, version: int) -> None:
        from google.api_core import exceptions as gexc

        with contextlib.suppress(gexc.PreconditionFailed, gexc.NotFound):
            self._blob(uri).delete(if_generation_match=version)


_BACKENDS: dict[str, Backend] = {"local": LocalBackend(), "gs": GcsBackend()}


def backend_for(uri: str) -> Backend:
    if uri.startswith(GCS_SCHEME):
        return _BACKENDS["gs"]
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise TestprioError(
            f"{uri} uses the unsupported scheme '{scheme}://'; use a local path or gs://."
        )
    return _BACKENDS["local"]


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` (local paths on POSIX and gs:// alike)."""
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def normalize_root(uri: str) -> str:
    """Absolute local path, or the gs:// URI without a trailing slash."""
    if uri.startswith(GCS_SCHEME):
        split_gcs_uri(uri)
        return uri.rstrip("/")
    backend_for(uri)
    return os.path.abspath(uri)


def ensure_root(uri: str) -> None:
    """Fail with one sentence unless runs can be written under ``uri``."""
    if uri.startswith(GCS_SCHEME):
        bucket = split_gcs_uri(uri)[0]
        _BACKENDS["gs"].list_names(f"{GCS_SCHEME}{bucket}")  # a missing bucket raises here
        return
    try:
        os.makedirs(uri, exist_ok=True)
    except OSError as exc:
        raise TestprioError(
            f"cannot create the folder {uri} ({exc.strerror}); choose a --root you can write to."
        ) from None
    if not os.access(uri, os.W_OK):
        raise TestprioError(f"cannot write under {uri}; choose a --root you can write to.")


def exists(uri: str) -> bool:
    return backend_for(uri).exists(uri)


def list_names(uri: str) -> list[str]:
    """Names of the files directly under the folder ``uri``, sorted."""
    return backend_for(uri).list_names(uri)


def list_folders(uri: str) -> list[str]:
    """Names of the folders directly under the folder ``uri`` (on GCS: object prefixes), sorted."""
    return backend_for(uri).list_folders(uri)


def delete(uri: str) -> None:
    backend_for(uri).delete(uri)


@contextlib.contextmanager
def open_read(uri: str) -> Iterator[BinaryIO]:
    """The object's bytes as a stream; a GCS error while reading is one sentence too."""
    handle = backend_for(uri).open_read(uri)
    try:
        yield handle
    except Exception as exc:
        sentence = _gcs_error(uri, exc) if uri.startswith("gs://") else None
        if sentence is None:
            raise
        raise sentence from None
    finally:
        handle.close()


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding the object's bytes (the file itself when it is local)."""
    with scratch.folder("fetch") as folder:
        yield backend_for(uri).local_copy(uri, folder)


def is_folder(uri: str) -> bool:
    """True when files or folders lie under ``uri`` (on GCS: under the prefix ``uri/``)."""
    return bool(list_names(uri) or list_folders(uri))


def list_tree(uri: str) -> list[str]:
    """Paths (``a/b.txt``) of every file under the folder ``uri``, at any depth, sorted (on
    GCS every object under the prefix ``uri/``, by its name after it: one listing, and a name
    with an empty part, ``a//b``, comes back as it is, for the caller to refuse)."""
    return backend_for(uri).list_tree(uri)


@contextlib.contextmanager
def local_folder(base: str, names: list[str]) -> Iterator[str]:
    """A local folder holding ``base/NAME`` for every relative path in ``names``.

    A local ``base`` is that folder itself; from GCS only the named objects are downloaded.
    """
    backend = backend_for(base)
    if isinstance(backend, LocalBackend):
        yield base
        return
    with scratch.folder("fetch") as folder:
        targets = []
        for name in names:
            parts = object_parts(name)
            if parts is None:
                raise TestprioError(
                    f"object {join(base, name)} has a name that cannot be a file name (a part "
                    f"that is empty, '.', '..', holds a NUL byte or is over "
                    f"{MAX_FILE_NAME_BYTES} bytes); rename the object."
                )
            targets.append(os.path.join(folder, *parts[:-1]))
        for name, target in zip(names, targets, strict=True):
            os.makedirs(target, exist_ok=True)
            backend.local_copy(join(base, name), target)
        yield folder


@contextlib.contextmanager
def atomic_path(uri: str) -> Iterator[str]:
    """Yield a local path to write; on success it is published at ``uri`` in one step."""
    backend = backend_for(uri)
    staged = backend.staging_path(uri)
    try:
        yield staged
        backend.publish(staged, uri)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(staged)
        raise


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as handle:
        return handle.read()


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_path(uri) as path, open(path, "wb") as handle:
        handle.write(data)


def copy_file(source_uri: str, target_uri: str) -> None:
    with open_read(source_uri) as source, atomic_path(target_uri) as path:
        with open(path, "wb") as target:
            shutil.copyfileobj(source, target, length=1 << 20)


def parse_json(data: bytes) -> Any:
    """The JSON value of ``data``. ValueError for anything else, with a reason that quotes
    none of it: not UTF-8, not JSON, or nested too deeply for Python's parser (which
    raises RecursionError at about a thousand levels)."""
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 text") from None
    except json.JSONDecodeError as exc:  # exc.msg names what was expected, not the text
        raise ValueError(f"it is not JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise ValueError("its values are nested too deeply") from None


def read_json(uri: str) -> Any:
    """The JSON value of the file at ``uri``; ValueError (see ``parse_json``) when it holds
    no JSON."""
    return parse_json(read_bytes(uri))


def write_json(uri: str, value: Any) -> None:
    write_bytes(uri, json.dumps(value, indent=2, sort_keys=False).encode() + b"\n")


@contextlib.contextmanager
def open_parquet(uri: str) -> Iterator[pq.ParquetFile]:
    """A ``ParquetFile`` that reads row groups and columns on demand (ranged reads on GCS).

    ``pre_buffer=False``: pre-buffering would pull a whole shard into memory as soon as
    every row group is iterated, so memory would grow with the shard size.
    """
    if backend_for(uri) is _BACKENDS["local"]:
        if not os.path.exists(uri):
            raise TestprioError(f"{uri} does not exist; check the path.")
        handle = pa.OSFile(uri, "rb")  # native reads: faster than a Python file object
    else:
        handle = backend_for(uri).open_read(uri)
    try:
        try:
            parquet = pq.ParquetFile(handle, pre_buffer=False)
        except pa.ArrowInvalid as exc:
            raise TestprioError(
                f"{uri} is not a readable Parquet file ({exc}); rewrite it or rerun the stage "
                "that made it."
            ) from None
        yield parquet
    finally:
        handle.close()


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    with open_parquet(uri) as parquet:
        return parquet.read(columns=columns)


@contextlib.contextmanager
def parquet_writer(uri: str, schema: pa.Schema, **options: Any) -> Iterator[pq.ParquetWriter]:
    """Stream record batches into a Parquet file that appears at ``uri`` only when complete.

    On GCS the file uploads as it is written, ``UPLOAD_CHUNK`` at a time, with no local copy:
    a ranking of any size needs no local disk for itself."""
    backend = backend_for(uri)
    if not isinstance(backend, GcsBackend):
        with atomic_path(uri) as path:
            writer = pq.ParquetWriter(path, schema, **options)
            try:
                yield writer
            finally:
                writer.close()
        return
    handle = backend.open_write(uri)
    try:
        writer = pq.ParquetWriter(handle, schema, **options)
        try:
            yield writer
        finally:
            writer.close()
        handle.close()  # the last piece: the object appears
    except BaseException as exc:
        with contextlib.suppress(Exception):
            handle.terminate()  # the upload so far is dropped; nothing appears
        sentence = _gcs_error(uri, exc) if isinstance(exc, Exception) else None
        if sentence is None:
            raise
        raise sentence from None


def write_table(uri: str, table: pa.Table, **options: Any) -> None:
    with atomic_path(uri) as path:
        pq.write_table(table, path, **options)


def create_exclusive(uri: str, data: bytes) -> Any | None:
    """Write ``data`` at ``uri`` unless something is there; its version, or None if it was."""
    return backend_for(uri).create_exclusive(uri, data)


def read_versioned(uri: str) -> tuple[bytes, Any] | None:
    """``(data, version)`` of ``uri``, or None when it does not exist."""
    return backend_for(uri).read_versioned(uri)


def replace_versioned(uri: str, data: bytes, version: Any, *, holder: bool = False) -> Any | None:
    """Replace ``uri`` only if it is still at ``version``; the new version, or None if not.

    ``holder``: the caller holds the lock ``uri`` and refreshes it (no one else writes it),
    so a local file is replaced in place rather than moved aside and created again.
    """
    return backend_for(uri).replace_versioned(uri, data, version, holder=holder)


def delete_versioned(uri: str, version: Any) -> None:
    """Delete ``uri`` only if it is still at ``version`` (a lock taken over stays)."""
    backend_for(uri).delete_versioned(uri, version)
