"""Ingest: npy / npz / Parquet pools -> sample shards, quarantine, manifest, every error."""

import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import ingest, iter_shard_batches, parse_shape
from testprio.layout import RunLayout
from tests.conftest import BUCKET, make_deterministic, write_pool

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
WIDTH = 64


# --- helpers ---------------------------------------------------------------------------


def write_parquet_pool(
    path: Path,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    label_column: str = "label",
) -> Path:
    """A Parquet pool: ``x`` as list<float32> with its shape in the schema metadata."""
    flat = x.reshape(len(x), -1).astype(np.float32)
    columns = {"x": pa.array(list(flat), pa.list_(pa.float32()))}
    if y is not None:
        columns[label_column] = pa.array(y)
    table = pa.table(columns).replace_schema_metadata(
        {b"testprio.shape": json.dumps(list(x.shape[1:])).encode()}
    )
    pq.write_table(table, path)
    return path


def _write_compressed_npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez_compressed(path, x=x, y=y)
    return path


# kind -> (file name, writer); kinds without labels ignore y.
POOL_WRITERS = {
    "npy": ("pool.npy", lambda path, x, y: write_pool(path, x)),
    "npz": ("pool.npz", lambda path, x, y: write_pool(path, x)),
    "npz+y": ("pool.npz", write_pool),
    "npz-compressed+y": ("pool.npz", _write_compressed_npz),
    "parquet": ("pool.parquet", lambda path, x, y: write_parquet_pool(path, x)),
    "parquet+label": ("pool.parquet", write_parquet_pool),
    "parquet+y": (
        "pool.parquet",
        lambda path, x, y: write_parquet_pool(path, x, y, label_column="y"),
    ),
}


def write_source(folder: Path, kind: str, x: np.ndarray, y: np.ndarray | None) -> Path:
    name, writer = POOL_WRITERS[kind]
    return writer(folder / name, x, y)


def has_labels(kind: str) -> bool:
    return kind.endswith(("+y", "+label"))


def reassemble(shard_uris: list[str]) -> tuple[np.ndarray, np.ndarray, list[int | None]]:
    """All shards read back in order: sample ids, x as (N, *shape), labels."""
    ids, xs, labels = [], [], []
    for uri in shard_uris:
        for batch, x in iter_shard_batches(uri, batch_size=17):
            ids.append(batch.column("sample_id").to_numpy())
            xs.append(x)
            labels.extend(batch.column("label").to_pylist())
    return np.concatenate(ids), np.concatenate(xs), labels


def expected_shard_schema(width: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("sample_id", pa.int64(), nullable=False),
            pa.field("x", pa.binary(4 * width), nullable=False),  # shard format 2
            pa.field("label", pa.int32(), nullable=True),
            pa.field("source", pa.string(), nullable=True),
        ]
    )


def assert_shard_schema(uri: str, shape: tuple[int, ...]) -> None:
    with storage.open_parquet(uri) as parquet:
        schema = parquet.schema_arrow
    assert schema.equals(expected_shard_schema(int(np.prod(shape))), check_metadata=False)
    assert json.loads(schema.metadata[b"testprio.shape"]) == list(shape)
    assert schema.metadata[b"testprio.shard_format"] == b"2"


def shard_rows(uris: list[str]) -> list[int]:
    rows = []
    for uri in uris:
        with storage.open_parquet(uri) as parquet:
            rows.append(parquet.metadata.num_rows)
    return rows


def with_non_finite(x: np.ndarray, rows: dict[int, float]) -> np.ndarray:
    x = x.copy()
    for row, value in rows.items():
        x[row, 0, row % 8, (3 * row) % 8] = value
    return x


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(POOL_WRITERS))
def test_shards_round_trip_the_pool(root, tmp_path, digits_pool, kind):
    x, y = digits_pool
    source = write_source(tmp_path, kind, x, y)
    layout = RunLayout.create(root, "run")
    uris = ingest(layout, str(source), shard_size=50)

    assert uris == [layout.data_shard(i) for i in range(3)]
    for uri in uris:
        assert_shard_schema(uri, SHAPE)
    ids, x_back, labels = reassemble(uris)
    np.testing.assert_array_equal(ids, np.arange(120))
    assert x_back.dtype == np.float32
    np.testing.assert_array_equal(x_back, x)
    assert labels == (y.tolist() if has_labels(kind) else [None] * 120)
    sources = pa.concat_tables(storage.read_table(uri, columns=["source"]) for uri in uris)
    assert sources.column("source").to_pylist() == [f"{source.name}[{i}]" for i in range(120)]


