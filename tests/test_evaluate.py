"""The evaluation: planted orders (APFD, faults found), random near 0.5, winners, option
errors, evaluation.json end to end on real digits with an ONNX model, and the command line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from testprio import cli, evaluation, evaluation_file, metamorphic, stats, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.report import charts
from tests.evalkit import digits, mlp_weights, save_mlp, save_splits

# --- planted cases ------------------------------------------------------------------------


def _planted(n: int = 200, faults: int = 20, seed: int = 0) -> np.ndarray:
    misclassified = np.zeros(n, dtype=bool)
    misclassified[np.random.default_rng(seed).choice(n, faults, replace=False)] = True
    return misclassified


def test_all_faults_first_is_perfect():
    misclassified = _planted()
    perfect = np.concatenate([np.flatnonzero(misclassified), np.flatnonzero(~misclassified)])
    result = evaluation.evaluate_orders([perfect], misclassified, (5, 10, 20))
    assert result["apfd"]["normalized"] == pytest.approx(1.0)
    # The budget equal to the fault share (10% of 200 = 20) holds every fault.
    assert result["faults"] == [
        {"budget": 5, "selected": 10, "found": 10, "of": 20},
        {"budget": 10, "selected": 20, "found": 20, "of": 20},
        {"budget": 20, "selected": 40, "found": 20, "of": 20},
    ]


def test_all_faults_last_is_worst():
    misclassified = _planted()
    worst = np.concatenate([np.flatnonzero(~misclassified), np.flatnonzero(misclassified)])
    result = evaluation.evaluate_orders([worst], misclassified, (10,))
    assert result["apfd"]["normalized"] == pytest.approx(0.0)
    assert result["faults"][0]["found"] == 0


def test_random_is_about_half_over_seeds():
    misclassified = _planted(n=1000, faults=100)
    context = evaluation.Context(
        model=None,
        class_output="",
        pool_ids=np.arange(1000),
        pool_x=np.zeros((1000, 1)),
        pool_probs=np.full((1000, 2), 0.5),
        train_x=np.zeros((1, 1)),
        train_probs=np.full((1, 2), 0.5),
    )
    random = evaluation.PRIORITIZERS["random"]
    orders = [random.order(context, seed) for seed in range(30)]
    assert len({order.tobytes() for order in orders}) == 30  # a new selection per seed
    result = evaluation.evaluate_orders(orders, misclassified, (10,))
    assert result["apfd"]["normalized"] == pytest.approx(0.5, abs=0.03)
    assert len(result["apfd"]["normalized_per_seed"]) == 30
    assert result["faults"][0]["found"] == pytest.approx(10, abs=1.5)  # 10% of 100 faults


def _reference_curve(orders, misclassified, ranks):
    """Share of faults found in each order's top ``rank``, averaged over the orders."""
    faults = misclassified.sum()
    return [np.mean([misclassified[o[:r]].sum() / faults for o in orders]) for r in ranks]


def _at(curve, share):
    """The curve's share found where ``share`` of the pool is inspected (a point of it)."""
    (found,) = [y for x, y in curve if x == pytest.approx(share, abs=1e-9)]
    return found


def test_curve_of_all_faults_first_reaches_one_at_the_fault_share():
    misclassified = _planted()  # 20 faults of 200: fault share 0.1
    perfect = np.concatenate([np.flatnonzero(misclassified), np.flatnonzero(~misclassified)])
    curve = evaluation.evaluate_orders([perfect], misclassified, (5, 10, 20))["curve"]
    assert len(curve) == 101 and curve[0] == [0.0, 0.0] and curve[-1] == [1.0, 1.0]
    assert [x for x, _ in curve] == pytest.approx(np.arange(101) / 100)
    assert _at(curve, 0.05) == 0.5 and _at(curve, 0.1) == 1.0
    assert all(y == pytest.approx(min(1.0, x / 0.1)) for x, y in curve)


def test_curve_of_all_faults_last_stays_at_zero_until_the_end():
    misclassified = _planted()
    worst = np.concatenate([np.flatnonzero(~misclassified), np.flatnonzero(misclassified)])
    curve = evaluation.evaluate_orders([worst], misclassified, (10,))["curve"]
    assert all(y == 0.0 for x, y in curve if x <= 0.9)
    assert _at(curve, 0.95) == 0.5 and curve[-1] == [1.0, 1.0]


def test_curve_is_exact_at_evenly_spaced_ranks_and_at_every_budget():
    misclassified = _planted(n=1000, faults=37, seed=3)
    order = np.random.default_rng(1).permutation(1000)
    budgets = (1, 2, 5, 10, 50)
    result = evaluation.evaluate_orders([order], misclassified, budgets)
    ranks = np.arange(0, 1001, 10)
    assert [x for x, _ in result["curve"]] == pytest.approx(ranks / 1000)
    assert [y for _, y in result["curve"]] == pytest.approx(
        _reference_curve([order], misclassified, ranks), abs=1e-6
    )
    for row in result["faults"]:
        share = _at(result["curve"], row["selected"] / 1000)
        assert share == pytest.approx(row["found"] / row["of"], abs=1e-6)


def test_curve_of_random_is_the_mean_over_seeds_at_the_same_ranks():
    misclassified = _planted(n=500, faults=50)
    orders = [np.random.default_rng(seed).permutation(500) for seed in range(4)]
    result = evaluation.evaluate_orders(orders, misclassified, (2, 10))
    ranks = np.arange(0, 501, 5)
    assert [y for _, y in result["curve"]] == pytest.approx(
        _reference_curve(orders, misclassified, ranks), abs=1e-6
    )
    single = evaluation.fault_curve(orders[:1], misclassified)
    assert single != result["curve"]  # the seeds differ: the mean is not one seed's curve
    for row in result["faults"]:  # found is the mean over seeds too
        share = _at(result["curve"], row["selected"] / 500)
        assert share == pytest.approx(row["found"] / row["of"], abs=1e-6)


def test_curve_of_a_small_pool_has_every_rank_and_none_without_faults():
    misclassified = np.array([False, True, False, False, True, False, False])
    curve = evaluation.fault_curve([np.arange(7)], misclassified)
    assert curve == [
        [round(r / 7, 6), round(f / 2, 6)] for r, f in enumerate([0, 0, 1, 1, 1, 2, 2, 2])
    ]
    assert evaluation.evaluate_orders([np.arange(7)], np.zeros(7, bool), (10,))["curve"] is None


def test_reference_curves_are_the_diagonal_and_the_ideal_order():
    rows = evaluation_file.reference_curves(200, 20)
    lines = {
        order: [(row["inspected"], row["found"]) for row in rows if row["order"] == order]
        for order in ("random", "ideal")
    }
    assert lines == {"random": [(0.0, 0.0), (1.0, 1.0)], "ideal": [(0, 0), (0.1, 1), (1, 1)]}
    assert evaluation_file.reference_curves(200, 0) == []


