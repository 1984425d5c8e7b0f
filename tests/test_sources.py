"""Sources: where the pool is (local, gs://, http(s)://, archives) and the CSV and image readers.

Everything runs on real files made in the test: images written by Pillow, archives by
zipfile/tarfile (hostile ones crafted entry by entry or patched byte by byte), a real HTTP
server on loopback and the GCS emulator.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import http.server
import io
import logging
import os
import re
import socket
import struct
import tarfile
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import archives, csv_reader, sources
from testprio.ingest.pool import BadSample
from testprio.ingest.sources import ArchiveLimits, DownloadLimits
from tests.conftest import BUCKET, make_deterministic

RED, BLUE, GRAY = (255, 0, 0), (0, 0, 255), 77


# --- helpers -------------------------------------------------------------------------------


def _image(path: Path, color, *, mode: str = "RGB", size=(6, 5), **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def _digest(path: Path) -> str:
    """A hash of a file, or of every path and byte under a folder."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*"))
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder.parent).as_posix())
    return target


def _tar_folder(folder: Path, target: Path, mode: str = "w") -> Path:
    with tarfile.open(target, mode) as archive:
        archive.add(folder, folder.name)
    return target


def _tar_with(target: Path, *entries: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(target, "w") as archive:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return target


def _tar_info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def _zip_with(target: Path, *entries: tuple[str | zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry, data in entries:
            archive.writestr(entry, data)
    return target


def _patch_central_directory(path: Path, offset: int, fmt: str, value: int) -> None:
    """Overwrite one field of the (only) central directory record of a zip."""
    data = bytearray(path.read_bytes())
    record = data.index(b"PK\x01\x02")
    struct.pack_into(fmt, data, record + offset, value)
    path.write_bytes(bytes(data))


def _png_bytes(width: int, height: int, color, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture
def scratch_root(tmp_path, monkeypatch) -> Path:
    """Where resolve's temporary folders go, so a test can see that they are removed."""
    root = tmp_path / "scratch"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def digits(tmp_path) -> Path:
    """An image folder with two classes in every supported way of storing an image."""
    root = tmp_path / "digits"
    _image(root / "cat" / "a_red.png", RED)
    _image(root / "cat" / "b_blue.jpg", BLUE, quality=95)
    _image(root / "cat" / "nested" / "c_red.bmp", RED)
    _image(root / "dog" / "d_blue.ppm", BLUE)
    frames = [Image.new("RGB", (6, 5), RED), Image.new("RGB", (6, 5), BLUE)]
    frames[0].save(root / "dog" / "e_anim.gif", save_all=True, append_images=frames[1:])
    _image(root / "dog" / "f_gray.png", GRAY, mode="L")
    _image(root / "dog" / "g_rgba.png", (10, 20, 30, 0), mode="RGBA")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    return root


# --- image folders -------------------------------------------------------------------------


def test_class_folders_give_labels_in_class_then_path_order(digits, caplog):
    with caplog.at_level(logging.WARNING, logger="testprio.ingest"):
        pool = sources.open_image_folder(str(digits), "digits/")
    assert pool.files == [
        "cat/a_red.png",
        "cat/b_blue.jpg",
        "cat/nested/c_red.bmp",
        "dog/d_blue.ppm",
        "dog/e_anim.gif",
        "dog/f_gray.png",
        "dog/g_rgba.png",
    ]
    assert pool.labels == [0, 0, 0, 1, 1, 1, 1]
    assert pool.class_names == ["cat", "dog"]
    assert pool.count == 7 and pool.has_labels and pool.root == str(digits)
    assert "skipped 1 non-image file(s) in digits/" in caplog.text


def test_every_image_decodes_to_the_pool_mode(digits):
    pool = sources.open_image_folder(str(digits), "digits/")
    images = {path: pool.load(path) for path in pool.files}
    for path, image in images.items():
        assert image.shape == (5, 6, 3) and image.dtype == np.uint8, path
    assert (images["cat/a_red.png"] == RED).all()
    assert np.abs(images["cat/b_blue.jpg"].astype(int) - BLUE).max() <= 3  # JPEG is lossy
    assert (images["cat/nested/c_red.bmp"] == RED).all()
    assert (images["dog/d_blue.ppm"] == BLUE).all()
    assert (images["dog/e_anim.gif"] == RED).all()  # the first frame
    assert (images["dog/f_gray.png"] == GRAY).all()  # gray in an RGB pool: R = G = B
    assert (images["dog/g_rgba.png"] == (10, 20, 30)).all()  # alpha dropped


def test_load_is_thread_safe_and_deterministic(digits):
    pool = sources.open_image_folder(str(digits), "digits/")
    alone = [pool.load(path) for path in pool.files]
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        together = list(executor.map(pool.load, pool.files * 4))
    for i, image in enumerate(together):
        np.testing.assert_array_equal(image, alone[i % len(alone)])


def test_numeric_class_folders_are_their_own_labels(tmp_path):
    for label in ("10", "0", "1"):
        _image(tmp_path / "pool" / label / "x.png", RED)
    pool = sources.open_image_folder(str(tmp_path / "pool"), "pool/")
    assert pool.files == ["0/x.png", "1/x.png", "10/x.png"]
    assert pool.labels == [0, 1, 10]
    assert len(pool.class_names) == 11 and pool.class_names[10] == "10"


def test_numeric_class_folders_that_mean_the_same_class_are_an_error(tmp_path):
    for label in ("1", "01"):
        _image(tmp_path / "pool" / label / "x.png", RED)
    with pytest.raises(TestprioError, match=r"'01' and '1' in pool/ both mean class 1"):
        sources.open_image_folder(str(tmp_path / "pool"), "pool/")


def test_huge_numeric_class_folder_is_an_error(tmp_path):
    _image(tmp_path / "pool" / "2024000" / "x.png", RED)
    with pytest.raises(TestprioError, match=r"'2024000' in pool/ is a number too large"):
        sources.open_image_folder(str(tmp_path / "pool"), "pool/")


def test_flat_grayscale_folder_has_no_labels_and_converts_color_to_gray(tmp_path):
    _image(tmp_path / "flat" / "a.png", GRAY, mode="L")
    _image(tmp_path / "flat" / "b.png", (255, 255, 255))
    pool = sources.open_image_folder(str(tmp_path / "flat"), "flat/")
    assert pool.labels is None and pool.class_names is None and not pool.has_labels
    assert pool.load("a.png").shape == (5, 6) and (pool.load("a.png") == GRAY).all()
    assert (pool.load("b.png") == 255).all() and pool.load("b.png").shape == (5, 6)


def test_sixteen_bit_gray_is_scaled_to_eight_bits(tmp_path):
    path = tmp_path / "flat" / "deep.png"
    path.parent.mkdir()
    Image.fromarray(np.full((5, 6), 65535, np.uint16)).save(path)
    pool = sources.open_image_folder(str(path.parent), "flat/")
    assert pool.load("deep.png").dtype == np.uint8 and (pool.load("deep.png") == 255).all()


def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A PNG header claiming a huge image (its pixel data is never reached)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_unreadable_images_are_bad_samples_with_a_reason(tmp_path):
    folder = tmp_path / "flat"
    _image(folder / "a_good.png", RED)
    (folder / "b_corrupt.png").write_bytes(make_deterministic(1).bytes(300))
    noise = make_deterministic(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "full.png")
    whole = (folder / "full.png").read_bytes()
    (folder / "c_truncated.png").write_bytes(whole[: len(whole) * 6 // 10])
    (folder / "full.png").unlink()
    _bomb_png(folder / "d_bomb.png", 20_000, 20_000)  # Pillow refuses it outright
    _bomb_png(folder / "e_bomb.png", 10_000, 10_000)  # Pillow only warns; load refuses
    pool = sources.open_image_folder(str(folder), "flat/")
    assert pool.load("a_good.png").shape == (5, 6, 3)

    def expect_warning(path: str):
        # Pillow warns (once per place) about images between one and two times its limit.
        if path == "e_bomb.png":
            return pytest.warns(Image.DecompressionBombWarning)
        return contextlib.nullcontext()

    reasons = {}
    for path in pool.files[1:]:
        with pytest.raises(BadSample) as caught, expect_warning(path):
            pool.load(path)
        reasons[path] = str(caught.value)
    assert reasons["b_corrupt.png"].startswith("not a readable image (")
    assert reasons["c_truncated.png"] == "truncated image file"
    assert reasons["d_bomb.png"] == "image too large (decompression bomb)"
    assert reasons["e_bomb.png"] == (
        "image of 10,000 x 10,000 pixels (100,000,000), more than the limit of 40,000,000 "
        "pixels (a decompression bomb?); raise --max-image-pixels to read it"
    )


def test_images_over_the_pixel_limit_are_bad_samples_naming_the_option(tmp_path):
    folder = tmp_path / "flat"
    _image(folder / "a_small.png", RED, size=(100, 80))
    _bomb_png(folder / "b_42mp.png", 6_500, 6_500)  # under Pillow's own limits
    pool = sources.open_image_folder(str(folder), "flat/")
    with pytest.raises(BadSample) as caught:
        pool.load("b_42mp.png")
    assert str(caught.value) == (
        "image of 6,500 x 6,500 pixels (42,250,000), more than the limit of 40,000,000 "
        "pixels (a decompression bomb?); raise --max-image-pixels to read it"
    )
    raised = sources.open_image_folder(str(folder), "flat/", max_pixels=50_000_000)
    with pytest.raises(BadSample, match=r"^not a readable image"):  # decoded: no pixel data
        raised.load("b_42mp.png")
    assert sources.open_image_folder(str(folder), "flat/", max_pixels=8_000).load(
        "a_small.png"
    ).shape == (80, 100, 3)
    with pytest.raises(
        TestprioError,
        match=r"none of the 2 images in flat/ can be decoded \(the first, 'a_small.png': image "
        r"of 100 x 80 pixels \(8,000\), more than the limit of 7,999 pixels \(a decompression "
        r"bomb\?\); raise --max-image-pixels to read it\)",
    ):
        sources.open_image_folder(str(folder), "flat/", max_pixels=7_999)


def test_mode_comes_from_the_first_image_that_decodes(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "a_corrupt.png").write_bytes(b"not a png at all")
    _image(folder / "b_gray.png", GRAY, mode="L")
    _image(folder / "c_color.png", RED)
    pool = sources.open_image_folder(str(folder), "flat/")
    assert pool.load("c_color.png").shape == (5, 6)


def test_folder_of_undecodable_images_is_an_error(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"nope")
    with pytest.raises(TestprioError, match=r"none of the 1 images in flat/ can be decoded"):
        sources.open_image_folder(str(tmp_path / "flat"), "flat/")


def test_images_and_class_folders_mixed_at_the_top_are_an_error(tmp_path):
    _image(tmp_path / "pool" / "cat" / "a.png", RED)
    _image(tmp_path / "pool" / "stray.png", RED)
    with pytest.raises(TestprioError, match=r"pool/ mixes image files \('stray.png'\) and folders"):
        sources.open_image_folder(str(tmp_path / "pool"), "pool/")


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "pool" / "readme.txt").write_text("hi")
    with pytest.raises(TestprioError, match=r"pool/ holds no images; put image files"):
        sources.open_image_folder(str(tmp_path / "pool"), "pool/")


# --- CSV -----------------------------------------------------------------------------------


def _csv(tmp_path: Path, text: str, name: str = "pool.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _read_all(pool, rows: int = 1000):
    chunks = list(pool.read_chunks(rows))
    x = np.concatenate([c.x for c in chunks])
    y = None if chunks[0].y is None else np.concatenate([c.y for c in chunks])
    sources_ = [s for c in chunks for s in c.sources]
    bad, offset = {}, 0
    for chunk in chunks:
        bad.update({offset + i: r for i, r in (chunk.bad or {}).items()})
        offset += len(chunk.x)
    return x, y, sources_, bad


def test_csv_with_features_and_label(tmp_path):
    pool = sources.read_csv(_csv(tmp_path, "f0,f1,label\n1,2.5,0\n-3,4e1,1\n"), "pool.csv")
    assert pool.count is None and pool.sample_shape == (2,) and pool.has_labels
    x, y, names, bad = _read_all(pool)
    np.testing.assert_array_equal(x, [[1, 2.5], [-3, 40]])
    np.testing.assert_array_equal(y, [0, 1])
    assert names == ["pool.csv:line 2", "pool.csv:line 3"] and bad == {}


def test_csv_without_label_column(tmp_path):
    pool = sources.read_csv(_csv(tmp_path, "a,b,c\n1,2,3\n"), "pool.csv")
    assert not pool.has_labels and pool.sample_shape == (3,)
    x, y, _, _ = _read_all(pool)
    assert y is None and x.tolist() == [[1, 2, 3]]


def test_csv_label_column_by_name_and_y_by_default(tmp_path):
    path = _csv(tmp_path, "target,y,f\n1,5,7\n")
    x, y, _, _ = _read_all(sources.read_csv(path, "pool.csv", label_column="target"))
    assert x.tolist() == [[5, 7]] and y.tolist() == [1]
    x, y, _, _ = _read_all(sources.read_csv(path, "pool.csv"))
    assert x.tolist() == [[1, 7]] and y.tolist() == [5]
    with pytest.raises(
        TestprioError, match=r"none of the 3 columns in the header row of pool.csv is named 'class'"
    ):
        sources.read_csv(path, "pool.csv", label_column="class")


def test_csv_bad_cells_empty_cells_and_line_numbers(tmp_path):
    text = "f0,f1,label\n1,2,0\n\n3,abc,1\n4,,1\n5,6\n7,8,\n9,10,cat\n\n"
    x, y, names, bad = _read_all(sources.read_csv(_csv(tmp_path, text), "pool.csv"))
    assert names == [f"pool.csv:line {n}" for n in (2, 4, 5, 6, 7, 8)]  # blank lines skipped
    assert bad == {
        1: "a value that is not a number in column 2",  # cell text stays out
        3: "row has 2 values but the header has 3 columns",
        5: "a value that is not a number in column 3",
    }
    assert np.isnan(x[2, 1]) and x[2, 0] == 4 and 2 not in bad  # empty cell -> NaN
    assert np.isnan(y[4]) and 4 not in bad  # empty label -> unknown


def test_csv_streams_in_chunks_equal_to_the_whole(tmp_path, monkeypatch):
    # Tiny parser blocks, so that rows and dropped lines straddle many block boundaries.
    monkeypatch.setattr(csv_reader, "CSV_BLOCK_BYTES", 64)
    rng = make_deterministic(3)
    lines = ["f0,f1,f2,label"]
    for i in range(100):
        row = [f"{v:.3f}" for v in rng.normal(size=3)] + [str(i % 4)]
        lines.append(",".join(row[:2]) if i % 17 == 5 else ",".join(row))
    path = _csv(tmp_path, "\n".join(lines) + "\n")
    pool = sources.read_csv(path, "pool.csv")
    whole = _read_all(pool, rows=1000)
    chunks = list(pool.read_chunks(7))
    assert [len(c.x) for c in chunks] == [7] * 14 + [2]
    pieces = _read_all(pool, rows=7)
    np.testing.assert_array_equal(pieces[0], whole[0])
    np.testing.assert_array_equal(pieces[1], whole[1])
    assert pieces[2] == whole[2] == [f"pool.csv:line {n}" for n in range(2, 102)]
    assert pieces[3] == whole[3] and sorted(whole[3]) == [i for i in range(100) if i % 17 == 5]
    first_good = np.array([float(v) for v in lines[1].split(",")[:3]])
    np.testing.assert_array_equal(whole[0][0], first_good)


def test_csv_with_pandas_default_header_is_accepted(tmp_path):
    pool = sources.read_csv(_csv(tmp_path, "0,1,2\n4,5,6\n"), "pool.csv")
    assert _read_all(pool)[0].tolist() == [[4, 5, 6]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3\n4,5,6\n", r"the first line of pool.csv holds numbers, not column names"),
        (",a,b\n0,1,2\n", r"column 1 of pool.csv has no name"),
        ("a,b,a\n1,2,3\n", r"column 3 of pool.csv has the same name as column 1"),
        ("label\n1\n", r"pool.csv has no feature columns \(only 'label'\)"),
        ("", r"pool.csv has no header row"),
    ],
)
def test_csv_header_errors(tmp_path, text, message):
    with pytest.raises(TestprioError, match=message):
        sources.read_csv(_csv(tmp_path, text), "pool.csv")


def test_csv_that_is_not_utf8_is_an_error(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_bytes("größe,b\n1,2\n".encode("latin-1"))
    with pytest.raises(TestprioError, match=r"pool.csv is not UTF-8 text"):
        sources.read_csv(str(path), "pool.csv")


# --- detect_format and check_data_uri -------------------------------------------------------


@pytest.fixture
def formats(tmp_path) -> dict[str, Path]:
    x = np.zeros((3, 2), np.float32)
    files = {
        "pool.dat": _npy_bytes(x),  # content beats an unknown extension
        "pool.zip": _npz_bytes(x=x),  # a renamed .npz is an .npz
        "noext": _npz_bytes(x=x, y=np.zeros(3)),
        "data.txt": b"a,b\n1,2\n",
        "pool.npy": _npy_bytes(x),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    paths["pool.pq"] = tmp_path / "pool.pq"
    pq.write_table(pa.table({"x": [[1.0, 2.0]]}), paths["pool.pq"])
    return paths


def test_detect_format_reads_content(formats, tmp_path):
    found = {name: sources.detect_format(str(path), name) for name, path in formats.items()}
    assert found == {
        "pool.dat": "npy",
        "pool.zip": "npz",
        "noext": "npz",
        "data.txt": "csv",
        "pool.npy": "npy",
        "pool.pq": "parquet",
    }
    assert sources.detect_format(str(tmp_path), "pool/") == "images"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("pool.npy", "png", r"pool.npy is named like a NumPy .npy array but holds an image"),
        ("pool.csv", "npy", r"pool.csv is named like text \(CSV\) but holds a NumPy .npy array"),
        ("pool.npz", "zip", r"pool.npz is named like a NumPy .npz file but holds a zip archive"),
        ("pool.parquet", "text", r"pool.parquet is named like a Parquet file but holds text"),
        ("cat.png", "png", r"cat.png is a single image; put the images in a folder"),
        ("pool.bin", "random", r"cannot tell the format of pool.bin \(it holds binary data"),
        ("pool.npy", "empty", r"pool.npy is empty"),
        (
            "pool.zip",
            "tar",
            r"pool.zip is a tar archive; open it with testprio.ingest.sources.resolve",
        ),
    ],
)
def test_detect_format_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "png":
        _image(path, RED, format="PNG")
    elif content == "tar":
        _tar_with(path, (_tar_info("a.txt"), b"a"))
    else:
        data = {
            "npy": _npy_bytes(np.zeros(3)),
            "zip": _zip_bytes(("notes.txt", b"hi")),
            "text": b"a,b\n",
            "random": make_deterministic(4).bytes(200).replace(b"\x00", b"\x01") + b"\x00",
            "empty": b"",
        }[content]
        path.write_bytes(data)
    with pytest.raises(TestprioError, match=message):
        sources.detect_format(str(path), name)


def _zip_bytes(*entries: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def test_check_data_uri_accepts_without_downloading_or_extracting(
    formats, tmp_path, digits, scratch_root
):
    archive = _zip_folder(digits, tmp_path / "digits.zip")
    for uri in (
        str(formats["pool.npy"]),
        str(archive),
        str(digits),
        f"gs://{BUCKET}/anything/pool.npz",
        "https://example.com/data/pool.zip?sig=1",
    ):
        sources.check_data_uri(uri)
    assert list(scratch_root.iterdir()) == []


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", r"no pool was given"),
        ("MISSING", r"the pool .*missing.npy does not exist; check the path"),
        ("EMPTY", r"empty/ is an empty folder"),
        ("gs:///x", r"names no bucket"),
        ("ftp://host/pool.npy", r"unsupported scheme 'ftp://'"),
        ("http://", r"http:// names no host"),
        ("https://host:port/x", r"is not a valid URL"),
        ("PNG_AS_NPY", r"pool.npy is named like a NumPy .npy array but holds an image"),
    ],
)
def test_check_data_uri_errors(tmp_path, uri, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    _image(tmp_path / "pool.npy", RED, format="PNG")
    uri = {
        "MISSING": str(tmp_path / "missing.npy"),
        "EMPTY": str(tmp_path / "empty"),
        "PNG_AS_NPY": str(tmp_path / "pool.npy"),
    }.get(uri, uri)
    with pytest.raises(TestprioError, match=message):
        sources.check_data_uri(uri)


# --- gs:// object names: never a path without a check -----------------------------------------


@pytest.mark.usefixtures("gcs_emulator")
@pytest.mark.parametrize("tail", ["x/..", "x/.", "x/../", "x/./", ".."])
def test_gcs_pool_named_dot_or_dot_dot_is_one_sentence(tmp_path, scratch_root, tail):
    uri = f"gs://{BUCKET}/{tail}"
    last = tail.rstrip("/").rsplit("/", 1)[-1]
    with pytest.raises(TestprioError, match=rf"'{re.escape(last)}', which cannot be a file name"):
        with sources.resolve(uri):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch"]
    assert list(scratch_root.iterdir()) == []


@pytest.mark.parametrize("name", ["a/..", "a/.", "..", "a/../b.npy", "./b.npy", "a//b.npy"])
def test_gcs_objects_whose_names_are_no_paths_are_refused(
    tmp_path, scratch_root, monkeypatch, name
):
    # The emulator cannot hold such names (its HTTP paths are normalized); GCS can.
    monkeypatch.setattr(storage, "list_tree", lambda uri: ["ok.npy", name])
    with pytest.raises(TestprioError, match=r"has an object '.*' that cannot be a file name"):
        with sources.resolve(f"gs://{BUCKET}/pool/"):
            pass
    assert list(scratch_root.iterdir()) == []


# --- resolve: local files, folders and archives ----------------------------------------------


def test_resolve_local_file_and_folder_in_place(formats, digits, scratch_root):
    with sources.resolve(str(formats["pool.npy"])) as found:
        assert found == sources.Resolved(str(formats["pool.npy"]), "npy", "pool.npy")
    with sources.resolve(str(digits)) as found:
        assert found == sources.Resolved(str(digits), "images", "digits/")
    assert list(scratch_root.iterdir()) == []


def test_resolve_folder_holding_one_data_file_is_that_file(tmp_path):
    (tmp_path / "wrapped").mkdir()
    (tmp_path / "wrapped" / "pool.csv").write_text("a,label\n1,0\n")
    with sources.resolve(str(tmp_path / "wrapped")) as found:
        assert (found.format, found.name) == ("csv", "wrapped/")
        assert found.path == str(tmp_path / "wrapped" / "pool.csv")


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_resolve_archive_of_an_image_folder(digits, tmp_path, scratch_root, kind):
    if kind == "zip":
        archive = _zip_folder(digits, tmp_path / "digits.zip")
        with zipfile.ZipFile(archive, "a") as extra:  # what macOS Finder adds
            extra.writestr("__MACOSX/digits/._x.png", b"\x00\x05\x16\x07")
    else:
        archive = _tar_folder(digits, tmp_path / f"digits.{kind}", "w:gz" if "gz" in kind else "w")
    before = _digest(archive)
    with sources.resolve(str(archive)) as found:
        assert (found.format, found.name) == ("images", f"digits.{kind}")
        assert found.path.startswith(str(scratch_root)) and found.path.endswith("digits")
        pool = sources.open_image_folder(found.path, found.name)
        assert pool.class_names == ["cat", "dog"] and pool.count == 7
        assert (pool.load("cat/a_red.png") == RED).all()
    assert list(scratch_root.iterdir()) == []
    assert _digest(archive) == before


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_resolve_archive_of_one_npy(tmp_path, scratch_root, kind):
    x = make_deterministic(5).normal(size=(4, 3))
    npy = tmp_path / "inner" / "pool.npy"
    npy.parent.mkdir()
    np.save(npy, x)
    if kind == "zip":
        archive = _zip_with(tmp_path / "pool.zip", ("pool.npy", npy.read_bytes()))
    else:
        archive = tmp_path / "pool.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(npy, "pool.npy")
    with sources.resolve(str(archive)) as found:
        assert (found.format, found.name) == ("npy", archive.name)
        np.testing.assert_array_equal(np.load(found.path), x)
    assert list(scratch_root.iterdir()) == []


def test_input_folder_is_unchanged_by_resolve_and_reading(digits):
    before = _digest(digits)
    with sources.resolve(str(digits)) as found:
        pool = sources.open_image_folder(found.path, found.name)
        [pool.load(path) for path in pool.files]
    assert _digest(digits) == before


def test_archive_inside_an_archive_is_an_error(tmp_path, scratch_root):
    inner = _zip_bytes(("pool.npy", _npy_bytes(np.zeros((2, 2)))))
    outer = _zip_with(tmp_path / "outer.zip", ("inner.zip", inner))
    with pytest.raises(TestprioError, match=r"outer.zip/inner.zip is an archive inside an"):
        with sources.resolve(str(outer)):
            pass
    assert list(scratch_root.iterdir()) == []


# --- hostile archives ----------------------------------------------------------------------


def _symlink_zip_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777) << 16  # S_IFLNK
    return info, target.encode()


HOSTILE = {
    "zip-dotdot": (
        lambda p: _zip_with(p, ("ok.txt", b"ok"), ("../evil.txt", b"x")),
        r"data archive hostile has an entry '\.\./evil\.txt' that points outside the archive; "
        r"remove it and re-create the archive\.",
    ),
    "zip-backslash": (
        lambda p: _zip_with(p, ("a\\..\\..\\evil.txt", b"x")),
        r"entry 'a\\\.\.\\\.\.\\evil\.txt' that points outside the archive",
    ),
    "zip-absolute": (
        lambda p: _zip_with(p, (zipfile.ZipInfo("/etc/evil.txt"), b"x")),
        r"data archive hostile has an entry '/etc/evil\.txt' with an absolute path",
    ),
    "zip-drive": (
        lambda p: _zip_with(p, ("C:/evil.txt", b"x")),
        r"entry 'C:/evil\.txt' with an absolute path",
    ),
    "zip-symlink": (
        lambda p: _zip_with(p, _symlink_zip_entry("link", "/etc/passwd")),
        r"data archive hostile has a symbolic link 'link'; testprio extracts only files and "
        r"folders",
    ),
    "tar-dotdot": (
        lambda p: _tar_with(p, (_tar_info("sub/../../evil.txt"), b"x")),
        r"entry 'sub/\.\./\.\./evil\.txt' that points outside the archive",
    ),
    "tar-absolute": (
        lambda p: _tar_with(p, (_tar_info("/tmp/evil.txt"), b"x")),
        r"entry '/tmp/evil\.txt' with an absolute path",
    ),
    "tar-symlink": (
        lambda p: _tar_with(p, (_tar_info("link", tarfile.SYMTYPE, "/etc/passwd"), b"")),
        r"has a symbolic link 'link'",
    ),
    "tar-hardlink": (
        lambda p: _tar_with(
            p, (_tar_info("a.txt"), b"a"), (_tar_info("b.txt", tarfile.LNKTYPE, "a.txt"), b"")
        ),
        r"has a hard link 'b\.txt'",
    ),
    "tar-device": (
        lambda p: _tar_with(p, (_tar_info("null", tarfile.CHRTYPE), b"")),
        r"has a character device 'null'",
    ),
    "tar-fifo": (
        lambda p: _tar_with(p, (_tar_info("pipe", tarfile.FIFOTYPE), b"")),
        r"has a FIFO \(named pipe\) 'pipe'",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_entries_are_rejected(tmp_path, scratch_root, case):
    build, message = HOSTILE[case]
    archive = build(tmp_path / "hostile")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TestprioError, match=message):
        with sources.resolve(str(archive)):
            pass
    assert list(scratch_root.iterdir()) == []  # nothing left behind, nothing escaped
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_extract_archive_writes_nothing_outside_the_folder(tmp_path):
    archive = _zip_with(tmp_path / "a.zip", ("ok.txt", b"ok"), ("../evil.txt", b"x"))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(TestprioError, match=r"points outside"):
        sources.extract_archive(str(archive), str(target), "a.zip", ArchiveLimits())
    assert not (tmp_path / "evil.txt").exists()
    assert list(target.iterdir()) == []  # every entry is checked before anything is written


def test_zip_bomb_over_the_size_limit_is_rejected_before_writing(tmp_path):
    archive = _zip_with(tmp_path / "bomb.zip", ("zeros.bin", bytes(4_000_000)))
    target = tmp_path / "out"
    target.mkdir()
    limits = ArchiveLimits(max_bytes=1_000_000)
    with pytest.raises(
        TestprioError,
        match=r"data archive bomb.zip expands to more than 1,000,000 bytes \(at entry "
        r"'zeros.bin'\); split the pool",
    ):
        sources.extract_archive(str(archive), str(target), "bomb.zip", limits)
    assert list(target.iterdir()) == []


def test_zip_entry_over_the_compression_ratio_is_rejected(tmp_path):
    archive = _zip_with(tmp_path / "bomb.zip", ("zeros.bin", bytes(4_000_000)))
    limits = ArchiveLimits(max_ratio=100, ratio_min_bytes=1_000_000)
    with pytest.raises(
        TestprioError,
        match=r"bomb.zip has an entry 'zeros.bin' that expands [0-9,]+ times \(to 4,000,000 "
        r"bytes\), more than the limit of 100 times; this looks like a compression bomb",
    ):
        with sources.resolve(str(archive), archive_limits=limits):
            pass


def test_tar_gz_over_the_compression_ratio_is_rejected(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 4_000_000
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    limits = ArchiveLimits(max_ratio=100, ratio_min_bytes=1_000_000)
    with pytest.raises(TestprioError, match=r"bomb.tar.gz expands [0-9,]+ times .* at entry"):
        with sources.resolve(str(archive), archive_limits=limits):
            pass


def test_zip_whose_declared_size_lies_is_rejected(tmp_path, scratch_root):
    archive = _zip_with(tmp_path / "liar.zip", ("zeros.bin", bytes(2_000_000)))
    # Declare 1,000 bytes (offset 24: uncompressed size) so the declared total passes the limit.
    _patch_central_directory(archive, 24, "<I", 1000)
    limits = ArchiveLimits(max_bytes=100_000)
    with pytest.raises(TestprioError, match=r"liar.zip cannot be extracted \(entry 'zeros.bin'"):
        with sources.resolve(str(archive), archive_limits=limits):
            pass
    assert list(scratch_root.iterdir()) == []


def test_bytes_written_are_limited_whatever_was_declared(tmp_path):
    # zipfile and tarfile never deliver more than an entry declares, so feed the copy a
    # stream that does, as a reader with that bug would.
    expansion = archives._Expansion("pool.zip", ArchiveLimits(max_bytes=3_000_000), 10**6)
    expansion.declare("a.bin", 10)
    with pytest.raises(TestprioError, match=r"pool.zip expands to more than 3,000,000 bytes"):
        expansion.copy(io.BytesIO(bytes(5_000_000)), str(tmp_path / "a.bin"), "a.bin", 10**6)
    assert (tmp_path / "a.bin").stat().st_size <= 3_000_000


def test_encrypted_zip_entry_is_rejected(tmp_path):
    archive = _zip_with(tmp_path / "secret.zip", ("a.npy", b"x"))
    _patch_central_directory(archive, 8, "<H", 0x1)  # general purpose flag: encrypted
    with pytest.raises(TestprioError, match=r"secret.zip has an encrypted entry 'a.npy'"):
        sources.extract_archive(str(archive), str(tmp_path), "secret.zip", ArchiveLimits())


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_too_many_entries_are_rejected(tmp_path, kind):
    entries = [(f"f{i}.png", b"x") for i in range(11)]
    if kind == "zip":
        archive = _zip_with(tmp_path / "many.zip", *entries)
    else:
        archive = _tar_with(tmp_path / "many.tar", *[(_tar_info(n), d) for n, d in entries])
    with pytest.raises(TestprioError, match=rf"many.{kind} has more than 10 entries"):
        with sources.resolve(str(archive), archive_limits=ArchiveLimits(max_entries=10)):
            pass


def _tar_gz_of(target: Path, count: int, data) -> Path:
    """A .tar.gz of ``count`` files ``c{i % 10}/img{i}.png`` holding ``data(i)``."""
    with tarfile.open(target, "w:gz") as archive:
        for index in range(count):
            content = data(index)
            info = tarfile.TarInfo(f"pool/c{index % 10}/img{index:05d}.png")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return target


def test_many_empty_files_from_a_small_tar_gz_are_refused(tmp_path, scratch_root):
    archive = _tar_gz_of(tmp_path / "empty.tar.gz", 20_000, lambda index: b"")
    assert archive.stat().st_size < 200_000
    with pytest.raises(
        TestprioError,
        match=r"empty.tar.gz has more than 10,000 entries for its [0-9,]+ bytes \(at most one "
        r"entry per 16 bytes of archive past the first 10,000\); this looks like an archive "
        r"bomb of empty or near-empty files",
    ):
        with sources.resolve(str(archive)):
            pass
    assert list(scratch_root.iterdir()) == []


def test_the_entry_count_limit_grows_with_the_archive(tmp_path):
    flat = [_png_bytes(8, 8, color) for color in range(256)]  # real, tiny, well compressed
    limits = ArchiveLimits(free_entries=100)
    archive = _tar_gz_of(tmp_path / "flat.tar.gz", 2_000, lambda index: flat[index % 256])
    assert archive.stat().st_size > 16 * 2_000
    sources.extract_archive(str(archive), str(tmp_path / "out"), "flat.tar.gz", limits)
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2_000
    archive = _tar_gz_of(tmp_path / "ones.tar.gz", 2_000, lambda index: b"1")
    (tmp_path / "out2").mkdir()
    with pytest.raises(TestprioError, match=r"ones.tar.gz has more than [0-9,]+ entries for"):
        sources.extract_archive(str(archive), str(tmp_path / "out2"), "ones.tar.gz", limits)


def test_damaged_archive_is_an_error(tmp_path):
    whole = _zip_bytes(("a.npy", _npy_bytes(np.zeros((50, 50)))))
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TestprioError, match=r"data archive cut.zip cannot be extracted"):
        with sources.resolve(str(tmp_path / "cut.zip")):
            pass


def test_many_small_zip_entries_over_the_whole_archive_ratio_are_rejected(tmp_path):
    # Each entry stays under ratio_min_bytes, so only the whole archive's ratio stops it.
    entries = [(f"z{i}.bin", bytes(400_000)) for i in range(10)]
    archive = _zip_with(tmp_path / "bomb.zip", *entries)
    target = tmp_path / "out"
    target.mkdir()
    limits = ArchiveLimits(ratio_min_bytes=1_000_000)
    with pytest.raises(
        TestprioError,
        match=r"data archive bomb.zip expands [0-9,]+ times in all \(to 1,200,000 bytes at "
        r"entry 'z2.bin'\), more than the limit of 200 times for a whole archive; this looks "
        r"like a compression bomb",
    ):
        sources.extract_archive(str(archive), str(target), "bomb.zip", limits)
    assert list(target.iterdir()) == []  # refused on the declared sizes, before writing


def test_tar_gz_over_the_whole_archive_ratio_is_rejected(tmp_path, scratch_root):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(5):
            info = tarfile.TarInfo(f"z{i}.bin")
            info.size = 400_000
            tar.addfile(info, io.BytesIO(bytes(info.size)))
    # max_ratio is this tar's former whole-archive limit; max_total_ratio now applies too.
    limits = ArchiveLimits(max_ratio=5000, ratio_min_bytes=1_000_000)
    with pytest.raises(TestprioError, match=r"bomb.tar.gz expands [0-9,]+ times in all"):
        with sources.resolve(str(archive), archive_limits=limits):
            pass
    assert list(scratch_root.iterdir()) == []


def test_whole_archive_ratio_counts_the_bytes_actually_written(tmp_path):
    # A stream that delivers more than declared, as a reader with that bug would: the
    # whole-archive ratio is checked on written bytes, entry after entry.
    limits = ArchiveLimits(ratio_min_bytes=100_000, max_total_ratio=100)
    expansion = archives._Expansion("pool.zip", limits, 1_000)
    expansion.copy(io.BytesIO(bytes(60_000)), str(tmp_path / "a.bin"), "a.bin", 10**9)
    with pytest.raises(TestprioError, match=r"pool.zip expands [0-9,]+ times in all .*'b.bin'"):
        expansion.copy(io.BytesIO(bytes(60_000)), str(tmp_path / "b.bin"), "b.bin", 10**9)


DEEP = "d/" * 990


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_nested_too_deep_is_refused_in_one_sentence(tmp_path, scratch_root, kind):
    entry = (f"{DEEP}pool.npy", _npy_bytes(np.zeros(2)))
    if kind == "zip":
        archive = _zip_with(tmp_path / "deep.zip", entry)
    else:
        archive = _tar_with(tmp_path / "deep.tar", (_tar_info(entry[0]), entry[1]))
    with pytest.raises(
        TestprioError,
        match=rf"data archive deep.{kind} has an entry 'd/d/.*\.\.\.' nested 990 folders deep, "
        r"more than the limit of 99; re-create the archive with a flatter folder tree\.",
    ):
        with sources.resolve(str(archive)):
            pass
    assert list(scratch_root.iterdir()) == []


def test_deep_local_image_folder_is_read_without_recursion_error(tmp_path):
    deepest = str(tmp_path)
    for part in ["pool", "cat", *DEEP.split("/")[:-1]]:  # mkdir(parents=True) recurses too
        deepest = f"{deepest}/{part}"
        os.mkdir(deepest)
    deepest = Path(deepest)
    _image(deepest / "a.png", RED)
    try:
        pool = sources.open_image_folder(str(tmp_path / "pool"), "pool/")
        assert pool.files == [f"cat/{DEEP}a.png"] and pool.labels == [0]
    finally:  # shutil.rmtree (pytest's clean-up) recurses per level on Python 3.11
        (deepest / "a.png").unlink()
        folder = deepest
        while folder != tmp_path:
            folder.rmdir()
            folder = folder.parent


DUPLICATES = {
    "zip-same-name": (
        lambda p: _zip_with(p, ("pool.npy", b"one"), ("pool.npy", b"two")),
        r"has the entry 'pool.npy' more than once",
    ),
    "zip-dot-path": (
        lambda p: _zip_with(p, ("a/x.png", b"one"), ("a/./x.png", b"two")),
        r"has the entry 'a/\./x.png' more than once",
    ),
    "zip-file-and-folder": (
        lambda p: _zip_with(p, ("a/x", b"one"), ("a/x/", b"")),
        r"has the entry 'a/x/' more than once",
    ),
    "tar-same-name": (
        lambda p: _tar_with(p, (_tar_info("a/x.png"), b"one"), (_tar_info("a/x.png"), b"two")),
        r"has the entry 'a/x.png' more than once",
    ),
}


@pytest.mark.parametrize("case", sorted(DUPLICATES))
def test_duplicate_archive_entries_are_refused(tmp_path, scratch_root, case):
    build, message = DUPLICATES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        archive = build(tmp_path / "dup")
    with pytest.raises(TestprioError, match=rf"data archive dup {message}; keep one of them"):
        with sources.resolve(str(archive)):
            pass
    assert list(scratch_root.iterdir()) == []


# --- http(s) --------------------------------------------------------------------------------


# The test servers listen on loopback, which downloads refuse unless allowed.
LOOPBACK = DownloadLimits(allow_private=True)


def _trickle(wfile, data: bytes, every_s: float) -> None:
    for byte in data:
        wfile.write(bytes([byte]))
        wfile.flush()
        time.sleep(every_s)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.requests.append((self.path, dict(self.headers.items())))
        path = self.path.split("?")[0]
        redirect = self.server.redirects.get(path)
        if redirect is not None:
            self.send_response(302)
            self.send_header("Location", redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/trickle.npy":  # a valid start, then one byte every 0.1 s
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            _trickle(self.wfile, b"\x93NUMPY" + bytes(34), 0.1)
            self.close_connection = True
            return
        if path == "/trickle-headers.npy":  # even the status line comes byte by byte
            body = _npy_bytes(np.zeros(3))
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            _trickle(self.wfile, head, 0.1)
            self.wfile.write(body)
            self.close_connection = True
            return
        if path == "/slow.npy":
            time.sleep(1.5)
        if path == "/short.npy":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"\x93NUMPY" + bytes(94))
            self.close_connection = True
            return
        body = self.server.files.get(path.removeprefix("/chunked"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if path.startswith("/chunked/"):  # streamed: no Content-Length up front
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 4096):
                piece = body[start : start + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle(self):
        with contextlib.suppress(ConnectionError):  # clients hang up at their size limit
            super().handle()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serving(
    address: str = "127.0.0.1", port: int = 0
) -> Iterator[http.server.ThreadingHTTPServer]:
    """A real HTTP server on ``address``: ``files`` (path -> bytes) to serve, ``redirects``
    (path -> Location) to answer with 302, and the ``requests`` (path, headers) it got."""
    server = http.server.ThreadingHTTPServer((address, port), _Handler)
    server.daemon_threads = True
    server.files, server.redirects, server.requests = {}, {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server: http.server.ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


@pytest.fixture
def http_server():
    with _serving() as server:
        yield server


@pytest.fixture
def http_files(http_server):
    """A real HTTP server on loopback serving ``files`` (path -> bytes); yields (url, files)."""
    return _url(http_server), http_server.files


def test_http_download_of_npy_and_zip(http_files, digits, tmp_path, scratch_root):
    url, files = http_files
    x = make_deterministic(6).normal(size=(5, 2))
    files["/data/pool.npy"] = _npy_bytes(x)
    files["/data/digits.zip"] = _zip_folder(digits, tmp_path / "digits.zip").read_bytes()
    with sources.resolve(f"{url}/data/pool.npy?token=abc", download_limits=LOOPBACK) as found:
        assert (found.format, found.name) == ("npy", "pool.npy")
        np.testing.assert_array_equal(np.load(found.path), x)
    with sources.resolve(f"{url}/chunked/data/digits.zip", download_limits=LOOPBACK) as found:
        assert (found.format, found.name) == ("images", "digits.zip")
        assert sources.open_image_folder(found.path, found.name).count == 7
    assert list(scratch_root.iterdir()) == []


def test_http_not_found_names_the_url_without_its_query(http_files, scratch_root):
    url, _ = http_files
    with pytest.raises(
        TestprioError,
        match=rf"downloading {url}/missing.npy failed with HTTP 404 Not Found; check the URL",
    ) as caught:
        with sources.resolve(f"{url}/missing.npy?token=secret", download_limits=LOOPBACK):
            pass
    assert "secret" not in str(caught.value)
    assert list(scratch_root.iterdir()) == []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/big.npy", r"big.npy is 5,000 bytes, more than the download limit of 1,000 bytes"),
        ("/chunked/big.npy", r"big.npy is larger than the download limit of 1,000 bytes"),
    ],
)
def test_http_download_over_the_size_limit(http_files, scratch_root, path, message):
    url, files = http_files
    files["/big.npy"] = b"\x93NUMPY" + bytes(4994)
    with pytest.raises(TestprioError, match=message):
        with sources.resolve(url + path, max_download_bytes=1000, download_limits=LOOPBACK):
            pass
    assert list(scratch_root.iterdir()) == []


def test_http_download_that_ends_early(http_files, scratch_root):
    url, _ = http_files
    with pytest.raises(TestprioError, match=r"the download of .*/short.npy ended after 100 of "):
        with sources.resolve(f"{url}/short.npy", download_limits=LOOPBACK):
            pass
    assert list(scratch_root.iterdir()) == []


def test_http_download_that_stalls_times_out(http_files):
    url, files = http_files
    files["/slow.npy"] = _npy_bytes(np.zeros(3))
    limits = DownloadLimits(allow_private=True, idle_timeout_s=0.3)
    with pytest.raises(TestprioError, match=r"downloading .*/slow.npy timed out \(no data for"):
        with sources.resolve(f"{url}/slow.npy", download_limits=limits):
            pass


def test_http_connection_refused(scratch_root):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(
        TestprioError,
        match=rf"cannot download http://127.0.0.1:{port}/pool.npy \(.*refused.*\); check the URL",
    ):
        with sources.resolve(f"http://127.0.0.1:{port}/pool.npy", download_limits=LOOPBACK):
            pass


# Non-public addresses, as a URL may spell them; each is refused before any connection.
NON_PUBLIC = {
    "loopback": ("http://127.0.0.1:PORT/pool.npy", r"127\.0\.0\.1, a loopback address"),
    "loopback-short": ("http://127.1:PORT/pool.npy", r"127\.0\.0\.1, a loopback address"),
    "loopback-decimal": ("http://2130706433:PORT/pool.npy", r"127\.0\.0\.1, a loopback"),
    "loopback-mapped": (
        "http://[::ffff:127.0.0.1]:PORT/pool.npy",
        r"::ffff:127\.0\.0\.1, a loopback",
    ),
    "localhost": ("http://localhost:PORT/pool.npy", r"names the internal host 'localhost'"),
    "ipv6-loopback": ("http://[::1]/pool.npy", r"::1, a loopback address"),
    "metadata": ("http://169.254.169.254/latest/", r"169\.254\.169\.254, a link-local \(cloud"),
    "metadata-name": (
        "http://metadata.google.internal/computeMetadata/v1/",
        r"names the internal host 'metadata\.google\.internal'",
    ),
    "metadata-ipv6": ("http://[fd00:ec2::254]/latest/", r"fd00:ec2::254, a private address"),
    "metadata-mapped": ("http://[::ffff:a9fe:a9fe]/", r"::ffff:169\.254\.169\.254, a link-"),
    "metadata-nat64": ("http://[64:ff9b::a9fe:a9fe]/", r"64:ff9b::a9fe:a9fe, a link-local"),
    "6to4-loopback": ("http://[2002:7f00:1::]/", r"2002:7f00:1::, a loopback"),
    "rfc1918-10": ("http://10.1.2.3/pool.npy", r"10\.1\.2\.3, a private address"),
    "rfc1918-172": ("http://172.16.5.4/pool.npy", r"172\.16\.5\.4, a private address"),
    "rfc1918-192": ("http://192.168.1.1/pool.npy", r"192\.168\.1\.1, a private address"),
    "cgnat": ("http://100.64.0.1/pool.npy", r"100\.64\.0\.1, a non-public address"),
    "unique-local": ("http://[fc00::1]/pool.npy", r"fc00::1, a private address"),
    "link-local-v6": ("http://[fe80::1]/pool.npy", r"fe80::1, a link-local"),
    "unspecified": ("http://0.0.0.0:PORT/pool.npy", r"0\.0\.0\.0, an unspecified address"),
}


@pytest.mark.parametrize("case", sorted(NON_PUBLIC))
def test_http_non_public_addresses_are_refused_by_default(http_server, scratch_root, case):
    url, message = NON_PUBLIC[case]
    http_server.files["/pool.npy"] = _npy_bytes(np.zeros(3))
    url = url.replace("PORT", str(http_server.server_address[1]))
    with pytest.raises(TestprioError, match=message) as caught:
        with sources.resolve(url):
            pass
    assert "pass --allow-private-urls if this server is meant to be used" in str(caught.value)
    assert http_server.requests == []  # refused before connecting
    assert list(scratch_root.iterdir()) == []


def test_allowed_networks_let_one_private_server_through(http_server):
    x = make_deterministic(8).normal(size=(3, 2))
    http_server.files["/pool.npy"] = _npy_bytes(x)
    limits = DownloadLimits(allowed_networks=("127.0.0.0/30",))
    with sources.resolve(f"{_url(http_server)}/pool.npy", download_limits=limits) as found:
        np.testing.assert_array_equal(np.load(found.path), x)
    with pytest.raises(TestprioError, match=r"'10\.0\.0\.0/33' is not a CIDR block"):
        with sources.resolve(
            f"{_url(http_server)}/pool.npy",
            download_limits=DownloadLimits(allowed_networks=("10.0.0.0/33",)),
        ):
            pass


def test_redirect_to_a_non_public_address_is_refused_before_connecting(http_server):
    with _serving("127.0.0.2") as internal:
        internal.files["/secret.npy"] = _npy_bytes(np.zeros(3))
        target = f"{_url(internal)}/secret.npy?sig=SECRET"
        http_server.redirects["/pool.npy"] = target
        limits = DownloadLimits(allowed_networks=("127.0.0.1/32",))
        with pytest.raises(
            TestprioError,
            match=rf"{_url(http_server)}/pool.npy \(redirected to {_url(internal)}/secret.npy\) "
            r"resolves to 127\.0\.0\.2, a loopback address",
        ) as caught:
            with sources.resolve(f"{_url(http_server)}/pool.npy", download_limits=limits):
                pass
        assert "SECRET" not in str(caught.value)
        assert [path for path, _ in http_server.requests] == ["/pool.npy"]
        assert internal.requests == []


def test_redirect_that_passes_the_checks_is_followed(http_server):
    x = make_deterministic(9).normal(size=(2, 2))
    with _serving() as other:
        other.files["/real.npy"] = _npy_bytes(x)
        http_server.redirects["/pool.npy"] = f"{_url(other)}/real.npy"
        with sources.resolve(f"{_url(http_server)}/pool.npy", download_limits=LOOPBACK) as found:
            np.testing.assert_array_equal(np.load(found.path), x)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("/loop.npy", r"/loop.npy redirects more than 2 times; give the final URL"),
        ("file:///etc/passwd", r"redirects to file:///etc/passwd, which is not an http\(s\) URL"),
        ("ftp://example.com/pool.npy", r"redirects to ftp://example.com/pool.npy, which is not"),
    ],
)
def test_redirects_are_capped_and_stay_on_http(http_server, location, message):
    http_server.redirects["/loop.npy"] = location
    limits = DownloadLimits(allow_private=True, max_redirects=2)
    with pytest.raises(TestprioError, match=message):
        with sources.resolve(f"{_url(http_server)}/loop.npy", download_limits=limits):
            pass
    assert len(http_server.requests) <= 3


def test_a_redirect_to_another_scheme_is_quoted_without_its_secrets(http_server):
    http_server.redirects["/pool.npy"] = "ftp://user:pw@example.com/pool.npy?token=TOKEN#F"
    with pytest.raises(
        TestprioError, match=r"redirects to ftp://example.com/pool.npy, which is not an http"
    ) as caught:
        with sources.resolve(f"{_url(http_server)}/pool.npy", download_limits=LOOPBACK):
            pass
    for secret in ("user", "pw", "TOKEN", "#F"):
        assert secret not in str(caught.value)


def test_connection_goes_to_the_address_that_was_checked(monkeypatch):
    """DNS rebinding: a name that resolves to an allowed address when checked and to an
    internal one a moment later must not reach the internal one."""
    x = make_deterministic(10).normal(size=(2, 3))
    real_getaddrinfo = socket.getaddrinfo
    answers = []

    def rebinding_dns(host, port, *args, **kwargs):
        if host != "pool.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        address = "127.0.0.1" if not answers else "127.0.0.2"
        answers.append(address)
        return real_getaddrinfo(address, port, *args, **kwargs)

    with _serving("127.0.0.1") as checked:
        port = checked.server_address[1]
        checked.files["/pool.npy"] = _npy_bytes(x)
        with _serving("127.0.0.2", port) as rebound:
            rebound.files["/pool.npy"] = _npy_bytes(np.zeros(3))
            monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
            limits = DownloadLimits(allowed_networks=("127.0.0.1/32",))
            url = f"http://pool.test:{port}/pool.npy"
            with sources.resolve(url, download_limits=limits) as found:
                np.testing.assert_array_equal(np.load(found.path), x)
            assert answers == ["127.0.0.1"]  # resolved once, connected to what was checked
            assert rebound.requests == []
        ((_, headers),) = checked.requests
        assert headers["Host"] == f"pool.test:{port}"  # the name, not the address


def test_download_slower_than_the_minimum_rate_is_stopped(http_server, scratch_root):
    limits = DownloadLimits(allow_private=True, min_bytes_per_s=100, rate_window_s=1.0)
    started = time.monotonic()
    with pytest.raises(
        TestprioError,
        match=r"downloading .*/trickle.npy is too slow \([0-9,]+ bytes/s over 1 s, the minimum "
        r"is 100\); retry later, use a faster server, or lower --download-min-bytes-per-s\.",
    ):
        with sources.resolve(f"{_url(http_server)}/trickle.npy", download_limits=limits):
            pass
    assert time.monotonic() - started < 3  # the server would trickle for 4 s
    assert list(scratch_root.iterdir()) == []


def test_download_deadline_covers_headers_trickled_byte_by_byte(http_server, scratch_root):
    # Each byte comes well within the idle timeout: only the deadline stops this.
    limits = DownloadLimits(allow_private=True, deadline_s=1.0, idle_timeout_s=30)
    started = time.monotonic()
    with pytest.raises(
        TestprioError,
        match=r"downloading .*/trickle-headers.npy took longer than the limit of 1 s; use a "
        r"faster server or a smaller pool, or raise --download-timeout-s\.",
    ):
        with sources.resolve(f"{_url(http_server)}/trickle-headers.npy", download_limits=limits):
            pass
    assert time.monotonic() - started < 3  # the headers alone take 4 s
    assert list(scratch_root.iterdir()) == []


def test_credentials_and_signatures_are_never_in_messages_or_logs(http_server, caplog):
    port = http_server.server_address[1]
    url = (
        f"http://alice:s3cret@127.0.0.1:{port}/missing.npy"
        "?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=CRED&X-Goog-Signature=SIG"
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(
        TestprioError,
        match=rf"^downloading http://127.0.0.1:{port}/missing.npy failed with HTTP 404",
    ) as caught:
        with sources.resolve(url, download_limits=LOOPBACK):
            pass
    for secret in ("alice", "s3cret", "CRED", "SIG"):
        assert secret not in str(caught.value)
        assert secret not in caplog.text
    ((path, headers),) = http_server.requests
    assert headers["Host"] == f"127.0.0.1:{port}"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert path.endswith("X-Goog-Signature=SIG")  # the server itself gets the signed URL


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            "https://storage.googleapis.com/b/pool.npz?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=sa%40p.iam&X-Goog-Signature=abc123",
            "https://storage.googleapis.com/b/pool.npz",
        ),
        ("https://b.s3.amazonaws.com/p.npy?X-Amz-Signature=x&X-Amz-Credential=y", None),
        ("https://acct.blob.core.windows.net/c/p.npy?sv=1&sig=abc", None),
        ("http://user:pa55@host.example:8080/p.npy?token=t#frag", "http://host.example:8080/p.npy"),
        ("HTTPS://[2001:db8::1]:8443/p.npy?sig=1", "https://[2001:db8::1]:8443/p.npy"),
        ("gs://bucket/pool?.npy", "gs://bucket/pool?.npy"),
        ("/data/pool.npy", "/data/pool.npy"),
        ("", ""),
    ],
)
def test_redact_url(uri, shown):
    expected = shown if shown is not None else uri.split("?")[0]
    assert sources.redact_url(uri) == expected
    for secret in ("abc123", "sa%40p", "pa55", "X-Amz", "sig=", "token", "frag"):
        assert secret not in sources.redact_url(uri)


def test_run_json_records_the_data_url_redacted(tmp_path):
    from testprio import stages
    from tests.stagekit import parameters

    data = "https://u:pw@example.com/pool.npz?X-Goog-Signature=SIGNATURE&token=TOKEN"
    recorded = parameters(str(tmp_path / "missing.onnx"), data, str(tmp_path / "runs"), "r1")
    with pytest.raises(TestprioError):  # the model is missing: run.json is written anyway
        stages.start_run(recorded["root"], "r1", recorded)
    text = (tmp_path / "runs" / "r1" / "run.json").read_text()
    assert '"data": "https://example.com/pool.npz"' in text
    for secret in ("SIGNATURE", "TOKEN", "u:pw"):
        assert secret not in text


def test_check_data_uri_errors_quote_the_url_redacted():
    with pytest.raises(TestprioError, match=r"^https://host/x is not a valid URL") as caught:
        sources.check_data_uri("https://user:pw@host:port/x?sig=SIGNATURE")
    assert "pw" not in str(caught.value) and "SIGNATURE" not in str(caught.value)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"download_timeout_s": 0}, r"--download-timeout-s 0 must be a positive number\."),
        ({"download_min_bytes_per_s": -1}, r"--download-min-bytes-per-s -1 must be zero"),
    ],
)
def test_download_options_are_checked(option, message):
    from testprio import ingest

    with pytest.raises(TestprioError, match=message):
        ingest.check_options(ingest.IngestOptions(**option))