@pytest.mark.parametrize("labelled", [True, False])
def test_a_data_shard_of_a_run_is_a_pool(local_root, tmp_path, digits_pool, labelled):
    x, y = digits_pool
    pool = write_pool(tmp_path / "pool.npz", x, y if labelled else None)
    first = ingest(RunLayout.create(local_root, "first"), str(pool), shard_size=50)
    again = ingest(RunLayout.create(local_root, "again"), first[1], shard_size=20)
    ids, x_back, labels = reassemble(again)
    np.testing.assert_array_equal(ids, np.arange(50))
    np.testing.assert_array_equal(x_back, x[50:100])
    assert labels == (y[50:100].tolist() if labelled else [None] * 50)
    assert storage.read_json(RunLayout.create(local_root, "again").data_manifest)["samples"] == 50


def test_a_shard_tensor_column_of_the_wrong_width_is_refused(local_root, tmp_path):
    from testprio.ingest.readers import SHAPE_METADATA_KEY

    schema = pa.schema([pa.field("x", pa.binary(12))], metadata={SHAPE_METADATA_KEY: b"[1, 2, 2]"})
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"x": pa.array([b"\0" * 12], pa.binary(12))}, schema=schema), path)
    with pytest.raises(TestprioError) as caught:
        ingest(RunLayout.create(local_root, "run"), str(path))
    assert str(caught.value) == (
        "column 'x' in bad.parquet holds 12 bytes per sample but its shape (1, 2, 2) needs 16; "
        "the data shard is damaged, so ingest the original pool again."
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float16, np.float64])
def test_inputs_of_other_numeric_dtypes_become_float32(local_root, tmp_path, dtype):
    x = make_deterministic(3).integers(0, 200, (30, 1, 8, 8)).astype(dtype)
    uris = ingest(RunLayout.create(local_root, "run"), str(write_pool(tmp_path / "p.npz", x)))
    _, x_back, _ = reassemble(uris)
    assert x_back.dtype == np.float32
    np.testing.assert_array_equal(x_back, x.astype(np.float32))


def test_whole_float_labels_are_accepted(local_root, tmp_path, digits_pool):
    x, y = digits_pool
    source = write_pool(tmp_path / "pool.npz", x, y.astype(np.float64))
    _, _, labels = reassemble(ingest(RunLayout.create(local_root, "run"), str(source)))
    assert labels == y.tolist()


@pytest.mark.parametrize(
    ("shard_size", "expected_rows"),
    [(50, [50, 50, 20]), (40, [40, 40, 40]), (119, [119, 1]), (120, [120]), (10_000, [120])],
)
def test_shard_sizes(local_root, tmp_path, digits_pool, shard_size, expected_rows):
    x, y = digits_pool
    layout = RunLayout.create(local_root, "run")
    uris = ingest(layout, str(write_pool(tmp_path / "pool.npz", x, y)), shard_size=shard_size)
    names = [f"shard-{i:05d}.parquet" for i in range(len(expected_rows))]
    assert shard_rows(uris) == expected_rows
    assert storage.list_names(layout.data_dir) == [
        "duplicates.parquet",
        "manifest.json",
        "quarantine.parquet",
        *names,
    ]
    manifest = storage.read_json(layout.data_manifest)
    assert manifest["shards"] == [
        {"name": name, "rows": rows} for name, rows in zip(names, expected_rows, strict=True)
    ]


def test_manifest_and_empty_quarantine(root, tmp_path, digits_pool):
    x, y = digits_pool
    layout = RunLayout.create(root, "run")
    ingest(layout, str(write_pool(tmp_path / "digits.npz", x, y)), shard_size=50)
    assert storage.read_json(layout.data_manifest) == {
        "source": "digits.npz",
        "samples": 120,
        "ingested": 120,
        "quarantined": 0,
        "quarantine_kinds": {},
        "duplicates": 0,
        "sample_shape": [1, 8, 8],
        "shard_format": 2,
        "raw_sample_shape": [1, 8, 8],
        "has_labels": True,
        "class_names": None,
        "format": "npz",
        "preprocessing": [],
        "shards": [
            {"name": "shard-00000.parquet", "rows": 50},
            {"name": "shard-00001.parquet", "rows": 50},
            {"name": "shard-00002.parquet", "rows": 20},
        ],
    }
    assert storage.read_table(layout.quarantine).num_rows == 0


