"""Storage: one interface over local folders and gs:// (a real emulator), tested on both."""

import contextlib
import glob
import os
import re
import tempfile
import uuid

import numpy as np
import pyarrow as pa
import pytest

from testprio import storage
from testprio.errors import TestprioError
from tests.conftest import BUCKET, make_deterministic


def _table(rows: int = 25) -> pa.Table:
    return pa.table(
        {
            "sample_id": pa.array(range(rows), pa.int64()),
            "score": pa.array([i / 8 for i in range(rows)], pa.float32()),
            "name": pa.array([f"s{i}" for i in range(rows)], pa.string()),
        }
    )


def _unique_name(suffix: str) -> str:
    # Unique, so that a GCS staging file in the shared temp folder can be told apart.
    return f"target-{uuid.uuid4().hex[:12]}{suffix}"


def _staging_leftovers(uri: str) -> list[str]:
    """Temporary files that publishing ``uri`` could have left behind."""
    name = os.path.basename(uri)
    if uri.startswith("gs://"):
        return glob.glob(os.path.join(tempfile.gettempdir(), f"testprio-*-{name}"))
    folder = os.path.dirname(uri)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# --- round trips -----------------------------------------------------------------------


def test_json_round_trip(root):
    value = {"status": "running", "counts": [1, 2, 3], "nested": {"ratio": 0.25, "none": None}}
    uri = storage.join(root, "run", "run.json")
    storage.write_json(uri, value)
    assert storage.read_json(uri) == value


def test_bytes_round_trip_and_overwrite(root):
    uri = storage.join(root, "blob.bin")
    data = bytes(range(256)) * 1000
    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data
    storage.write_bytes(uri, b"shorter")
    assert storage.read_bytes(uri) == b"shorter"


def test_delete_removes_file_and_ignores_missing(root):
    uri = storage.join(root, "gone.json")
    storage.write_json(uri, [1])
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)


# --- exists and list_names -------------------------------------------------------------


def test_exists_for_files_folders_and_missing_paths(root):
    storage.write_json(storage.join(root, "a", "b", "file.json"), {})
    assert storage.exists(storage.join(root, "a", "b", "file.json"))
    assert storage.exists(storage.join(root, "a", "b"))
    assert storage.exists(storage.join(root, "a"))
    # A name prefix is neither a file nor a folder.
    assert not storage.exists(storage.join(root, "a", "b", "fi"))
    assert not storage.exists(storage.join(root, "a", "b", "file.json", "deeper"))
    assert not storage.exists(storage.join(root, "missing"))


@pytest.mark.usefixtures("gcs_emulator")
def test_exists_for_a_bucket_root():
    storage.write_json(f"gs://{BUCKET}/exists-{uuid.uuid4().hex[:8]}/file.json", {})
    assert storage.exists(f"gs://{BUCKET}")
    assert storage.exists(f"gs://{BUCKET}/")


def test_list_names_gives_direct_child_files_sorted(root):
    folder = storage.join(root, "data")
    for name in ["shard-00002.parquet", "manifest.json", "shard-00000.parquet"]:
        storage.write_bytes(storage.join(folder, name), b"x")
    storage.write_bytes(storage.join(folder, "nested", "deep.json"), b"x")
    storage.write_bytes(storage.join(root, "data-sibling.json"), b"x")
    expected = ["manifest.json", "shard-00000.parquet", "shard-00002.parquet"]
    assert storage.list_names(folder) == expected
    assert storage.list_names(folder + "/") == expected


def test_list_names_of_a_missing_folder_is_empty(root):
    assert storage.list_names(storage.join(root, "nothing-here")) == []


# --- Parquet ---------------------------------------------------------------------------


def test_table_round_trip_with_column_subset(root):
    uri = storage.join(root, "table.parquet")
    table = _table()
    storage.write_table(uri, table)
    assert storage.read_table(uri).equals(table)
    subset = storage.read_table(uri, columns=["name", "sample_id"])
    assert subset.column_names == ["name", "sample_id"]
    assert subset.column("name").to_pylist() == table.column("name").to_pylist()
    assert subset.column("sample_id").to_pylist() == list(range(25))