# --- gs:// ---------------------------------------------------------------------------------


def test_gcs_object_and_image_prefix(gcs_emulator, tmp_path, scratch_root, digits):
    x = make_deterministic(7).normal(size=(4, 3))
    base = f"gs://{BUCKET}/sources-{os.getpid()}"
    storage.write_bytes(f"{base}/pool.npz", _npz_bytes(x=x, y=np.arange(4)))
    for path in sorted(digits.rglob("*")):
        if path.is_file():
            storage.write_bytes(
                f"{base}/digits/{path.relative_to(digits).as_posix()}", path.read_bytes()
            )
    with sources.resolve(f"{base}/pool.npz") as found:
        assert (found.format, found.name) == ("npz", "pool.npz")
        np.testing.assert_array_equal(np.load(found.path)["x"], x)
    with sources.resolve(f"{base}/digits/") as found:
        assert (found.format, found.name) == ("images", "digits/")
        pool = sources.open_image_folder(found.path, found.name)
        assert pool.files == sources.open_image_folder(str(digits), "digits/").files
        assert (pool.load("dog/d_blue.ppm") == BLUE).all()
    assert list(scratch_root.iterdir()) == []
    with pytest.raises(TestprioError, match=r"digits is larger than the download limit of 100"):
        with sources.resolve(f"{base}/digits", max_download_bytes=100):
            pass
    with pytest.raises(TestprioError, match=r"missing.npz does not exist"):
        with sources.resolve(f"{base}/missing.npz"):
            pass
    with pytest.raises(TestprioError, match=r"nothing/ holds no objects; check the bucket"):
        with sources.resolve(f"{base}/nothing/"):
            pass
    assert list(scratch_root.iterdir()) == []