def test_uncertainty_orders_put_the_uniform_row_first_and_break_ties_by_id():
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    context = evaluation.Context(
        model=None,
        class_output="",
        pool_ids=np.array([7, 3, 9, 1]),
        pool_x=np.zeros((4, 1)),
        pool_probs=probs,
        train_x=np.zeros((1, 1)),
        train_probs=probs[:1],
    )
    order = evaluation.PRIORITIZERS["gini"].order(context, 0)
    assert context.pool_ids[order].tolist() == [9, 1, 3, 7]


@pytest.mark.parametrize(
    ("n", "budget", "size"), [(100, 10, 10), (539, 1, 6), (10, 1, 1), (7, 100, 7), (3, 50, 2)]
)
def test_budget_size(n, budget, size):
    assert evaluation.budget_size(n, budget) == size


def _acc(budget, accuracies):
    return {"budget": budget, **evaluation.accuracy_summary(accuracies)}


def _judged():
    """Three prioritizers against random at one budget, five seeds: a clearly better, b
    no different, c clearly worse (differences to random: a +0.02 +- 0.005, c -0.03)."""
    random = [0.80, 0.81, 0.79, 0.80, 0.82]
    shifts = {"a": [0.02, 0.025, 0.015, 0.02, 0.022], "b": [0.01, -0.012, 0.0, 0.004, -0.003],
              "c": [-0.03, -0.031, -0.029, -0.03, -0.033]}  # fmt: skip
    entries = {
        name: {
            "faults": [{"budget": 5, "found": found}],
            "retrain": [_acc(5, [r + d for r, d in zip(random, shift, strict=True)])],
        }
        for (name, shift), found in zip(shifts.items(), (4, 4, 1), strict=True)
    }
    entries["random"] = {"faults": [{"budget": 5, "found": 1}], "retrain": [_acc(5, random)]}
    return evaluation.with_vs_random(entries)


def test_vs_random_is_the_paired_t_test_with_holm_over_the_file():
    from scipy import stats as reference

    judged = _judged()
    random = judged["random"]["retrain"][0]["accuracies"]
    p = {}
    for name in ("a", "b", "c"):
        row = judged[name]["retrain"][0]
        test = reference.ttest_rel(row["accuracies"], random)
        interval = test.confidence_interval()
        found = row["vs_random"]
        assert found["diff_mean"] == pytest.approx(np.mean(row["accuracies"]) - np.mean(random))
        assert found["p"] == pytest.approx(test.pvalue, rel=1e-9)
        assert (found["ci_low"], found["ci_high"]) == pytest.approx(
            (interval.low, interval.high), abs=1e-12
        )
        p[name] = found["p"]
    # Holm over the three comparisons of the file.
    for name, adjusted in zip(p, stats.holm(list(p.values())), strict=True):
        assert judged[name]["retrain"][0]["vs_random"]["p_holm"] == adjusted
        assert judged[name]["retrain"][0]["vs_random"]["significant"] == (adjusted < 0.05)
    assert [judged[n]["retrain"][0]["vs_random"]["significant"] for n in "abc"] == [
        True, False, True
    ]  # fmt: skip
    assert judged["random"]["retrain"][0]["vs_random"] is None


def test_winners_are_the_prioritizers_significantly_above_random():
    judged = _judged()
    assert evaluation.winners(judged, (5,)) == [
        {"budget": 5, "by_accuracy": ["a"],
         "accuracy_mean": judged["a"]["retrain"][0]["accuracy_mean"], "below_random": ["c"],
         "by_faults": ["a", "b"], "found": 4},
    ]  # fmt: skip


def test_no_winner_when_nothing_is_significant_or_random_is_missing():
    judged = _judged()
    del judged["a"], judged["c"]
    (row,) = evaluation.winners(judged, (5,))
    assert row["by_accuracy"] == [] and row["accuracy_mean"] is None
    alone = evaluation.with_vs_random({"a": {"faults": [], "retrain": [_acc(5, [0.9])]}})
    assert alone["a"]["retrain"][0]["vs_random"] is None
    assert evaluation.winners(alone, (5,))[0]["by_accuracy"] == []


def test_score_spread_flags_constant_scores():
    from testprio.summary import degenerate_note, score_spread

    assert score_spread(np.zeros(600)) == {
        "degenerate": True, "distinct_values": 1, "modal_share": 1.0
    }  # fmt: skip
    nearly = np.zeros(600)
    nearly[:20] = np.arange(1, 21)  # one value for 580 of 600 samples (96.7%)
    assert score_spread(nearly)["degenerate"] is True
    assert degenerate_note(score_spread(nearly)) == (
        "constant on this pool: its order is the sample-id order (97% of the pool share one "
        "of 21 values)"
    )
    nearly[:40] = np.arange(1, 41)  # 560 of 600 (93.3%, kmnc on the digits MLP): not
    assert score_spread(nearly) == {
        "degenerate": False, "distinct_values": 41, "modal_share": pytest.approx(560 / 600)
    }  # fmt: skip
    assert degenerate_note(score_spread(nearly)) == "" and degenerate_note({}) == ""
    assert score_spread(np.array([np.nan, np.nan, 1.0]))["distinct_values"] == 2
    # A ranking run's summary.json: the report's table of every prioritizer says it too.
    from testprio.report import data as reportdata

    summary = {"prioritizer": "gini", "prioritizers": {
        "gini": {"order": "score", "apfd": None, **score_spread(np.arange(600))},
        "tknc-ctm": {"order": "score", "apfd": None, **score_spread(np.ones(600))},
    }}  # fmt: skip
    notes = [row["note"] for row in reportdata.prioritizer_apfd_rows(summary)]
    assert notes == ["", "constant on this pool: its order is the sample-id order"]


def test_splits_with_test_data_is_one_sentence_in_the_pipeline_parameters(inputs):
    parameters = {"model": str(inputs["model"]), "data": str(inputs["pool"]),
                  "train_data": str(inputs["train"]), "test_data": str(inputs["test"])}  # fmt: skip
    evaluation.validate_parameters({**parameters, "splits": 1})
    with pytest.raises(TestprioError, match=r"^splits=3 draws a new pool and test split"):
        evaluation.validate_parameters({**parameters, "splits": 3})
    assert evaluation.options_from_parameters(split=0.3, splits="4").splits == 4


# --- option errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,x", r"--budgets '1,x' is not a list of numbers"),
        ("0,5", r"--budgets 0,5 must be percents of the pool above 0 and at most 100"),
        ("150", r"--budgets 150 must be percents"),
        ("", r"--budgets \(empty\) must be percents"),
    ],
)
def test_bad_budgets(text, message):
    with pytest.raises(TestprioError, match=message):
        evaluation.parse_budgets(text)