@pytest.mark.usefixtures("gcs_emulator")
def test_ingest_from_gcs_into_gcs(tmp_path, digits_pool):
    x, y = digits_pool
    prefix = f"gs://{BUCKET}/ingest-{uuid.uuid4().hex[:8]}"
    data_uri = f"{prefix}/pools/digits.npz"
    storage.copy_file(str(write_pool(tmp_path / "digits.npz", x, y)), data_uri)
    layout = RunLayout.create(f"{prefix}/runs", "remote")
    uris = ingest(layout, data_uri, shard_size=64)

    assert uris == [f"{prefix}/runs/remote/data/shard-00000.parquet", layout.data_shard(1)]
    ids, x_back, labels = reassemble(uris)
    np.testing.assert_array_equal(ids, np.arange(120))
    np.testing.assert_array_equal(x_back, x)
    assert labels == y.tolist()
    assert storage.read_json(layout.data_manifest)["source"] == "digits.npz"


# --- input shape -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npy", "npz+y", "parquet+label"])
def test_input_shape_reshapes_flat_samples(local_root, tmp_path, digits_pool, kind):
    x, y = digits_pool
    flat = x.reshape(len(x), WIDTH)
    layout = RunLayout.create(local_root, "run")
    uris = ingest(layout, str(write_source(tmp_path, kind, flat, y)), input_shape=(1, 8, 8))
    assert_shard_schema(uris[0], SHAPE)
    _, x_back, _ = reassemble(uris)
    assert x_back.shape == (120, 1, 8, 8)
    np.testing.assert_array_equal(x_back, x)
    assert storage.read_json(layout.data_manifest)["sample_shape"] == [1, 8, 8]


