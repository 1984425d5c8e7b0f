"""Ingest of real pools end to end: image folders, CSV, archives, remote sources, presets,
op lists, custom ops, quarantine kinds, duplicates, and the op record in run.json.

Every pool is made of real files written with Pillow, NumPy or the csv module in a
temporary folder. The invariant checked throughout: samples in = shard rows + quarantined.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import tarfile
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import IngestOptions, ingest, iter_shard_batches
from testprio.layout import RunLayout, start_run
from tests.conftest import BUCKET, make_deterministic


def _image(rng: np.random.Generator, size=(12, 10), mode="RGB") -> Image.Image:
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def make_image_folder(folder: Path, *, per_class: int = 4, seed: int = 0) -> Path:
    """Classes cat/ and dog/, PNG, BMP and PPM, all 12 wide x 10 high RGB; returns the folder."""
    rng = make_deterministic(seed)
    formats = ["png", "bmp", "png", "ppm"]
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            fmt = formats[i % len(formats)]
            _image(rng).save(folder / name / f"{i:02d}.{fmt}")
    return folder


def test_images_over_max_image_pixels_are_quarantined_naming_the_option(layout, tmp_path):
    folder = make_image_folder(tmp_path / "pets")  # 12 x 10 = 120 pixels each
    _image(make_deterministic(1), size=(20, 20)).save(folder / "dog" / "big.png")
    shards = ingest(layout, str(folder), shard_size=4, max_image_pixels=120)
    assert_accounted(layout, shards)
    ((row,),) = [[r for r in quarantine_of(layout) if r["source"] == "dog/big.png"]]
    assert row["kind"] == "unreadable"
    assert row["reason"] == (
        "image of 20 x 20 pixels (400), more than the limit of 120 pixels (a decompression "
        "bomb?); raise --max-image-pixels to read it"
    )
    assert manifest_of(layout)["quarantined"] == 1


def reassemble(shards: list[str]) -> tuple[np.ndarray, np.ndarray, list, list[str]]:
    ids, xs, labels, sources = [], [], [], []
    for uri in shards:
        for batch, x in iter_shard_batches(uri, 64, ("sample_id", "x", "label", "source")):
            ids.append(batch.column("sample_id").to_numpy())
            xs.append(x)
            labels += batch.column("label").to_pylist()
            sources += batch.column("source").to_pylist()
    return np.concatenate(ids), np.concatenate(xs), labels, sources


def manifest_of(layout: RunLayout) -> dict:
    return storage.read_json(layout.data_manifest)


def quarantine_of(layout: RunLayout) -> list[dict]:
    return storage.read_table(layout.quarantine).to_pylist()


def assert_accounted(layout: RunLayout, shards: list[str]) -> dict:
    """Samples in = shard rows + quarantined, ids 0..N-1 each exactly once."""
    manifest = manifest_of(layout)
    ids, _, _, _ = reassemble(shards)
    quarantined = [row["sample_id"] for row in quarantine_of(layout)]
    assert len(ids) + len(quarantined) == manifest["samples"]
    assert manifest["ingested"] == len(ids)
    assert manifest["quarantined"] == len(quarantined)
    assert sorted([*ids.tolist(), *quarantined]) == list(range(manifest["samples"]))
    return manifest


@pytest.fixture
def layout(local_root) -> RunLayout:
    return RunLayout.create(local_root, "run")


# --- image folders ------------------------------------------------------------------------


def test_image_folder_with_classes(layout, tmp_path):
    folder = make_image_folder(tmp_path / "pets")
    shards = ingest(layout, str(folder), shard_size=3, workers=2)
    manifest = assert_accounted(layout, shards)
    assert manifest["class_names"] == ["cat", "dog"]
    assert manifest["format"] == "images"
    assert manifest["sample_shape"] == [10, 12, 3]
    ids, x, labels, sources = reassemble(shards)
    assert labels == [0] * 4 + [1] * 4
    assert sources[0] == "cat/00.png" and sources[-1] == "dog/03.ppm"
    # Lossless formats: the shard holds exactly the pixels, as float32.
    expected = np.asarray(Image.open(folder / "dog" / "01.bmp"), dtype=np.float32)
    np.testing.assert_array_equal(x[5], expected)


def test_bad_images_are_quarantined_with_their_kind(layout, tmp_path):
    folder = make_image_folder(tmp_path / "pets")
    rng = make_deterministic(1)
    (folder / "cat" / "corrupt.png").write_bytes(rng.bytes(300))
    whole = (folder / "cat" / "00.png").read_bytes()
    (folder / "cat" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    _image(rng, size=(20, 20)).save(folder / "dog" / "big.png")
    Image.new("RGB", (12, 10), (7, 7, 7)).save(folder / "dog" / "blank.png")
    _image(rng, mode="L").save(folder / "dog" / "gray.png")  # converted, not quarantined
    shards = ingest(layout, str(folder), shard_size=4)
    manifest = assert_accounted(layout, shards)
    by_source = {row["source"]: row for row in quarantine_of(layout)}
    assert {name: row["kind"] for name, row in by_source.items()} == {
        "cat/corrupt.png": "unreadable",
        "cat/truncated.png": "unreadable",
        "dog/big.png": "shape",
        "dog/blank.png": "constant",
    }
    assert "(20, 20, 3)" in by_source["dog/big.png"]["reason"]
    assert manifest["quarantine_kinds"] == {"constant": 1, "shape": 1, "unreadable": 2}
    _, x, _, sources = reassemble(shards)
    gray = x[sources.index("dog/gray.png")]
    assert gray.shape == (10, 12, 3)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # R = G = B


def test_on_bad_sample_fail_stops_at_the_first_bad_sample(layout, tmp_path):
    folder = make_image_folder(tmp_path / "pets")
    (folder / "dog" / "02.png").write_bytes(b"not an image at all")
    with pytest.raises(
        TestprioError,
        match=r"sample 6 \(dog/02\.png\) of pets/ cannot be used: not a readable image",
    ):
        ingest(layout, str(folder), on_bad_sample="fail")
    assert not storage.exists(layout.data_manifest)
    assert not storage.exists(layout.quarantine)


def test_parallel_decoding_gives_the_same_shards(local_root, tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "pets", per_class=15)
    (folder / "dog" / "bad.png").write_bytes(b"broken")
    results = []
    # One thread; three threads; two worker processes (any folder size decodes in processes).
    for run, workers, min_files in (("t1", 1, 10**9), ("t3", 3, 10**9), ("p2", 2, 0)):
        monkeypatch.setattr("testprio.ingest.stage.PROCESS_DECODING_MIN_FILES", min_files)
        layout = RunLayout.create(local_root, run)
        shards = ingest(layout, str(folder), shard_size=7, workers=workers, chunk_rows=4)
        results.append((*reassemble(shards), quarantine_of(layout), manifest_of(layout)))
    for other in results[1:]:
        np.testing.assert_array_equal(results[0][0], other[0])
        np.testing.assert_array_equal(results[0][1], other[1])
        assert results[0][2:5] == other[2:5]
        assert results[0][5]["duplicates"] == other[5]["duplicates"]


def test_image_preset_on_a_folder(layout, tmp_path):
    folder = tmp_path / "digits"
    (folder / "3").mkdir(parents=True)
    (folder / "7").mkdir(parents=True)
    rng = make_deterministic(2)
    for label in ("3", "7"):
        for i in range(3):
            _image(rng, size=(40, 30)).save(folder / label / f"{i}.png")
    shards = ingest(layout, str(folder), preset="mnist")
    manifest = assert_accounted(layout, shards)
    assert manifest["sample_shape"] == [1, 28, 28]
    _, x, labels, _ = reassemble(shards)
    assert labels == [3, 3, 3, 7, 7, 7]  # numeric class folders keep their number
    assert x.min() >= (0 - 0.1307) / 0.3081 - 1e-5 and x.max() <= (1 - 0.1307) / 0.3081 + 1e-5


def test_duplicates_are_flagged_and_kept(layout, tmp_path):
    folder = make_image_folder(tmp_path / "pets")
    (folder / "dog" / "copy.png").write_bytes((folder / "cat" / "01.bmp").read_bytes())
    Image.open(folder / "cat" / "00.png").save(folder / "dog" / "same-pixels.bmp")
    shards = ingest(layout, str(folder))
    manifest = assert_accounted(layout, shards)
    assert manifest["duplicates"] == 2
    table = storage.read_table(layout.duplicates).to_pylist()
    _, _, _, sources = reassemble(shards)
    pairs = {sources[row["sample_id"]]: sources[row["duplicate_of"]] for row in table}
    assert pairs == {"dog/copy.png": "cat/01.bmp", "dog/same-pixels.bmp": "cat/00.png"}


# --- computed statistics and the op record ---------------------------------------------------


def test_computed_statistics_are_recorded_in_run_json(local_root, tmp_path):
    rng = make_deterministic(3)
    x = rng.normal(5.0, 3.0, (300, 4, 4, 3)).astype(np.float32)
    np.save(tmp_path / "pool.npy", x)
    layout = RunLayout.create(local_root, "run")
    start_run(layout, {"data": "pool.npy"})
    ops = json.dumps([{"op": "standardize"}, {"op": "layout", "to": "NCHW"}])
    shards = ingest(layout, str(tmp_path / "pool.npy"), ops=ops, chunk_rows=64)
    _, out, _, _ = reassemble(shards)
    expected = (x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-4)
    record = storage.read_json(layout.run_json)["preprocessing"]
    assert record[0]["op"] == "standardize"
    np.testing.assert_allclose(record[0]["mean"], x.mean(axis=(0, 1, 2)), rtol=1e-5)
    assert manifest_of(layout)["preprocessing"] == record
    # The record reproduces the run: the same ops with the statistics given.
    again = RunLayout.create(local_root, "again")
    shards_again = ingest(again, str(tmp_path / "pool.npy"), ops=json.dumps(record))
    np.testing.assert_array_equal(reassemble(shards_again)[1], out)


def test_value_range_quarantines_samples_outside_it(layout, tmp_path):
    x = np.full((6, 2, 2), 10.0, np.float32) + np.arange(4, dtype=np.float32).reshape(2, 2)
    x[2, 0, 0] = 300.0
    x[4, 1, 1] = -1.0
    np.save(tmp_path / "pool.npy", x)
    shards = ingest(layout, str(tmp_path / "pool.npy"), value_range=(0.0, 255.0))
    assert_accounted(layout, shards)
    rows = quarantine_of(layout)
    assert [(r["sample_id"], r["kind"]) for r in rows] == [(2, "out_of_range"), (4, "out_of_range")]
    assert "from 11 to 300 outside the declared range [0, 255]" in rows[0]["reason"]


def test_nan_after_preprocessing_is_quarantined(layout, tmp_path):
    x = np.ones((5, 3), np.float32) * np.arange(1, 6, dtype=np.float32)[:, None]
    x[3] = [1.0, -1.0, 2.0]
    np.save(tmp_path / "pool.npy", x)
    custom = tmp_path / "log_op.py"
    custom.write_text("import numpy as np\n\ndef op(x):\n    return np.log(x)\n")
    shards = ingest(layout, str(tmp_path / "pool.npy"), custom_ops=str(custom))
    assert_accounted(layout, shards)
    assert [(r["sample_id"], r["kind"]) for r in quarantine_of(layout)] == [(3, "non_finite")]
    _, out, _, _ = reassemble(shards)
    np.testing.assert_allclose(out[0], np.log(x[0]), rtol=1e-6)


def test_custom_op_is_recorded_with_its_hash(local_root, tmp_path):
    np.save(tmp_path / "pool.npy", np.arange(24, dtype=np.float32).reshape(4, 6))
    source = "import numpy as np\n\n\ndef op(x):\n    return x[:, ::-1] * 2.0\n"
    (tmp_path / "flip.py").write_text(source)
    layout = RunLayout.create(local_root, "run")
    start_run(layout, {})
    ops = json.dumps([{"op": "scale", "divide": 2}, {"op": "custom"}, {"op": "clip", "max": 20}])
    shards = ingest(
        layout, str(tmp_path / "pool.npy"), ops=ops, custom_ops=str(tmp_path / "flip.py")
    )
    _, out, _, _ = reassemble(shards)
    expected = np.minimum(np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::-1], 20)
    np.testing.assert_array_equal(out, expected)
    record = storage.read_json(layout.run_json)["preprocessing"]
    assert [op["op"] for op in record] == ["scale", "custom", "clip"]
    assert record[1]["sha256"] == hashlib.sha256(source.encode()).hexdigest()


def test_rejected_custom_op_fails_before_any_shard(layout, tmp_path):
    np.save(tmp_path / "pool.npy", np.ones((4, 3), np.float32))
    (tmp_path / "evil.py").write_text("import os\n\ndef op(x):\n    return x\n")
    with pytest.raises(TestprioError, match=r"evil\.py.*line 1"):
        ingest(layout, str(tmp_path / "pool.npy"), custom_ops=str(tmp_path / "evil.py"))
    assert not storage.exists(layout.data_manifest)
    assert not storage.list_names(layout.data_dir)


# --- CSV, archives, remote sources -------------------------------------------------------


def test_csv_pool(layout, tmp_path):
    lines = ["f1,f2,label", "1,2,0", "3,x,1", "5,6,", "7,,1"]
    (tmp_path / "pool.csv").write_text("\n".join(lines) + "\n")
    shards = ingest(layout, str(tmp_path / "pool.csv"))
    manifest = assert_accounted(layout, shards)
    assert manifest["sample_shape"] == [2]
    _, x, labels, sources = reassemble(shards)
    np.testing.assert_array_equal(x, [[1, 2], [5, 6]])
    assert labels == [0, None]
    assert {(r["kind"], r["sample_id"]) for r in quarantine_of(layout)} == {
        ("unreadable", 1),
        ("non_finite", 3),
    }


def test_zip_of_an_image_folder(layout, tmp_path):
    folder = make_image_folder(tmp_path / "pets")
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.rglob("*")):
            handle.write(path, path.relative_to(tmp_path))
    before = archive.read_bytes()
    shards = ingest(layout, str(archive), preset="cifar10")
    manifest = assert_accounted(layout, shards)
    assert manifest["class_names"] == ["cat", "dog"]
    assert manifest["sample_shape"] == [3, 32, 32]
    assert archive.read_bytes() == before


def test_hostile_archive_fails_the_ingest(layout, tmp_path):
    archive = tmp_path / "evil.tar"
    payload = tmp_path / "payload.npy"
    np.save(payload, np.ones((2, 2), np.float32))
    with tarfile.open(archive, "w") as handle:
        handle.add(payload, arcname="../escape.npy")
    with pytest.raises(TestprioError, match=r"evil\.tar"):
        ingest(layout, str(archive))
    assert not (tmp_path.parent / "escape.npy").exists()


@pytest.fixture
def http_folder(tmp_path):
    """Serves ``tmp_path / "www"`` on a loopback port; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_source(layout, http_folder, digits_pool):
    folder, base = http_folder
    x, y = digits_pool
    np.savez(folder / "pool.npz", x=x, y=y)
    with pytest.raises(TestprioError, match=r"pool.npz resolves to 127.0.0.1, a loopback"):
        ingest(layout, f"{base}/pool.npz", shard_size=50)  # refused unless allowed
    shards = ingest(layout, f"{base}/pool.npz", shard_size=50, allow_private_urls=True)
    manifest = assert_accounted(layout, shards)
    assert manifest["samples"] == len(x)
    _, out, labels, _ = reassemble(shards)
    np.testing.assert_array_equal(out, x)
    assert labels == y.tolist()