@pytest.mark.parametrize("text", [",", " , ,"])
def test_prioritizers_text_that_names_none_is_refused(text):
    with pytest.raises(TestprioError, match=r"--prioritizers '.*' names no prioritizer; leave"):
        evaluation.parse_prioritizers(text)


@pytest.mark.parametrize("value", ["", ",", ()])
def test_an_empty_prioritizers_option_is_refused_not_the_defaults(value, tmp_path):
    from testprio import api

    with pytest.raises(TestprioError, match=r"--prioritizers '.*' names no prioritizer; leave"):
        api.evaluate(model="m", data="d", train_data="t", root=str(tmp_path), prioritizers=value)


def test_the_command_line_refuses_empty_prioritizers_and_absurd_counts(tmp_path, capsys):
    from testprio import cli

    base = ["evaluate", "--model", "m.onnx", "--data", "p.npz", "--train-data", "t.npz",
            "--root", str(tmp_path), "--split", "0.3"]  # fmt: skip
    for extra, message in (
        (["--prioritizers", ""], "--prioritizers '' names no prioritizer"),
        (["--seeds", "1000000000"], "--seeds 1000000000 must be a whole number from 1 to 100"),
        (["--test-data", "x.npz"], "--split 0.3 holds out a share of the pool as the test"),
    ):
        assert cli.main([*base, *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"testprio: error: {message}"), err


def test_split_with_test_data_is_refused(inputs, local_root):
    kwargs = {"model": str(inputs["model"]), "data": str(inputs["pool"]),
              "train_data": str(inputs["train"]), "test_data": str(inputs["test"])}  # fmt: skip
    message = (
        r"--split 0.3 holds out a share of the pool as the test split, and --test-data gives "
        r"one; give one of them\."
    )
    with pytest.raises(TestprioError, match=message):
        evaluation.run_evaluation(
            local_root, "both", options=evaluation.EvaluateOptions(split=0.3), **kwargs
        )
    with pytest.raises(TestprioError, match=r"split=0.3 holds out a share of the pool"):
        evaluation.validate_parameters({**kwargs, "split": 0.3})
    assert not os.path.exists(os.path.join(local_root, "both"))


def test_unknown_prioritizer_lists_the_valid_ones():
    with pytest.raises(TestprioError, match=r"unknown prioritizer\(s\) ginny; choose from .*gini"):
        evaluation.parse_prioritizers("gini,ginny")
    assert evaluation.parse_prioritizers("random, gini,random") == ("random", "gini")
    assert evaluation.parse_prioritizers("") == tuple(evaluation.default_prioritizers())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seeds": 0}, r"--seeds 0 must be a whole number from 1 to 100: each seed"),
        ({"seeds": 10**9}, r"--seeds 1000000000 must be a whole number from 1 to 100"),
        ({"seeds": 2.5}, r"--seeds 2.5 must be a whole number from 1 to 100"),
        ({"epochs": 10**6}, r"--epochs 1000000 must be a whole number from 1 to 100"),
        ({"followups": 10**9}, r"--followups 1000000000 must be a whole number from 1 to 1,000"),
        (
            {"budgets": tuple(range(1, 22))},
            r"--budgets names 21 budgets, more than the limit of 20: each budget",
        ),
        (
            {"coverage_params": {"kmnc": {"sections": 10**9}}},
            r"--coverage-params kmnc.sections=1000000000 must be from 1 to 1,000",
        ),
        (
            {"coverage_params": {"tknc": {"top_neurons": 0}}},
            r"--coverage-params tknc.top_neurons=0 must be from 1 to 1,000",
        ),
        ({"split": 1.0}, r"--split 1.0 must be a share of the pool from 0 up to"),
        ({"epochs": 0}, r"--epochs 0 must be a whole number from 1 to 100"),
        ({"splits": 0}, r"--splits 0 must be a whole number from 1 to 20: each split repeats"),
        ({"splits": 21}, r"--splits 21 must be a whole number from 1 to 20"),
        ({"splits": 1.5}, r"--splits 1.5 must be a whole number"),
        ({"splits": True}, r"--splits True must be a whole number"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(TestprioError, match=message):
        evaluation.check_options(evaluation.EvaluateOptions(**options))


# --- end to end on digits with an ONNX model (head retraining) ----------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    splits = digits()
    paths = save_splits(folder, splits)
    weights = mlp_weights(*splits["train"])
    paths["model"] = save_mlp(folder / "mlp.onnx", weights)
    paths["weights"] = weights
    paths["splits"] = splits
    return paths


def _run(inputs, root, run_id, **options):
    defaults = {"prioritizers": ("gini", "margin", "random"), "seeds": 3, "epochs": 1}
    return evaluation.run_evaluation(
        root,
        run_id,
        model=str(inputs["model"]),
        data=str(inputs["pool"]),
        train_data=str(inputs["train"]),
        test_data=str(inputs.get("test_override", inputs["test"])),
        options=evaluation.EvaluateOptions(**{**defaults, **options}),
    )


def test_evaluation_json(inputs, local_root):
    result = _run(inputs, local_root, "e1", budgets=(1, 5, 10))
    layout = RunLayout.create(local_root, "e1")
    written = storage.read_json(evaluation_file.evaluation_uri(layout))
    assert written == json.loads(json.dumps(result))
    assert storage.read_json(layout.run_json)["status"] == "succeeded"

    w1, b1, w2, b2 = inputs["weights"]
    x_test, y_test = inputs["splits"]["test"]
    x_pool, y_pool = inputs["splits"]["pool"]

    def predict(x):
        return (np.maximum(x.reshape(len(x), -1) @ w1 + b1, 0) @ w2 + b2).argmax(axis=1)

    assert result["baseline_accuracy"] == pytest.approx((predict(x_test) == y_test).mean())
    faults = int((predict(x_pool) != y_pool).sum())
    assert result["pool"]["misclassified"] == faults
    assert result["samples"] == {"pool": 400, "train": 600, "test": 400}
    assert result["budgets"] == [1, 5, 10] and result["seeds"] == [0, 1, 2]
    assert result["retraining"]["method"] == "onnx"
    assert "classifier head" in result["retraining"]["description"]
    assert set(result["prioritizers"]) == {"gini", "margin", "random"}
    for name, entry in result["prioritizers"].items():
        assert 0 <= entry["apfd"]["raw"] <= 1 and 0 <= entry["apfd"]["normalized"] <= 1
        assert [row["budget"] for row in entry["faults"]] == [1, 5, 10]
        assert all(row["of"] == faults for row in entry["faults"])
        for row in entry["retrain"]:
            assert len(row["accuracies"]) == 3
            assert all(0 <= value <= 1 for value in row["accuracies"])
            assert row["ci_low"] <= row["accuracy_mean"] <= row["ci_high"]
            assert row["accuracy_mean"] == pytest.approx(np.mean(row["accuracies"]))
        assert entry["seeded"] == (name == "random")
    # Uncertainty finds more faults than chance on this model.
    assert result["prioritizers"]["gini"]["apfd"]["normalized"] > 0.7
    assert [row["budget"] for row in result["winners"]] == [1, 5, 10]
    assert set(result["timings"]) >= {"ingest", "convert", "score", "retrain", "total"}

    again = _run(inputs, local_root, "e2", budgets=(1, 5, 10))
    for name in result["prioritizers"]:  # deterministic: the same seeds, the same figures
        assert again["prioritizers"][name]["retrain"] == result["prioritizers"][name]["retrain"]

    frames = evaluation_file.evaluation_frames(result)
    assert len(frames["retrain"]) == len(frames["faults"]) == 9
    assert frames["baseline"] == [{"accuracy": result["baseline_accuracy"]}]
    assert "<svg" in charts.to_svg(charts.retrained_accuracy(frames["retrain"], 0.8))
    assert "<svg" in charts.to_svg(charts.faults_found(frames["faults"]))
    assert "<svg" in charts.to_svg(charts.apfd_bars(frames["apfd"]))
    # Each prioritizer's curve over the whole pool, exact at every budget's rank.
    for name, entry in result["prioritizers"].items():
        curve = entry["curve"]
        assert len(curve) == 101 and curve[0] == [0.0, 0.0] and curve[-1] == [1.0, 1.0]
        for row in entry["faults"]:
            share = _at(curve, row["selected"] / 400)
            assert share == pytest.approx(row["found"] / row["of"], abs=1e-6), name
    assert len(frames["curves"]) == 3 * 101
    assert {row["order"] for row in frames["curve_references"]} == {"random", "ideal"}
    # The pipeline's HTML page draws the curves; a file written before curves does not.
    page = evaluation.evaluation_html(result)
    assert page.count("<svg") == 4 and "Fault-detection curves" in page
    older = json.loads(json.dumps(result))
    for entry in older["prioritizers"].values():
        del entry["curve"]
    page = evaluation.evaluation_html(older)
    assert page.count("<svg") == 3 and "Fault-detection curves" not in page


def _reference_vs_random(result):
    """Every vs_random of ``result`` recomputed: scipy's paired t-test on the accuracies,
    Holm over all of them (statsmodels' method, written out)."""
    from scipy import stats as reference

    random = {
        row["budget"]: row["accuracies"] for row in result["prioritizers"]["random"]["retrain"]
    }
    tests = {}
    for name, entry in result["prioritizers"].items():
        for row in entry["retrain"] if name != "random" else []:
            test = reference.ttest_rel(row["accuracies"], random[row["budget"]])
            tests[name, row["budget"]] = test
    ordered = sorted(tests, key=lambda key: tests[key].pvalue)
    adjusted, running = {}, 0.0
    for rank, key in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * tests[key].pvalue))
        adjusted[key] = running
    return tests, adjusted


