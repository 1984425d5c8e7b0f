"""Benchmarks of neuron coverage: scoring and CAM ordering cost per 100k samples.

Run ``python bench/coverage_bench.py`` (full sizes, a few minutes on 2 cores) or with
``--quick`` (tiny sizes, to check the script works). It prints a Markdown section and
appends it to ``bench/RESULTS-evaluation.md`` (shared with the surprise-adequacy bench).

Activations: 3 layers x 500 units, float32, batches of 1,000 samples
(post-ReLU-like: ``max(0, normal(mu_unit, 1))``, ten distinct batches reused with a small
per-batch scale); the reference profile is fitted on 10,000 such samples, the pool is drawn
a little wider so that boundary criteria fire.

Times are CPU seconds of the measuring process (``time.process_time``): the machine is shared.

(a) scoring: ``testprio.coverage.score_coverage`` per metric (defaults), the packed cells
    written to a file (memory map), for 100k samples (and 300k for nac and kmnc): seconds and peak
    RSS (each case in a fresh child process; peak = the child's ``VmHWM``). Drawing the
    activations is timed separately and subtracted.
(b) CAM: ``cam_order`` over the packed cells of 100k samples (memory-mapped file): seconds,
    peak RSS, samples picked greedily.

Scratch files go to a ``coverage`` folder in the git-ignored ``bench/work`` and are deleted at
the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
WORK = BENCH_DIR / "work" / "coverage"
RESULTS = BENCH_DIR / "RESULTS-evaluation.md"
SEED = 20261125
MIB = 1024**2
UNITS = (500, 500, 500)
BATCH = 1000
METRICS = ("nac", "kmnc", "nbc", "snac", "tknc")


def say(message: str) -> None:
    print(f"[coverage-bench] {message}", file=sys.stderr, flush=True)


def vmhwm_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


_BASE: list[np.ndarray] = []


def batches(n: int, *, seed: int, scale: float = 1.0):
    """Activation batches: a list of (batch, units) float32 arrays per batch.

    Ten batches are drawn once per seed (post-ReLU-like); later batches reuse them with a
    small per-batch scale, so drawing does not dominate the timings.
    """
    if not _BASE or _BASE[0] != (seed, scale):
        centres = np.random.default_rng(SEED).normal(size=sum(UNITS))
        rng = np.random.default_rng(seed)
        drawn = [
            np.maximum(0.0, rng.normal(centres, scale, size=(BATCH, sum(UNITS)))).astype(np.float32)
            for _ in range(10)
        ]
        _BASE[:] = [(seed, scale), drawn]
    drawn = _BASE[1]
    for b, start in enumerate(range(0, n, BATCH)):
        size = min(BATCH, n - start)
        flat = drawn[b % 10][:size] * np.float32(1 + 0.002 * (b // 10))
        yield np.split(flat, np.cumsum(UNITS)[:-1], axis=1)


def reference_profile(n: int):
    from testprio.coverage import NeuronProfile

    return NeuronProfile.fit(batches(n, seed=1))


# --- child-process cases ------------------------------------------------------------------


def case_score(metric: str, n: int, ref: int) -> dict:
    from testprio.coverage import COVERAGE_DEFAULTS, score_coverage

    profile = reference_profile(ref)
    next(batches(1, seed=2, scale=1.3))  # draw the base batches before timing
    started = time.process_time()
    for _ in batches(n, seed=2, scale=1.3):
        pass
    drawing = time.process_time() - started
    path = WORK / f"{metric}-{n}.bin"
    started = time.process_time()
    result = score_coverage(
        batches(n, seed=2, scale=1.3), metric, profile, cells_path=path, **COVERAGE_DEFAULTS[metric]
    )
    seconds = time.process_time() - started - drawing
    np.save(WORK / f"{metric}-{n}-scores.npy", result.scores)
    return {
        "seconds": seconds,
        "peak": vmhwm_bytes(),
        "n_cells": result.n_cells,
        "file_bytes": path.stat().st_size,
        "mean_score": float(result.scores.mean()),
    }


def case_cam(metric: str, n: int, n_cells: int) -> dict:
    from testprio.coverage import _greedy, cam_order  # noqa: F401

    scores = np.load(WORK / f"{metric}-{n}-scores.npy")
    width = (n_cells + 7) // 8
    packed = np.memmap(WORK / f"{metric}-{n}.bin", dtype=np.uint8, mode="r", shape=(n, width))
    started = time.process_time()
    order = cam_order(packed, scores, np.arange(n), n_cells=n_cells)
    seconds = time.process_time() - started
    picked = len(_greedy(packed, np.arange(n), n_cells))
    assert len(order) == n
    return {"seconds": seconds, "peak": vmhwm_bytes(), "picked": picked}


CASES = {"score": case_score, "cam": case_cam}


def in_child(case: str, **kwargs) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps({"case": case, **kwargs})],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- report -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.case:
        spec = json.loads(args.case)
        print(json.dumps(CASES[spec.pop("case")](**spec)))
        return 0

    sizes = (2_000, 4_000) if args.quick else (100_000, 300_000)
    ref = 1_000 if args.quick else 10_000
    WORK.mkdir(parents=True, exist_ok=True)
    rows, cam_rows = [], []
    try:
        for metric in METRICS:
            for n in sizes if metric in ("nac", "kmnc") else sizes[:1]:
                say(f"score {metric} n={n}")
                r = in_child("score", metric=metric, n=n, ref=ref)
                rows.append((metric, n, r))
            n = sizes[0]
            say(f"cam {metric} n={n}")
            cam_rows.append((metric, n, in_child("cam", metric=metric, n=n, n_cells=r["n_cells"])))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    units = " + ".join(str(u) for u in UNITS)
    lines = [
        "## Neuron coverage (bench/coverage_bench.py)",
        "",
        f"{stamp} · {platform.machine()} · {os.cpu_count()} cores · Python "
        f"{platform.python_version()} · layers {units} units · batches of {BATCH:,} · "
        f"reference {ref:,} samples · metric defaults",
        "",
        "| scoring | samples | cells/sample | CPU seconds | CPU s per 100k | packed cells file | "
        "peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for metric, n, r in rows:
        lines.append(
            f"| {metric} | {n:,} | {r['n_cells']:,} | {r['seconds']:.1f} | "
            f"{r['seconds'] * 100_000 / n:.1f} | {r['file_bytes'] / MIB:,.0f} MiB | "
            f"{r['peak'] / MIB:,.0f} MiB |"
        )
    lines += [
        "",
        "| CAM order | samples | picked greedily | CPU seconds | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for metric, n, r in cam_rows:
        lines.append(
            f"| {metric} | {n:,} | {r['picked']:,} | {r['seconds']:.1f} | "
            f"{r['peak'] / MIB:,.0f} MiB |"
        )
    small = {m: r["peak"] for m, n, r in rows if n == sizes[0]}
    large = {m: r["peak"] for m, n, r in rows if n == sizes[1]}
    growth = max(large[m] / small[m] for m in large)
    lines += [
        "",
        f"Scoring peak RSS grows at most {growth:.2f}x from {sizes[0]:,} to {sizes[1]:,} "
        "samples: cells stream to the packed file (cells/8 bytes per sample), so memory is "
        "one batch's dense cells. CAM reads the packed file through a memory map and keeps a "
        "cell-major packed copy (the file's size) in RAM; its peak RSS also counts the map's "
        "pages it touched (page cache).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick and not args.no_write:
        header = "\n" if RESULTS.exists() else "# Evaluation benchmarks\n\n"
        with open(RESULTS, "a") as handle:
            handle.write(header + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
