"""Surprise adequacy: values and orders equal dnn-tip 0.1.1 (the oracle), planted cases,
blocked search equals brute force, batches equal one pass, bounded memory, errors."""

from __future__ import annotations

import contextlib
import io
import tracemalloc
import warnings

import numpy as np
import pytest

from testprio import surprise
from testprio.errors import TestprioError
from testprio.surprise import SURPRISE_METRICS, SurpriseReference, dsa, fit_reference, lsa, mdsa

dnn_tip_surprise = pytest.importorskip("dnn_tip.surprise")


# --- the oracle: dnn-tip with its defaults, the way Kim et al.'s per-class variants use it ---


@contextlib.contextmanager
def _quiet():
    """dnn-tip prints, shows tqdm bars and warns about scipy's KDE; none of it is under test."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with contextlib.redirect_stderr(io.StringIO()):
            yield


def _oracle(metric, ref, ref_pred, x, pred, *, by_class=True):
    t = dnn_tip_surprise
    constructors = {"lsa": lambda a, p: t.LSA(a), "mdsa": lambda a, p: t.MDSA(a)}
    with _quiet():
        if metric == "dsa":
            # badge_size only sets dnn-tip's work batches (each ends in gc.collect(), slow).
            return t.DSA(ref, ref_pred, badge_size=200)(x, pred)
        if by_class:
            sa = t.MultiModalSA.build_by_class(ref, ref_pred, constructors[metric])
            return sa(x, pred)
        return constructors[metric](ref, ref_pred)(x, pred)


def _assert_same(mine, theirs):
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)
    # Identical orderings, most surprising first, ties by index.
    np.testing.assert_array_equal(
        np.argsort(-mine, kind="stable"), np.argsort(-theirs, kind="stable")
    )


def _clusters(seed, *, per_class=150, units=12, classes=4, pool=200):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, units)) * 3
    ref_pred = np.tile(np.arange(classes), per_class)  # interleaved, as a real reference is
    ref = rng.normal(size=(len(ref_pred), units)) * rng.uniform(0.3, 2, units) + centres[ref_pred]
    pred = rng.integers(0, classes, pool)
    x = centres[pred] + rng.normal(size=(pool, units)) * 1.5
    return ref, ref_pred, x, pred


def _digits_hidden_layer():
    """Real-model-like activations: a tanh hidden layer on scikit-learn's digits, classes
    predicted by a logistic-regression head trained on that layer (seeded, < 1 s)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    images, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(7)
    weights = rng.normal(size=(64, 24)) / 8
    hidden = np.tanh(images / 16 @ weights * 3 + rng.normal(size=24) * 0.1)
    head = LogisticRegression(max_iter=500).fit(hidden[:1200], labels[:1200])
    predicted = head.predict(hidden)
    return hidden[:1200], predicted[:1200], hidden[1200:], predicted[1200:]


@pytest.mark.parametrize("metric", ["lsa", "dsa", "mdsa"])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_dnn_tip_on_seeded_clusters(metric, seed):
    ref, ref_pred, x, pred = _clusters(seed)
    reference = fit_reference(ref, ref_pred, metrics=(metric,))
    _assert_same(
        SURPRISE_METRICS[metric](reference, x, pred), _oracle(metric, ref, ref_pred, x, pred)
    )


@pytest.mark.parametrize("metric", ["lsa", "dsa", "mdsa"])
def test_equals_dnn_tip_on_real_model_activations(metric):
    ref, ref_pred, x, pred = _digits_hidden_layer()
    assert len(np.unique(ref_pred)) == 10
    reference = fit_reference(ref, ref_pred)
    _assert_same(
        SURPRISE_METRICS[metric](reference, x, pred), _oracle(metric, ref, ref_pred, x, pred)
    )


