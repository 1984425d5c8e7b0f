"""Preprocessing ops against references computed another way (Pillow, NumPy), the presets,
streaming statistics (fit in uneven batches == whole array), record -> build round trips,
the per-sample head, and every error path."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageOps

from testprio.errors import TestprioError
from testprio.ingest import preprocess
from tests.conftest import make_deterministic

RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def noise_images(n: int, height: int, width: int, channels: int | None = 3, seed: int = 0):
    """uint8 images ``(n, H, W[, C])`` of uniform noise: every value 0..255 occurs."""
    shape = (n, height, width) if channels is None else (n, height, width, channels)
    return make_deterministic(seed).integers(0, 256, shape, dtype=np.uint8)


def smooth_images(n: int, height: int, width: int, channels: int = 3, seed: int = 0):
    """uint8 images of low-frequency waves in 20..235: resampling filters do not overshoot."""
    rng = make_deterministic(seed)
    rows = np.linspace(0, np.pi, height)[:, None, None]
    cols = np.linspace(0, np.pi, width)[None, :, None]
    images = []
    for _ in range(n):
        phase = rng.uniform(0, np.pi, (1, 1, channels))
        wave = np.sin(rows * 1.5 + phase) * np.cos(cols * 2.0 - phase)
        images.append(np.rint(127.5 + 107 * wave).astype(np.uint8))
    return np.stack(images)


def pillow(images: np.ndarray, transform) -> np.ndarray:
    """``transform(PIL image)`` on every image of a batch, back as an array."""
    return np.stack([np.asarray(transform(Image.fromarray(image))) for image in images])


def fitted(specs: list[dict], pool: np.ndarray, sizes: list[int]) -> preprocess.Preprocessor:
    """The chain of ``specs`` with its statistics fitted on ``pool`` cut into ``sizes``."""
    chain = preprocess.build(specs)
    cuts = np.cumsum(sizes)[:-1]
    while (index := chain.first_unfitted()) is not None:
        chain.fit(index, iter(np.split(pool, cuts)))
    return chain


class Negate(preprocess.Op):
    """A stand-in for the custom op: not per-sample safe, so the head stops before it."""

    name = "custom"
    per_sample_safe = False

    def apply(self, x):
        return -np.asarray(x, dtype=np.float32)


# --- arithmetic ops ------------------------------------------------------------------------


def test_scale_is_x_times_multiply_over_divide_plus_offset():
    x = noise_images(4, 5, 6)
    op = preprocess.build_op({"op": "scale", "multiply": 2, "divide": 255, "offset": -1})
    np.testing.assert_allclose(op.apply(x), x.astype(np.float64) * 2 / 255 - 1, atol=1e-6)
    assert preprocess.build_op({"op": "scale", "divide": 255}).apply(np.array([[255]]))[0, 0] == 1


def test_minmax_maps_each_sample_onto_its_range_and_a_constant_sample_to_the_low_end():
    x = make_deterministic(1).normal(3, 2, (5, 4, 4)).astype(np.float32)
    x[2] = 7.0
    y = preprocess.build_op({"op": "minmax", "range": [-1, 1]}).apply(x)
    flat = x.reshape(5, -1)
    low, high = flat.min(1)[:, None, None], flat.max(1)[:, None, None]
    expected = -1 + 2 * (x - low) / np.where(high > low, high - low, 1)
    expected[2] = -1
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_clip_limits_values_and_either_bound_may_be_left_out():
    x = np.array([[-2.0, 0.5, 3.0]])
    assert preprocess.build_op({"op": "clip", "min": 0, "max": 1}).apply(x).tolist() == [
        [0, 0.5, 1]
    ]
    assert preprocess.build_op({"op": "clip", "max": 1}).apply(x).tolist() == [[-2, 0.5, 1]]


def test_cast_rounds_and_clips_to_the_integer_range_like_saving_as_that_type():
    x = np.array([[-3.5, 0.5, 1.5, 254.6, 300.0, np.nan]])
    assert preprocess.build_op({"op": "cast", "dtype": "uint8"}).apply(x).tolist() == [
        [0, 0, 2, 255, 255, 0]
    ]
    int8 = preprocess.build_op({"op": "cast", "dtype": "int8"}).apply(np.array([[-200.0, 99.5]]))
    assert int8.dtype == np.int8 and int8.tolist() == [[-128, 100]]
    half = preprocess.build_op({"op": "cast", "dtype": "float16"}).apply(np.array([[0.1]]))
    assert half.dtype == np.float16 and half[0, 0] == np.float16(0.1)


# --- per-channel statistics ----------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[60], [1, 7, 30, 22], [20, 20, 20], [59, 1]])
def test_standardize_statistics_from_uneven_batches_equal_the_whole_array_ones(sizes):
    pool = make_deterministic(2).normal([10, -3, 0.5], [2, 0.1, 5], (60, 6, 5, 3))
    chain = fitted([{"op": "standardize"}], pool.astype(np.float32), sizes)
    (record,) = chain.record()
    np.testing.assert_allclose(record["mean"], pool.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(record["std"], pool.std(axis=(0, 1, 2)), rtol=1e-5)
    reference = (pool - pool.mean(axis=(0, 1, 2))) / pool.std(axis=(0, 1, 2))
    np.testing.assert_allclose(chain.apply(pool.astype(np.float32)), reference, atol=1e-4)


def test_fit_stays_exact_for_large_means():
    # A naive sum of squares in float64 loses every digit of a variance of 1 around 1e8.
    pool = 1e8 + make_deterministic(3).normal(0, 1, (500, 4))
    (record,) = fitted([{"op": "standardize"}], pool, [100, 37, 363]).record()
    np.testing.assert_allclose(record["std"], pool.std(axis=0), rtol=1e-7)


@pytest.mark.parametrize(
    ("shape", "axes", "channel_axis"),
    [
        ((40, 7), (0,), None),  # tabular: each feature its own channel
        ((40, 6, 5), (0, 1, 2), None),  # (H, W): one channel
        ((40, 6, 5, 3), (0, 1, 2), None),  # channels last
        ((40, 3, 6, 5), (0, 2, 3), 0),  # explicit: channels on the sample's first axis
        ((40, 6, 5), (0, 1), -1),  # explicit: each column its own channel
    ],
)
def test_standardize_channels_follow_the_sample_rank_and_channel_axis(shape, axes, channel_axis):
    pool = make_deterministic(4).normal(2, 3, shape) * np.arange(1, shape[-1] + 1)
    spec = {"op": "standardize"} | ({} if channel_axis is None else {"channel_axis": channel_axis})
    y = fitted([spec], pool, [13, 27]).apply(pool)
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=axes), 1, atol=1e-5)


def test_per_channel_ops_after_a_switch_to_nchw_use_the_first_axis():
    pool = make_deterministic(5).normal([0, 5, -5], 1, (30, 4, 4, 3)).astype(np.float32)
    chain = fitted([{"op": "layout", "to": "NCHW"}, {"op": "center"}], pool, [30])
    assert chain.record()[1]["channel_axis"] == "first"
    np.testing.assert_allclose(chain.record()[1]["mean"], pool.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(chain.apply(pool).mean(axis=(0, 2, 3)), 0, atol=1e-5)


def test_a_constant_channel_gets_std_one_and_nan_samples_are_left_out_of_the_statistics():
    pool = make_deterministic(6).normal(0, 1, (20, 3))
    pool[:, 1] = 4.0
    with_nan = np.concatenate([pool, [[np.nan, 0, 0]], [[np.inf, 0, 0]]])
    (record,) = fitted([{"op": "standardize"}], with_nan, [5, 17]).record()
    np.testing.assert_allclose(record["mean"], pool.mean(axis=0))
    np.testing.assert_allclose(record["std"], [pool[:, 0].std(), 1.0, pool[:, 2].std()])


def test_center_subtracts_the_given_or_computed_mean():
    pool = make_deterministic(7).normal([1, 2], 1, (25, 2))
    given = preprocess.build_op({"op": "center", "mean": [1, 2]})
    np.testing.assert_allclose(given.apply(pool), pool - [1, 2], atol=1e-6)
    (record,) = fitted([{"op": "center"}], pool, [10, 15]).record()
    np.testing.assert_allclose(record["mean"], pool.mean(axis=0))


def test_chained_statistics_are_fitted_one_op_at_a_time_on_the_ops_before():
    pool = make_deterministic(8).normal(50, 10, (40, 3)).astype(np.float32)
    chain = fitted(
        [{"op": "center"}, {"op": "scale", "divide": 10}, {"op": "standardize"}], pool, [9, 31]
    )
    record = chain.record()
    np.testing.assert_allclose(record[2]["mean"], 0, atol=1e-5)
    np.testing.assert_allclose(record[2]["std"], pool.std(axis=0) / 10, rtol=1e-5)


# --- image ops -----------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 4])
def test_grayscale_matches_pillow_convert_l(channels):
    images = noise_images(3, 9, 11, channels)
    expected = pillow(images, lambda image: image.convert("L"))
    gray = preprocess.build_op({"op": "grayscale"}).apply(images)
    assert gray.shape == (3, 9, 11, 1) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray[..., 0], expected)
    as_float = preprocess.build_op({"op": "grayscale"}).apply(images.astype(np.float32))
    np.testing.assert_allclose(as_float[..., 0], expected, atol=1)


@pytest.mark.parametrize("shape", [(2, 9, 11), (2, 9, 11, 1)])
def test_grayscale_and_rgb_to_y_pass_one_channel_images_through(shape):
    images = noise_images(2, 9, 11, None).reshape(shape)
    for op in ("grayscale", "rgb_to_y"):
        out = preprocess.build_op({"op": op}).apply(images)
        np.testing.assert_array_equal(out, images.reshape(2, 9, 11, 1))


def test_rgb_to_y_matches_pillow_ycbcr_and_bt709_weights():
    images = noise_images(3, 9, 11)
    expected = pillow(images, lambda image: image.convert("YCbCr"))[..., 0]
    y = preprocess.build_op({"op": "rgb_to_y"}).apply(images)
    assert y.shape == (3, 9, 11, 1) and y.dtype == np.uint8
    assert np.abs(y[..., 0].astype(int) - expected).max() <= 1
    bt709 = preprocess.build_op({"op": "rgb_to_y", "standard": "bt709"})
    rgb = images.astype(np.float64)
    reference = 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]
    np.testing.assert_allclose(bt709.apply(rgb.astype(np.float32))[..., 0], reference, atol=1e-3)


def test_rgb_repeats_gray_and_drops_alpha_like_pillow_convert_rgb():
    op = preprocess.build_op({"op": "rgb"})
    for images in (noise_images(2, 5, 6, None), noise_images(2, 5, 6, 4)):
        expected = pillow(images, lambda image: image.convert("RGB"))
        np.testing.assert_array_equal(op.apply(images), expected)


@pytest.mark.parametrize(
    "images",
    [
        noise_images(3, 48, 40),  # every value
        noise_images(3, 48, 40, None) // 32 + 100,  # low contrast, 8 levels
        np.where(noise_images(2, 48, 40, None) > 128, 200, 3).astype(np.uint8),  # two values
        np.full((1, 12, 10), 77, np.uint8),  # constant: unchanged
        make_deterministic(5).normal(90, 20, (2, 48, 40)).clip(0, 255).astype(np.uint8),
        noise_images(2, 12, 10),  # too few pixels per bin: Pillow leaves it unchanged
    ],
    ids=["rgb-noise", "low-contrast", "two-values", "constant", "normal", "small"],
)
def test_equalize_equals_pillow_imageops_equalize(images):
    images = images.astype(np.uint8)
    expected = pillow(images, ImageOps.equalize)
    equalized = preprocess.build_op({"op": "equalize"}).apply(images)
    assert equalized.dtype == np.uint8
    np.testing.assert_array_equal(equalized, expected)
    # Float values are stored as uint8 first: 99.6 and 100.4 are both 100.
    jitter = make_deterministic(9).uniform(-0.4, 0.4, images.shape)
    as_float = preprocess.build_op({"op": "equalize"}).apply(images + jitter)
    np.testing.assert_array_equal(as_float, expected)


@pytest.mark.parametrize("resample", list(RESAMPLE))
def test_resize_equals_pillow_resizing_the_uint8_image(resample):
    op = preprocess.build_op({"op": "resize", "size": [10, 23], "resample": resample})
    images = noise_images(2, 17, 13)
    expected = pillow(images, lambda image: image.resize((23, 10), RESAMPLE[resample]))
    np.testing.assert_array_equal(op.apply(images), expected)
    # Four channels go channel by channel (no RGBA alpha premultiplication).
    four = noise_images(2, 17, 13, 4)
    per_channel = np.stack(
        [
            pillow(four[..., c], lambda im: im.resize((23, 10), RESAMPLE[resample]))
            for c in range(4)
        ],
        axis=-1,
    )
    np.testing.assert_array_equal(op.apply(four), per_channel)
    # Float data is resized in Pillow's "F" mode: within the 8-bit result's two roundings
    # (after the horizontal and the vertical pass; lanczos's negative lobes amplify them).
    smooth = smooth_images(2, 17, 13)
    expected = pillow(smooth, lambda image: image.resize((23, 10), RESAMPLE[resample]))
    resized = op.apply(smooth.astype(np.float32))
    assert resized.dtype == np.float32
    assert np.abs(resized - expected).max() <= 1.5


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((30, 40), (20, 26)), ((40, 30), (26, 20)), ((25, 25), (20, 20)), ((20, 33), (20, 33))],
)
def test_resize_to_an_int_sets_the_shorter_side_like_torchvision(shape, expected):
    images = noise_images(1, *shape, None)
    assert preprocess.build_op({"op": "resize", "size": 20}).apply(images).shape[1:] == expected


@pytest.mark.parametrize(("size", "top", "left"), [(4, 2, 2), ([5, 3], 1, 2), ([7, 8], 0, 0)])
def test_center_crop_equals_slicing_at_torchvision_offsets(size, top, left):
    images = noise_images(2, 7, 8)
    height, width = (size, size) if isinstance(size, int) else size
    cropped = preprocess.build_op({"op": "center_crop", "size": size}).apply(images)
    np.testing.assert_array_equal(cropped, images[:, top : top + height, left : left + width])


def test_layout_equals_transpose_and_gives_gray_images_a_channel():
    images = noise_images(2, 5, 6, 3)
    to_nchw = preprocess.build_op({"op": "layout", "to": "NCHW"})
    to_nhwc = preprocess.build_op({"op": "layout", "to": "NHWC"})
    np.testing.assert_array_equal(to_nchw.apply(images), images.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(to_nhwc.apply(to_nchw.apply(images)), images)
    assert to_nchw.apply(images[..., 0]).shape == (2, 1, 5, 6)


def test_an_nchw_pool_starts_with_a_layout_op_to_nhwc():
    images = noise_images(2, 8, 8)
    nchw = images.transpose(0, 3, 1, 2)
    chain = preprocess.build(
        [{"op": "center", "mean": 1}, {"op": "layout", "to": "NHWC"}, {"op": "equalize"}]
    )
    assert chain.record()[0]["channel_axis"] == "first"
    expected = pillow(np.clip(images.astype(int) - 1, 0, 255).astype(np.uint8), ImageOps.equalize)
    np.testing.assert_array_equal(chain.apply(nchw), expected)


# --- presets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "raw", "shape", "low", "high"),
    [
        ("mnist", noise_images(3, 28, 28, None), (1, 28, 28), -0.43, 2.83),
        ("mnist", noise_images(3, 40, 30, 3), (1, 28, 28), -0.43, 2.83),
        ("mnist", noise_images(3, 28, 28, 4), (1, 28, 28), -0.43, 2.83),
        ("cifar10", noise_images(3, 32, 32), (3, 32, 32), -2.0, 2.2),
        ("cifar10", noise_images(3, 48, 40, None), (3, 32, 32), -2.0, 2.2),
        ("imagenet", noise_images(2, 240, 300), (3, 224, 224), -2.2, 2.7),
        ("imagenet", noise_images(2, 260, 240, 1), (3, 224, 224), -2.2, 2.7),
        ("gtsrb", noise_images(6, 45, 50), (1, 32, 32), -2.0, 2.0),
        ("gtsrb", noise_images(6, 32, 32, None), (1, 32, 32), -2.0, 2.0),
    ],
)
def test_presets_give_the_documented_shape_and_value_range(preset, raw, shape, low, high):
    chain = fitted(preprocess.op_specs(preset=preset), raw, [2, len(raw) - 2])
    assert chain.output_shape(raw.shape[1:], raw.dtype) == shape
    out = chain.apply(raw)
    assert out.shape == (len(raw), *shape) and out.dtype == np.float32
    assert low <= out.min() < out.max() <= high


def test_mnist_preset_on_mnist_sized_images_is_the_pytorch_normalization():
    images = noise_images(4, 28, 28, None)
    out = preprocess.build(preprocess.op_specs(preset="mnist")).apply(images)
    np.testing.assert_allclose(out[:, 0], (images / 255 - 0.1307) / 0.3081, atol=1e-5)


def test_gtsrb_preset_standardizes_with_the_pool_statistics():
    raw = noise_images(8, 45, 50, seed=3)
    out = fitted(preprocess.op_specs(preset="gtsrb"), raw, [3, 5]).apply(raw)
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1) < 1e-4


# --- records, heads, model checks -------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(preprocess.PRESETS))
def test_record_then_build_gives_identical_outputs(preset):
    raw = noise_images(4, 40, 36)
    chain = fitted(preprocess.op_specs(preset=preset), raw, [1, 3])
    rebuilt = preprocess.build(json.loads(json.dumps(chain.record())))
    assert rebuilt.record() == chain.record() and rebuilt.first_unfitted() is None
    np.testing.assert_array_equal(rebuilt.apply(raw), chain.apply(raw))


@pytest.mark.parametrize("name", sorted(preprocess.OPS))
def test_every_op_record_rebuilds_the_same_op(name):
    required = {"cast": {"dtype": "int16"}, "layout": {"to": "NCHW"}, "resize": {"size": 4}}
    required |= {"center_crop": {"size": 2}, "clip": {"min": 0.5}}
    op = preprocess.build_op({"op": name, **required.get(name, {})})
    assert preprocess.build_op(json.loads(json.dumps(op.record()))).record() == op.record()


def test_head_per_sample_then_tail_equals_the_whole_chain():
    specs = [{"op": "resize", "size": [8, 8]}, {"op": "custom"}, {"op": "standardize"}]
    raw = noise_images(5, 10, 12)
    chain = preprocess.build(specs, custom_op=Negate())
    chain.fit(2, [raw[:2], raw[2:]])
    head, tail = chain.split()
    assert [op.name for op in head.ops] == ["resize"]
    assert [op.name for op in tail.ops] == ["custom", "standardize"]
    samples = np.stack([head.apply(sample[None])[0] for sample in raw])
    assert samples.dtype == np.uint8  # the head keeps its dtype: tail(head(x)) == chain(x)
    np.testing.assert_array_equal(tail.apply(samples), chain.apply(raw))


def test_a_custom_op_without_a_place_runs_last_and_the_record_keeps_its_place():
    chain = preprocess.build([{"op": "scale", "divide": 2}], custom_op=Negate())
    assert [op.name for op in chain.ops] == ["scale", "custom"]
    assert chain.apply(np.array([[4.0]])).tolist() == [[-2.0]]
    placed = preprocess.build([{"op": "custom"}, {"op": "scale", "offset": 1}], custom_op=Negate())
    assert placed.apply(np.array([[4.0]])).tolist() == [[-3.0]]
    rebuilt = preprocess.build(placed.record(), custom_op=Negate())
    assert rebuilt.record() == placed.record()


@pytest.mark.parametrize("preset", sorted(preprocess.PRESETS))
def test_outputs_are_batch_independent_deterministic_and_thread_safe(preset):
    raw = noise_images(6, 36, 40, seed=4)
    chain = fitted(preprocess.op_specs(preset=preset), raw, [6])
    whole = chain.apply(raw)
    np.testing.assert_array_equal(chain.apply(raw), whole)
    head, tail = chain.split()
    with ThreadPoolExecutor(4) as pool:
        samples = list(pool.map(lambda sample: head.apply(sample[None])[0], raw))
    np.testing.assert_array_equal(tail.apply(np.stack(samples)), whole)
    np.testing.assert_array_equal(chain.apply(raw[3:4])[0], whole[3])


def test_output_shape_works_before_fit_and_an_empty_op_list_casts_to_float32():
    chain = preprocess.build(preprocess.op_specs(preset="gtsrb"))
    assert chain.first_unfitted() == 4
    assert chain.output_shape((50, 60, 3), np.uint8) == (1, 32, 32)
    empty = preprocess.build(preprocess.op_specs())
    assert empty.apply(np.arange(3, dtype=np.int64)[:, None]).dtype == np.float32


def test_ops_given_with_a_preset_run_first():
    """An array pool stored channels-first: a layout op to NHWC, then the preset."""
    rng = np.random.default_rng(5)
    nchw = rng.integers(0, 256, (4, 1, 30, 30), dtype=np.uint8)
    specs = preprocess.op_specs(preset="mnist", ops='[{"op": "layout", "to": "NHWC"}]')
    assert [spec["op"] for spec in specs] == [
        "layout",
        *[spec["op"] for spec in preprocess.PRESETS["mnist"]],
    ]
    out = preprocess.build(specs).apply(nchw)
    expected = preprocess.build(preprocess.op_specs(preset="mnist")).apply(nchw[:, 0])
    np.testing.assert_array_equal(out, expected)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"preset": "mnist", "ops": '[{"op": "layout", "to": "NCHW"}]'},
            r"--ops followed by --preset 'mnist'",
        ),
        (
            {"preset": "mnst"},
            r"--preset 'mnst' is not a preset \(did you mean 'mnist'\?\); "
            r"known presets: cifar10, gtsrb, imagenet, mnist\.",
        ),
        (
            {"ops": '[{"op": "scale",}]'},
            r"--ops is not valid JSON \(Expecting property name "
            r"enclosed in double quotes at line 1 column 17\)",
        ),
        ({"ops": '{"op": "scale"}'}, r"--ops is one JSON object, not a list; wrap it in \[ \]"),
        ({"ops": "5"}, r"--ops is int, not a list of ops"),
        ({"ops": '[{"op": "scale"}, 5]'}, r"op \[1\] of --ops is 5, not an object"),
        ({"ops": '[{"divide": 255}]'}, r'op \[0\] of --ops has no "op" name'),
        (
            {"ops": '[{"op": "resise", "size": 3}]'},
            r"op \[0\] \(resise\) of --ops names unknown "
            r"op \"resise\" \(did you mean 'resize'\?\); known ops: cast, center, center_crop",
        ),
        (
            {"ops": '[{"op": "resize", "sizes": 3}]'},
            r"op \[0\] \(resize\) of --ops has unknown "
            r"parameter 'sizes' \(did you mean 'size'\?\); resize takes size, resample\.",
        ),
        (
            {"ops": '[{"op": "layout"}]'},
            r"op \[0\] \(layout\) of --ops is missing parameter "
            r"'to'; give one of \"NCHW\", \"NHWC\"\.",
        ),
    ],
)
def test_op_list_errors_name_the_input_and_the_fix(kwargs, match):
    with pytest.raises(TestprioError, match=match):
        preprocess.op_specs(**kwargs)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            {"op": "resize", "size": -3},
            r"has size=-3; give a positive integer or a \[height, width\]",
        ),
        ({"op": "resize", "size": [1, 2, 3]}, r"has size=\[1, 2, 3\]; give a positive integer"),
        (
            {"op": "resize", "size": 8, "resample": "cubic"},
            r'has resample="cubic"; give one of "bil',
        ),
        ({"op": "scale", "divide": 0}, r"has divide=0; give a non-zero number"),
        ({"op": "scale", "divide": "255"}, r'has divide="255"; give a non-zero finite number'),
        ({"op": "scale", "multiply": True}, r"has multiply=true; give a finite number"),
        ({"op": "standardize", "mean": 0.5, "std": 0}, r"has std=0; give a positive number"),
        ({"op": "standardize", "mean": "a", "std": 1}, r'has mean="a"; give a number or a list'),
        ({"op": "standardize", "mean": 0.5}, r"gives only some of mean and std; give all, or none"),
        ({"op": "standardize", "mean": [1, 2], "std": [1, 2, 3]}, r"has 2 mean values and 3 std"),
        (
            {"op": "center", "channel_axis": "middle"},
            r'has channel_axis="middle"; give "last", "first"',
        ),
        ({"op": "minmax", "range": [1, 0]}, r"has range=\[1, 0\]; give a \[low, high\] list"),
        ({"op": "clip"}, r"has neither min nor max; give at least one bound"),
        ({"op": "clip", "min": 2, "max": 1}, r"has min=2 above max=1; give min <= max"),
        ({"op": "cast", "dtype": "float8"}, r'has dtype="float8"; give one of "float32"'),
        (
            {"op": "rgb_to_y", "standard": "bt2020"},
            r'has standard="bt2020"; give one of "bt601", "bt709"\.$',
        ),
    ],
)
def test_parameter_errors_name_the_op_the_value_and_what_to_give(spec, match):
    with pytest.raises(TestprioError, match=r"^op \[1\] \(\w+\) of --ops " + match):
        preprocess.op_specs(ops=json.dumps([{"op": "scale"}, spec]))


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        (
            [{"op": "layout", "to": "NCHW"}, {"op": "scale"}, {"op": "resize", "size": 4}],
            r"op \[2\] \(resize\) of --ops needs channels-last images but op \[0\] \(layout\) "
            r"made them NCHW; move it",
        ),
        (
            [{"op": "equalize"}, {"op": "layout", "to": "NHWC"}],
            r"op \[0\] \(equalize\) of --ops needs channels-last images but the first layout op "
            r"says the pool is NCHW up to it",
        ),
        (
            [{"op": "layout", "to": "NCHW"}, {"op": "layout", "to": "NCHW"}],
            r"op \[1\] \(layout\) of --ops converts to NCHW but the samples are NCHW already "
            r"\(op \[0\] made them so\)",
        ),
        (
            [{"op": "custom"}, {"op": "custom"}],
            r"op \[1\] \(custom\) of --ops repeats the custom op \(already op \[0\]\); keep one",
        ),
    ],
)
def test_chain_errors_are_caught_when_building(specs, match):
    with pytest.raises(TestprioError, match=match):
        preprocess.op_specs(ops=json.dumps(specs))


def test_a_custom_place_without_a_custom_op_is_an_error():
    specs = preprocess.op_specs(ops='[{"op": "custom"}]')
    with pytest.raises(
        TestprioError,
        match=r"op \[0\] \(custom\) of the op list marks the place "
        r"of a custom op but none was given; give --custom-ops",
    ):
        preprocess.build(specs)


@pytest.mark.parametrize(
    ("specs", "batch", "match"),
    [
        (
            preprocess.PRESETS["cifar10"],
            noise_images(2, 32, 32, 5),
            r"op \[0\] \(rgb\) of --preset 'cifar10' cannot take a batch of shape "
            r"\(2, 32, 32, 5\) uint8: it needs images with 1 \(L\), 2 \(LA\), 3 \(RGB\) or 4",
        ),
        (
            [{"op": "standardize", "mean": [0.5, 0.5, 0.5], "std": 0.2}],
            noise_images(2, 8, 8, 1),
            r"op \[0\] \(standardize\) of --preset 'cifar10' cannot take a batch of shape "
            r"\(2, 8, 8, 1\) uint8: mean has 3 values but the samples have 1 channel on "
            r"sample axis 2",
        ),
        (
            [{"op": "center_crop", "size": 12}],
            noise_images(2, 10, 11),
            r"crop is larger than the 10x11 images; resize them first or crop less\.$",
        ),
        (
            [{"op": "resize", "size": 4}],
            np.zeros((3, 7), np.float32),
            r"op \[0\] \(resize\) .* \(3, 7\) float32: it needs image samples, \(H, W\) or",
        ),
        (
            [{"op": "layout", "to": "NCHW"}],
            np.zeros((3, 7), np.float32),
            r"flat samples have no channels to move\.$",
        ),
    ],
)
def test_apply_errors_name_the_op_and_the_shape_it_got(specs, batch, match):
    chain = preprocess.build(specs, source="--preset 'cifar10'")
    with pytest.raises(TestprioError, match=match):
        chain.apply(batch)


def test_output_shape_names_the_op_that_cannot_take_the_samples():
    chain = preprocess.build([{"op": "scale"}, {"op": "center_crop", "size": 16}])
    with pytest.raises(
        TestprioError,
        match=r"op \[1\] \(center_crop\) of the op list cannot "
        r"take samples of shape \(10, 10, 3\) float32: the 16x16 crop is larger",
    ):
        chain.output_shape((10, 10, 3), np.uint8)


def test_fit_errors_name_the_op():
    chain = preprocess.build([{"op": "scale"}, {"op": "standardize"}], source="--ops")
    with pytest.raises(
        TestprioError,
        match=r"op \[1\] \(standardize\) of --ops found no "
        r"samples with finite values to compute mean and std from",
    ):
        chain.fit(1, [np.full((2, 3), np.nan)])
    axis = preprocess.build([{"op": "center", "channel_axis": 3}])
    with pytest.raises(
        TestprioError,
        match=r"op \[0\] \(center\) of the op list cannot compute "
        r"its statistics: channel_axis 3 is not an axis of samples with 2 axes",
    ):
        axis.fit(0, [np.zeros((2, 3, 4))])
    with pytest.raises(RuntimeError, match=r"fit op \[0\] \(center\)"):
        axis.apply(np.zeros((2, 3, 4)))


class Broken(preprocess.Op):
    name = "custom"
    per_sample_safe = False

    def __init__(self, result=None, error=None):
        self.result, self.error = result, error

    def apply(self, x):
        if self.error:
            raise self.error
        return self.result


@pytest.mark.parametrize(
    ("custom", "match"),
    [
        (
            Broken(result=np.zeros((1, 2))),
            r"turned a batch of shape \(3, 2\) float64 into shape "
            r"\(1, 2\) float64; an op must return one numeric row per input row",
        ),
        (Broken(result=np.array([["a"]] * 3)), r"into shape \(3, 1\) <U1"),
        (
            Broken(error=RuntimeError("worker died")),
            r"op \[0\] \(custom\) of the op list cannot "
            r"take a batch of shape \(3, 2\) float64: RuntimeError: worker died\.$",
        ),
    ],
)
def test_a_misbehaving_custom_op_is_named(custom, match):
    with pytest.raises(TestprioError, match=match):
        preprocess.build([], custom_op=custom).apply(np.zeros((3, 2)))