def test_evaluation_json_version_2(inputs, local_root):
    """vs_random is scipy's paired t-test with Holm over the file, the controls are the
    fine-tunings they say, a winner beats random significantly, tknc-ctm (one top neuron per
    sample: always 1) and nbc-ctm (a corner of this ReLU MLP's range: 0 for 99% of the
    pool) are degenerate."""
    _needs("tknc-ctm", "nbc-ctm")
    names = ("gini", "margin", "random", "tknc-ctm", "nbc-ctm")
    result = _run(inputs, local_root, "v2", prioritizers=names, budgets=(5, 20))
    assert result["version"] == evaluation_file.EVALUATION_VERSION == 2
    assert result["splits"] == 1 and "per_split" not in result
    assert result["comparison"]["pairing"] == "seed" and result["comparison"]["alpha"] == 0.05
    tests, adjusted = _reference_vs_random(result)
    for name, entry in result["prioritizers"].items():
        for row in entry["retrain"]:
            found = row["vs_random"]
            if name == "random":
                assert found is None
                continue
            test, key = tests[name, row["budget"]], (name, row["budget"])
            assert set(found) == {"diff_mean", "ci_low", "ci_high", "p", "p_holm", "significant"}
            assert found["p"] == pytest.approx(test.pvalue, rel=1e-9)
            interval = test.confidence_interval()
            assert (found["ci_low"], found["ci_high"]) == pytest.approx(
                (interval.low, interval.high), abs=1e-12
            )
            assert found["p_holm"] == pytest.approx(adjusted[key], rel=1e-9)
            assert found["significant"] == (found["p_holm"] < 0.05)
    for row in result["winners"]:
        significant = [
            name
            for name, entry in result["prioritizers"].items()
            for line in entry["retrain"]
            if line["budget"] == row["budget"]
            and line["vs_random"]
            and line["vs_random"]["significant"]
            and line["vs_random"]["diff_mean"] > 0
        ]
        assert sorted(row["by_accuracy"]) == sorted(significant)
        if not significant:
            assert row["accuracy_mean"] is None
    # Three seeds of a 1-epoch head retraining on this MLP show no significant difference
    # (gini at 20% comes closest, p_holm 0.054): no winner, and the text says so.
    assert [row["by_accuracy"] for row in result["winners"]] == [[], []]
    assert "   20%: no prioritizer beats random at 20%; most faults: " in (
        evaluation.format_evaluation(result)
    )
    # The controls: the same head retraining on the training data alone and with the whole
    # pool, seed by seed.
    from testprio import retrain

    (xt, yt), (xp, yp), (xs, ys) = (inputs["splits"][part] for part in ("train", "pool", "test"))
    source = retrain.SourceModel(
        "onnx", "onnx", str(inputs["model"]), str(inputs["model"]), "logits", "logits"
    )
    jobs = [
        retrain.RetrainJob(f"{name}{seed}", selection, seed)
        for seed in (0, 1, 2)
        for name, selection in (("none", np.zeros(0, np.int64)), ("all", np.arange(400)))
    ]
    direct = retrain.retrain(
        source,
        retrain.RetrainData(xt, yt, xp, yp, xs, ys),
        jobs,
        settings=retrain.RetrainSettings(epochs=1),
    )
    controls = result["controls"]
    assert controls["no_selection"]["accuracies"] == [direct[f"none{s}"] for s in (0, 1, 2)]
    assert controls["whole_pool"]["accuracies"] == [direct[f"all{s}"] for s in (0, 1, 2)]
    for figures in controls.values():
        assert figures["accuracy_mean"] == pytest.approx(np.mean(figures["accuracies"]))
        assert figures["ci_low"] <= figures["accuracy_mean"] <= figures["ci_high"]
    # Degenerate: constant scores order the pool by sample id.
    spread = {
        name: (entry["degenerate"], entry["distinct_values"])
        for name, entry in result["prioritizers"].items()
    }
    assert spread["tknc-ctm"] == (True, 1) and spread["nbc-ctm"][0] is True
    assert spread["gini"] == (False, 400) and spread["random"] == (False, None)
    assert result["prioritizers"]["nbc-ctm"]["modal_share"] >= 0.95
    text = evaluation.format_evaluation(result)
    assert "  tknc-ctm: constant on this pool: its order is the sample-id order\n" in text
    assert "  nbc-ctm: constant on this pool: its order is the sample-id order (" in text
    assert "gini: constant" not in text
    assert "constant on this pool" in evaluation.evaluation_html(result)
    assert "whole pool labelled (the ceiling)" in evaluation.evaluation_html(result)
    assert json.loads(json.dumps(result), parse_constant=_no_constant) == result  # no NaN