def test_gcs_image_folder(gcs_emulator, layout, tmp_path):
    folder = make_image_folder(tmp_path / "pets")
    base = f"gs://{BUCKET}/pools/pets"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        storage.copy_file(str(path), f"{base}/{path.relative_to(folder).as_posix()}")
    shards = ingest(layout, base)
    manifest = assert_accounted(layout, shards)
    assert manifest["class_names"] == ["cat", "dog"]
    assert manifest["samples"] == 8


def test_options_are_checked_before_reading(layout, tmp_path):
    np.save(tmp_path / "pool.npy", np.ones((4, 3), np.float32))
    cases = {
        "on_bad_sample": ("skip", r"--on-bad-sample 'skip' is not one of quarantine, fail"),
        "preset": ("mnst", r"mnst"),
        "ops": ("[{", r"--ops"),
    }
    for name, (value, match) in cases.items():
        with pytest.raises(TestprioError, match=match):
            ingest(layout, str(tmp_path / "pool.npy"), IngestOptions(**{name: value}))
    assert not storage.exists(layout.data_manifest)


def test_shards_have_one_row_group_schema(layout, tmp_path):
    folder = make_image_folder(tmp_path / "pets")
    (shard, *_) = ingest(layout, str(folder), preset="imagenet", shard_size=100)
    schema = pq.read_schema(shard)
    assert json.loads(schema.metadata[b"testprio.shape"]) == [3, 224, 224]
    row_group = pq.ParquetFile(shard).metadata.row_group(0)
    columns = {row_group.column(i).path_in_schema: row_group.column(i) for i in range(3)}
    assert columns["sample_id"].statistics.has_min_max
    assert columns["x"].statistics is None  # no two whole samples per row group in the footer


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("150000 100000\n", None, 2),  # 1.5 CPUs -> 2 workers
        ("50000 100000\n", None, 1),
        ("max 100000\n", None, None),  # no limit: the affinity count
        (None, ("100000", "100000"), 1),  # cgroup v1: 1 CPU
        (None, ("-1", "100000"), None),
    ],
)
def test_available_cpus_honours_a_container_cpu_limit(tmp_path, monkeypatch, v2, v1, expected):
    import os

    from testprio.ingest import stage as ingest_stage

    files = []
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
        files.append((str(tmp_path / "cpu.max"), None))
    if v1 is not None:
        (tmp_path / "quota").write_text(v1[0])
        (tmp_path / "period").write_text(v1[1])
        files.append((str(tmp_path / "quota"), str(tmp_path / "period")))
    monkeypatch.setattr(ingest_stage, "CGROUP_CPU_LIMITS", tuple(files))
    affinity = len(os.sched_getaffinity(0))
    assert ingest_stage.available_cpus() == (
        affinity if expected is None else min(expected, affinity)
    )