def test_onnx_hidden_layers_from_testprio_activations_equal_dnn_tip():
    """End to end: a real classifier's ONNX export, hidden layers exposed as extra outputs,
    scored as a list of layers (two ReLU layers; the second has dead units)."""
    import onnxruntime as ort

    from testprio.activations import hidden_layer_names, layer_activations, with_layer_outputs
    from tests.coverage_models import sklearn_mlp

    _, x, model = sklearn_mlp()
    layers = hidden_layer_names(model)
    session = ort.InferenceSession(
        with_layer_outputs(model, layers).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    (probs,), acts = layer_activations(session, {"X": x}, layers, outputs=["probabilities"])
    pred = probs.argmax(axis=1)
    ref, pool = [a[:80] for a in acts], [a[80:] for a in acts]
    reference = fit_reference(ref, pred[:80])
    for metric in ("dsa", "mdsa"):
        _assert_same(
            SURPRISE_METRICS[metric](reference, pool, pred[80:]),
            _oracle(metric, ref, pred[:80], pool, pred[80:]),
        )
    # dnn-tip's KDE cannot take the dead units; on the units LSA keeps, the values agree.
    flat_ref, flat_pool = np.concatenate(ref, axis=1), np.concatenate(pool, axis=1)
    mine = lsa(reference, pool, pred[80:])
    for cls in np.unique(pred[80:]):
        kept, rows, ref_rows = reference.kde[cls].units, pred[80:] == cls, pred[:80] == cls
        assert np.all(flat_ref[ref_rows][:, kept].var(axis=0) > 0)
        theirs = _oracle(
            "lsa",
            flat_ref[ref_rows][:, kept],
            pred[:80][ref_rows],
            flat_pool[rows][:, kept],
            pred[80:][rows],
        )
        np.testing.assert_allclose(mine[rows], theirs, rtol=1e-5, atol=1e-5)


def test_float32_activations_equal_dnn_tip_on_the_same_float32_values():
    ref, ref_pred, x, pred = (a.astype(np.float32) for a in _clusters(3))
    ref_pred, pred = ref_pred.astype(int), pred.astype(int)
    reference = fit_reference(ref, ref_pred)
    assert reference.activations.dtype == np.float32  # held as given: half the memory
    for metric in ("lsa", "mdsa"):
        _assert_same(
            SURPRISE_METRICS[metric](reference, x, pred),
            _oracle(metric, ref.astype(np.float64), ref_pred, x.astype(np.float64), pred),
        )
    # dnn-tip's DSA computes its norms in float32; ours in float64, so within float32 rounding.
    np.testing.assert_allclose(
        dsa(reference, x, pred), _oracle("dsa", ref, ref_pred, x, pred), rtol=1e-5
    )


@pytest.mark.parametrize("metric", ["lsa", "mdsa"])
def test_by_class_false_equals_dnn_tip_single_model(metric):
    ref, ref_pred, x, pred = _clusters(4, units=6)
    reference = fit_reference(ref, ref_pred, metrics=(metric,), by_class=False)
    _assert_same(
        SURPRISE_METRICS[metric](reference, x, pred),
        _oracle(metric, ref, ref_pred, x, pred, by_class=False),
    )


def test_lsa_keeps_the_300_highest_variance_units_as_dnn_tip():
    rng = np.random.default_rng(1)
    units = 320
    ref_pred = np.repeat([0, 1], 700)
    ref = rng.normal(size=(1400, units)) * np.linspace(0.05, 2, units)
    ref += rng.normal(size=(2, units))[ref_pred]
    x, pred = ref[:40] + rng.normal(size=(40, units)) * 0.3, ref_pred[:40]
    reference = fit_reference(ref, ref_pred, metrics=("lsa",))
    assert len(reference.kde[0].units) == 300
    assert set(range(20)).isdisjoint(reference.kde[0].units)  # the 20 lowest-variance units
    _assert_same(lsa(reference, x, pred), _oracle("lsa", ref, ref_pred, x, pred))


def test_lsa_variance_threshold_drops_the_low_variance_units():
    ref, ref_pred, x, pred = _clusters(5, units=8)
    ref[:, 2] *= 1e-3
    reference = fit_reference(
        ref, ref_pred, metrics=("lsa",), lsa_max_features=None, lsa_var_threshold=0.01
    )
    assert 2 not in reference.kde[0].units
    kept = reference.kde[0].units
    theirs = _oracle("lsa", ref[:, kept], ref_pred, x[:, kept], pred)
    _assert_same(lsa(reference, x, pred), theirs)


def test_lsa_singular_class_keeps_an_independent_subset_where_dnn_tip_raises():
    ref, ref_pred, x, pred = _clusters(6, units=10)
    ref[:, 3] = 0.0  # a dead unit
    ref[:, 7] = 2 * ref[:, 1] + ref[:, 2]  # a collinear unit
    with pytest.raises(np.linalg.LinAlgError):
        _oracle("lsa", ref, ref_pred, x, pred)
    reference = fit_reference(ref, ref_pred, metrics=("lsa",))
    mine = lsa(reference, x, pred)
    assert np.all(np.isfinite(mine))
    for cls in range(4):
        kept = reference.kde[cls].units
        assert 3 not in kept and len(kept) == 8  # one of the collinear three went too
        rows, ref_rows = pred == cls, ref_pred == cls
        theirs = _oracle(
            "lsa", ref[ref_rows][:, kept], ref_pred[ref_rows], x[rows][:, kept], pred[rows]
        )
        np.testing.assert_allclose(mine[rows], theirs, rtol=1e-5, atol=1e-5)


def test_lsa_stays_finite_where_dnn_tips_density_underflows():
    ref, ref_pred, x, pred = _clusters(8, units=12)
    far = x.copy()
    far[0] += 1e3  # exp(-huge) is 0 in float64: dnn-tip says inf
    theirs = _oracle("lsa", ref, ref_pred, far, pred)
    assert np.isinf(theirs[0])
    mine = lsa(fit_reference(ref, ref_pred, metrics=("lsa",)), far, pred)
    assert np.isfinite(mine[0]) and mine[0] > 1e5
    np.testing.assert_allclose(mine[1:], theirs[1:], rtol=1e-5, atol=1e-5)


# --- planted cases ---


def test_planted_outlier_ranks_first_under_every_metric():
    ref, ref_pred, x, pred = _clusters(9)
    x[57] = ref[ref_pred == pred[57]].mean(axis=0) + 40.0  # far from its own class
    reference = fit_reference(ref, ref_pred)
    for metric, score in SURPRISE_METRICS.items():
        assert np.argmax(score(reference, x, pred)) == 57, metric


def test_sample_on_a_reference_point_has_dsa_zero():
    ref, ref_pred, x, pred = _clusters(10)
    x[:5], pred[:5] = ref[[3, 50, 77, 100, 599]], ref_pred[[3, 50, 77, 100, 599]]
    scores = dsa(fit_reference(ref, ref_pred, metrics=("dsa",)), x, pred)
    assert np.all(scores[:5] == 0.0)
    assert np.all(scores[5:] > 0.0)


def test_dsa_where_classes_share_a_reference_point():
    ref = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    reference = fit_reference(ref, np.array([0, 1, 1]), metrics=("dsa",))
    scores = dsa(reference, np.array([[0.0, 0.0], [0.0, 1.0]]), np.array([0, 0]))
    # b = 0 (the neighbour coincides with a class-1 sample): a == 0 gives 0, a > 0 gives inf.
    np.testing.assert_array_equal(scores, [0.0, np.inf])


# --- scale: blocks and batches change nothing, memory does not grow with the pool ---


def _brute_force_dsa(ref, ref_pred, x, pred):
    """The definition, with full distance matrices (small inputs only)."""
    dist = np.linalg.norm(x[:, None] - ref[None], axis=2)
    ref_dist = np.linalg.norm(ref[:, None] - ref[None], axis=2)
    out = []
    for i, cls in enumerate(pred):
        same = np.flatnonzero(ref_pred == cls)
        near = same[np.argmin(dist[i, same])]
        out.append(dist[i, near] / ref_dist[near, ref_pred != cls].min())
    return np.array(out)


def test_blocked_nearest_neighbour_search_equals_brute_force(monkeypatch):
    ref, ref_pred, x, pred = _clusters(11, per_class=60, pool=90)
    whole = dsa(fit_reference(ref, ref_pred, metrics=("dsa",)), x, pred)
    monkeypatch.setattr(surprise, "_BLOCK_ELEMENTS", 64)  # blocks of a few reference rows
    blocked_reference = fit_reference(ref, ref_pred, metrics=("dsa",), batch_size=7)
    blocked = dsa(blocked_reference, x, pred, batch_size=13)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12)
    np.testing.assert_allclose(blocked, _brute_force_dsa(ref, ref_pred, x, pred), rtol=1e-12)
    blocked_lsa = lsa(fit_reference(ref, ref_pred, metrics=("lsa",)), x, pred, batch_size=13)
    np.testing.assert_allclose(blocked_lsa, _oracle("lsa", ref, ref_pred, x, pred), rtol=1e-9)