def _no_constant(name):
    raise AssertionError(f"evaluation.json holds {name}")


def _as_version_1(result: dict) -> dict:
    """``result`` as the version 1 engine wrote it: no vs_random, controls, comparison,
    splits or degenerate fields; winners by the best mean accuracy."""
    old = json.loads(json.dumps(result))
    old["version"] = 1
    for key in ("controls", "comparison", "splits"):
        del old[key]
    for entry in old["prioritizers"].values():
        for key in ("degenerate", "distinct_values", "modal_share"):
            del entry[key]
        for row in entry["retrain"]:
            del row["vs_random"]
    for row in old["winners"]:
        del row["below_random"]
        means = {
            name: line["accuracy_mean"]
            for name, entry in old["prioritizers"].items()
            for line in entry["retrain"]
            if line["budget"] == row["budget"]
        }
        top = max(means.values())
        row["by_accuracy"] = [name for name, value in means.items() if value >= top - 1e-12]
        row["accuracy_mean"] = top
    return old


def test_a_version_1_file_still_reads(inputs, local_root):
    from testprio.report import data as reportdata

    result = _run(inputs, local_root, "v1", budgets=(5, 10), seeds=2)
    old = _as_version_1(result)
    read = evaluation_file.read_evaluation(old)
    assert read["comparison"] is None and read["controls"] is None and read["splits"] == 1
    assert all(row["vs_random"] is None for row in read["prioritizers"]["gini"]["retrain"])
    assert read["winners"][0]["by_accuracy"] == old["winners"][0]["by_accuracy"]
    frames = evaluation_file.evaluation_frames(old)
    assert frames["vs_random"] == [] and frames["controls"] == []
    assert len(frames["retrain"]) == 3 * 2
    text = evaluation.format_evaluation(old)
    assert "5%: best by mean accuracy at 5%, untested (a version 1 file): " in text
    assert "Difference to random" not in text and "control:" not in text
    assert "<svg" in evaluation.evaluation_html(old) and evaluation.evaluation_markdown(old)
    view = reportdata.evaluation_view(old, "v1")
    assert view["tested"] is False and view["vs_random"] == [] and view["controls"] == []
    assert view["winners"][0]["verdict"].startswith("best by mean accuracy at 5%, untested")
    # What the engine writes now reads the same through the same function.
    assert evaluation_file.read_evaluation(result) is result
    newer = {**result, "version": 3}
    with pytest.raises(TestprioError, match=r"evaluation.json version 3 is not one this testprio"):
        evaluation_file.read_evaluation(newer)
    with pytest.raises(TestprioError, match=r"version 3 is not one this testprio reads"):
        reportdata.evaluation_view(newer, "v3")


def test_splits_pool_the_evaluations_of_seeded_splits(inputs, local_root):
    """--splits 2 evaluates two seeded pool/test splits; split 0 is the --split run's, the
    top level pools both (accuracies split by split, pairs by (split, seed))."""
    options = {"prioritizers": ("gini", "random"), "seeds": 2, "budgets": (5, 10), "split": 0.25}
    kwargs = {
        "model": str(inputs["model"]),
        "data": str(inputs["pool"]),
        "train_data": str(inputs["train"]),
    }
    pooled = evaluation.run_evaluation(
        local_root, "splits", options=evaluation.EvaluateOptions(**options, splits=2), **kwargs
    )
    single = evaluation.run_evaluation(
        local_root, "split0", options=evaluation.EvaluateOptions(**options), **kwargs
    )
    assert pooled["splits"] == 2 and single["splits"] == 1
    assert pooled["test_split"] == "0.25 of the pool, in 2 seeded splits"
    assert pooled["comparison"]["pairing"] == "(split, seed)"
    first, second = pooled["per_split"]
    assert [first["split"], second["split"]] == [0, 1]
    for part in ("prioritizers", "controls", "winners", "baseline_accuracy", "pool"):
        assert _untimed(first[part]) == _untimed(single[part]), part  # split 0: --split's
    assert first["samples"] == second["samples"] == {"pool": 300, "train": 600, "test": 100}
    assert (
        first["pool"] != second["pool"] or first["baseline_accuracy"] != second["baseline_accuracy"]
    )  # another pool and test split
    assert pooled["baseline_accuracy"] == pytest.approx(
        (first["baseline_accuracy"] + second["baseline_accuracy"]) / 2
    )
    for name in ("gini", "random"):
        for i, row in enumerate(pooled["prioritizers"][name]["retrain"]):
            assert row["accuracies"] == [
                *first["prioritizers"][name]["retrain"][i]["accuracies"],
                *second["prioritizers"][name]["retrain"][i]["accuracies"],
            ]
        found = [row["found"] for row in pooled["prioritizers"][name]["faults"]]
        assert found == pytest.approx(
            [
                (a["found"] + b["found"]) / 2
                for a, b in zip(
                    first["prioritizers"][name]["faults"],
                    second["prioritizers"][name]["faults"],
                    strict=True,
                )
            ]
        )
    tests, adjusted = _reference_vs_random(pooled)  # four pairs per budget
    for row in pooled["prioritizers"]["gini"]["retrain"]:
        assert row["vs_random"]["p"] == pytest.approx(tests["gini", row["budget"]].pvalue)
        assert row["vs_random"]["p_holm"] == pytest.approx(adjusted["gini", row["budget"]])
    assert len(pooled["controls"]["whole_pool"]["accuracies"]) == 4
    curve = pooled["prioritizers"]["gini"]["curve"]
    assert curve[0] == [0.0, 0.0] and curve[-1] == [1.0, 1.0]
    text = evaluation.format_evaluation(pooled)
    assert "Pooled over 2 seeded pool/test splits" in text and "2 seeds x 2 splits" in text


def _untimed(figures):
    """``figures`` without the prioritizers' order_seconds (wall-clock time)."""
    if isinstance(figures, dict):
        return {k: _untimed(v) for k, v in figures.items() if k != "order_seconds"}
    return figures


