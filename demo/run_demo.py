"""`make demo`: train a small CNN on real handwritten digits, then rank the unlabeled half.

1. Trains a seeded CNN on half of scikit-learn's 1,797 8x8 digits and exports it to ONNX.
2. Saves the other half, the "unlabeled" pool, as PNG files in one folder per digit (the
   labels are kept only to score how well the ranking finds the mistakes).
3. Runs the whole testprio pipeline (KFP local runner) on that image folder, with the ops
   that turn the PNGs back into exactly the model's inputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from demo.train_digits import train_and_export  # noqa: E402
from testprio import cli  # noqa: E402
from testprio.layout import new_run_id  # noqa: E402

# The digits hold whole numbers 0..16 (the model sees them / 16): stored as v * 15 in 8-bit
# PNGs, the ops below give back exactly v / 16 in the model's (1, 8, 8) layout.
PIXEL_SCALE = 15
OPS = f'[{{"op": "scale", "divide": {16 * PIXEL_SCALE}}}, {{"op": "layout", "to": "NCHW"}}]'


def write_image_folder(pool: Path, folder: Path) -> int:
    """Save the pool's (N, 1, 8, 8) digits as PNGs in class folders 0..9; return N."""
    data = np.load(pool)
    x, y = data["x"], data["y"]
    for label in range(10):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(x, y, strict=True)):
        pixels = np.rint(image[0] * 16 * PIXEL_SCALE).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / str(label) / f"{index:04d}.png")
    return len(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--runner",
        choices=("subprocess", "docker"),
        default="subprocess",
        help="docker: every task in its own image (make images builds them)",
    )
    args = parser.parse_args(argv)
    started = time.time()

    print("[1/3] Training a small CNN on half of scikit-learn's 8x8 digits (seeded) ...")
    trained = train_and_export(args.out / "model", seed=args.seed)
    print(f"      model: {trained['model']} (pool accuracy {trained['pool_accuracy']:.4f})")

    images = args.out / "pool-images"
    print("[2/3] Saving the unlabeled half as PNG files, one folder per digit ...")
    count = write_image_folder(trained["pool"], images)
    print(f"      pool:  {images}/0..9/*.png ({count} images; also {trained['pool']})")

    print("[3/3] Ranking the pool with the testprio pipeline (KFP local runner) ...")
    print(f"      preprocessing: --ops '{OPS}'")
    root = args.out.resolve() / "runs"
    run_id = new_run_id()
    code = cli.main(
        [
            "run",
            "--model",
            str(trained["model"]),
            "--data",
            str(images),
            "--ops",
            OPS,
            "--root",
            str(root),
            "--run-id",
            run_id,
            "--shard-size",
            "300",
            "--top-k",
            "10",
            "--runner",
            args.runner,
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
