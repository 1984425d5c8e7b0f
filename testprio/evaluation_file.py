"""``evaluation.json``, what ``testprio evaluate`` writes in its run folder: its name and
version, where it is in a run (``evaluation_uri``), its reading across versions
(``read_evaluation``: a version 1 file reads as version 2 without the new figures), and its
content as tables (``evaluation_frames``, with the reference curves a fault-detection curve
is read against).

The evaluation (``testprio.evaluation``) writes it; the report (``testprio.report.data``: the
runs table and the Evaluation page) reads it. Both import this module, which loads neither
the evaluation stack (ONNX, the prioritizer families) nor the report.
"""

from __future__ import annotations

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.summary import degenerate_note

EVALUATION_NAME = "evaluation.json"
# 2: retrain[i].vs_random (paired difference to random, Holm), controls, comparison,
# winners by significance (below_random), prioritizers' degenerate, splits (per_split).
EVALUATION_VERSION = 2


def evaluation_uri(layout: RunLayout) -> str:
    return storage.join(layout.uri, EVALUATION_NAME)


def read_evaluation(evaluation: dict) -> dict:
    """``evaluation`` (evaluation.json's content) as version 2 reads it, the input unchanged.

    A version 1 file (written before the verdicts were tested) gets the version 2 fields
    empty: ``comparison`` and ``controls`` None, every ``retrain[i].vs_random`` and
    ``prioritizers[NAME].degenerate`` None, ``splits`` 1, ``winners[i].below_random`` [];
    its ``winners[i].by_accuracy`` keeps version 1's meaning (the best mean, untested), which
    ``comparison`` None tells apart. A newer version than this testprio knows is refused in
    one sentence.
    """
    version = evaluation.get("version", 1)
    if version == EVALUATION_VERSION:
        return evaluation
    if version != 1:
        raise TestprioError(
            f"evaluation.json version {version!r} is not one this testprio reads (1 to "
            f"{EVALUATION_VERSION}); update testprio to read it."
        )
    prioritizers = {
        name: {
            "degenerate": None,
            "distinct_values": None,
            "modal_share": None,
            **entry,
            **(
                {"retrain": [{**row, "vs_random": None} for row in entry["retrain"]]}
                if "retrain" in entry
                else {}
            ),
        }
        for name, entry in evaluation["prioritizers"].items()
    }
    return {
        **evaluation,
        "prioritizers": prioritizers,
        "winners": [{"below_random": [], **row} for row in evaluation["winners"]],
        "comparison": None,
        "controls": None,
        "splits": 1,
    }


# How the controls are named wherever they are shown.
CONTROL_TITLES = {
    "no_selection": "no selection (the training data alone, the same epochs)",
    "whole_pool": "whole pool labelled (the ceiling)",
}


def _names(names: list[str]) -> str:
    return ", ".join(names)


def verdicts(evaluation: dict) -> list[dict]:
    """Per budget: ``{budget, beats_random: [names], text}``, the sentence the CLI, the HTML
    page and the report app show: which prioritizers beat random's retrained accuracy
    significantly there (with the difference, its interval and Holm's p), or "no prioritizer
    beats random at b%"; those significantly below random; for a version 1 file, the best
    by mean accuracy, said to be untested."""
    evaluation = read_evaluation(evaluation)
    rows = []
    for winner in evaluation["winners"]:
        budget = winner["budget"]
        names = list(winner["by_accuracy"])
        if evaluation["comparison"] is None:
            text = (
                f"best by mean accuracy at {budget:g}%, untested (a version 1 file): "
                f"{_names(names) or 'none'}"
            )
        elif "random" not in evaluation["prioritizers"]:
            text = f"random was not evaluated: nothing is tested against it at {budget:g}%"
        elif not names:
            text = f"no prioritizer beats random at {budget:g}%"
        else:
            beaten = []
            for name in names:
                (row,) = [
                    row
                    for row in evaluation["prioritizers"][name]["retrain"]
                    if row["budget"] == budget
                ]
                test = row["vs_random"]
                beaten.append(
                    f"{name} {test['diff_mean']:+.4f} [{test['ci_low']:+.4f}, "
                    f"{test['ci_high']:+.4f}], p_holm {test['p_holm']:.2g}"
                )
            text = f"beats random at {budget:g}%: {'; '.join(beaten)}"
        if winner["below_random"]:
            text += f"; below random: {_names(winner['below_random'])}"
        rows.append({"budget": budget, "beats_random": names, "text": text})
    return rows