def test_input_shape_with_another_element_count(local_root, tmp_path, digits_pool):
    x, _ = digits_pool
    source = write_pool(tmp_path / "pool.npy", x.reshape(len(x), WIDTH))
    layout = RunLayout.create(local_root, "run")
    with pytest.raises(
        TestprioError,
        match=r"--input-shape \(1, 8, 7\) has 56 values but samples in pool.npy have shape "
        r"\(64,\); give a shape with the same number of values",
    ):
        ingest(layout, str(source), input_shape=(1, 8, 7))
    assert not storage.exists(layout.data_dir)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,28,28", (1, 28, 28)), ("3x32x32", (3, 32, 32)), (" 64 ", (64,)), ("", None), (" ", None)],
)
def test_parse_shape(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text", ["a,b", "1,0,28", "-1,28", ",", "1.5,2"])
def test_parse_shape_rejects(text):
    with pytest.raises(TestprioError, match="is not a list of positive integers"):
        parse_shape(text)


# --- quarantine ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npy", "npz+y", "parquet+label"])
def test_non_finite_samples_are_quarantined(root, tmp_path, digits_pool, kind):
    x, y = digits_pool
    bad = {3: np.nan, 64: np.inf, 100: -np.inf, 101: np.nan}
    source = write_source(tmp_path, kind, with_non_finite(x, bad), y)
    layout = RunLayout.create(root, "run")
    uris = ingest(layout, str(source), shard_size=50)

    keep = np.setdiff1d(np.arange(120), list(bad))
    ids, x_back, labels = reassemble(uris)
    np.testing.assert_array_equal(ids, keep)
    np.testing.assert_array_equal(x_back, x[keep])
    if has_labels(kind):
        assert labels == y[keep].tolist()
    assert shard_rows(uris) == [49, 49, 18]

    quarantine = storage.read_table(layout.quarantine)
    assert quarantine.column_names == ["sample_id", "source", "kind", "reason"]
    assert set(quarantine.column("kind").to_pylist()) == {"non_finite"}
    assert quarantine.column("sample_id").to_pylist() == sorted(bad)
    assert quarantine.column("source").to_pylist() == [f"{source.name}[{i}]" for i in sorted(bad)]
    assert all("NaN or Inf" in reason for reason in quarantine.column("reason").to_pylist())

    manifest = storage.read_json(layout.data_manifest)
    assert (manifest["samples"], manifest["ingested"], manifest["quarantined"]) == (120, 116, 4)
    assert manifest["ingested"] + manifest["quarantined"] == manifest["samples"]
    assert [shard["rows"] for shard in manifest["shards"]] == [49, 49, 18]


def test_a_whole_shard_of_non_finite_samples(local_root, tmp_path, digits_pool):
    x, y = digits_pool
    bad = dict.fromkeys(range(10, 20), np.nan)
    source = write_pool(tmp_path / "pool.npz", with_non_finite(x, bad), y)
    layout = RunLayout.create(local_root, "run")
    uris = ingest(layout, str(source), shard_size=10)

    keep = np.setdiff1d(np.arange(120), list(bad))
    ids, x_back, labels = reassemble(uris)
    np.testing.assert_array_equal(ids, keep)
    np.testing.assert_array_equal(x_back, x[keep])
    assert labels == y[keep].tolist()
    assert storage.read_table(layout.quarantine).column("sample_id").to_pylist() == sorted(bad)
    manifest = storage.read_json(layout.data_manifest)
    assert (manifest["ingested"], manifest["quarantined"]) == (110, 10)


# --- streaming -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npy", "npz+y", "parquet+label"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 49])
def test_small_chunks_give_identical_shards(tmp_path, digits_pool, kind, chunk_rows):
    x, y = digits_pool
    source = str(write_source(tmp_path, kind, with_non_finite(x, {5: np.nan, 77: np.inf}), y))
    whole = RunLayout.create(str(tmp_path / "runs"), "whole")
    chunked = RunLayout.create(str(tmp_path / "runs"), "chunked")
    whole_uris = ingest(whole, source, shard_size=50)
    chunked_uris = ingest(chunked, source, shard_size=50, chunk_rows=chunk_rows)

    assert len(chunked_uris) == len(whole_uris) == 3
    for whole_uri, chunked_uri in zip(whole_uris, chunked_uris, strict=True):
        assert storage.read_table(chunked_uri).equals(storage.read_table(whole_uri))
    assert storage.read_table(chunked.quarantine).equals(storage.read_table(whole.quarantine))
    assert storage.read_json(chunked.data_manifest) == storage.read_json(whole.data_manifest)


# --- errors ----------------------------------------------------------------------------


def _digits(n: int = 10) -> np.ndarray:
    return make_deterministic(1).random((n, 1, 8, 8)).astype(np.float32)


def _labels(n: int = 10) -> np.ndarray:
    return np.arange(n) % 10


def _npz(**arrays):
    def build(folder: Path) -> Path:
        np.savez(folder / "pool.npz", **arrays)
        return folder / "pool.npz"

    return build


def _npy(x):
    return lambda folder: write_pool(folder / "pool.npy", x)


def _parquet(table: pa.Table, name: str = "pool.parquet"):
    def build(folder: Path) -> Path:
        pq.write_table(table, folder / name)
        return folder / name

    return build


def _raw(name: str, data: bytes):
    def build(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return build


def _npz_bytes(folder: Path) -> bytes:
    """A valid .npz (x and y) as bytes, to cut short."""
    np.savez(folder / "whole.npz", x=_digits(), y=_labels())
    return (folder / "whole.npz").read_bytes()


def _fortran_npz(folder: Path) -> Path:
    np.savez(folder / "pool.npz", x=np.asfortranarray(_digits()[:, 0]))
    return folder / "pool.npz"


def _pickled_npy(folder: Path) -> Path:
    objects = np.array([[{"a": 1}, None], [None, 2]], dtype=object)
    np.save(folder / "pool.npy", objects, allow_pickle=True)
    return folder / "pool.npy"


def _noise(seed: int) -> bytes:
    return make_deterministic(seed).bytes(4096)


def _flat_x(rows: list[list[float]]) -> pa.Array:
    return pa.array(rows, pa.list_(pa.float32()))


ERROR_CASES = {
    "unknown format": (
        _raw("pool.bin", _noise(4)),
        r"cannot tell the format of pool\.bin \(it holds binary data of an unknown format\)",
    ),
    "misleading extension": (
        _raw("pool.npy", b"PAR1" + _noise(5) + b"PAR1"),
        r"pool\.npy is named like .* but holds a Parquet file; rename it",
    ),
    "npz without x": (
        _npz(inputs=_digits(), y=_labels()),
        r"pool\.npz has no array 'x' \(it has: inputs, y\); save inputs as x and labels as y",
    ),
    "labels length mismatch": (
        _npz(x=_digits(), y=_labels(9)),
        r"labels in pool\.npz have shape \(9,\) but there are 10 samples",
    ),
    "labels not 1-D": (
        _npz(x=_digits(), y=_labels().reshape(10, 1)),
        r"labels in pool\.npz have shape \(10, 1\) but there are 10 samples",
    ),
    "1-D x in npy": (
        _npy(np.arange(10, dtype=np.float32)),
        r"inputs in pool\.npy have shape \(10,\); expected \(N, \.\.\.\)",
    ),
    "1-D x in npz": (
        _npz(x=np.arange(10, dtype=np.float32)),
        r"inputs in pool\.npz have shape \(10,\); expected \(N, \.\.\.\)",
    ),
    "string x in npy": (
        _npy(np.array([["a", "b"], ["c", "d"]])),
        r"inputs in pool\.npy have dtype <U1; save them as a numeric array",
    ),
    "string x in npz": (
        _npz(x=np.array([["a", "b"], ["c", "d"]])),
        r"inputs in pool\.npz have dtype <U1; save them as a numeric array",
    ),
    "complex x in npz": (
        _npz(x=np.ones((4, 2), np.complex64)),
        r"inputs in pool\.npz have dtype complex64; save them as a numeric array",
    ),
    "string labels in npz": (
        _npz(x=_digits(2), y=np.array(["cat", "dog"])),
        r"labels in pool\.npz have dtype <U3; save them as a numeric array",
    ),
    "string labels in parquet": (
        _parquet(pa.table({"x": _flat_x([[0.0] * 4] * 2), "label": ["cat", "dog"]})),
        r"labels in pool\.parquet",
    ),
    "pickled objects in npy": (
        _pickled_npy,
        r"pool\.npy is not a readable \.npy array|inputs in pool\.npy have dtype object",
    ),
    "negative labels": (
        _npz(x=_digits(), y=_labels() - 1),
        r"labels in pool\.npz include negative values; use class indices 0\.\.K-1",
    ),
    "non-integer float labels": (
        _npz(x=_digits(), y=_labels() + 0.5),
        r"labels in pool\.npz are not whole numbers; give integer labels",
    ),
    "infinite labels": (
        _npz(x=_digits(), y=np.where(_labels() == 4, np.inf, _labels())),
        r"labels in pool\.npz are not whole numbers",
    ),
    "empty npy": (_npy(np.zeros((0, 1, 8, 8), np.float32)), r"pool\.npy holds no samples"),
    "empty npz": (
        _npz(x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64)),
        r"pool\.npz holds no samples; give a pool with at least one input",
    ),
    "empty parquet": (
        _parquet(pa.table({"x": _flat_x([])}).replace_schema_metadata({"testprio.shape": "[4]"})),
        r"pool\.parquet holds no samples",
    ),
    "noise named npz": (_raw("pool.npz", _noise(1)), r"pool\.npz is named like .* but holds"),
    "noise named npy": (_raw("pool.npy", _noise(2)), r"pool\.npy is named like .* but holds"),
    "noise named parquet": (
        _raw("pool.parquet", _noise(3)),
        r"pool\.parquet is named like a Parquet file but holds binary data of an unknown format",
    ),
    "corrupt npy header": (
        _raw("pool.npy", b"\x93NUMPY\x01\x00garbage"),
        r"pool\.npy is not a readable \.npy array",
    ),
    "corrupt parquet footer": (
        _raw("pool.parquet", b"PAR1" + _noise(6) + b"PAR1"),
        r"pool\.parquet is not a readable Parquet file",
    ),
    "parquet without x": (
        _parquet(pa.table({"pixels": _flat_x([[1.0, 2.0]]), "label": [1]})),
        r"pool\.parquet has no column 'x' \(it has: pixels, label\)",
    ),
    "parquet x not a list": (
        _parquet(pa.table({"x": pa.array([1.0, 2.0], pa.float32())})),
        r"column 'x' in pool\.parquet has type float; it must be a list of numbers",
    ),
    "parquet ragged x": (
        _parquet(
            pa.table({"x": _flat_x([[1.0, 2.0, 3.0], [1.0, 2.0], [1.0, 2.0, 3.0]])}),
        ),
        r"column 'x' in pool\.parquet holds rows of \[2, 3\] values but each sample should "
        r"have 3",
    ),
    "fortran-ordered npz": (
        _fortran_npz,
        r"array 'x\.npy' in pool\.npz is stored in Fortran order",
    ),
    "labels beyond int32": (
        _npz(x=_digits(), y=np.where(_labels() > 7, 2**31 + _labels(), _labels())),
        r"labels in pool\.npz include values from 2147483656 to 2147483657, above the largest "
        r"label a shard holds \(2147483647, int32\); use class indices 0\.\.K-1\.$",
    ),
    "float labels beyond int32": (
        _npz(x=_digits(), y=np.where(_labels() == 3, 2.0**40, _labels())),
        r"labels in pool\.npz include values from 1099511627776 to 1099511627776, above",
    ),
    "two label arrays in npz": (
        _npz(x=_digits(), label=_labels(), y=_labels()),
        r"pool\.npz has arrays named both 'label' and 'y', so the labels are ambiguous; keep "
        r"one of them or choose it with --label-column\.$",
    ),
    "two label columns in parquet": (
        _parquet(pa.table({"x": _flat_x([[0.0] * 4] * 2), "labels": [0, 1], "y": [1, 0]})),
        r"pool\.parquet has columns named both 'labels' and 'y'",
    ),
    "truncated npz": (
        lambda folder: _raw("pool.npz", _npz_bytes(folder)[:100])(folder),
        r"pool\.npz is a truncated or corrupt \.npz file \(its zip directory cannot be read\); "
        r"copy it again or re-save it",
    ),
    "npz without arrays": (
        _npz(),
        r"pool\.npz is an \.npz file with no arrays; save the inputs in it as x",
    ),
    "latin-1 csv": (
        _raw("pool.csv", "f0,café,label\n1,2,0\n".encode("latin-1")),
        r"pool\.csv is text but not UTF-8 \(likely Latin-1 or Windows-1252\); re-save it as "
        r"UTF-8",
    ),
    "latin-1 csv past the first block": (
        _raw("pool.csv", b"f0,label\n" + b"1,0\n" * 5000 + "é,1\n".encode("latin-1")),
        r"pool\.csv is not UTF-8 text past its first lines; re-save it as UTF-8",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_pools_raise_one_sentence(local_root, tmp_path, case):
    build, match = ERROR_CASES[case]
    source = build(tmp_path)
    before = source.read_bytes()
    layout = RunLayout.create(local_root, "run")
    with pytest.raises(TestprioError, match=match):
        ingest(layout, str(source), shard_size=4)
    assert not storage.exists(layout.data_manifest)
    assert all(name.startswith("shard-") for name in storage.list_names(layout.data_dir))
    assert source.read_bytes() == before  # inputs are never modified


@pytest.mark.parametrize("shard_size", [0, -3])
def test_shard_size_must_be_positive(local_root, tmp_path, digits_pool, shard_size):
    source = write_pool(tmp_path / "pool.npz", *digits_pool)
    layout = RunLayout.create(local_root, "run")
    with pytest.raises(
        TestprioError, match=rf"--shard-size {shard_size} must be a positive number of samples"
    ):
        ingest(layout, str(source), shard_size=shard_size)
    assert not storage.exists(layout.data_dir)


def _parquet_with_a_short_row(folder: Path, x: np.ndarray, short_row: int) -> Path:
    """A Parquet pool whose row ``short_row`` holds one value too few (a truncated npz is
    refused before any shard: its header's sample count is checked up front)."""
    rows = [list(row) for row in x.reshape(len(x), -1).astype(np.float32)]
    rows[short_row] = rows[short_row][:-1]
    table = pa.table({"x": pa.array(rows, pa.list_(pa.float32()))}).replace_schema_metadata(
        {b"testprio.shape": json.dumps(list(x.shape[1:])).encode()}
    )
    pq.write_table(table, folder / "pool.parquet")
    return folder / "pool.parquet"


@pytest.mark.parametrize("failure", ["short row", "negative label"])
def test_failure_late_in_the_pool_leaves_only_complete_shards(root, tmp_path, digits_pool, failure):
    x, y = digits_pool
    if failure == "short row":
        source = _parquet_with_a_short_row(tmp_path, x, 115)
        match = r"column 'x' in pool\.parquet holds rows of \[63, 64\] values"
    else:
        y = y.copy()
        y[110] = -1
        source, match = write_pool(tmp_path / "pool.npz", x, y), "include negative values"
    layout = RunLayout.create(root, "run")
    with pytest.raises(TestprioError, match=match):
        ingest(layout, str(source), shard_size=50, chunk_rows=10)
    # Shards 0 and 1 were complete before the failure; shard 2 was half written.
    assert storage.list_names(layout.data_dir) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert shard_rows([layout.data_shard(0), layout.data_shard(1)]) == [50, 50]
    assert not storage.exists(layout.data_manifest)
    if not root.startswith("gs://"):
        assert sorted(os.listdir(layout.data_dir)) == storage.list_names(layout.data_dir)


# --- memory ----------------------------------------------------------------------------

BIG_ROWS = 200_000
BIG_SHAPE = (1, 28, 28)
MAX_RSS_MB = 400

# Peak RSS from VmHWM, not ru_maxrss: Linux carries the forking parent's (pytest's) peak
# into a child's ru_maxrss across exec, and pytest just wrote a pool as large as the limit.
_MEASURE_INGEST = """
import sys
from testprio.ingest import ingest
from testprio.layout import RunLayout
ingest(RunLayout.create(sys.argv[1], "big"), sys.argv[2], shard_size=50_000)
with open("/proc/self/status") as status:
    fields = dict(line.split(":", 1) for line in status)
print(int(fields["VmHWM"].split()[0]) // 1024)
"""


def _big_chunks(step: int = 10_000):
    rng = make_deterministic(11)
    for start in range(0, BIG_ROWS, step):
        yield start, rng.random((min(step, BIG_ROWS - start), *BIG_SHAPE), dtype=np.float32)


def _write_big_npy(path: Path) -> Path:
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(BIG_ROWS, *BIG_SHAPE))
    for start, chunk in _big_chunks():
        x[start : start + len(chunk)] = chunk
    x.flush()
    del x
    return path


def _write_big_npz(path: Path) -> Path:
    header = {"descr": "<f4", "fortran_order": False, "shape": (BIG_ROWS, *BIG_SHAPE)}
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            for _, chunk in _big_chunks():
                member.write(chunk.tobytes())
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_ingest_memory_stays_below_the_pool_size(tmp_path, suffix):
    writer = _write_big_npy if suffix == ".npy" else _write_big_npz
    try:
        source = writer(tmp_path / f"big{suffix}")
        size_mb = source.stat().st_size / 2**20
        assert size_mb > 1.4 * MAX_RSS_MB
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE_INGEST, str(tmp_path / "runs"), str(source)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        peak_mb = int(result.stdout.split()[-1])
        manifest = storage.read_json(str(tmp_path / "runs" / "big" / "data" / "manifest.json"))
        assert manifest["ingested"] == BIG_ROWS
        assert len(manifest["shards"]) == 4
        assert peak_mb < MAX_RSS_MB, (
            f"ingesting a {size_mb:.0f} MB {suffix} pool peaked at {peak_mb} MB RSS"
        )
    finally:
        # A GB per run; pytest would keep the last three runs' tmp_path otherwise.
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_nan_and_null_labels_mean_unknown(local_root, tmp_path):
    """A partly labelled pool: NaN in .npz labels and nulls in a Parquet label column."""
    import pyarrow.parquet as pq

    x = _digits()
    y = np.where(_labels() == 4, np.nan, _labels())
    npz = tmp_path / "partly.npz"
    np.savez(npz, x=x, y=y)
    table = pa.table(
        {
            "x": pa.array(list(x.reshape(len(x), -1)), pa.list_(pa.float32())),
            "label": pa.array([None if np.isnan(v) else int(v) for v in y], pa.int64()),
        }
    )
    parquet = tmp_path / "partly.parquet"
    pq.write_table(table.replace_schema_metadata({"testprio.shape": "[1, 8, 8]"}), parquet)
    for index, source in enumerate([npz, parquet]):
        layout = RunLayout.create(local_root, f"run{index}")
        shards = ingest(layout, str(source), shard_size=1000)
        labels = storage.read_table(shards[0], columns=["label"]).column("label")
        assert labels.null_count == int(np.isnan(y).sum()) > 0
        assert labels.to_pylist() == [None if np.isnan(v) else int(v) for v in y]


# --- label names, and file content kept out of messages --------------------------------


@pytest.mark.parametrize("key", ["label", "labels", "y"])
def test_every_documented_label_name_is_read_from_an_npz(local_root, tmp_path, key):
    source = tmp_path / "pool.npz"
    np.savez(source, x=_digits(), **{key: _labels()})
    _, _, labels = reassemble(ingest(RunLayout.create(local_root, "run"), str(source)))
    assert labels == _labels().tolist()


def test_label_column_picks_one_of_two_label_arrays(local_root, tmp_path):
    source = tmp_path / "pool.npz"
    np.savez(source, x=_digits(), label=_labels(), y=9 - _labels())
    uris = ingest(RunLayout.create(local_root, "run"), str(source), label_column="y")
    assert reassemble(uris)[2] == (9 - _labels()).tolist()


SECRET = "ghp_Zq8Secret0Token1Value"

# A file that is not a pool, whose content must not reach an error or a quarantine reason
# (run.json and the report show both): kind -> (file name, bytes, ingest options).
SECRET_FILES = {
    "token with a second line": ("token", f"{SECRET}\nanother-{SECRET}\n", {}),
    "token as the only header": ("token", f"{SECRET},{SECRET}\n1,2\n", {}),
    "token and --label-column": ("token.csv", f"{SECRET}\n1\n", {"label_column": "label"}),
    "token in an unclosed quote": ("token.csv", f'f0,f1\n"{SECRET},1\n2,3\n', {}),
    "token cell and fail": ("pool.csv", f"f0,label\n{SECRET},1\n", {"on_bad_sample": "fail"}),
    "token header and fail": ("env", f"{SECRET}\n{SECRET}\n", {"on_bad_sample": "fail"}),
    "token in an npy header": ("pool.npy", f"\x93NUMPY\x01\x00{SECRET}", {}),
}


@pytest.mark.parametrize("case", list(SECRET_FILES))
def test_file_content_never_appears_in_errors_or_quarantine(local_root, tmp_path, case):
    file_name, text, options = SECRET_FILES[case]
    source = tmp_path / file_name
    source.write_text(text, encoding="latin-1")
    layout = RunLayout.create(local_root, "run")
    try:
        ingest(layout, str(source), **options)
    except TestprioError as exc:
        assert "Secret" not in str(exc), str(exc)
        assert str(exc).endswith(".") and str(exc).count("; ") <= 2
    if storage.exists(layout.quarantine):
        reasons = storage.read_table(layout.quarantine).to_pylist()
        assert reasons, "the test needs a quarantined sample"
        assert "Secret" not in json.dumps(reasons)


# --- .npz members are archive entries: byte budget, ratio, declared sizes ------------------


def test_an_npz_member_over_the_byte_budget_is_refused_before_reading(local_root, tmp_path):
    x = np.zeros((4096, 1, 8, 8), np.float32)  # 1 MiB expanded
    np.savez_compressed(tmp_path / "pool.npz", x=x)
    with pytest.raises(
        TestprioError,
        match=r"pool.npz expands to more than 524,288 bytes \(at entry 'x.npy'\); .* raise "
        r"--max-data-gb",
    ):
        ingest(
            RunLayout.create(local_root, "r"), str(tmp_path / "pool.npz"), max_data_gb=0.5 / 2**10
        )
    assert not os.path.exists(os.path.join(local_root, "r", "data"))


def test_an_npz_member_over_the_ratio_limit_is_refused(tmp_path):
    from testprio.ingest.archives import ArchiveLimits
    from testprio.ingest.readers import Columns, ReadLimits, open_pool

    np.savez_compressed(tmp_path / "pool.npz", x=np.zeros((8192, 1, 8, 8), np.float32))
    limits = ReadLimits(archive=ArchiveLimits(ratio_min_bytes=2**20))
    with pytest.raises(
        TestprioError,
        match=r"pool.npz expands [0-9,]+ times in all \(to 2,097,[0-9]+ bytes at entry "
        r"'x.npy'\), more than the limit of 200 times for a whole archive; this looks like a "
        r"compression bomb",
    ):
        open_pool(str(tmp_path / "pool.npz"), "npz", "pool.npz", Columns(), limits)
    # Stored (not compressed) arrays expand 1:1 and pass.
    np.savez(tmp_path / "stored.npz", x=np.zeros((8192, 1, 8, 8), np.float32))
    pool = open_pool(str(tmp_path / "stored.npz"), "npz", "stored.npz", Columns(), limits)
    assert pool.count == 8192


def _npy_claiming(rows: int, real_rows: int) -> bytes:
    """A .npy whose header says ``rows`` samples of 64 float32 but holds ``real_rows``."""
    import io

    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, 64)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + np.zeros((real_rows, 64), np.float32).tobytes()


@pytest.mark.parametrize("suffix", ["npy", "npz"])
def test_a_header_claiming_more_samples_than_the_file_holds_is_refused_at_once(
    local_root, tmp_path, suffix
):
    data = _npy_claiming(10**15, 3)
    path = tmp_path / f"pool.{suffix}"
    if suffix == "npy":
        path.write_bytes(data)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", data)
    with pytest.raises(
        TestprioError,
        match=rf"array '(x.npy|array)' in pool.{suffix} is truncated: its header declares "
        r"1,000,000,000,000,000 samples \(256,000,000,000,000,000 bytes\) but it holds "
        r"768 bytes; re-save the file",
    ):
        ingest(RunLayout.create(local_root, "r"), str(path))
    assert not os.path.exists(os.path.join(local_root, "r", "data"))  # refused before any shard


def test_ingest_removes_the_temporaries_an_interrupted_ingest_left(local_root, tmp_path):
    """A SIGKILL mid-write leaves the write's temporary beside its target; the next ingest
    of the run removes those of the files ingest writes, and nothing else."""
    layout = RunLayout.create(local_root, "r")
    data = Path(layout.data_dir)
    data.mkdir(parents=True)
    owned = [
        ".shard-00000.parquet.tmp-0123456789ab",
        ".shard-00012.parquet.tmp-ba9876543210",
        ".quarantine.parquet.tmp-00000000abcd",
        ".duplicates.parquet.tmp-ffffffffffff",
        ".manifest.json.tmp-0a0a0a0a0a0a",
    ]
    others = [".notes.txt.tmp-0123456789ab", "my.tmp-0123456789ab", ".shard-1.parquet.tmp-x"]
    for name in owned + others:
        (data / name).write_bytes(b"half written")
    x = make_deterministic(3).random((30, *SHAPE), dtype=np.float32)
    ingest(layout, str(write_pool(tmp_path / "pool.npy", x)), shard_size=20)
    assert sorted(p.name for p in data.iterdir() if ".tmp-" in p.name) == sorted(others)
    assert storage.exists(layout.data_manifest)