def test_split_holds_out_part_of_the_pool(inputs, local_root):
    result = evaluation.run_evaluation(
        local_root,
        "split",
        model=str(inputs["model"]),
        data=str(inputs["pool"]),
        train_data=str(inputs["train"]),
        options=evaluation.EvaluateOptions(prioritizers=("gini",), seeds=1, split=0.25, epochs=1),
    )
    assert result["samples"] == {"pool": 300, "train": 600, "test": 100}
    assert result["test_split"] == "0.25 of the pool"


def test_hidden_layer_prioritizers_order_the_whole_pool(inputs, local_root):
    names = [n for n in ("nac-cam", "kmnc", "dsa", "instability") if n in evaluation.PRIORITIZERS]
    if not names:
        pytest.skip("no coverage, surprise or metamorphic module installed")
    result = _run(inputs, local_root, "hidden", prioritizers=tuple(names), seeds=1)
    for name in names:
        assert result["prioritizers"][name]["apfd"]["raw"] is not None
    if "instability" in names:
        assert "attribution" in result["prioritizers"]["instability"]


def test_unlabeled_test_data_is_one_sentence(inputs, local_root, tmp_path):
    unlabeled = tmp_path / "test.npy"
    np.save(unlabeled, inputs["splits"]["test"][0])
    with pytest.raises(TestprioError, match=r"400 sample\(s\) of the test data .* have no label"):
        _run({**inputs, "test_override": unlabeled}, local_root, "nolabels")


def test_no_test_split_is_one_sentence(inputs, local_root):
    with pytest.raises(TestprioError, match=r"needs a held-out test split: give --test-data"):
        _run({**inputs, "test_override": ""}, local_root, "notest")


# --- hidden layers, coverage parameters, metamorphic settings ------------------------------

HIDDEN_FAMILIES = ("kmnc", "dsa")


def _needs(*names):
    missing = [name for name in names if name not in evaluation.PRIORITIZERS]
    if missing:
        pytest.skip(f"prioritizer module not installed: {', '.join(missing)}")


def _orders(result, name):
    return [row["found"] for row in result["prioritizers"][name]["faults"]], result["prioritizers"][
        name
    ]["apfd"]["raw"]


def test_layers_and_surprise_layer_are_used_and_recorded(inputs, local_root):
    """The MLP's default hidden layer is the Relu output 'hidden'; --layers pre (the Gemm
    before it) changes what coverage and surprise read, and --surprise-layer hidden brings
    surprise back to the default's figures."""
    _needs(*HIDDEN_FAMILIES)
    options = {"prioritizers": HIDDEN_FAMILIES, "seeds": 1, "budgets": (5, 10, 20)}
    default = _run(inputs, local_root, "layers-default", **options)
    assert default["layers"] == {
        "coverage": ["hidden"],
        "surprise": "hidden",
        "surprise_reduce": "mean",
        "chosen": "default (hidden_layer_names)",
    }
    assert default["coverage_params"]["kmnc"] == {"sections": 10}
    pre = _run(inputs, local_root, "layers-pre", layers=("pre",), **options)
    assert pre["layers"] == {
        "coverage": ["pre"],
        "surprise": "pre",
        "surprise_reduce": "mean",
        "chosen": "--layers",
    }
    for name in HIDDEN_FAMILIES:  # the other layer's activations order the pool otherwise
        assert _orders(pre, name) != _orders(default, name)
    mixed = _run(
        inputs, local_root, "layers-mixed", layers=("pre",), surprise_layer="hidden", **options
    )
    assert mixed["layers"]["surprise"] == "hidden"
    assert _orders(mixed, "dsa") == _orders(default, "dsa")
    assert _orders(mixed, "kmnc") == _orders(pre, "kmnc")


def test_unknown_layers_are_one_sentence(inputs, local_root):
    with pytest.raises(TestprioError, match=r"layer 'nope' in --layers is not a tensor of the"):
        _run(inputs, local_root, "bad-layer", prioritizers=("gini",), layers=("hidden", "nope"))
    with pytest.raises(
        TestprioError, match=r"--surprise-layer 'nah' is not a tensor of the model; .*hidden"
    ):
        _run(inputs, local_root, "bad-surprise", prioritizers=("gini",), surprise_layer="nah")


def test_coverage_params_change_the_order_and_are_recorded(inputs, local_root):
    _needs("nac-ctm")
    options = {"prioritizers": ("nac-ctm",), "seeds": 1, "budgets": (5, 10, 20)}
    default = _run(inputs, local_root, "cov-default", **options)
    params = evaluation.parse_coverage_params('{"nac": {"threshold": 1.5}}')
    raised = _run(inputs, local_root, "cov-raised", coverage_params=params, **options)
    assert raised["coverage_params"]["nac"] == {"threshold": 1.5}
    assert raised["coverage_params"]["kmnc"] == {"sections": 10}  # the others keep defaults
    assert _orders(raised, "nac-ctm") != _orders(default, "nac-ctm")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", r"--coverage-params '\[1\]' is not a JSON object; give one like"),
        ("{nope", r"--coverage-params '\{nope' is not a JSON object"),
        ('{"kmc": {"sections": 2}}', r"--coverage-params names 'kmc', not a coverage metric"),
        ('{"kmnc": {"section": 2}}', r"--coverage-params kmnc.section=2 is not a parameter"),
        ('{"kmnc": {"sections": 2.5}}', r"kmnc.sections=2.5 is not .* with a whole number"),
        ('{"nac": {"threshold": true}}', r"nac.threshold=True is not a parameter"),
    ],
)  # fmt: skip
def test_bad_coverage_params(text, message):
    _needs("nac-ctm")
    with pytest.raises(TestprioError, match=message):
        evaluation.parse_coverage_params(text)


def test_metamorphic_transforms_and_followups_are_used_and_recorded(inputs, local_root):
    _needs("instability")
    options = {"prioritizers": ("instability",), "seeds": 1, "budgets": (10,)}
    default = _run(inputs, local_root, "meta-default", **options)
    settings = default["prioritizers"]["instability"]["metamorphic"]
    assert settings["followups"] == 10 and settings["layout"] == "NCHW"
    assert settings["transforms"] == [
        "rotate", "translate", "scale", "brightness", "contrast", "blur", "noise"
    ]  # fmt: skip
    # 8x8 digits are tiny images: the narrower ranges apply.
    assert settings["tiny_image_ranges"] is True
    assert settings["ranges"]["rotate"] == {"degrees": [-5.0, 5.0]}
    chosen = _run(
        inputs, local_root, "meta-noise", metamorphic_transforms=("noise",), followups=3,
        **options,
    )  # fmt: skip
    entry = chosen["prioritizers"]["instability"]
    assert entry["metamorphic"]["transforms"] == ["noise"]
    assert entry["metamorphic"]["followups"] == 3
    assert entry["description"] == "share of 3 metamorphic follow-ups whose class changes"
    assert [effect["transform"] for effect in entry["attribution"]["effects"]] == ["noise"]