def controls_text(evaluation: dict) -> str:
    """The controls in one line (``whole pool labelled (the ceiling) 0.9200 [0.915, 0.925];
    no selection ... ``), '' for a file without them (version 1)."""
    controls = read_evaluation(evaluation)["controls"] or {}
    return "; ".join(
        f"{CONTROL_TITLES.get(name, name)} {figures['accuracy_mean']:.4f} "
        f"[{figures['ci_low']:.4f}, {figures['ci_high']:.4f}]"
        for name, figures in sorted(controls.items(), key=lambda item: item[0] != "whole_pool")
    )


def reference_curves(samples: int, faults: int) -> list[dict]:
    """The curves a prioritizer's is read against, as rows (order, inspected, found): what a
    random order finds on average (the diagonal) and the ideal order (every fault first:
    all found once ``faults / samples`` of the pool is inspected). Empty without faults."""
    if not samples or not faults:
        return []
    knee = min(1.0, faults / samples)
    points = {"random": [(0.0, 0.0), (1.0, 1.0)], "ideal": [(0.0, 0.0), (knee, 1.0), (1.0, 1.0)]}
    return [
        {"order": order, "inspected": x, "found": y}
        for order, line in points.items()
        for x, y in line
    ]


def evaluation_frames(evaluation: dict) -> dict[str, list[dict]]:
    """The evaluation as tables (lists of row dicts) for the report app and the charts.

    Any version :func:`read_evaluation` reads; a version 1 file has no ``vs_random`` or
    ``controls`` rows.

    - ``apfd``: prioritizer, apfd, apfd_normalized, degenerate, note (``degenerate_note``)
    - ``faults``: prioritizer, budget, found, of, share (found / of)
    - ``retrain``: prioritizer, budget, accuracy_mean, ci_low, ci_high, gain (over baseline)
    - ``vs_random``: prioritizer, budget, diff_mean, ci_low, ci_high, p, p_holm, significant
    - ``controls``: control (``no_selection``, ``whole_pool``), accuracy_mean, ci_low,
      ci_high, gain (over baseline)
    - ``baseline``: one row, accuracy (the model as given, on the test split)
    - ``winners``: budget, by_accuracy, accuracy_mean, below_random, by_faults, found
      (names joined)
    - ``curves``: prioritizer, inspected, found (shares; each prioritizer's fault-detection
      curve; none for a pool without faults or a file written before curves were kept)
    - ``curve_references``: order (``random``, ``ideal``), inspected, found
    """
    evaluation = read_evaluation(evaluation)
    baseline = evaluation["baseline_accuracy"]
    frames: dict[str, list[dict]] = {
        "apfd": [],
        "faults": [],
        "retrain": [],
        "vs_random": [],
        "controls": [
            {
                "control": name,
                **{key: figures[key] for key in ("accuracy_mean", "ci_low", "ci_high")},
                "gain": figures["accuracy_mean"] - baseline,
            }
            for name, figures in (evaluation["controls"] or {}).items()
        ],
        "baseline": [{"accuracy": baseline}],
        "winners": [],
        "curves": [],
        "curve_references": reference_curves(
            evaluation["samples"]["pool"], evaluation["pool"]["misclassified"]
        ),
    }
    for name, entry in evaluation["prioritizers"].items():
        score = entry["apfd"] or {}
        frames["apfd"].append(
            {
                "prioritizer": name,
                "apfd": score.get("raw"),
                "apfd_normalized": score.get("normalized"),
                "degenerate": entry.get("degenerate"),
                "note": degenerate_note(entry),
            }
        )
        for row in entry["faults"]:
            share = row["found"] / row["of"] if row["of"] else None
            frames["faults"].append(
                {
                    "prioritizer": name,
                    "budget": row["budget"],
                    "found": row["found"],
                    "of": row["of"],
                    "share": share,
                }
            )
        for inspected, found in entry.get("curve") or []:
            frames["curves"].append({"prioritizer": name, "inspected": inspected, "found": found})
        for row in entry.get("retrain", []):
            frames["retrain"].append(
                {
                    "prioritizer": name,
                    "budget": row["budget"],
                    "accuracy_mean": row["accuracy_mean"],
                    "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"],
                    "gain": row["accuracy_mean"] - baseline,
                }
            )
            if row.get("vs_random"):
                frames["vs_random"].append(
                    {"prioritizer": name, "budget": row["budget"], **row["vs_random"]}
                )
    for row in evaluation["winners"]:
        frames["winners"].append(
            {
                **row,
                "by_accuracy": ", ".join(row["by_accuracy"]),
                "below_random": ", ".join(row["below_random"]),
                "by_faults": ", ".join(row["by_faults"]),
            }
        )
    return frames