@pytest.mark.parametrize("metric", ["lsa", "dsa", "mdsa"])
def test_batches_and_layer_lists_equal_one_pass(metric):
    ref, ref_pred, x, pred = _clusters(12)
    reference = fit_reference(ref, ref_pred)
    score = SURPRISE_METRICS[metric]
    whole = score(reference, x, pred, batch_size=len(x))
    for batch_size in (1, 7, 64):
        np.testing.assert_allclose(score(reference, x, pred, batch_size=batch_size), whole)
    # Layers given as a list are concatenated along units, for the reference and the pool.
    split = fit_reference([ref[:, :5], ref[:, 5:]], ref_pred)
    np.testing.assert_allclose(score(split, [x[:, :5], x[:, 5:].reshape(-1, 7, 1)], pred), whole)


def test_empty_pool_gives_no_scores_and_one_metric_may_be_named_alone():
    ref, ref_pred, x, _ = _clusters(17, units=5)
    reference = fit_reference(ref, ref_pred, metrics="mdsa")
    assert reference.metrics == ("mdsa",)
    empty = mdsa(reference, x[:0], np.zeros(0, dtype=int))
    assert empty.shape == (0,) and empty.dtype == np.float64


def test_dsa_float32_search_is_close_to_float64():
    ref, ref_pred, x, pred = _clusters(13)
    reference = fit_reference(ref, ref_pred, metrics=("dsa",))
    exact = dsa(reference, x, pred)
    np.testing.assert_allclose(dsa(reference, x, pred, precision="float32"), exact, rtol=1e-4)