def test_open_parquet_reads_one_row_group(root):
    uri = storage.join(root, "groups.parquet")
    table = _table(25)
    storage.write_table(uri, table, row_group_size=10)
    with storage.open_parquet(uri) as parquet:
        assert parquet.num_row_groups == 3
        assert parquet.metadata.num_rows == 25
        middle = parquet.read_row_group(1, columns=["sample_id", "score"])
    assert middle.column("sample_id").to_pylist() == list(range(10, 20))
    assert middle.equals(table.select(["sample_id", "score"]).slice(10, 10))


def test_parquet_writer_publishes_only_on_exit(root):
    uri = storage.join(root, "out", "streamed.parquet")
    table = _table(30)
    with storage.parquet_writer(uri, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=7):
            writer.write_batch(batch)
            assert not storage.exists(uri)
        assert "streamed.parquet" not in storage.list_names(storage.join(root, "out"))
    assert storage.exists(uri)
    assert storage.read_table(uri).equals(table)
    with storage.open_parquet(uri) as parquet:
        assert parquet.num_row_groups == 5  # one per batch: 7+7+7+7+2 rows


def _half_written_parquet(uri: str) -> None:
    with storage.parquet_writer(uri, _table().schema) as writer:
        writer.write_table(_table())
        raise RuntimeError("stop halfway")


def _half_written_bytes(uri: str) -> None:
    with storage.atomic_path(uri) as path:
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise RuntimeError("stop halfway")


@pytest.mark.parametrize(
    ("suffix", "write_half"),
    [(".parquet", _half_written_parquet), (".bin", _half_written_bytes)],
    ids=["parquet_writer", "atomic_path"],
)
def test_failed_write_leaves_nothing(root, suffix, write_half):
    uri = storage.join(root, "out", _unique_name(suffix))
    with pytest.raises(RuntimeError, match="stop halfway"):
        write_half(uri)
    assert not storage.exists(uri)
    assert _staging_leftovers(uri) == []


@pytest.mark.usefixtures("gcs_emulator")
@pytest.mark.parametrize("fail", [False, True], ids=["complete", "failed_after_two_pieces"])
def test_parquet_to_gcs_streams_in_pieces_with_no_local_copy(monkeypatch, tmp_path, fail):
    monkeypatch.setattr(storage, "UPLOAD_CHUNK", 256 << 10)  # the smallest piece GCS takes
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a local copy would go
    uri = f"gs://{BUCKET}/streamed/{_unique_name('.parquet')}"
    rng = np.random.default_rng(0)
    table = pa.table({"x": rng.random(200_000), "y": rng.integers(0, 9, 200_000)})
    pieces = []
    real_write = storage.GcsBackend.open_write

    def counting_open_write(self, target):
        handle = real_write(self, target)
        real_upload = handle._upload_chunks_from_buffer

        def upload(count):
            pieces.append(count)
            real_upload(count)
            if fail and len(pieces) == 2:
                raise RuntimeError("the node went away")

        handle._upload_chunks_from_buffer = upload
        return handle

    monkeypatch.setattr(storage.GcsBackend, "open_write", counting_open_write)
    written = contextlib.nullcontext() if not fail else pytest.raises(RuntimeError)
    with written, storage.parquet_writer(uri, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=20_000):
            writer.write_batch(batch)
    assert len(pieces) >= 2  # it went up in pieces while it was written
    assert os.listdir(tmp_path) == []  # and never as a whole local file
    if fail:
        assert not storage.exists(uri)
    else:
        assert storage.read_table(uri).equals(table)


def test_failed_write_keeps_the_previous_version(root):
    uri = storage.join(root, "kept.json")
    storage.write_json(uri, {"version": 1})
    with pytest.raises(RuntimeError):
        with storage.atomic_path(uri) as path:
            with open(path, "w") as handle:
                handle.write('{"version": 2')
            raise RuntimeError("interrupted")
    assert storage.read_json(uri) == {"version": 1}


