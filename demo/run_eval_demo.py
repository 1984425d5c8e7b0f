"""`make demo-eval`: which prioritizer finds the digits CNN's mistakes, and does labelling them
pay off when the model is retrained?

1. Splits scikit-learn's 1,797 8x8 digits (seeded) into a training reference (40%), a
   labeled pool (30%) and a held-out test split (30%); trains the demo's small CNN briefly
   on the training part (so that it still errs) and saves it as TorchScript (``model.pt``).
2. Runs ``testprio evaluate`` with the default prioritizers, budgets 1, 2, 5, 10% and 5
   seeds: each prioritizer's APFD and faults found on the pool, and the test accuracy of
   the CNN fine-tuned on the training reference plus each prioritizer's top-b%.
3. Prints the table and where ``evaluation.json`` is.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from testprio import cli  # noqa: E402
from testprio.layout import new_run_id  # noqa: E402

TRAIN_SHARE, POOL_SHARE = 0.4, 0.3  # the rest is the test split
EPOCHS = 6  # short on purpose: the pool keeps misclassified samples to find


def digits_splits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train", "pool", "test"}`` -> ``(x (N,1,8,8) float32 in [0,1], y (N,) int64)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    first = int(TRAIN_SHARE * len(x))
    second = first + int(POOL_SHARE * len(x))
    parts = {"train": order[:first], "pool": order[first:second], "test": order[second:]}
    return {name: (x[rows], y[rows]) for name, rows in parts.items()}


def train_and_save(out: Path, *, seed: int) -> dict[str, Path]:
    """Train the CNN on the training split and save it and the three splits; reuse them
    when a previous run of the same seed left them in ``out``."""
    import torch

    from demo.train_digits import build_model, set_determinism, train

    paths = {name: out / f"{name}.npz" for name in ("train", "pool", "test")}
    paths["model"] = out / "model.pt"
    if all(path.exists() for path in paths.values()):
        print("      (reusing the model and splits from a previous run)")
        return paths
    out.mkdir(parents=True, exist_ok=True)
    splits = digits_splits(seed)
    for name, (x, y) in splits.items():
        np.savez(paths[name], x=x, y=y)
    set_determinism(seed)
    model = train(build_model(), *splits["train"], epochs=EPOCHS, seed=seed)
    example = torch.from_numpy(splits["pool"][0][:4])
    torch.jit.save(torch.jit.trace(model.eval(), example), str(paths["model"]))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds (default 5)")
    args = parser.parse_args(argv)
    started = time.time()

    print("[1/2] Training a small CNN on 40% of scikit-learn's 8x8 digits (seeded) ...")
    paths = train_and_save(args.out / "eval-inputs", seed=args.seed)
    print(f"      model: {paths['model']}; pool {paths['pool']}, test {paths['test']}")

    print("[2/2] Evaluating the prioritizers (testprio evaluate) ...")
    root = args.out.resolve() / "runs"
    run_id = "eval-" + new_run_id()
    code = cli.main(
        [
            "evaluate",
            "--model",
            str(paths["model"]),
            "--data",
            str(paths["pool"]),
            "--test-data",
            str(paths["test"]),
            "--train-data",
            str(paths["train"]),
            "--root",
            str(root),
            "--run-id",
            run_id,
            "--seeds",
            str(args.seeds),
        ]
    )
    if code:
        return code
    print(f"\nDone in {time.time() - started:.1f} s.")
    print(f"The evaluation: {root / run_id / 'evaluation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
