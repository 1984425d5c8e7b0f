"""Neuron coverage, CTM and CAM against dnn-tip 0.1.1 (the oracle), planted cases, scale."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import onnxruntime as ort
import pytest
from dnn_tip import neuron_coverage as oracle
from dnn_tip import prioritizers

from testprio.activations import hidden_layer_names, layer_activations, with_layer_outputs
from testprio.coverage import (
    COVERAGE_DEFAULTS,
    COVERAGE_METRICS,
    NeuronProfile,
    cam_order,
    coverage_cells,
    ctm_order,
    score_coverage,
)
from testprio.errors import TestprioError
from tests.coverage_models import export_torch, small_cnn

PARAMS = {
    "nac": {"threshold": 0.3},
    "kmnc": {"sections": 4},
    "nbc": {"scaler": 0.5},
    "snac": {"scaler": 0.0},
    "tknc": {"top_neurons": 2},
}


def _oracle(name: str, profile: NeuronProfile):
    p = PARAMS[name]
    build = {
        "nac": lambda: oracle.NAC(p.get("threshold")),
        "kmnc": lambda: oracle.KMNC(profile.mins, profile.maxs, p.get("sections")),
        "nbc": lambda: oracle.NBC(profile.mins, profile.maxs, profile.stds, p.get("scaler")),
        "snac": lambda: oracle.SNAC(profile.maxs, profile.stds, p.get("scaler")),
        "tknc": lambda: oracle.TKNC(p.get("top_neurons")),
    }
    return build[name]()


def _random_layers(rng, n: int, scale: float = 1.0) -> list[np.ndarray]:
    return [
        rng.normal(scale=scale, size=(n, 20)).astype(np.float32),
        rng.normal(scale=scale, size=(n, 7)).astype(np.float32),
    ]


@pytest.fixture(scope="module")
def random_case():
    rng = np.random.default_rng(7)
    reference, pool = _random_layers(rng, 400), _random_layers(rng, 120, scale=1.6)
    return NeuronProfile.fit([[a[:150] for a in reference], [a[150:] for a in reference]]), pool


@pytest.fixture(scope="module")
def model_case(tmp_path_factory):
    """Activations of a real exported CNN: reference and (shifted) pool."""
    rng = np.random.default_rng(3)
    module = small_cnn()
    x_ref = rng.normal(size=(300, 1, 8, 8)).astype(np.float32)
    x_pool = rng.normal(loc=0.3, scale=1.4, size=(90, 1, 8, 8)).astype(np.float32)
    model = export_torch(module, x_ref[:2], tmp_path_factory.mktemp("m") / "cnn.onnx")
    layers = hidden_layer_names(model)
    session = ort.InferenceSession(
        with_layer_outputs(model, layers).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    profile = NeuronProfile(layers)
    for start in range(0, len(x_ref), 64):
        profile.update(layer_activations(session, {"input": x_ref[start : start + 64]}, layers)[1])
    return profile.finish(), layer_activations(session, {"input": x_pool}, layers)[1]


def _oracle_cam(scores: np.ndarray, profiles: np.ndarray) -> np.ndarray:
    """dnn-tip's CAM with our tie rule folded into the scores it sorts the rest by.

    ``score * N + (N - 1 - position)`` is strictly monotone in (score desc, position asc),
    so dnn-tip's unstable argsort has no ties left; its greedy part does not use scores.
    """
    n = len(scores)
    folded = scores.astype(np.int64) * n + (n - 1 - np.arange(n))
    return np.array(list(prioritizers.cam(folded, profiles.reshape(n, -1).copy())))


# --- profile ------------------------------------------------------------------------------


@pytest.mark.parametrize("cuts", [[], [100], [7, 8, 250], [1, 2, 3, 399]])
def test_profile_streamed_in_batches_equals_whole(cuts):
    rng = np.random.default_rng(0)
    layers = [rng.normal(3.0, 2.0, size=(400, 5)), rng.uniform(size=(400, 3))]
    bounds = [0, *cuts, 400]
    profile = NeuronProfile.fit([[a[s:e] for a in layers] for s, e in pairwise(bounds)])
    assert profile.count == 400 and profile.units == [5, 3]
    for i, a in enumerate(layers):
        np.testing.assert_array_equal(profile.mins[i], a.min(axis=0))
        np.testing.assert_array_equal(profile.maxs[i], a.max(axis=0))
        np.testing.assert_allclose(profile.means[i], a.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(profile.stds[i], a.std(axis=0), rtol=1e-10)


def test_profile_round_trips_through_json(random_case):
    profile, pool = random_case
    again = NeuronProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    for name in COVERAGE_METRICS:
        want = COVERAGE_METRICS[name](pool, profile, **PARAMS[name])
        got = COVERAGE_METRICS[name](pool, again, **PARAMS[name])
        np.testing.assert_array_equal(got[1], want[1])
    # A restored profile keeps streaming.
    extra = [a[:10] for a in pool]
    again.update(extra).finish()
    assert again.count == profile.count + 10


# --- criteria equal dnn-tip ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COVERAGE_METRICS))
@pytest.mark.parametrize("case", ["random_case", "model_case"])
def test_scores_and_cells_equal_dnn_tip(name, case, request):
    profile, pool = request.getfixturevalue(case)
    scores, covered = COVERAGE_METRICS[name](pool, profile, **PARAMS[name])
    want_scores, want_profiles = _oracle(name, profile)(pool)
    n = len(pool[0])
    assert covered.dtype == bool and covered.shape == (n, want_profiles[0].size)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    np.testing.assert_array_equal(covered, want_profiles.reshape(n, -1))
    assert covered.shape[1] == coverage_cells(name, profile.units, **PARAMS[name])


@pytest.mark.parametrize("name", sorted(COVERAGE_METRICS))
@pytest.mark.parametrize("case", ["random_case", "model_case"])
def test_cam_and_ctm_orders_equal_dnn_tip(name, case, request):
    profile, pool = request.getfixturevalue(case)
    scores, covered = COVERAGE_METRICS[name](pool, profile, **PARAMS[name])
    ids = np.arange(len(scores))
    np.testing.assert_array_equal(cam_order(covered, scores, ids), _oracle_cam(scores, covered))
    # CTM: dnn-tip's argsort is unstable on ties, so compare the score sequence and check
    # our ties run by id.
    ours, theirs = ctm_order(scores, ids), np.array(list(prioritizers.ctm(scores)))
    np.testing.assert_array_equal(scores[ours], scores[theirs])
    assert np.all(np.diff(scores[ours]) <= 0)
    ties = np.diff(scores[ours]) == 0
    assert np.all(np.diff(ours)[ties] > 0)


def test_orders_equal_dnn_tip_on_tie_free_data():
    """No folding needed when every score differs: both orders must be identical."""
    rng = np.random.default_rng(11)
    n, units = 30, 40
    # Sample i has i+1 active units at random places: distinct NAC scores, overlapping cells.
    acts = np.zeros((n, units), np.float32)
    for i in range(n):
        acts[i, rng.choice(units, size=i + 1, replace=False)] = 1.0
    acts = acts[rng.permutation(n)]
    scores, covered = COVERAGE_METRICS["nac"]([acts], None, threshold=0.5)
    assert len(set(scores.tolist())) == n
    ids = np.arange(n)
    np.testing.assert_array_equal(ctm_order(scores, ids), list(prioritizers.ctm(scores)))
    np.testing.assert_array_equal(
        cam_order(covered, scores, ids), list(prioritizers.cam(scores, covered.copy()))
    )


# --- planted cases ------------------------------------------------------------------------


def test_a_never_seen_range_gets_the_top_snac_and_nbc_score(random_case):
    profile, pool = random_case
    pool = [a.copy() for a in pool]
    far = 57
    pool[0][far] = profile.maxs[0] + 10 * profile.stds[0] + 1
    pool[1][far] = profile.mins[1] - 10 * profile.stds[1] - 1
    for name in ("snac", "nbc"):
        scores, _ = COVERAGE_METRICS[name](pool, profile, scaler=1.0)
        assert scores.argmax() == far and (scores < scores[far]).sum() == len(scores) - 1
    order = ctm_order(COVERAGE_METRICS["nbc"](pool, profile)[0], np.arange(len(pool[0])))
    assert order[0] == far


def test_cam_picks_new_cells_before_a_duplicate():
    covered = np.zeros((3, 6), dtype=bool)
    covered[0, [0, 1, 2]] = True
    covered[1, [0, 1, 2]] = True  # the same cells as sample 0, and the same score
    covered[2, [3]] = True  # fewer cells, but new ones
    scores = covered.sum(axis=1)
    ids = np.array([10, 11, 12])
    assert ctm_order(scores, ids).tolist() == [10, 11, 12]
    assert cam_order(covered, scores, ids).tolist() == [10, 12, 11]


def test_ties_go_to_the_lowest_sample_id_not_the_position():
    covered = np.eye(3, dtype=bool)[[0, 0, 1]]  # samples 0 and 1 tie on cell 0
    ids = np.array([9, 4, 7])
    assert cam_order(covered, covered.sum(axis=1), ids).tolist() == [4, 7, 9]
    assert ctm_order(np.array([1, 1, 1]), ids).tolist() == [4, 7, 9]


def test_tknc_ties_go_to_the_lower_unit():
    acts = np.array([[0.0, 2.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0]], np.float32)
    _, covered = COVERAGE_METRICS["tknc"]([acts], None, top_neurons=1)
    assert covered.tolist() == [[False, True, False, False], [True, False, False, False]]


def test_defaults_are_accepted_by_every_metric(random_case):
    profile, pool = random_case
    for name, fn in COVERAGE_METRICS.items():
        scores, covered = fn(pool, profile, **COVERAGE_DEFAULTS[name])
        assert scores.shape == (len(pool[0]),)
        assert covered.shape[1] == coverage_cells(name, profile.units, **COVERAGE_DEFAULTS[name])


# --- streaming and packed cells -----------------------------------------------------------


@pytest.mark.parametrize("cuts", [[], [40], [1, 50, 51]])
@pytest.mark.parametrize("to_file", [False, True])
def test_batched_scoring_and_packed_cam_equal_one_pass(random_case, tmp_path, cuts, to_file):
    profile, pool = random_case
    n = len(pool[0])
    bounds = [0, *cuts, n]
    batches = [[a[s:e] for a in pool] for s, e in pairwise(bounds)]
    path = tmp_path / "cells.bin" if to_file else None
    result = score_coverage(batches, "kmnc", profile, cells_path=path, sections=5)
    scores, covered = COVERAGE_METRICS["kmnc"](pool, profile, sections=5)
    np.testing.assert_array_equal(result.scores, scores)
    assert result.n_cells == covered.shape[1]
    assert isinstance(result.packed, np.memmap) == to_file
    np.testing.assert_array_equal(result.packed, np.packbits(covered, axis=1))
    ids = np.arange(n)
    np.testing.assert_array_equal(
        cam_order(result.packed, result.scores, ids, n_cells=result.n_cells),
        cam_order(covered, scores, ids),
    )


# --- errors -------------------------------------------------------------------------------


def test_unknown_metric_is_named():
    with pytest.raises(TestprioError, match="unknown coverage metric 'foo'; choose one of nac"):
        score_coverage([], "foo", None)


@pytest.mark.parametrize("name", ["kmnc", "nbc", "snac"])
def test_boundary_metrics_need_a_reference_profile(name, random_case):
    with pytest.raises(TestprioError, match=f"'{name}' needs a finished reference profile"):
        COVERAGE_METRICS[name](random_case[1], None)


def test_layers_must_match_the_profile(random_case):
    profile, pool = random_case
    with pytest.raises(TestprioError, match=r"units \[20\] per layer but the reference"):
        COVERAGE_METRICS["nac"](pool[:1], profile)
    with pytest.raises(TestprioError, match="must be \\(N, units\\) arrays"):
        COVERAGE_METRICS["nac"]([np.zeros((2, 3, 4))], None)
    with pytest.raises(TestprioError, match="different sample counts per layer"):
        COVERAGE_METRICS["nac"]([np.zeros((2, 3)), np.zeros((4, 3))], None)
    with pytest.raises(TestprioError, match="activations name no layer"):
        COVERAGE_METRICS["tknc"]([], None)
    with pytest.raises(TestprioError, match="has 2 layers but|have 1 layers but"):
        NeuronProfile(["a", "b"]).update([np.zeros((2, 3))])


@pytest.mark.parametrize(("name", "param"), [("kmnc", "sections"), ("tknc", "top_neurons")])
def test_counts_must_be_positive(name, param, random_case):
    profile, pool = random_case
    with pytest.raises(TestprioError, match=f"positive integer {param}, got 0"):
        COVERAGE_METRICS[name](pool, profile, **{param: 0})


def test_empty_reference_and_pool_are_refused():
    with pytest.raises(TestprioError, match="reference pool gave no activations"):
        NeuronProfile().finish()
    with pytest.raises(TestprioError, match="got no samples"):
        score_coverage([], "nac", None)


def test_order_inputs_are_checked():
    covered = np.zeros((3, 10), dtype=bool)
    with pytest.raises(TestprioError, match="got 2 sample ids for 3 scores"):
        ctm_order(np.zeros(3), np.arange(2))
    with pytest.raises(TestprioError, match="need n_cells"):
        cam_order(np.packbits(covered, axis=1), np.zeros(3), np.arange(3))
    with pytest.raises(TestprioError, match="must be bool or np.packbits uint8"):
        cam_order(covered.astype(np.int32), np.zeros(3), np.arange(3))
    with pytest.raises(TestprioError, match="have 2 rows for 3 scores|shape \\(2, 10\\) for 3"):
        cam_order(covered[:2], np.zeros(3), np.arange(3))


def test_cam_stops_once_every_cell_is_covered():
    covered = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)
    scores = covered.sum(axis=1)
    ids = np.arange(4)
    assert cam_order(covered, scores, ids).tolist() == [0, 2, 1, 3]
    np.testing.assert_array_equal(cam_order(covered, scores, ids), _oracle_cam(scores, covered))