def test_scoring_memory_does_not_grow_with_the_pool():
    ref, ref_pred, _, _ = _clusters(14, per_class=250, units=32)
    reference = fit_reference(ref, ref_pred)
    rng = np.random.default_rng(0)

    def peak(n):
        x, pred = rng.normal(size=(n, 32)), rng.integers(0, 4, n)
        tracemalloc.start()
        for score in SURPRISE_METRICS.values():
            score(reference, x, pred, batch_size=256)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(500), peak(10_000)
    # Only per-sample scalars grow (scores, class ids, their sorted copy): a few words per
    # sample, where one (N, M) distance matrix would add M * 8 = 4800 bytes per sample.
    assert (large - small) / 9_500 < 64, (small, large)


# --- the reference travels as bytes ---


def test_reference_round_trips_through_bytes():
    ref, ref_pred, x, pred = _clusters(15)
    reference = fit_reference(ref, ref_pred)
    again = SurpriseReference.from_bytes(reference.to_bytes())
    for metric, score in SURPRISE_METRICS.items():
        np.testing.assert_array_equal(score(again, x, pred), score(reference, x, pred), metric)
    assert again.metrics == ("lsa", "dsa", "mdsa")
    only_mdsa = SurpriseReference.from_bytes(
        fit_reference(ref, ref_pred, metrics=["mdsa"]).to_bytes()
    )
    np.testing.assert_array_equal(mdsa(only_mdsa, x, pred), mdsa(reference, x, pred))


def test_bytes_that_are_not_a_reference_are_refused():
    with pytest.raises(TestprioError, match="not a reference written by"):
        SurpriseReference.from_bytes(b"not an npz file")


# --- errors: one sentence each ---


