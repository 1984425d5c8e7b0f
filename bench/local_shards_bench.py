"""Local runs with many shards: ``testprio run`` on the subprocess runner, few against many
shards of the same pool (docs/benchmarks.md, "Local runs with many shards").

    python bench/local_shards_bench.py [--samples 900] [--shards 3,60] [--repeats 1]
                                       [--modes shared,per-shard] [--verbose-log FILE]

Writes a linear 10-class ONNX model (8x8 inputs) and a seeded pool of ``--samples`` samples,
then runs ``testprio run`` (a fresh process each time, as a user would) once per mode, shard
count and repeat, interleaved, with ``--shard-size`` chosen to give that many shards. Modes:
``shared``, the local pipeline as it is (its shards shared out among
``LOCAL_SETTINGS.score_groups`` score tasks), and ``per-shard``, the same run with one score
task per shard as on a cluster (``score_groups=0``: how local runs scored before). Prints
each run's wall time, the KFP tasks the local runner started (from its log), the score
stages' own time and the load average, then a Markdown table. ``--verbose-log`` keeps the
last run's ``--verbose`` log (with ``PYTHONPROFILEIMPORTTIME=1`` in every task when
``--import-times`` is given). Scratch files go to the git-ignored ``WORK`` folder below.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "work" / "local-shards"
TASK_STARTED = re.compile(r"Executing task '([^']+)'")
SHAPE = (1, 8, 8)
CLASSES = 10


def write_model(path: Path, seed: int = 0) -> Path:
    """``flatten(x) @ W + b`` as ONNX: scoring costs nothing, so the runs measure overhead."""
    rng = np.random.default_rng(seed)
    width = int(np.prod(SHAPE))
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[
            numpy_helper.from_array(rng.normal(0, 0.5, (width, CLASSES)).astype(np.float32), "W"),
            numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def write_pool(path: Path, samples: int, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.random((samples, *SHAPE), dtype=np.float32)
    y = rng.integers(0, CLASSES, samples).astype(np.int64)
    np.savez(path, x=x, y=y)
    return path


# ``testprio run`` with one score task per shard: the cluster's fan-out, run locally.
PER_SHARD = (
    "import dataclasses, sys; import pipelines.prioritize as p; "
    "p.LOCAL_SETTINGS = dataclasses.replace(p.LOCAL_SETTINGS, score_groups=0); "
    "from testprio.cli import main; sys.exit(main(sys.argv[1:]))"
)
MODES = {"shared": ["-m", "testprio.cli"], "per-shard": ["-c", PER_SHARD]}


def run_once(
    mode: str,
    model: Path,
    pool: Path,
    root: Path,
    run_id: str,
    shard_size: int,
    env: dict,
    verbose: bool,
) -> tuple[float, str]:
    command = [sys.executable, *MODES[mode], "run", "--model", str(model)]
    command += ["--data", str(pool), "--root", str(root), "--run-id", run_id]
    command += ["--shard-size", str(shard_size)]
    command += ["--verbose"] if verbose else []
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"run {run_id} failed:\n{result.stderr[-3000:]}")
    return seconds, result.stderr


def stage_seconds(root: Path, run_id: str) -> dict[str, float]:
    """Seconds per stage kind (score-shard-* summed) from the run's run.json."""
    record = json.loads((root / run_id / "run.json").read_text())
    totals: dict[str, float] = {}
    for timing in record["stages"]:
        kind = "score" if timing["stage"].startswith("score-shard") else timing["stage"]
        totals[kind] = totals.get(kind, 0.0) + timing["end"] - timing["start"]
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=900)
    parser.add_argument("--shards", default="3,60", help="shard counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--modes", default="shared,per-shard", help="comma-separated")
    parser.add_argument("--verbose-log", type=Path, help="keep the last run's --verbose log")
    parser.add_argument(
        "--import-times", action="store_true", help="PYTHONPROFILEIMPORTTIME=1 in every task"
    )
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.shards.split(",")]
    modes = args.modes.split(",")
    if set(modes) - set(MODES):
        parser.error(f"--modes {args.modes}: use some of {', '.join(MODES)}")
    WORK.mkdir(parents=True, exist_ok=True)
    model = write_model(WORK / "model.onnx")
    pool = write_pool(WORK / "pool.npz", args.samples)
    root = WORK / "runs"
    env = {**os.environ}
    if args.import_times:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    walls: dict[tuple[str, int], list[float]] = {(m, c): [] for m in modes for c in counts}
    for repeat in range(args.repeats):
        for mode in modes:
            for count in counts:
                shard_size = math.ceil(args.samples / count)
                run_id = f"{mode}-{count}-{repeat}-{time.time_ns()}"
                verbose = args.verbose_log is not None
                seconds, log = run_once(mode, model, pool, root, run_id, shard_size, env, verbose)
                walls[mode, count].append(seconds)
                tasks = len(TASK_STARTED.findall(log))
                stages = stage_seconds(root, run_id)
                print(
                    f"{mode:>9}: {count:>3} shards of {shard_size}: {seconds:6.1f} s wall, "
                    f"{tasks} KFP tasks, score stages {stages.get('score', 0):.1f} s in all, "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
                if args.verbose_log:
                    args.verbose_log.write_text(log)
    print()
    print("| score tasks | shards x samples | wall, median | runs (s) |")
    print("|---|---|---|---|")
    for mode, count in walls:
        runs = ", ".join(f"{s:.1f}" for s in walls[mode, count])
        size = math.ceil(args.samples / count)
        median = statistics.median(walls[mode, count])
        print(f"| {mode} | {count} x {size} | {median:.1f} s | {runs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
