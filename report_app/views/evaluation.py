"""The Evaluation page: one ``testprio evaluate`` run: the verdict per budget (which
prioritizers beat random, beside the controls: the ceiling), fault detection, retraining
gains with the paired differences to random, and every prioritizer's figures."""

from __future__ import annotations

import streamlit as st

from report_app.cached import evaluation_of
from report_app.views.attribution import attribution_section
from report_app.widgets import APFD_COLUMNS, chart, esc, pick_run, show_error, table_height
from testprio.errors import TestprioError
from testprio.report import charts
from testprio.report import data as reportdata

# What each retraining method (evaluation.json's retraining.method) trained, said by the app
# itself: a head-only retraining must never pass for a whole-model fine-tuning.
RETRAINING_SCOPE = {
    "onnx": "Head-only retraining: only the classifier head (the ONNX model's last linear "
    "layer) was retrained; every layer before it stayed frozen. The gains show what "
    "retraining the head alone gives, not what fine-tuning the whole model would.",
    "pytorch": "Whole-model retraining: every layer of the PyTorch model was fine-tuned.",
    "tensorflow": "Whole-model retraining: every layer of the Keras model was fine-tuned.",
}
# Prioritizers (random included) whose retraining gains share one chart; more get a panel each.
OVERLAID_MOST = 4
# Said under the budget-points chart of an evaluation written before curves were kept.
FAULT_POINTS_TEXT = (
    "This evaluation.json was written before evaluations kept each prioritizer's curve: it "
    "holds the faults found at each budget only, so this chart joins the evaluated budgets "
    "by straight lines; it is not the full fault-detection curve (evaluate again to get the "
    "curves). APFD (right) does cover each whole order."
)
CURVES_TEXT = (
    "Each line: the share of the pool's misclassified samples found while inspecting the "
    "pool in that prioritizer's order (random: the mean over seeds). Dashed: what a random "
    "order finds on average (the diagonal) and the ideal order (every fault first)."
)


def evaluation_page(root: str, rows: list[dict]) -> None:
    """One ``testprio evaluate`` run: which prioritizer finds the faults and pays off."""
    runs = [row["run_id"] for row in rows if row["kind"] == reportdata.EVALUATION_KIND]
    if not runs:
        st.title("Evaluation")
        st.info(f"No evaluation runs under {esc(root)} yet; start one with `testprio evaluate`.")
        return
    if st.query_params.get("run") in {row["run_id"] for row in rows} - set(runs):
        # A ranking run chosen on another page: start from the newest evaluation instead.
        del st.query_params["run"]
    run_id = pick_run(root, "Evaluation run", "run", runs)
    if run_id is None:
        return
    row = next(row for row in rows if row["run_id"] == run_id)
    st.title(f"Evaluation {esc(run_id)}")
    st.caption(
        esc(
            f"{row['status']} · model {row['model']} · pool {row['dataset']} · "
            f"started {row['started']} · {row['duration']}"
        )
    )
    if row["status"] == "failed":
        show_error(f"{row['failed_stage']} failed: {row['error']}")
        return
    try:
        view = evaluation_of(root, run_id)
    except TestprioError as exc:
        show_error(str(exc))
        return
    evaluation_summary(view)
    st.header("Best per budget")
    st.dataframe(
        view["winners"],
        hide_index=True,
        column_order=("budget", "verdict", "by_faults", "found"),
        column_config={
            "budget": st.column_config.NumberColumn("budget %", format="%g"),
            "verdict": st.column_config.TextColumn("retrained accuracy against random"),
            "by_faults": st.column_config.TextColumn("most faults found"),
            "found": st.column_config.NumberColumn("faults found", format="%g"),
        },
    )
    if view["controls_text"]:
        st.info(esc(f"Beside them: {view['controls_text']}."))
    st.caption(esc(verdict_caption(view)))
    st.header("Fault detection")
    left, right = st.columns(2)
    with left:
        fault_detection_chart(view)
    with right:
        if view["apfd"]:
            chart(charts.apfd_bars(view["apfd"]))
        else:
            st.write("The pool has no misclassified sample: APFD is undefined.")
    st.dataframe(
        view["faults_table"],
        hide_index=True,
        column_config={
            "prioritizer": st.column_config.TextColumn("faults found in the top"),
            **{
                f"{budget:g}%": st.column_config.NumberColumn(f"{budget:g}%", format="%g")
                for budget in view["budgets"]
            },
        },
    )
    st.caption(
        esc(
            f"Faults found among each prioritizer's top b% of the pool, of "
            f"{view['misclassified']:,}; random: the mean over seeds."
        )
    )
    retraining_section(view)
    st.header("Prioritizers")
    st.dataframe(
        view["prioritizers"],
        hide_index=True,
        height=table_height(len(view["prioritizers"]), most=20),
        column_config={
            **APFD_COLUMNS,
            "seconds": st.column_config.NumberColumn("seconds to order", format="%.2f"),
            "note": st.column_config.TextColumn("note"),
        },
    )
    if view["layers"]:
        layers = view["layers"]
        st.caption(
            esc(
                f"Hidden layers ({layers['chosen']}): coverage {', '.join(layers['coverage'])}; "
                f"surprise {layers['surprise']}."
            )
        )
    if view["attribution"] is not None:
        attribution_section(view["attribution"])
    timings = " · ".join(f"{name} {seconds:.1f} s" for name, seconds in view["timings"].items())
    if timings:
        st.caption(esc(f"Timings: {timings}"))