def test_tiny_images_get_narrow_metamorphic_ranges():
    assert metamorphic.metamorphic_ranges((1, 8, 8), "NCHW") is metamorphic.TINY_IMAGE_RANGES
    assert metamorphic.metamorphic_ranges((8, 8, 1), "NHWC") is metamorphic.TINY_IMAGE_RANGES
    assert metamorphic.metamorphic_ranges((16, 28), "NHW") is metamorphic.TINY_IMAGE_RANGES
    assert metamorphic.metamorphic_ranges((3, 32, 32), "NCHW") is None
    assert metamorphic.metamorphic_ranges((64,), None) is None


def test_narrow_ranges_flip_fewer_followups_on_digits(inputs):
    """The reason for the narrow ranges: on 8x8 digits the metamorphic defaults flip far
    more follow-ups of a sound classifier than the narrow ones."""
    _needs("instability")
    from testprio import metamorphic
    from testprio.model import create_session

    session = create_session(str(inputs["model"]), device="cpu")
    x = inputs["splits"]["pool"][0]

    def predict(batch):
        return session.run(["logits"], {"input": batch})[0]

    rates = {
        ranges is None: metamorphic.run_metamorphic(
            predict, x, followups=5, layout="NCHW", ranges=ranges
        )
        .design["violated"]
        .mean()
        for ranges in (None, metamorphic.TINY_IMAGE_RANGES)
    }
    assert rates[False] < rates[True] / 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"followups": 0}, r"--followups 0 must be a whole number from 1 to 1,000"),
        (
            {"metamorphic_transforms": ("rotate", "spin")},
            r"unknown metamorphic transform\(s\) spin in --metamorphic-transforms; choose from",
        ),
    ],
)
def test_bad_metamorphic_options(options, message):
    _needs("instability")
    with pytest.raises(TestprioError, match=message):
        evaluation.check_options(evaluation.EvaluateOptions(**options))


# --- the command line ---------------------------------------------------------------------


@pytest.fixture
def fresh_log(monkeypatch):
    """testprio.log.configure binds its handler to the sys.stderr of its first call: an
    earlier test's capture, closed by now. Start without it, so it writes to this test's."""
    import logging

    monkeypatch.setattr(logging.getLogger("testprio"), "handlers", [])


def _cli_args(inputs, root, *extra):
    return [
        "evaluate", "--model", str(inputs["model"]), "--data", str(inputs["pool"]),
        "--test-data", str(inputs["test"]), "--train-data", str(inputs["train"]),
        "--root", root, *extra,
    ]  # fmt: skip


def test_cli_prints_the_tables_and_the_file(inputs, local_root, capsys):
    code = cli.main(
        _cli_args(inputs, local_root, "--run-id", "cli", "--prioritizers", "gini,random",
                  "--seeds", "2", "--budgets", "5,10", "--epochs", "1")
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "Faults found in the top b% of the pool" in out
    assert "Test accuracy after retraining" in out
    assert "control: whole pool labelled (the ceiling): " in out
    assert "control: no selection (the training data alone, the same epochs): " in out
    assert "Difference to random's accuracy, paired by seed" in out
    # Two seeds show no significant difference on this model: the verdict says so, with the
    # ceiling beside it.
    assert "5%: no prioritizer beats random at 5%; most faults: gini" in out
    assert "  Beside them: whole pool labelled (the ceiling) " in out
    assert f"Evaluation: {local_root}/cli/evaluation.json" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prioritizers", "gini,nope"], "unknown prioritizer(s) nope; choose from"),
        (["--budgets", "0"], "--budgets 0 must be percents of the pool above 0"),
        (["--seeds", "0"], "--seeds 0 must be a whole number from 1 to 100"),
        (["--split", "2"], "--split 2.0 must be a share of the pool"),
        (["--run-id", "../x"], "run id '../x' is not allowed"),
        (["--prioritizers", "gini", "--layers", "hidden,nope"], "layer 'nope' in --layers"),
        (["--coverage-params", "{"], "--coverage-params '{' is not a JSON object"),
        (["--followups", "0"], "--followups 0 must be a whole number from 1 to 1,000"),
        (["--metamorphic-transforms", "spin"], "unknown metamorphic transform(s) spin"),
        (["--splits", "0"], "--splits 0 must be a whole number from 1 to 20: each split"),
        (["--splits", "2"], "--splits 2 draws a new pool and test split from the pool for each"),
    ],
)
def test_cli_errors_are_one_sentence(inputs, local_root, capsys, fresh_log, extra, message):
    assert cli.main(_cli_args(inputs, local_root, *extra)) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("testprio: error:") == 1 and "Traceback" not in err


def test_cli_missing_file_is_one_sentence(inputs, local_root, tmp_path, capsys):
    args = _cli_args(inputs, local_root)
    args[args.index("--data") + 1] = str(tmp_path / "missing.npz")
    assert cli.main(args) == 1
    assert f"--data {tmp_path / 'missing.npz'} does not exist; check the path." in (
        capsys.readouterr().err
    )


# --- the KFP pipeline ---------------------------------------------------------------------


def test_evaluate_pipeline_compiles(tmp_path):
    import yaml

    from pipelines.evaluate import compile_pipeline

    for framework, image in (("onnx", "runtime"), ("pytorch", "convert-pytorch")):
        spec = yaml.safe_load(
            open(compile_pipeline(str(tmp_path / f"{framework}.yaml"), framework))
        )
        executors = spec["deploymentSpec"]["executors"]
        images = {name: executor["container"]["image"] for name, executor in executors.items()}
        assert images["exec-evaluate-pool"].rsplit("/", 1)[1].startswith(image + ":")
        assert images["exec-evaluate-report"].rsplit("/", 1)[1].startswith("runtime:")
        outputs = spec["components"]["comp-evaluate-report"]["outputDefinitions"]["artifacts"]
        assert {name: out["artifactType"]["schemaTitle"] for name, out in outputs.items()} == {
            "metrics": "system.Metrics",
            "markdown": "system.Markdown",
            "html": "system.HTML",
        }
    with pytest.raises(ValueError, match=r"--framework paddle cannot be evaluated"):
        compile_pipeline(str(tmp_path / "p.yaml"), "paddle")