# --- copies ----------------------------------------------------------------------------


@pytest.mark.usefixtures("gcs_emulator")
def test_local_copy_of_a_gcs_object(tmp_path):
    uri = f"gs://{BUCKET}/copies-{uuid.uuid4().hex[:8]}/pool.npz"
    data = make_deterministic(1).bytes(3 << 20)
    storage.write_bytes(uri, data)
    with storage.local_copy(uri) as path:
        assert not path.startswith("gs://")
        with open(path, "rb") as handle:
            assert handle.read() == data
    assert not os.path.exists(path)  # the temporary download is cleaned up


def test_local_copy_of_a_local_file_is_the_file(tmp_path):
    path = tmp_path / "pool.npy"
    path.write_bytes(b"abc")
    with storage.local_copy(str(path)) as copied:
        assert copied == str(path)
    assert path.read_bytes() == b"abc"


@pytest.mark.usefixtures("gcs_emulator")
def test_copy_file_local_to_gcs_and_back(tmp_path):
    data = make_deterministic(2).bytes((2 << 20) + 17)  # over the copy buffer, not a multiple of it
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    remote = f"gs://{BUCKET}/copies-{uuid.uuid4().hex[:8]}/copied.bin"
    storage.copy_file(str(source), remote)
    assert storage.read_bytes(remote) == data
    back = tmp_path / "back" / "copied.bin"
    storage.copy_file(remote, str(back))
    assert back.read_bytes() == data


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "read",
    [storage.read_bytes, storage.read_json, storage.read_table, storage.copy_file],
    ids=["read_bytes", "read_json", "read_table", "copy_file"],
)
def test_reading_a_missing_file_names_it(root, tmp_path, read):
    uri = storage.join(root, "missing", "thing.json")
    with pytest.raises(TestprioError, match=re.escape(uri) + " does not exist"):
        if read is storage.copy_file:
            read(uri, str(tmp_path / "copy.json"))
        else:
            read(uri)


def test_local_copy_of_a_missing_file_names_it(root):
    uri = storage.join(root, "missing.npz")
    with pytest.raises(TestprioError, match=re.escape(uri) + " does not exist"):
        with storage.local_copy(uri):
            pass


def test_reading_a_non_parquet_file_as_a_table(root):
    uri = storage.join(root, "not.parquet")
    storage.write_bytes(uri, b"this is not parquet at all")
    with pytest.raises(TestprioError, match=re.escape(uri) + " is not a readable Parquet file"):
        storage.read_table(uri)


@pytest.mark.parametrize(
    "call",
    [
        storage.exists,
        storage.list_names,
        storage.read_bytes,
        storage.normalize_root,
        lambda uri: storage.write_bytes(uri, b"x"),
    ],
    ids=["exists", "list_names", "read_bytes", "normalize_root", "write_bytes"],
)
def test_unsupported_scheme(call):
    with pytest.raises(TestprioError, match=r"s3://x uses the unsupported scheme 's3://'"):
        call("s3://x")


@pytest.mark.parametrize("uri", ["gs://", "gs:///prefix/file.json"])
@pytest.mark.parametrize(
    "call",
    [storage.exists, storage.list_names, storage.read_bytes, storage.normalize_root],
    ids=["exists", "list_names", "read_bytes", "normalize_root"],
)
def test_gcs_uri_without_bucket(uri, call):
    with pytest.raises(TestprioError, match="names no bucket; write it as gs://BUCKET/PREFIX"):
        call(uri)