def fault_detection_chart(view: dict) -> None:
    """The prioritizers' whole fault-detection curves; an evaluation written before curves
    were kept gets the faults at its budgets, and says it is not the full curve."""
    if view["curves"] is None:
        chart(charts.faults_at_budgets(view["faults"]))
        st.caption(f"Dashed: what a random order finds on average. {FAULT_POINTS_TEXT}")
    elif view["curves"]:
        chart(charts.fault_detection_curves(view["curves"], view["curve_references"]))
        st.caption(CURVES_TEXT)
    else:
        st.write("The pool has no misclassified sample: there is no fault-detection curve.")


def verdict_caption(view: dict) -> str:
    """How the verdicts were decided (or that a version 1 file's were not tested)."""
    faults = (
        f"Most faults found: every prioritizer that ties; random competes like the rest; of "
        f"the pool's {view['misclassified']:,g} misclassified samples."
    )
    if not view["tested"]:
        return (
            "This evaluation.json is version 1, written before verdicts were tested: each "
            "budget names the best mean accuracy, which may be noise; evaluate again for "
            f"verdicts against random. {faults}"
        )
    return (
        "A prioritizer beats random at a budget when its retrained accuracy is above "
        f"random's, paired by {view['pairing']}, with a Holm-adjusted p below 0.05 (paired "
        "t-test; Holm over every prioritizer and budget of this evaluation). The ceiling "
        "(the whole pool labelled) bounds what any selection could add; no selection "
        f"shows what the extra epochs alone do. {faults}"
    )


def evaluation_summary(view: dict) -> None:
    columns = st.columns(4)
    columns[0].metric("baseline accuracy", f"{view['baseline_accuracy']:.4f}")
    columns[1].metric("pool accuracy", f"{view['pool_accuracy']:.4f}")
    columns[2].metric("misclassified in the pool", f"{view['misclassified']:,g}")
    best = view["best"]["apfd_normalized"]
    columns[3].metric("best normalized APFD", "-" if best is None else f"{best:.4f}")
    model, samples = view["model"], view["samples"]
    kind = " ".join(dict.fromkeys((model["framework"], model["format"])))  # "onnx", not "onnx onnx"
    budgets = ", ".join(f"{budget:g}%" for budget in view["budgets"])
    seeds = view["seeds"]
    splits = f" · {view['splits']} pool/test splits, pooled" if view["splits"] > 1 else ""
    st.caption(
        esc(
            f"Best prioritizer by normalized APFD: {view['best']['text'] or 'none'} · model "
            f"{model['name']} ({kind}, {model['classes']} classes) · pool "
            f"{samples['pool']:,} samples · test split {samples['test']:,} samples "
            f"({view['test_split']}) · training data {samples['train']:,} samples · "
            f"budgets {budgets} · {seeds} seed{'s' if seeds != 1 else ''}{splits}. Baseline "
            "accuracy: the model as given, on the test split."
        )
    )


