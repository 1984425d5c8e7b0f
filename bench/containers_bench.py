"""The demo pipeline in containers against the subprocess runner (docs/benchmarks.md).

    python bench/containers_bench.py [--repeats 2]

Trains the demo's digits CNN once, saves its 899-image pool as PNGs (as ``make demo`` does),
then runs ``testprio run`` on it with ``--runner subprocess`` and ``--runner docker`` in turn
(interleaved, ``--repeats`` times each) and prints each run's wall time and, for the
container runs, each task's cold start: from the container's start to its first log line.
Needs the images (``make images``) and an engine (Docker, or podman).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from demo.run_demo import OPS, write_image_folder  # noqa: E402
from demo.train_digits import train_and_export  # noqa: E402

COLD_START = re.compile(r"task (\S+): first log line ([0-9.]+) s after start")


def run_once(runner: str, model: Path, images: Path, root: Path, run_id: str) -> tuple[float, str]:
    command = [sys.executable, "-m", "testprio.cli", "run", "--model", str(model)]
    command += ["--data", str(images), "--ops", OPS, "--root", str(root), "--run-id", run_id]
    command += ["--shard-size", "300", "--runner", runner]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{runner} run failed:\n{result.stderr[-3000:]}")
    return seconds, result.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "work" / "containers")
    args = parser.parse_args(argv)
    trained = train_and_export(args.out / "model", seed=0)
    images = args.out / "pool-images"
    count = write_image_folder(trained["pool"], images)
    root = args.out / "runs"
    walls: dict[str, list[float]] = defaultdict(list)
    starts: dict[str, list[float]] = defaultdict(list)
    for repeat in range(args.repeats):
        for runner in ("subprocess", "docker"):
            seconds, log = run_once(runner, trained["model"], images, root, f"{runner}-{repeat}")
            walls[runner].append(seconds)
            for task, cold in COLD_START.findall(log):
                starts[re.sub(r"_(onnx|pytorch|tensorflow|paddle)$", "", task)].append(float(cold))
            print(f"{runner:>10} run {repeat + 1}: {seconds:6.1f} s", flush=True)
    print(f"\ndemo pipeline, {count} PNG digits, 3 score shards (best of {args.repeats})")
    print("| runner | wall time |\n|---|---|")
    for runner, values in walls.items():
        print(f"| {runner} | {min(values):.1f} s (median {statistics.median(values):.1f} s) |")
    print("\ncold start per task (container start to first log line)")
    print("| task | median | max | containers |\n|---|---|---|---|")
    for task, values in starts.items():
        print(
            f"| {task} | {statistics.median(values):.2f} s | {max(values):.2f} s | {len(values)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