@pytest.fixture(scope="module")
def small():
    ref, ref_pred, x, pred = _clusters(16, per_class=20, units=4, pool=10)
    return fit_reference(ref, ref_pred, metrics=("lsa", "mdsa")), ref, ref_pred, x, pred


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, p: (x[:, :3], p), "activations have 3 units but the surprise reference has 4"),
        (lambda x, p: (x, p[:5]), r"predicted classes must have shape \(10,\)"),
        (lambda x, p: (x, p + 0.5), "must hold integer class ids"),
        (lambda x, p: (np.where(x > 0, np.nan, x), p), "contain NaN or infinite values"),
        (lambda x, p: (x, np.full_like(p, 9)), r"predicted as classes \[9\] that no reference"),
        (lambda x, p: (x[:, 0], p), r"must be numeric arrays of shape \(N, units\)"),
        (lambda x, p: ([x[:, :2], x[:5, 2:]], p), "layers have different sample counts"),
    ],
)
def test_bad_pool_inputs_are_refused(small, change, message):
    reference, _, _, x, pred = small
    bad_x, bad_pred = change(x, pred)
    with pytest.raises(TestprioError, match=message):
        mdsa(reference, bad_x, bad_pred)


def test_metric_not_fitted_is_refused(small):
    reference, _, _, x, pred = small
    with pytest.raises(TestprioError, match="fitted without 'dsa'"):
        dsa(reference, x, pred)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metrics": ("lsa", "nc")}, r"unknown surprise metrics \['nc'\]"),
        ({"lsa_var_threshold": 0.1}, "cannot both be set"),
        ({"lsa_max_features": 0}, "lsa_max_features must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_bad_fit_options_are_refused(small, options, message):
    _, ref, ref_pred, _, _ = small
    with pytest.raises(TestprioError, match=message):
        fit_reference(ref, ref_pred, **options)


def test_dsa_needs_two_classes_and_lsa_two_samples_per_class():
    ref = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(TestprioError, match="at least two predicted classes"):
        fit_reference(ref, np.zeros(6, dtype=int), metrics=("dsa",))
    reference = fit_reference(ref, np.array([0, 0, 0, 0, 0, 1]), metrics=("lsa",))
    with pytest.raises(TestprioError, match="at least 2 reference samples predicted as class 1"):
        lsa(reference, ref[:2], np.array([0, 1]))


def test_bad_scoring_options_are_refused(small):
    reference, _, _, x, pred = small
    with pytest.raises(TestprioError, match="unknown DSA precision 'float16'"):
        dsa(reference, x, pred, precision="float16")
    with pytest.raises(TestprioError, match="batch_size must be a positive integer"):
        lsa(reference, x, pred, batch_size=0)
    with pytest.raises(TestprioError, match="needs a SurpriseReference"):
        lsa({"lsa": 1}, x, pred)


# --- a feature map as surprise's vectors: --surprise-reduce mean | flatten --------------------


def test_a_feature_map_is_averaged_over_space_or_flattened():
    from testprio.activations import flatten_activation

    a = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(flatten_activation(a), a.mean(axis=(2, 3)))
    np.testing.assert_array_equal(flatten_activation(a, reduce="flatten"), a.reshape(2, 12))
    dense = np.ones((4, 5), np.float32)
    for reduce in ("mean", "flatten"):  # a dense layer is already one vector per sample
        np.testing.assert_array_equal(flatten_activation(dense, reduce=reduce), dense)
    with pytest.raises(TestprioError, match="--surprise-reduce 'max' is not one of mean, flatten"):
        flatten_activation(a, reduce="max")


def _save_conv_model(path, seed=0):
    """``Conv(1->4, 3x3, pad 1) -> Relu 'feat' -> Flatten -> Gemm 'logits'`` on (N,1,8,8):
    the surprise layer is a 4x8x8 feature map."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "W": rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32),
        "B": rng.normal(0, 0.1, 4).astype(np.float32),
        "W2": rng.normal(0, 0.1, (256, 10)).astype(np.float32),
        "B2": np.zeros(10, np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["feat"]),
            helper.make_node("Flatten", ["feat"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W2", "B2"], ["logits"]),
        ],
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("reduce", ["mean", "flatten"])
def test_the_run_scores_surprise_on_the_reduction_it_was_fitted_with(tmp_path, reduce):
    """reference -> score with --surprise-reduce: the columns equal the library's values on
    the feature map reduced directly, and profile.json records the reduction."""
    import onnxruntime as ort

    from testprio import stages, storage
    from testprio.layout import RunLayout
    from testprio.reference import profile_uri
    from tests.evalkit import digits, save_splits
    from tests.stagekit import parameters

    splits = digits()
    splits = {"train": splits["train"], "pool": (splits["pool"][0][:150], splits["pool"][1][:150])}
    paths = save_splits(tmp_path / "data", splits)
    model = _save_conv_model(tmp_path / "conv.onnx")
    p = parameters(model, paths["pool"], str(tmp_path / "runs"), "run")
    p.update(train_data=str(paths["train"]), surprise_reduce=reduce)
    run_uri = stages.start_run(p["root"], p["run_id"], p)
    ingest_args = {name: p[name] for name in stages.INGEST_PARAMETERS}
    shards = stages.ingest_pool(run_uri, p["data"], **ingest_args)
    stages.convert_model(run_uri, p["model"], "auto", "auto", "", "")
    stages.fit_reference(run_uri, p["train_data"], "", reduce, **ingest_args)
    scores = [stages.score_shard(shard, 64, 0, "cpu") for shard in shards]
    record = storage.read_json(profile_uri(RunLayout(run_uri)))
    assert (record["surprise_layer"], record["surprise_reduce"]) == ("feat", reduce)
    assert record["units"] == [4]  # coverage still reads one unit per channel
    table = storage.read_table(scores[0])

    session = ort.InferenceSession(_with_output(model, "feat"), providers=["CPUExecutionProvider"])

    def direct(x):
        logits, feat = session.run(["logits", "feat"], {"input": x})
        vectors = feat.mean(axis=(2, 3)) if reduce == "mean" else feat.reshape(len(x), -1)
        return vectors, logits.argmax(axis=1)

    ref, ref_pred = direct(splits["train"][0])
    pool, pool_pred = direct(splits["pool"][0])
    assert ref.shape[1] == (4 if reduce == "mean" else 256)
    reference = fit_reference(ref, ref_pred)
    for name, fn in SURPRISE_METRICS.items():
        expected = fn(reference, pool, pool_pred).astype(np.float32)
        np.testing.assert_allclose(table.column(name).to_numpy(), expected, rtol=1e-4, err_msg=name)


def _with_output(path, name):
    import onnx

    from testprio.activations import with_layer_outputs

    return with_layer_outputs(onnx.load(str(path)), [name]).SerializeToString()


def test_a_run_refuses_an_unknown_reduction(tmp_path):
    from testprio import stages
    from tests.stagekit import parameters

    model = _save_conv_model(tmp_path / "conv.onnx")
    p = parameters(model, tmp_path / "pool.npz", str(tmp_path / "runs"), "run")
    p.update(surprise_reduce="max")
    with pytest.raises(TestprioError, match="--surprise-reduce 'max' is not one of mean, flatten"):
        stages.validate_parameters(p)


@pytest.mark.parametrize(("reduce", "units"), [("mean", 4), ("flatten", 256)])
def test_evaluate_reads_the_surprise_layer_with_its_reduction(tmp_path, reduce, units):
    import onnx

    from testprio.evaluation.prioritizers import Context

    model = onnx.load(str(_save_conv_model(tmp_path / "conv.onnx")))
    x = np.random.default_rng(0).uniform(size=(30, 1, 8, 8)).astype(np.float32)
    probs = np.full((30, 10), 0.1)
    context = Context(
        model=model,
        class_output="logits",
        pool_ids=np.arange(30),
        pool_x=x,
        pool_probs=probs,
        train_x=x,
        train_probs=probs,
        surprise_reduce=reduce,
    )
    assert context.surprise_activations("pool").shape == (30, units)
    assert [a.shape for a in context.activations("pool")] == [(30, 4)]  # coverage: the mean
    assert context.describe_layers()["surprise_reduce"] == reduce
