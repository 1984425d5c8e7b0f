"""`make demo`: train a small CNN on real handwritten digits, then rank the unlabeled half.

1. Trains a seeded CNN on half of scikit-learn's 1,797 8x8 digits and exports it to ONNX.
2. Runs the whole testprio pipeline (KFP local runner) on the other half, the "unlabeled"
   pool, whose labels are kept only to score how well the ranking finds the mistakes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.train_digits import train_and_export  # noqa: E402
from testprio import cli  # noqa: E402
from testprio.layout import new_run_id  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.time()

    print("[1/2] Training a small CNN on half of scikit-learn's 8x8 digits (seeded) ...")
    trained = train_and_export(args.out / "model", seed=args.seed)
    print(f"      model: {trained['model']} (pool accuracy {trained['pool_accuracy']:.4f})")
    print(f"      pool:  {trained['pool']} ({trained['pool_size']} samples, labels kept in y)")

    print("[2/2] Ranking the pool with the testprio pipeline (KFP local runner) ...")
    root = args.out.resolve() / "runs"
    run_id = new_run_id()
    code = cli.main(
        [
            "run",
            "--model",
            str(trained["model"]),
            "--data",
            str(trained["pool"]),
            "--root",
            str(root),
            "--run-id",
            run_id,
            "--shard-size",
            "300",
            "--top-k",
            "10",
        ]
    )
    if code:
        return code
    ranking = root / run_id / "ranking.parquet"
    report = root / run_id / "report" / "report.html"
    print(f"\nDone in {time.time() - started:.1f} s. The run is in {root / run_id}")
    print("Open the report:")
    print("  make report      # the Streamlit app on http://127.0.0.1:8501 (Ctrl-C to stop)")
    print(f"  or open {report} in a browser (one self-contained page)")
    print("Or read the 20 inputs most worth labelling first:")
    print(
        f'  .venv/bin/python -c "import pyarrow.parquet as pq; '
        f"print(pq.read_table('{ranking}').slice(0, 20).to_pandas().to_string())\""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