def retraining_section(view: dict) -> None:
    retraining = view["retraining"]
    st.header("Retraining")
    scope = RETRAINING_SCOPE.get(retraining["method"])
    epochs = retraining["epochs"]
    if scope:
        st.info(scope)
    st.caption(
        esc(
            f"Retraining method {retraining['method']}: {retraining['description']}. "
            f"{epochs} epoch{'s' if epochs != 1 else ''}, batch size "
            f"{retraining['batch_size']}, learning rate {retraining['learning_rate']}; the "
            "training data plus each prioritizer's top b% with their labels, once per seed."
        )
    )
    if len({row["prioritizer"] for row in view["retrain"]}) > OVERLAID_MOST:
        # Many lines with their bands on one chart hide each other: a panel each.
        chart(charts.retraining_gain_panels(view["retrain"], view["vs_random"]))
        st.caption(
            esc(
                "Accuracy after retraining minus the baseline accuracy (dotted at 0) for each "
                "prioritizer, with random's dashed in every panel; band: the interval over "
                f"seeds ({retraining['interval']}); a filled point: it beats random at that "
                "budget (see Against random)."
            )
        )
    else:
        left, right = st.columns(2)
        with left:
            chart(charts.retraining_gain(view["retrain"]))
        with right:
            st.caption(
                esc(
                    "Accuracy after retraining minus the baseline accuracy (dashed at 0); "
                    f"band: the interval over seeds ({retraining['interval']})."
                )
            )
    st.dataframe(
        view["retrain"],
        hide_index=True,
        column_order=("prioritizer", "budget", "accuracy_mean", "ci_low", "ci_high", "gain"),
        column_config={
            "budget": st.column_config.NumberColumn("budget %", format="%g"),
            "accuracy_mean": st.column_config.NumberColumn("accuracy (mean)", format="%.4f"),
            "ci_low": st.column_config.NumberColumn("95% CI low", format="%.4f"),
            "ci_high": st.column_config.NumberColumn("95% CI high", format="%.4f"),
            "gain": st.column_config.NumberColumn("gain", format="%+.4f"),
        },
    )
    if view["vs_random"]:
        st.subheader("Against random")
        st.dataframe(
            view["vs_random"],
            hide_index=True,
            height=table_height(len(view["vs_random"]), most=20),
            column_config={
                "budget": st.column_config.NumberColumn("budget %", format="%g"),
                "diff_mean": st.column_config.NumberColumn("difference", format="%+.4f"),
                "ci_low": st.column_config.NumberColumn("95% CI low", format="%+.4f"),
                "ci_high": st.column_config.NumberColumn("95% CI high", format="%+.4f"),
                "p": st.column_config.NumberColumn("p", format="%.4f"),
                "p_holm": st.column_config.NumberColumn("p (Holm)", format="%.4f"),
                "significant": st.column_config.CheckboxColumn("significant"),
            },
        )
        st.caption(
            esc(
                f"Accuracy minus random's, paired by {view['pairing']}: the mean difference, "
                "its 95% t-interval, the paired t-test's two-sided p and Holm's adjustment "
                "over every row; significant: p (Holm) below 0.05."
            )
        )
    if view["controls"]:
        st.subheader("Controls")
        st.dataframe(
            view["controls"],
            hide_index=True,
            column_config={
                "accuracy_mean": st.column_config.NumberColumn("accuracy (mean)", format="%.4f"),
                "ci_low": st.column_config.NumberColumn("95% CI low", format="%.4f"),
                "ci_high": st.column_config.NumberColumn("95% CI high", format="%.4f"),
                "gain": st.column_config.NumberColumn("gain", format="%+.4f"),
            },
        )
        st.caption(
            "The same fine-tuning with the same seeds: on the training data alone (what the "
            "extra epochs do without any selection), and on the training data plus the whole "
            "pool labelled (the ceiling of any selection)."
        )
