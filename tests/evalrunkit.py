"""Real evaluation runs for the report tests: ``testprio.evaluation.run_evaluation`` on the
digits of ``tests.evalkit`` with its ONNX MLP (head retraining), one seed, one epoch.
About 2 s a run on this machine, most of it the instability follow-ups."""

from __future__ import annotations

from pathlib import Path

from testprio import evaluation
from tests.evalkit import digits, mlp_weights, save_mlp, save_splits

PRIORITIZERS = ("gini", "margin", "random", "instability")
BUDGETS = (1.0, 5.0, 10.0)


def make_evaluation(root: str, folder: Path, run_id: str = "evaluation") -> dict:
    """Write the evaluation run ``run_id`` under ``root``; returns its evaluation.json."""
    splits = digits()
    paths = save_splits(folder / "eval-inputs", splits)
    model = save_mlp(folder / "eval-mlp.onnx", mlp_weights(*splits["train"]))
    return evaluation.run_evaluation(
        root,
        run_id,
        model=str(model),
        data=str(paths["pool"]),
        train_data=str(paths["train"]),
        test_data=str(paths["test"]),
        options=evaluation.EvaluateOptions(
            prioritizers=PRIORITIZERS, seeds=1, epochs=1, budgets=BUDGETS
        ),
    )