# --- URIs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("gs://b/runs", "r1", "data"), "gs://b/runs/r1/data"),
        (("gs://b/runs/", "/r1/", "shard.parquet"), "gs://b/runs/r1/shard.parquet"),
        (("/tmp/runs", "r1"), "/tmp/runs/r1"),
        (("/tmp/runs//", "a/b/"), "/tmp/runs/a/b"),
        (("relative",), "relative"),
    ],
)
def test_join(parts, expected):
    assert storage.join(*parts) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("gs://bucket/prefix/", "gs://bucket/prefix"),
        ("gs://bucket/a/b", "gs://bucket/a/b"),
        ("gs://bucket", "gs://bucket"),
        ("/tmp/runs/", "/tmp/runs"),
        ("/tmp/a/../runs", "/tmp/runs"),
    ],
)
def test_normalize_root(uri, expected):
    assert storage.normalize_root(uri) == expected


def test_normalize_root_makes_relative_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize_root("runs/") == str(tmp_path / "runs")


@pytest.mark.parametrize(
    "name", ["a/../../evil.txt", "..", ".", "a/..", "a/.", "a/./b.txt", "a//b.txt", "x\0y"]
)
def test_local_folder_refuses_names_that_are_no_paths(gcs_emulator, name):
    with pytest.raises(TestprioError, match=r"cannot be a file name \(.*\); rename the object\."):
        with storage.local_folder(f"gs://{BUCKET}/base", ["ok.txt", name]):
            pass


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("pool.npy", ["pool.npy"]),
        ("a/b c/d.png", ["a", "b c", "d.png"]),
        ("a\\b", ["a\\b"]),  # a backslash is a file name character on POSIX
        ("..", None),
        (".", None),
        ("a/..", None),
        ("a/.", None),
        ("a/../b", None),
        ("./a", None),
        ("a//b", None),
        ("/a", None),
        ("a/", None),
        ("", None),
        ("a\0b", None),
        ("x" * 256, None),
        ("é" * 128, None),  # 256 bytes in UTF-8
        ("x" * 255, ["x" * 255]),
    ],
)
def test_object_parts_make_paths_of_plain_names_only(name, parts):
    assert storage.object_parts(name) == parts


@pytest.mark.usefixtures("gcs_emulator")
@pytest.mark.parametrize("last", ["..", "."])
def test_local_copy_of_an_object_named_dot_or_dot_dot_is_refused(tmp_path, last):
    uri = f"gs://{BUCKET}/copies-{uuid.uuid4().hex[:8]}/{last}"
    with pytest.raises(TestprioError, match=rf"'{re.escape(last)}', which cannot be a file name"):
        with storage.local_copy(uri):
            pass


def test_gcs_errors_while_reading_a_stream_are_one_sentence(gcs_emulator):
    from google.api_core import exceptions as gexc

    uri = f"gs://{BUCKET}/stream-{uuid.uuid4().hex[:8]}.bin"
    storage.write_bytes(uri, b"abc")
    with pytest.raises(
        TestprioError, match=r"could not be reached for gs://.*\(ServiceUnavailable\)"
    ):
        with storage.open_read(uri) as handle:
            handle.read(1)
            raise gexc.ServiceUnavailable("connection reset in the middle of the object")
    with pytest.raises(ValueError, match="not a storage error"):  # others pass through
        with storage.open_read(uri):
            raise ValueError("not a storage error")


def test_gcs_list_tree_is_one_listing_that_keeps_names_with_empty_parts(monkeypatch):
    # The emulator normalizes object paths, so it cannot hold "a//b.npy"; GCS can, and a
    # listing folder by folder went round in circles on it (its folder "a/" holds "a//").
    calls = []

    class Blob:
        def __init__(self, name: str) -> None:
            self.name = name

    class Client:
        def list_blobs(self, bucket, prefix="", delimiter=None):
            calls.append((bucket, prefix, delimiter))
            return [Blob(prefix + name) for name in ["ok.npy", "a//b.npy", "sub/c.npy"]]

    monkeypatch.setattr(storage, "_gcs_client", lambda: Client())
    assert storage.list_tree("gs://b/pool") == ["a//b.npy", "ok.npy", "sub/c.npy"]
    assert calls == [("b", "pool/", None)]
