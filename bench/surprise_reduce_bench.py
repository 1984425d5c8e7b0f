"""Surprise adequacy on a convolutional layer: the feature map averaged over space (``mean``,
as SADL does) or flattened whole (``flatten``), compared by APFD and cost.

Two small CNNs, each trained here (seeded, CPU):

* ``digits-8x8``: the demo's CNN (demo/train_digits.py) on scikit-learn's 8x8 digits, trained
  as ``demo/run_eval_demo.py --experiment digits`` trains it (40% reference, 30% pool);
  surprise reads its last convolution's ReLU (32 x 8 x 8), as ``--surprise-layer`` names it.
* ``mnist-28x28``: the MNIST CNN of demo/mnist.py (500 reference, 2,500 pool); surprise reads
  its default layer, the last ReLU (16 x 8 x 8).

For each model, reduction and metric (lsa, dsa, mdsa): the APFD of the order (raw and
normalized, ties by sample id), the fit and scoring seconds, the peak of Python-tracked memory
during fit + scoring (tracemalloc: NumPy's arrays) and the fitted reference's size. The
activations are computed once per model (not timed).

``python bench/surprise_reduce_bench.py`` prints the table and writes it into
docs/explanation/prioritizers.md between the ``surprise-reduce`` markers; ``--no-docs`` only
prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DOCS = ROOT / "docs" / "explanation" / "prioritizers.md"
START, END = "<!-- surprise-reduce:start -->", "<!-- surprise-reduce:end -->"
MIB = 1024**2


def _feature_maps(model, layer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``layer``'s output ``(N, C, H, W)`` and the predicted classes, by a forward hook."""
    import torch

    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out.numpy()))
    try:
        with torch.no_grad():
            logits = model.eval()(torch.from_numpy(x)).numpy()
    finally:
        handle.remove()
    return captured[0], logits.argmax(axis=1)


def digits_case(seed: int = 0) -> dict:
    from demo.run_eval_demo import DIGITS_EPOCHS, digits_splits
    from demo.train_digits import build_model, set_determinism, train

    splits = digits_splits(seed)
    set_determinism(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        model = train(build_model(), *splits["train"], epochs=DIGITS_EPOCHS, seed=seed)
    return _case("digits-8x8 CNN, last conv ReLU", model, model[3], splits)


def mnist_case(seed: int = 0) -> dict:
    from demo.mnist import EPOCHS, build_cnn, mnist_splits
    from demo.train_digits import set_determinism, train

    splits = mnist_splits(seed)
    set_determinism(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        model = train(build_cnn(), *splits["train"], epochs=EPOCHS, seed=seed)
    return _case("MNIST 28x28 CNN, last ReLU (default layer)", model, model[4], splits)


def _case(name: str, model, layer, splits: dict) -> dict:
    train_maps, train_pred = _feature_maps(model, layer, splits["train"][0])
    pool_maps, pool_pred = _feature_maps(model, layer, splits["pool"][0])
    return {
        "name": name,
        "shape": tuple(train_maps.shape[1:]),
        "train": (train_maps, train_pred),
        "pool": (pool_maps, pool_pred),
        "misclassified": pool_pred != splits["pool"][1],
    }


def measure(case: dict, reduce: str, metric: str) -> dict:
    from testprio import surprise
    from testprio.activations import flatten_activation
    from testprio.summary import apfd

    ref = flatten_activation(case["train"][0], reduce=reduce)
    pool = flatten_activation(case["pool"][0], reduce=reduce)
    tracemalloc.start()
    began = time.perf_counter()
    reference = surprise.fit_reference(ref, case["train"][1], metrics=(metric,))
    fitted = time.perf_counter()
    scores = surprise.SURPRISE_METRICS[metric](reference, pool, case["pool"][1])
    scored = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    order = np.lexsort((np.arange(len(scores)), -scores))
    figures = apfd(case["misclassified"][order])
    return {
        "units": ref.shape[1],
        "apfd": figures["raw"],
        "normalized": figures["normalized"],
        "fit_s": fitted - began,
        "score_s": scored - fitted,
        "peak_mib": peak / MIB,
        "reference_mib": len(reference.to_bytes()) / MIB,
    }


def table(cases: list[dict]) -> str:
    rows = [
        "| model, layer | reduce | units | metric | APFD | norm. | fit s | score s "
        "| peak MiB | reference MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        samples = f"{len(case['train'][1]):,} reference, {len(case['pool'][1]):,} pool"
        label = f"{case['name']} {'x'.join(map(str, case['shape']))} ({samples})"
        for reduce in ("mean", "flatten"):
            for metric in ("lsa", "dsa", "mdsa"):
                m = measure(case, reduce, metric)
                rows.append(
                    f"| {label} | {reduce} | {m['units']:,} | {metric} | {m['apfd']:.3f} "
                    f"| {m['normalized']:.3f} | {m['fit_s']:.2f} | {m['score_s']:.2f} "
                    f"| {m['peak_mib']:.1f} | {m['reference_mib']:.2f} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"numpy {np.__version__}, load average {load:.1f}"
    )


def write_docs(text: str, path: Path = DOCS) -> None:
    content = path.read_text(encoding="utf-8")
    before, start, rest = content.partition(START + "\n")
    _, end, after = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{path} lacks the {START} / {END} markers.")
    path.write_text(before + start + text + "\n" + end + after, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args(argv)
    began = time.time()
    cases = [digits_case(), mnist_case()]
    body = table(cases)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"{stamp}, `python bench/surprise_reduce_bench.py` ({time.time() - began:.0f} s), "
        f"{machine()}. APFD of the order by each score, most surprising first; peak: "
        "tracemalloc's peak over fit + scoring.\n\n" + body
    )
    print(text)
    if not args.no_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