@pytest.mark.pipeline
def test_evaluate_pipeline_runs_locally(inputs, local_root, tmp_path):
    import glob

    from kfp import local

    from pipelines.evaluate import build_pipeline

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "kfp"),
        raise_on_error=True,
    )
    build_pipeline("onnx")(
        root=local_root,
        run_id="kfp",
        model=str(inputs["model"]),
        data=str(inputs["pool"]),
        train_data=str(inputs["train"]),
        test_data=str(inputs["test"]),
        budgets="5,10",
        prioritizers="gini,random",
        seeds=2,
        epochs=1,
    )
    written = storage.read_json(f"{local_root}/kfp/evaluation.json")
    assert set(written["prioritizers"]) == {"gini", "random"}
    # The Kubeflow UI reads a Metrics artifact's figures from its metadata.
    (report_output,) = glob.glob(
        str(tmp_path / "kfp" / "*" / "evaluate-report" / "executor_output.json")
    )
    artifacts = json.load(open(report_output))["artifacts"]
    logged = artifacts["metrics"]["artifacts"][0]["metadata"]
    assert logged == pytest.approx(evaluation.evaluation_metrics(written))
    assert {"gini_apfd_normalized", "random_accuracy_5pct", "gini_faults_10pct"} <= set(logged)
    (page,) = glob.glob(str(tmp_path / "kfp" / "**" / "html"), recursive=True)
    assert "<svg" in open(page).read()


# --- testprio compile / submit --pipeline evaluate ----------------------------------------


def test_compile_writes_the_evaluate_pipeline(tmp_path, capsys):
    import yaml

    out = tmp_path / "build"
    assert cli.main(["compile", "--pipeline", "evaluate", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "evaluate.yaml")
    spec = yaml.safe_load(open(out / "evaluate.yaml"))
    assert spec["pipelineInfo"]["name"] == "evaluate"
    assert set(spec["root"]["dag"]["tasks"]) == {"evaluate-pool", "evaluate-report"}
    assert {"train_data", "layers", "followups", "splits"} <= set(
        spec["root"]["inputDefinitions"]["parameters"]
    )
    assert cli.main(["compile", "--pipeline", "evaluate", "--framework", "pytorch",
                     "--out", str(out)]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == str(out / "evaluate-pytorch.yaml")
    # The default is still the prioritize pipeline.
    assert cli.main(["compile", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "prioritize.yaml")


def test_compile_evaluate_for_paddle_is_one_sentence(tmp_path, capsys):
    args = ["compile", "--pipeline", "evaluate", "--framework", "paddle", "--out", str(tmp_path)]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("testprio: error: --framework paddle cannot be evaluated")
    assert err.count("\n") == 1


@pytest.fixture
def kfp_server(tmp_path, monkeypatch):
    """The loopback KFP API server of tests/test_client.py."""
    import kfp

    from tests.test_client import FakeKfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.delenv("KF_PIPELINES_UI_ENDPOINT", raising=False)
    server = FakeKfp()
    yield server
    server.stop()


@pytest.fixture
def bucket_root(gcs_emulator):
    import uuid

    from tests.conftest import BUCKET

    return f"gs://{BUCKET}/eval-{uuid.uuid4().hex[:8]}"


def test_submit_compiles_and_starts_the_evaluate_pipeline(inputs, kfp_server, bucket_root):
    from testprio.client import Client

    client = Client(kfp_server.url)
    run = client.submit(
        {"model": str(inputs["model"]), "data": str(inputs["pool"]),
         "train_data": str(inputs["train"]), "test_data": str(inputs["test"]),
         "root": bucket_root, "run_id": "eval-1", "prioritizers": "gini,random", "seeds": "2",
         "layers": "hidden"},
        pipeline="evaluate",
    )  # fmt: skip
    assert run.name == "evaluate eval-1"
    # Every local input, training and test data included, is uploaded to the run folder.
    for name in ("model", "pool", "train", "test"):
        uri = run.uploaded[str(inputs[name])]
        assert uri == f"{bucket_root}/eval-1/inputs/{inputs[name].name}"
        assert storage.read_bytes(uri) == inputs[name].read_bytes()
    (created,) = kfp_server.calls("POST", "/runs")
    body = created["body"]
    assert body["display_name"] == "evaluate eval-1"
    spec = body["pipeline_spec"]  # no platform_spec beside it: no Kubernetes settings
    assert spec["pipelineInfo"]["name"] == "evaluate"
    assert set(spec["root"]["dag"]["tasks"]) == {"evaluate-pool", "evaluate-report"}
    sent = body["runtime_config"]["parameters"]
    assert sent["train_data"] == f"{bucket_root}/eval-1/inputs/train.npz"
    assert (sent["seeds"], sent["prioritizers"], sent["layers"]) == (2, "gini,random", "hidden")


def test_submit_checks_evaluate_parameters_before_sending(inputs, kfp_server, bucket_root):
    from testprio.client import Client

    client = Client(kfp_server.url)
    base = {"model": str(inputs["model"]), "data": str(inputs["pool"]),
            "train_data": str(inputs["train"]), "root": bucket_root}  # fmt: skip
    with pytest.raises(TestprioError, match=r"needs a held-out test split: give test_data"):
        client.submit(base, pipeline="evaluate")
    with pytest.raises(TestprioError, match=r"unknown prioritizer\(s\) nope"):
        client.submit({**base, "split": 0.3, "prioritizers": "nope"}, pipeline="evaluate")
    with pytest.raises(TestprioError, match=r"^'metric' is not a parameter of the compiled"):
        client.submit({**base, "split": 0.3, "metric": "gini"}, pipeline="evaluate")
    with pytest.raises(TestprioError, match=r"pipeline 'rank' is not one of prioritize, evaluate"):
        client.submit(base, pipeline="rank")
    assert kfp_server.calls("POST", "/runs") == []


def test_cli_submit_evaluate(inputs, kfp_server, bucket_root, tmp_path, capsys):
    host = ["--host", kfp_server.url]
    args = ["submit", *host, "--pipeline", "evaluate", "--model", str(inputs["model"]),
            "--data", str(inputs["pool"]), "--root", bucket_root, "--run-id", "cli-eval",
            "--param", f"train-data={inputs['train']}", "--param", "split=0.3"]  # fmt: skip
    assert cli.main(args) == 0, capsys.readouterr().err
    (run_id,) = kfp_server.runs
    assert capsys.readouterr().out.splitlines()[0] == (
        f"Submitted evaluate cli-eval (KFP run {run_id})."
    )
    # A prioritize package given for the evaluate pipeline is refused in one sentence.
    prioritize = tmp_path / "build"
    assert cli.main(["compile", "--out", str(prioritize)]) == 0
    capsys.readouterr()
    args[args.index("cli-eval")] = "cli-eval-2"
    assert cli.main([*args, "--package", str(prioritize / "prioritize.yaml")]) == 1
    err = capsys.readouterr().err
    assert (
        "is the pipeline prioritize, but the model is a onnx model, which runs in evaluate" in err
    )
    assert err.count("\n") == 1
