"""Benchmarks of surprise adequacy: fit against a 50k-sample reference, and LSA, DSA and MDSA
scoring cost per 100k pool samples, with peak RSS.

Run ``python bench/surprise_bench.py`` (full sizes: 50k reference, 100k pool, 128 and 512
units; several minutes on 2 cores) or with ``--quick`` (tiny sizes, to check the script
works). It prints a Markdown section and appends it to ``bench/RESULTS-evaluation.md``
(shared with the coverage bench).

Activations: float32, post-ReLU-like ``max(0, centre[class] + normal)``, 10 classes of equal
size, drawn seeded. Each case runs in a fresh child process (peak = the child's ``VmHWM``):

* fit: ``fit_reference`` for one metric (DSA's fit is the chunked nearest-other-class search,
  ``O(M^2 units)``); the fitted reference is written with ``to_bytes`` for the score cases.
* score: the reference is read back with ``from_bytes``; the pool is drawn and scored in
  shards of 10k samples (as the score stage does), drawing time subtracted.

Scratch files go to a ``surprise`` folder in the git-ignored ``bench/work`` and are deleted at
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
WORK = BENCH_DIR / "work" / "surprise"
RESULTS = BENCH_DIR / "RESULTS-evaluation.md"
SEED = 20261125
MIB = 1024**2
CLASSES = 10
SHARD = 10_000


def say(message: str) -> None:
    print(f"[surprise-bench] {message}", file=sys.stderr, flush=True)


def vmhwm_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def draw(n: int, units: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded activations ``(n, units)`` float32 and their classes."""
    centres = np.random.default_rng(SEED).normal(size=(CLASSES, units)) * 1.5
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, CLASSES, n)
    acts = np.maximum(0.0, centres[classes] + rng.normal(size=(n, units))).astype(np.float32)
    return acts, classes


def case_fit(metric: str, units: int, reference: int) -> dict:
    from testprio.surprise import fit_reference

    acts, classes = draw(reference, units, seed=1)
    start = time.perf_counter()
    fitted = fit_reference(acts, classes, metrics=(metric,))
    seconds = time.perf_counter() - start
    data = fitted.to_bytes()
    (WORK / f"ref-{metric}-{units}.npz").write_bytes(data)
    return {"seconds": seconds, "bytes": len(data), "peak_rss": vmhwm_bytes()}


def case_score(metric: str, units: int, pool: int, precision: str) -> dict:
    from testprio.surprise import SURPRISE_METRICS, SurpriseReference

    reference = SurpriseReference.from_bytes((WORK / f"ref-{metric}-{units}.npz").read_bytes())
    options = {"precision": precision} if metric == "dsa" else {}
    scoring = drawing = 0.0
    for shard, start in enumerate(range(0, pool, SHARD)):
        tick = time.perf_counter()
        acts, classes = draw(min(SHARD, pool - start), units, seed=100 + shard)
        tock = time.perf_counter()
        SURPRISE_METRICS[metric](reference, acts, classes, **options)
        scoring += time.perf_counter() - tock
        drawing += tock - tick
    return {"seconds": scoring, "drawing": drawing, "peak_rss": vmhwm_bytes()}


def run_child(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(BENCH_DIR.parent))
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, checks the script")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args()
    if args.child:
        kind, metric, units, size, *rest = args.child
        result = (
            case_fit(metric, int(units), int(size))
            if kind == "fit"
            else case_score(metric, int(units), int(size), rest[0])
        )
        print(json.dumps(result))
        return

    reference, pool, unit_list = (
        (2_000, 5_000, (16, 32))
        if args.quick
        else (
            50_000,
            100_000,
            (128, 512),
        )
    )
    WORK.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    rows = []
    try:
        for units in unit_list:
            for metric in ("dsa", "lsa", "mdsa"):
                say(f"fit {metric} units={units} reference={reference}")
                fit = run_child("fit", metric, str(units), str(reference))
                precisions = ("float64", "float32") if metric == "dsa" else ("float64",)
                for precision in precisions:
                    say(f"score {metric} {precision} units={units} pool={pool}")
                    score = run_child("score", metric, str(units), str(pool), precision)
                    rows.append((units, metric, precision, fit, score))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)

    per = 100_000 / pool
    lines = [
        f"## Surprise adequacy ({'quick' if args.quick else 'full'} sizes)",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, `python bench/surprise_bench.py"
        f"{' --quick' if args.quick else ''}`, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"numpy {np.__version__}, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}. "
        f"Reference {reference:,} samples ({CLASSES} classes), pool "
        f"{pool:,} scored in shards of {SHARD:,}, float32 activations; each case in a fresh "
        "process, peak = its VmHWM.",
        "",
        "| units | metric | search | fit s | reference bytes | score s per 100k | "
        "samples/s | peak RSS MiB (fit / score) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for units, metric, precision, fit, score in rows:
        lines.append(
            f"| {units} | {metric} | {precision if metric == 'dsa' else '-'} | "
            f"{fit['seconds']:.1f} | {fit['bytes'] / MIB:.1f} MiB | "
            f"{score['seconds'] * per:.1f} | {pool / score['seconds']:,.0f} | "
            f"{fit['peak_rss'] / MIB:.0f} / {score['peak_rss'] / MIB:.0f} |"
        )
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_append:
        with RESULTS.open("a") as handle:
            handle.write("\n" + section)


if __name__ == "__main__":
    main()
