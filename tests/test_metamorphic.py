"""Metamorphic stability and causal attribution: planted models, transform semantics, errors."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from testprio.causal import factorial_attribution
from testprio.errors import TestprioError
from testprio.metamorphic import (
    LAYOUTS,
    TRANSFORMS,
    attribution,
    default_transforms,
    describe_transforms,
    run_metamorphic,
)
from testprio.model import create_session, run_class_output
from tests.conftest import linear_classifier

BIN = 0.1  # the planted model's class is the sample mean in bins of this width


def mean_bin_model(batch: np.ndarray) -> np.ndarray:
    """A real (if tiny) classifier: the class is the bin of the sample's mean value.

    Geometry, contrast (about the channel mean), blur and zero-mean noise move the mean by far
    less than half a bin for the images below; brightness moves it by a whole bin or more.
    """
    return np.floor(batch.mean(axis=tuple(range(1, batch.ndim))) / BIN).astype(np.int64)


def bin_centred_images(n: int, *, seed: int = 0, shape=(1, 16, 16)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, *shape))
    target = (rng.integers(2, 8, n) + 0.5) * BIN
    x += (target - x.mean(axis=tuple(range(1, x.ndim))))[(slice(None),) + (None,) * len(shape)]
    return x.astype(np.float32)


BRIGHT = {"brightness": {"delta": (0.15, 0.3)}}  # always a shift of more than one bin


@pytest.fixture(scope="module")
def planted():
    x = bin_centred_images(60)
    result = run_metamorphic(mean_bin_model, x, followups=20, seed=1, ranges=BRIGHT)
    # Six null transforms: a family-wise 95% level (Bonferroni) so that "every null interval
    # covers 0" is the claim tested (it held for 19 of 20 design seeds; 95% each: 14 of 20).
    return result, attribution(result.design, seed=0, n_boot=1000, confidence=1 - 0.05 / 6)


def effects_by_name(report: dict) -> dict[str, dict]:
    return {record["transform"]: record for record in report["effects"]}


# ------------------------------------------------------------------------- planted models


def test_planted_model_violates_exactly_when_brightness_is_applied(planted):
    result, _ = planted
    design = result.design
    np.testing.assert_array_equal(design["violated"], design["brightness"])
    assert result.transforms == list(TRANSFORMS)
    expected = design["brightness"].reshape(60, 20).mean(axis=1)
    np.testing.assert_allclose(result.instability, expected)


def test_planted_model_ate_is_large_for_brightness_and_near_zero_for_the_others(planted):
    _, report = planted
    effects = effects_by_name(report)
    bright = effects.pop("brightness")
    assert bright["ate"] == pytest.approx(1.0)
    assert bright["ate_ci_low"] > 0.5  # the interval excludes 0
    for name, record in effects.items():
        assert abs(record["ate"]) < 0.1, name
        assert record["ate_ci_low"] <= 0 <= record["ate_ci_high"], name
        # The regression adjusts for brightness, so the others' effects vanish exactly.
        assert record["regression_main"] == pytest.approx(0, abs=1e-9), name
        assert record["regression_ate"] == pytest.approx(0, abs=1e-9), name


def test_planted_model_shapley_value_dominates_and_is_efficient(planted):
    _, report = planted
    effects = effects_by_name(report)
    assert effects["brightness"]["shapley"] == pytest.approx(1.0)
    others = [record["shapley"] for name, record in effects.items() if name != "brightness"]
    np.testing.assert_allclose(others, 0, atol=1e-9)
    values = report["shapley_values"]
    total = sum(record["shapley"] for record in report["effects"])
    assert total == pytest.approx(values["v_all"] - values["v_empty"])
    assert values["cells_observed"] == values["cells_total"] == 2**7


def test_attribution_is_json_and_per_class(planted):
    result, report = planted
    json.dumps(report, allow_nan=False)
    classes = sorted(set(result.source_class.tolist()))
    assert [group["class"] for group in report["per_class"]] == classes
    for group in report["per_class"]:
        assert effects_by_name(group)["brightness"]["ate"] == pytest.approx(1.0)
        assert group["n_samples"] == int((result.source_class == group["class"]).sum())
    assert "per_class" not in attribution(result.design, n_boot=0, by_class=False)


def test_constant_model_has_zero_instability_everywhere():
    x = bin_centred_images(12)
    result = run_metamorphic(lambda batch: np.zeros(len(batch), int), x, followups=6)
    np.testing.assert_array_equal(result.instability, 0)
    assert not result.design["violated"].any()
    report = attribution(result.design, n_boot=50)
    for record in report["effects"]:
        assert record["ate"] == 0 and record["ate_ci_low"] == 0 and record["ate_ci_high"] == 0
        assert record["shapley"] == 0


def test_class_scores_are_read_like_classes():
    x = bin_centred_images(8)

    def scores(batch):
        return np.eye(12)[mean_bin_model(batch)]

    by_class = run_metamorphic(mean_bin_model, x, followups=5, seed=3)
    by_scores = run_metamorphic(scores, x, followups=5, seed=3)
    for key, column in by_class.design.items():
        np.testing.assert_array_equal(column, by_scores.design[key])


def test_onnx_digits_classifier_is_less_stable_where_it_is_wrong(tmp_path: Path):
    # A real ONNX model (least-squares linear classifier fitted on 1000 scikit-learn digits)
    # through testprio's session wrapper, on the other 797 digits.
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    weights = np.linalg.lstsq(x[:1000].reshape(1000, -1), np.eye(10)[digits.target[:1000]])[0]
    path = linear_classifier(tmp_path / "digits.onnx", weights=weights)
    session = create_session(str(path), device="cpu")

    def predict(batch):
        return run_class_output(session, "input", "logits", batch, "digits.onnx")

    test, labels = x[1000:], digits.target[1000:]
    wrong = predict(test).argmax(axis=1) != labels
    result = run_metamorphic(predict, test, followups=10, seed=0)
    # Measured: mean instability 0.80 where wrong, 0.62 where right.
    assert result.instability[wrong].mean() > result.instability[~wrong].mean() + 0.1
    np.testing.assert_array_equal(result.source_class, predict(test).argmax(axis=1))
    report = attribution(result.design, seed=0, n_boot=200)
    values = report["shapley_values"]
    total = sum(record["shapley"] for record in report["effects"])
    assert total == pytest.approx(values["v_all"] - values["v_empty"])
    assert len(report["per_class"]) == 10


# --------------------------------------------------------------- causal estimators on designs


def synthetic_design(rule, *, samples=400, followups=8, count=3, seed=0):
    rng = np.random.default_rng(seed)
    applied = (rng.random((samples * followups, count)) < 0.5).astype(np.int8)
    return applied, rule(applied).astype(np.int8), np.repeat(np.arange(samples), followups)


def test_three_way_interaction_splits_shapley_equally_but_ate_by_a_quarter():
    # Violation only when all three are applied: Shapley gives each 1/3 of v(all) - v(empty)
    # = 1, the ATE gives each P(the other two applied) = 1/4.
    applied, violated, clusters = synthetic_design(lambda a: a.all(axis=1))
    report = factorial_attribution(applied, violated, clusters, names=["a", "b", "c"], n_boot=100)
    for record in report["effects"]:
        assert record["shapley"] == pytest.approx(1 / 3)
        assert record["ate"] == pytest.approx(0.25, abs=0.05)
        assert record["ate_ci_low"] < 0.25 < record["ate_ci_high"]
    assert report["shapley_values"]["sum"] == pytest.approx(1.0)


def test_pairwise_interaction_is_recovered_and_shapley_equals_regression_ate():
    # a alone breaks half the time (randomly), a and b together always.
    rng = np.random.default_rng(5)
    noise = rng.random(400 * 8) < 0.5
    applied, violated, clusters = synthetic_design(
        lambda a: (a[:, 0] == 1) & ((a[:, 1] == 1) | noise)
    )
    report = factorial_attribution(applied, violated, clusters, names=["a", "b", "c"], n_boot=200)
    interactions = {(r["a"], r["b"]): r for r in report["interactions"]}
    assert interactions[("a", "b")]["coef"] == pytest.approx(0.5, abs=0.08)
    assert interactions[("a", "b")]["ci_low"] > 0.2
    assert interactions[("a", "c")]["ci_low"] <= 0 <= interactions[("a", "c")]["ci_high"]
    effects = effects_by_name(report)
    assert effects["a"]["regression_main"] == pytest.approx(0.5, abs=0.08)
    assert effects["c"]["ate_ci_low"] <= 0 <= effects["c"]["ate_ci_high"]
    values = report["shapley_values"]
    total = sum(record["shapley"] for record in report["effects"])
    assert total == pytest.approx(values["v_all"] - values["v_empty"])


def test_shapley_efficiency_holds_with_unobserved_cells():
    # 5 transforms, 12 rows: most of the 32 cells are empty and come from the regression.
    applied, violated, clusters = synthetic_design(
        lambda a: a[:, 0] ^ a[:, 3], samples=4, followups=3, count=5, seed=2
    )
    report = factorial_attribution(
        applied, violated, clusters, names=list("abcde"), n_boot=20, seed=1
    )
    values = report["shapley_values"]
    assert values["cells_observed"] < values["cells_total"]
    assert not report["regression"]["identified"]
    total = sum(record["shapley"] for record in report["effects"])
    assert total == pytest.approx(values["v_all"] - values["v_empty"])


def test_bootstrap_resamples_source_samples_not_rows():
    # Violation is a property of the sample (half the samples always violate), and transform
    # a is applied to whole samples. Rows are then 8-fold correlated: a row bootstrap would
    # give an interval about sqrt(8) times too narrow around the chance imbalance of a.
    samples, followups = 200, 8
    rng = np.random.default_rng(11)
    fragile = np.repeat(rng.random(samples) < 0.5, followups)
    applied = np.repeat(rng.random(samples) < 0.5, followups)[:, None].astype(np.int8)
    clusters = np.repeat(np.arange(samples), followups)
    report = factorial_attribution(applied, fragile.astype(np.int8), clusters, names=["a"])
    record = report["effects"][0]
    width = record["ate_ci_high"] - record["ate_ci_low"]
    # Per-sample standard error of a difference of two proportions near 1/2 with n = 100 each.
    assert width == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 100 * 2), rel=0.25)


# ----------------------------------------------------------------------- determinism, design


def test_same_seed_same_design_other_seed_other_design():
    x = bin_centred_images(10)
    first = run_metamorphic(mean_bin_model, x, followups=4, seed=7)
    again = run_metamorphic(mean_bin_model, x, followups=4, seed=7)
    other = run_metamorphic(mean_bin_model, x, followups=4, seed=8)
    for key, column in first.design.items():
        np.testing.assert_array_equal(column, again.design[key])
    assert not np.array_equal(first.design["rotate"], other.design["rotate"])
    report = attribution(first.design, seed=3, n_boot=50)
    assert report == attribution(first.design, seed=3, n_boot=50)


def test_batching_and_sharding_do_not_change_the_follow_ups():
    x = bin_centred_images(10)
    seen = []

    def recording(batch):
        seen.append(batch.copy())
        return mean_bin_model(batch)

    whole = run_metamorphic(recording, x, followups=4, seed=2, batch_size=1000)
    whole_inputs = np.concatenate([batch[10:] for batch in seen])
    seen.clear()
    ids = np.arange(10)
    parts = [
        run_metamorphic(recording, x[s], followups=4, seed=2, sample_ids=ids[s], batch_size=7)
        for s in (slice(0, 3), slice(3, 10))
    ]
    # batch_size=7 holds one source and its 4 follow-ups per predict call.
    assert all(len(batch) == 5 for batch in seen)
    np.testing.assert_array_equal(np.concatenate([batch[1:] for batch in seen]), whole_inputs)
    for key, column in whole.design.items():
        np.testing.assert_array_equal(column, np.concatenate([p.design[key] for p in parts]))
    np.testing.assert_array_equal(whole.instability, np.concatenate([p.instability for p in parts]))


def test_design_table_is_tidy():
    x = bin_centred_images(5)
    result = run_metamorphic(mean_bin_model, x, followups=3, seed=0, transforms=["noise", "blur"])
    design = result.design
    assert result.transforms == ["blur", "noise"]  # registry order
    assert list(design) == [
        "sample_id",
        "followup",
        "blur",
        "noise",
        "blur_sigma",
        "noise_sigma",
        "source_class",
        "followup_class",
        "violated",
    ]
    np.testing.assert_array_equal(design["sample_id"], np.repeat(np.arange(5), 3))
    np.testing.assert_array_equal(design["followup"], np.tile(np.arange(3), 5))
    np.testing.assert_array_equal(design["source_class"], np.repeat(mean_bin_model(x), 3))
    assert np.isnan(design["blur_sigma"][design["blur"] == 0]).all()
    records = result.design_records()
    assert len(records) == 15
    json.dumps(records, allow_nan=False)


def test_parameter_ranges_are_honoured():
    x = bin_centred_images(40)
    ranges = {"rotate": {"degrees": (30, 40)}, "translate": {"dx": (-0.02, 0.0)}}
    result = run_metamorphic(mean_bin_model, x, followups=5, seed=4, ranges=ranges)
    design = result.design
    for name, spec in TRANSFORMS.items():
        for key, default in spec.params.items():
            low, high = ranges.get(name, {}).get(key, default)
            drawn = design[f"{name}_{key}"][design[name] == 1]
            assert len(drawn) > 50
            assert drawn.min() >= low and drawn.max() <= high, (name, key)
            # Uniform draws spread over the range, not a corner of it.
            assert drawn.max() - drawn.min() > 0.8 * (high - low), (name, key)
    indicators = np.column_stack([design[name] for name in TRANSFORMS])
    assert indicators.mean() == pytest.approx(0.5, abs=0.05)


# -------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NHW"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_follow_ups_keep_shape_and_dtype(layout, dtype):
    shapes = {"NCHW": (6, 3, 9, 11), "NHWC": (6, 9, 11, 3), "NHW": (6, 9, 11)}
    x = np.random.default_rng(0).normal(size=shapes[layout]).astype(dtype)
    seen = []

    def recording(batch):
        seen.append(batch)
        return np.zeros(len(batch), int)

    run_metamorphic(recording, x, followups=8, seed=0, layout=layout)
    batch = np.concatenate(seen)
    assert batch.shape == (6 * 9, *shapes[layout][1:]) and batch.dtype == dtype
    assert np.isfinite(batch).all()


def test_channels_last_gives_the_same_follow_ups_as_channels_first():
    x = np.random.default_rng(1).uniform(size=(4, 3, 8, 8)).astype(np.float32)
    seen: dict[str, list] = {"NCHW": [], "NHWC": []}

    def recorder(layout):
        def predict(batch):
            seen[layout].append(batch if layout == "NCHW" else batch.transpose(0, 3, 1, 2))
            return mean_bin_model(batch)

        return predict

    first = run_metamorphic(recorder("NCHW"), x, followups=6, seed=9)
    last = run_metamorphic(
        recorder("NHWC"), x.transpose(0, 2, 3, 1), followups=6, seed=9, layout="NHWC"
    )
    np.testing.assert_allclose(np.concatenate(seen["NCHW"]), np.concatenate(seen["NHWC"]))
    np.testing.assert_array_equal(first.instability, last.instability)


def test_transforms_may_be_a_comma_separated_string():
    result = run_metamorphic(mean_bin_model, IMAGES, transforms="noise, rotate", followups=2)
    assert result.transforms == ["rotate", "noise"]


def test_any_tensor_gets_noise_only():
    x = np.random.default_rng(2).normal(size=(9, 64)).astype(np.float32)
    assert default_transforms(None) == ["noise"]
    result = run_metamorphic(lambda b: (b.sum(axis=1) > 0).astype(int), x, layout=None, seed=0)
    assert result.transforms == ["noise"]
    assert result.instability.shape == (9,)


def apply(name, x, **params):
    spec = TRANSFORMS[name]
    values = {key: np.full(len(x), float(value)) for key, value in params.items()}
    normal = np.random.default_rng(0).standard_normal(x.shape) if spec.needs_normal else None
    return spec.apply(x.copy(), values, normal)


def test_rotate_quarter_turn_is_rot90_and_zero_is_identity():
    x = np.random.default_rng(0).uniform(size=(2, 3, 7, 7))
    np.testing.assert_allclose(apply("rotate", x, degrees=90), np.rot90(x, axes=(2, 3)))
    np.testing.assert_allclose(apply("rotate", x, degrees=0), x)


def test_translate_one_pixel_right_repeats_the_edge():
    x = np.random.default_rng(0).uniform(size=(2, 1, 5, 8))
    shifted = apply("translate", x, dx=1 / 8, dy=0)
    np.testing.assert_allclose(shifted[..., 1:], x[..., :-1])
    np.testing.assert_allclose(shifted[..., 0], x[..., 0])
    down = apply("translate", x, dx=0, dy=2 / 5)
    np.testing.assert_allclose(down[:, :, 2:], x[:, :, :-2])


def test_scale_zooms_about_the_centre():
    x = np.random.default_rng(0).uniform(size=(1, 1, 9, 9))
    np.testing.assert_allclose(apply("scale", x, factor=1.0), x)
    # Doubling the size maps output pixel 4 +- 2k to input pixel 4 +- k.
    zoomed = apply("scale", x, factor=2.0)
    np.testing.assert_allclose(zoomed[0, 0, ::2, ::2], x[0, 0, 2:7, 2:7])


def test_intensity_transforms_do_what_they_say():
    x = np.random.default_rng(0).uniform(size=(3, 2, 6, 6))
    spread = x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))
    np.testing.assert_allclose(
        apply("brightness", x, delta=0.1), x + 0.1 * spread[:, None, None, None]
    )
    mean = x.mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(apply("contrast", x, factor=0.5), mean + 0.5 * (x - mean))
    np.testing.assert_allclose(apply("noise", x, sigma=0.0), x)
    noisy = apply("noise", x, sigma=0.05) - x
    assert noisy.std() == pytest.approx(0.05 * x.std(), rel=0.2)


def test_blur_smooths_keeps_constants_and_the_mean_inside():
    x = np.random.default_rng(0).uniform(size=(2, 1, 12, 12))
    np.testing.assert_allclose(apply("blur", x, sigma=0.0), x, atol=1e-12)
    blurred = apply("blur", x, sigma=1.0)
    assert np.diff(blurred, axis=3).std() < 0.6 * np.diff(x, axis=3).std()
    np.testing.assert_allclose(apply("blur", np.full((1, 1, 5, 5), 3.0), sigma=2.0), 3.0)
    # An impulse far from the edges spreads as a normalised 2-D Gaussian.
    impulse = np.zeros((1, 1, 15, 15))
    impulse[0, 0, 7, 7] = 1
    spread = apply("blur", impulse, sigma=1.0)[0, 0]
    assert spread.sum() == pytest.approx(1.0)
    assert spread[7, 8] / spread[7, 7] == pytest.approx(np.exp(-0.5), rel=1e-6)


def test_registry_is_described():
    described = {record["name"]: record for record in describe_transforms()}
    assert list(described) == list(TRANSFORMS)
    assert described["rotate"]["params"] == {"degrees": [-15.0, 15.0]}
    assert not described["noise"]["images_only"]
    json.dumps(described)
    assert set(LAYOUTS) == {"NCHW", "NHWC", "NHW", None}


# ------------------------------------------------------------------------------------ errors


IMAGES = bin_centred_images(3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"transforms": ["rotate", "wobble"]}, r"unknown metamorphic transform 'wobble'"),
        ({"transforms": []}, r"transforms is empty"),
        ({"transforms": ["blur", "blur"]}, r"name a transform twice"),
        ({"layout": "CHW"}, r"unknown metamorphic layout 'CHW'; choose one of 'NCHW'"),
        ({"layout": "NHW"}, r"shape \(3, 1, 16, 16\), but layout 'NHW' needs 3 axes"),
        ({"layout": None, "transforms": ["rotate"]}, r"'rotate' needs images but layout is None"),
        ({"ranges": {"blur": {"radius": (1, 2)}}}, r"'blur' has no parameter 'radius'"),
        ({"ranges": {"blur": {"sigma": (2, 1)}}}, r"range \(2, 1\) for blur.sigma is invalid"),
        ({"ranges": {"scale": {"factor": (0, 1)}}}, r"0.01 <= low <= high <= 100"),
        ({"ranges": {"blur": {"sigma": "wide"}}}, r"range 'wide' for blur.sigma is invalid"),
        (
            {"transforms": ["noise"], "ranges": {"blur": {"sigma": (1, 2)}}},
            r"ranges name transform 'blur', which is not among the chosen",
        ),
        ({"followups": 0}, r"followups must be an integer >= 1, got 0"),
        ({"followups": 10**9}, r"followups 1,000,000,000 is more than the limit of 1,000"),
        ({"batch_size": 2.5}, r"batch_size must be an integer >= 1"),
        ({"seed": -1}, r"seed must be a non-negative integer, got -1"),
        ({"sample_ids": np.array([0, 1])}, r"sample_ids must be 3 non-negative integers"),
        ({"sample_ids": np.array([0, -1, 2])}, r"sample_ids must be 3 non-negative integers"),
    ],
)
def test_bad_options_give_one_sentence(options, message):
    with pytest.raises(TestprioError, match=message):
        run_metamorphic(mean_bin_model, IMAGES, **options)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (IMAGES.astype(np.uint8), r"dtype uint8; transforms need a floating-point tensor"),
        (np.zeros((0, 1, 4, 4), np.float32), r"pass a non-empty batch"),
        (np.full((2, 1, 4, 4), np.nan, np.float32), r"holds NaN or Inf"),
    ],
)
def test_bad_inputs_give_one_sentence(x, message):
    with pytest.raises(TestprioError, match=message):
        run_metamorphic(mean_bin_model, x)


@pytest.mark.parametrize(
    "bad_predict",
    [
        lambda batch: np.zeros(len(batch) - 1, int),
        lambda batch: np.full(len(batch), 0.5),
        lambda batch: np.zeros((len(batch), 2, 2)),
    ],
)
def test_bad_predict_output_gives_one_sentence(bad_predict):
    with pytest.raises(TestprioError, match=r"predict function returned shape .* it must return"):
        run_metamorphic(bad_predict, IMAGES, followups=2)


@pytest.fixture(scope="module")
def small_design():
    return run_metamorphic(mean_bin_model, IMAGES, followups=4, seed=0).design


@pytest.mark.parametrize(
    ("change", "options", "message"),
    [
        (lambda d: {k: v for k, v in d.items() if k != "violated"}, {}, r"lacks column 'violated'"),
        (
            lambda d: {k: v for k, v in d.items() if k not in TRANSFORMS},
            {},
            r"has no transform indicator column",
        ),
        (lambda d: {**d, "violated": d["violated"] * 2}, {}, r"'violated' must hold only 0 and 1"),
        (lambda d: {**d, "rotate": d["rotate"][:-1]}, {}, r"column 'rotate' must hold 12 integers"),
        (lambda d: d, {"n_boot": -1}, r"n_boot must be a non-negative integer"),
        (lambda d: d, {"confidence": 1.5}, r"confidence must be between 0 and 1"),
        (lambda d: d, {"seed": -2}, r"seed must be a non-negative integer"),
    ],
)
def test_bad_designs_give_one_sentence(small_design, change, options, message):
    with pytest.raises(TestprioError, match=message):
        attribution(change(small_design), **options)


def test_attribution_accepts_a_dataframe(small_design):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(small_design)
    assert attribution(frame, n_boot=20) == attribution(small_design, n_boot=20)


def test_every_pair_of_transforms_has_an_interaction_term(small_design):
    report = attribution(small_design, n_boot=0)
    pairs = [(r["a"], r["b"]) for r in report["interactions"]]
    assert pairs == list(combinations(TRANSFORMS, 2))
    assert report["regression"]["n_params"] == 1 + 7 + 21
    assert report["effects"][0]["ate_ci_low"] is None  # no replicates, no interval
