"""The report's charts as Altair specifications, from rows shaped by ``testprio.report.data``.

The Streamlit app shows them interactively (hover shows values; the histogram zooms along
its x axis); the report stage renders the same charts to static SVG with ``vl-convert``,
offline and without scripts, so that ``report.html`` works inside the Kubeflow UI's
sandboxed iframe. Data is inlined into each spec, never fetched.
"""

from __future__ import annotations

import altair as alt

WIDTH = 520
HEIGHT = 240
ORDER_COLORS = {"ranking": "#d62728", "random": "#7f7f7f", "ideal": "#2ca02c"}
# The dashed reference orders as their legends name them (a Vega expression).
REFERENCE_LABELS = (
    "datum.label == 'random' ? 'random order, expected' : "
    "datum.label == 'ideal' ? 'ideal order' : datum.label"
)


def _height_for_legends(*entries: int) -> int:
    """A chart's height that shows every entry of its legends (stacked on the right, about
    24 pixels an entry and 40 a title): the app fits a chart into its height, and a legend
    taller than that is cut off at the bottom."""
    return max(HEIGHT, sum(24 * count + 40 for count in entries))


def _data(rows: list[dict]) -> alt.Data:
    return alt.Data(values=rows)


def _by_class(title: str = "class") -> alt.Y:
    return alt.Y(
        "class:N",
        sort=alt.EncodingSortField("class_index"),
        title=title,
        axis=alt.Axis(labelOverlap=False),  # one band per class: every label fits
    )


def _class_height(rows: list[dict]):
    """One 18-pixel band per class (every label readable) up to 40 classes, then fixed."""
    classes = len({row["class"] for row in rows})
    return alt.Step(18) if classes <= 40 else 2 * HEIGHT


def score_histogram(rows: list[dict], metric: str) -> alt.Chart:
    """Samples per score bin (rows of ``reportdata.score_histogram``); zooms along x."""
    return (
        alt.Chart(_data(rows), title=f"Samples per {metric} bin")
        .mark_bar(color="#4c78a8")
        .encode(
            x=alt.X("bin_start:Q", title=f"{metric} (higher = less sure)"),
            x2="bin_end:Q",
            y=alt.Y("samples:Q", title="samples"),
            y2=alt.datum(0),
            tooltip=[
                alt.Tooltip("bin_start:Q", format=".3f", title="from"),
                alt.Tooltip("bin_end:Q", format=".3f", title="to"),
                alt.Tooltip("samples:Q", format=","),
            ],
        )
        .properties(width=WIDTH, height=HEIGHT)
        .interactive(bind_y=False)
    )


def class_score_heatmap(rows: list[dict], metric: str) -> alt.Chart:
    """Predicted class x score bin counts (rows of ``reportdata.class_score_heatmap``)."""
    return (
        alt.Chart(_data(rows), title=f"Predicted class x {metric}")
        .mark_rect()
        .encode(
            x=alt.X("bin_start:Q", title=metric),
            x2="bin_end:Q",
            y=_by_class("predicted class"),
            color=alt.condition(
                alt.datum.samples > 0,
                alt.Color("samples:Q", scale=alt.Scale(scheme="blues"), title="samples"),
                alt.value("#ffffff"),
            ),
            tooltip=[
                alt.Tooltip("class:N", title="predicted"),
                alt.Tooltip("bin_start:Q", format=".3f", title="from"),
                alt.Tooltip("bin_end:Q", format=".3f", title="to"),
                alt.Tooltip("samples:Q", format=","),
            ],
        )
        .properties(width=WIDTH, height=_class_height(rows))
    )


def per_class_mean(rows: list[dict], metric: str) -> alt.Chart:
    """Mean score per predicted class (rows of ``reportdata.per_class_means``)."""
    return (
        alt.Chart(_data(rows), title=f"Mean {metric} per predicted class")
        .mark_bar(color="#f58518")
        .encode(
            x=alt.X("mean:Q", title=f"mean {metric}"),
            y=_by_class("predicted class"),
            tooltip=[
                alt.Tooltip("class:N", title="predicted"),
                alt.Tooltip("mean:Q", format=".4f"),
                alt.Tooltip("predicted:Q", format=",", title="samples"),
            ],
        )
        .properties(width=WIDTH, height=_class_height(rows))
    )


def per_class_accuracy(rows: list[dict]) -> alt.Chart:
    """Accuracy per true class (rows of ``reportdata.per_class_accuracy``)."""
    return (
        alt.Chart(_data(rows), title="Accuracy per true class")
        .mark_bar(color="#54a24b")
        .encode(
            x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy"),
            y=_by_class("true class"),
            tooltip=[alt.Tooltip("class:N"), alt.Tooltip("accuracy:Q", format=".4f")],
        )
        .properties(width=WIDTH, height=_class_height(rows))
    )


def stage_timeline(rows: list[dict]) -> alt.Chart:
    """Gantt chart of stage (and per-shard score) start and end (``reportdata.stage_timeline``)."""
    return (
        alt.Chart(_data(rows), title="Stage timeline")
        .mark_bar()
        .encode(
            x=alt.X("start_s:Q", title="seconds since the run started"),
            x2="end_s:Q",
            y=alt.Y("stage:N", sort=None, title=None),
            color=alt.Color("group:N", title="stage"),
            tooltip=[
                alt.Tooltip("stage:N"),
                alt.Tooltip("seconds:Q", format=".3f"),
                alt.Tooltip("rows:Q", format=","),
                alt.Tooltip("start:N", title="start (UTC)"),
                alt.Tooltip("end:N", title="end (UTC)"),
                alt.Tooltip("detail:N", title="shards"),  # aggregated score bar only
            ],
        )
        .properties(width=WIDTH, height=alt.Step(20))
    )


def fault_curve(rows: list[dict]) -> alt.Chart:
    """Share of misclassified inputs found vs share inspected (``reportdata.fault_curve_rows``)."""
    return (
        alt.Chart(_data(rows), title="Mistakes found vs inputs inspected")
        .mark_line()
        .encode(
            x=alt.X("inspected:Q", axis=alt.Axis(format="%"), title="share of inputs inspected"),
            y=alt.Y("found:Q", axis=alt.Axis(format="%"), title="share of mistakes found"),
            color=alt.Color(
                "order:N",
                scale=alt.Scale(domain=list(ORDER_COLORS), range=list(ORDER_COLORS.values())),
                title="order",
            ),
            strokeDash=alt.condition(
                alt.datum.order == "ranking", alt.value([1, 0]), alt.value([4, 3])
            ),
            tooltip=[
                alt.Tooltip("order:N"),
                alt.Tooltip("inspected:Q", format=".1%"),
                alt.Tooltip("found:Q", format=".1%"),
            ],
        )
        .properties(width=WIDTH, height=HEIGHT)
        .interactive()
    )


def confusion_matrix(matrix: list[list[int]], labels: list[str]) -> alt.Chart:
    """True class (rows) x predicted class (columns) counts."""
    rows = [
        {"true": labels[t], "predicted": labels[p], "t": t, "p": p, "samples": count}
        for t, counts in enumerate(matrix)
        for p, count in enumerate(counts)
    ]
    base = alt.Chart(_data(rows), title="Confusion matrix").encode(
        x=alt.X("predicted:N", sort=alt.EncodingSortField("p"), title="predicted class"),
        y=alt.Y("true:N", sort=alt.EncodingSortField("t"), title="true class"),
    )
    cells = base.mark_rect().encode(
        color=alt.condition(
            alt.datum.samples > 0,
            alt.Color("samples:Q", scale=alt.Scale(scheme="greens", type="symlog")),
            alt.value("#ffffff"),
        ),
        tooltip=["true:N", "predicted:N", alt.Tooltip("samples:Q", format=",")],
    )
    text = base.mark_text(fontSize=9).encode(text=alt.Text("samples:Q", format=","))
    return (cells + text).properties(width=HEIGHT + 80, height=HEIGHT + 80)


def rank_scatter(rows: list[dict], a: str, b: str) -> alt.Chart:
    """Rank in run ``a`` vs rank in run ``b`` (rows of ``compare_runs``' ``scatter``)."""
    return (
        alt.Chart(_data(rows), title="Rank in each run (a sample of the shared inputs)")
        .mark_circle(size=12, opacity=0.5)
        .encode(
            x=alt.X("rank_a:Q", title=f"rank in {a}"),
            y=alt.Y("rank_b:Q", title=f"rank in {b}"),
            tooltip=["sample_id:Q", "rank_a:Q", "rank_b:Q"],
        )
        .properties(width=HEIGHT + 80, height=HEIGHT + 80)
        .interactive()
    )


def top_k_overlap(rows: list[dict]) -> alt.Chart:
    """Share of the top-k that two runs have in common, for each k (``compare_runs``)."""
    return (
        alt.Chart(_data(rows), title="Top-k overlap")
        .mark_line(point=True)
        .encode(
            x=alt.X("k:Q", scale=alt.Scale(type="log"), title="k (top inputs of each run)"),
            y=alt.Y("overlap:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            tooltip=[
                alt.Tooltip("k:Q", format=","),
                alt.Tooltip("shared:Q", format=","),
                alt.Tooltip("overlap:Q", format=".1%"),
            ],
        )
        .properties(width=HEIGHT + 80, height=HEIGHT)
    )


def probabilities(rows: list[dict]) -> alt.Chart:
    """One sample's class probabilities (``reportdata.probability_rows``); the predicted
    class in red."""
    return (
        alt.Chart(_data(rows), title="Class probabilities")
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title="probability"),
            y=_by_class("class"),
            color=alt.condition(
                alt.datum.predicted, alt.value(ORDER_COLORS["ranking"]), alt.value("#4c78a8")
            ),
            tooltip=[alt.Tooltip("class:N"), alt.Tooltip("probability:Q", format=".4f")],
        )
        .properties(width=WIDTH, height=_class_height(rows))
    )


def fault_curves(rows: list[dict]) -> alt.Chart:
    """Share of mistakes found vs share inspected, one line per run
    (``reportdata.fault_curves_rows``), over the dashed diagonal of a random order."""
    lines = (
        alt.Chart(_data(rows))
        .mark_line()
        .encode(
            x=alt.X("inspected:Q", axis=alt.Axis(format="%"), title="share of ranking inspected"),
            y=alt.Y("found:Q", axis=alt.Axis(format="%"), title="share of mistakes found"),
            color=alt.Color("run:N", title="run"),
            tooltip=[
                alt.Tooltip("run:N"),
                alt.Tooltip("inspected:Q", format=".1%"),
                alt.Tooltip("found:Q", format=".1%"),
            ],
        )
    )
    diagonal = (
        alt.Chart(_data([{"inspected": 0.0, "found": 0.0}, {"inspected": 1.0, "found": 1.0}]))
        .mark_line(color=ORDER_COLORS["random"], strokeDash=[4, 3])
        .encode(x="inspected:Q", y="found:Q")
    )
    return (diagonal + lines).properties(
        title="Mistakes found vs ranking inspected (dashed: random order)",
        width=WIDTH,
        height=HEIGHT,
    )


def to_svg(chart: alt.TopLevelMixin) -> str:
    """The chart as one static SVG element (data inline; external loads refused)."""
    import vl_convert

    return vl_convert.vegalite_to_svg(chart.to_dict(), allowed_base_urls=[])


# --- evaluation (rows of ``testprio.evaluation_file.evaluation_frames``) -------------------


def retrained_accuracy(rows: list[dict], baseline: float) -> alt.LayerChart:
    """Mean test accuracy after retraining per budget and prioritizer, with the 95% CI as
    error bars and the un-retrained model's accuracy as a dashed rule."""
    base = alt.Chart(_data(rows), title="Test accuracy after retraining on the top b%")
    color = alt.Color("prioritizer:N", title="prioritizer")
    x = alt.X("budget:O", title="budget (% of the pool labelled)")
    lines = base.mark_line(point=True).encode(
        x=x,
        y=alt.Y("accuracy_mean:Q", title="test accuracy", scale=alt.Scale(zero=False)),
        color=color,
        tooltip=[
            "prioritizer:N",
            alt.Tooltip("budget:Q", title="budget %"),
            alt.Tooltip("accuracy_mean:Q", format=".4f", title="mean"),
            alt.Tooltip("ci_low:Q", format=".4f", title="95% CI low"),
            alt.Tooltip("ci_high:Q", format=".4f", title="95% CI high"),
        ],
    )
    bars = base.mark_errorbar().encode(x=x, y="ci_low:Q", y2="ci_high:Q", color=color)
    rule = (
        alt.Chart(_data([{"baseline": baseline}]))
        .mark_rule(strokeDash=[4, 4], color="#333333")
        .encode(y="baseline:Q", tooltip=[alt.Tooltip("baseline:Q", format=".4f")])
    )
    return alt.layer(lines, bars, rule).properties(width=WIDTH, height=HEIGHT)


def faults_found(rows: list[dict]) -> alt.Chart:
    """Share of the pool's misclassified samples in each prioritizer's top b%."""
    return (
        alt.Chart(_data(rows), title="Faults found in the top b% of the pool")
        .mark_line(point=True)
        .encode(
            x=alt.X("budget:O", title="budget (% of the pool)"),
            y=alt.Y("share:Q", title="share of all faults found", axis=alt.Axis(format="%")),
            color=alt.Color("prioritizer:N"),
            tooltip=["prioritizer:N", "budget:Q", "found:Q", "of:Q"],
        )
        .properties(width=WIDTH, height=HEIGHT)
    )


def apfd_bars(rows: list[dict]) -> alt.Chart:
    """Normalized APFD per prioritizer (1: every fault first; about 0.5: random)."""
    return (
        alt.Chart(_data(rows), title="APFD (normalized)")
        .mark_bar(color="#4c78a8")
        .encode(
            x=alt.X("apfd_normalized:Q", title="normalized APFD", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("prioritizer:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False)),
            tooltip=[
                "prioritizer:N",
                alt.Tooltip("apfd:Q", format=".4f", title="APFD"),
                alt.Tooltip("apfd_normalized:Q", format=".4f", title="normalized"),
            ],
        )
        .properties(width=WIDTH, height=alt.Step(18))
    )


def fault_detection_curves(rows: list[dict], references: list[dict]) -> alt.LayerChart:
    """Each prioritizer's fault-detection curve over the whole pool, one line per prioritizer
    (``evaluation_frames``' ``curves``: prioritizer, inspected, found), over the dashed
    curves of a random order (the diagonal) and the ideal order (``curve_references``)."""
    x = alt.X("inspected:Q", axis=alt.Axis(format="%"), title="share of the pool inspected")
    y = alt.Y("found:Q", axis=alt.Axis(format="%"), title="share of all faults found")
    dashed = (
        alt.Chart(_data(references))
        .mark_line(strokeDash=[4, 3])
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "order:N",
                scale=alt.Scale(
                    domain=["random", "ideal"],
                    range=[ORDER_COLORS["random"], ORDER_COLORS["ideal"]],
                ),
                title="reference (dashed)",
                # Named apart from the random prioritizer's own line (the mean over seeds).
                legend=alt.Legend(symbolDash=[4, 3], labelExpr=REFERENCE_LABELS),
            ),
        )
    )
    lines = (
        alt.Chart(_data(rows))
        .mark_line()
        .encode(
            x=x,
            y=y,
            color=alt.Color("prioritizer:N", title="prioritizer"),
            tooltip=[
                "prioritizer:N",
                alt.Tooltip("inspected:Q", format=".1%", title="inspected"),
                alt.Tooltip("found:Q", format=".1%", title="faults found"),
            ],
        )
    )
    # Two colour scales, two legends: the references never take a prioritizer's colour.
    prioritizers = len({row["prioritizer"] for row in rows})
    return (
        alt.layer(lines, dashed)
        .resolve_scale(color="independent")
        .properties(
            title="Fault-detection curves",
            width=WIDTH,
            height=_height_for_legends(prioritizers, 2),
        )
    )


def faults_at_budgets(rows: list[dict]) -> alt.LayerChart:
    """Share of the pool's faults in each prioritizer's top b%, at the evaluated budgets only
    (``reportdata.evaluation_view``'s ``faults``): points joined by straight lines over the
    share of the pool inspected, not each order's full curve (evaluation.json keeps no
    orders). Dashed: what a random order finds on average (the share inspected)."""
    top = max((row["budget"] for row in rows), default=100.0)
    x = alt.X("budget:Q", title="share of the pool inspected (budget, %)")
    lines = (
        alt.Chart(_data(rows))
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("share:Q", title="share of all faults found", axis=alt.Axis(format="%")),
            color=alt.Color("prioritizer:N", title="prioritizer"),
            tooltip=[
                "prioritizer:N",
                alt.Tooltip("budget:Q", title="budget %"),
                alt.Tooltip("selected:Q", title="inspected"),
                alt.Tooltip("found:Q", title="faults found"),
                alt.Tooltip("of:Q", title="of"),
                alt.Tooltip("share:Q", format=".1%", title="share found"),
            ],
        )
    )
    reference = [{"budget": 0.0, "share": 0.0}, {"budget": top, "share": top / 100}]
    expected = (
        alt.Chart(_data([{**point, "order": "random"} for point in reference]))
        .mark_line(strokeDash=[4, 3])
        .encode(
            x="budget:Q",
            y="share:Q",
            color=alt.Color(
                "order:N",
                scale=alt.Scale(domain=["random"], range=[ORDER_COLORS["random"]]),
                title="reference (dashed)",
                legend=alt.Legend(symbolDash=[4, 3], labelExpr=REFERENCE_LABELS),
            ),
        )
    )
    # Two colour scales, two legends: the reference never takes a prioritizer's colour.
    return (
        alt.layer(lines, expected)
        .resolve_scale(color="independent")
        .properties(
            title="Faults found at each budget",
            width=WIDTH,
            height=_height_for_legends(len({row["prioritizer"] for row in rows}), 1),
        )
    )


def retraining_gain(rows: list[dict]) -> alt.LayerChart:
    """Test accuracy gained over the model as given after retraining on the top b%, one line
    per prioritizer with its 95% interval over seeds as a band (``evaluation_view``'s
    ``retrain``); the dashed rule at 0 is the baseline."""
    color = alt.Color("prioritizer:N", title="prioritizer")
    x = alt.X("budget:Q", title="budget (% of the pool labelled)")
    base = alt.Chart(_data(rows))
    band = base.mark_area(opacity=0.18).encode(
        x=x,
        y=alt.Y("gain_low:Q", title="accuracy gain"),
        y2="gain_high:Q",
        color=color,
    )
    lines = base.mark_line(point=True).encode(
        x=x,
        y="gain:Q",
        color=color,
        tooltip=[
            "prioritizer:N",
            alt.Tooltip("budget:Q", title="budget %"),
            alt.Tooltip("gain:Q", format="+.4f", title="gain"),
            alt.Tooltip("accuracy_mean:Q", format=".4f", title="accuracy (mean)"),
            alt.Tooltip("ci_low:Q", format=".4f", title="95% CI low"),
            alt.Tooltip("ci_high:Q", format=".4f", title="95% CI high"),
        ],
    )
    zero = (
        alt.Chart(_data([{"gain": 0.0}]))
        .mark_rule(strokeDash=[4, 4], color="#333333")
        .encode(y="gain:Q")
    )
    # Lines first: the shared legend takes their full colours, not the pale band's.
    return alt.layer(lines, band, zero).properties(
        title="Accuracy gain after retraining",
        width=WIDTH,
        height=HEIGHT,
    )


# The lines of each retraining panel, as the legend names them.
OWN_LINE, RANDOM_LINE = "this prioritizer", "random (in every panel)"
BEATS, NOT_SHOWN = "beats random (Holm p < 0.05)", "not shown to beat random"
PANEL_WIDTH, PANEL_HEIGHT = 190, 110


def retraining_gain_panels(
    rows: list[dict], vs_random: list[dict] | None = None, *, columns: int = 4
) -> alt.FacetChart:
    """The accuracy gain after retraining as small multiples, readable with many
    prioritizers: one panel per prioritizer (``evaluation_view``'s ``retrain`` rows) with its
    gain and 95% band, random's gain dashed in every panel to compare against, and the
    baseline (0) as a rule. With ``vs_random`` rows (prioritizer, budget, significant), a
    filled point marks a budget where the prioritizer beats random, a hollow one where it was
    not shown to."""
    names = [name for name in dict.fromkeys(row["prioritizer"] for row in rows) if name != "random"]
    names = names or ["random"]
    beats = {(row["prioritizer"], row["budget"]) for row in vs_random or [] if row["significant"]}
    tested = bool(vs_random)
    data = [
        {
            **row,
            "panel": name,
            "line": OWN_LINE if row["prioritizer"] == name else RANDOM_LINE,
            "verdict": BEATS if (row["prioritizer"], row["budget"]) in beats else NOT_SHOWN,
        }
        for name in names
        for row in rows
        if row["prioritizer"] in (name, "random")
    ]
    x = alt.X("budget:Q", title="budget (% labelled)")
    line_color = alt.Color(
        "line:N",
        scale=alt.Scale(domain=[OWN_LINE, RANDOM_LINE], range=["#4c78a8", ORDER_COLORS["random"]]),
        title="line",
    )
    base = alt.Chart()
    band = (
        base.transform_filter(alt.datum.line == OWN_LINE)
        .mark_area(opacity=0.2, color="#4c78a8")
        .encode(x=x, y=alt.Y("gain_low:Q", title="accuracy gain"), y2="gain_high:Q")
    )
    lines = base.mark_line().encode(
        x=x,
        y="gain:Q",
        color=line_color.legend(labelLimit=0),
        strokeDash=alt.StrokeDash(  # one legend with the colour: the same field and title
            "line:N",
            scale=alt.Scale(domain=[OWN_LINE, RANDOM_LINE], range=[[1, 0], [4, 3]]),
            title="line",
        ),
    )
    points = (
        base.transform_filter(alt.datum.line == OWN_LINE)
        .mark_point(size=40, color="#4c78a8")
        .encode(
            x=x,
            y="gain:Q",
            fill=alt.Fill(
                "verdict:N",
                scale=alt.Scale(domain=[BEATS, NOT_SHOWN], range=["#4c78a8", "white"]),
                title="point",
                legend=alt.Legend(labelLimit=0),  # the whole verdict, not cut at 160 px
            )
            if tested
            else alt.value("#4c78a8"),  # a version 1 file: nothing was tested
            tooltip=[
                "prioritizer:N",
                alt.Tooltip("budget:Q", title="budget %"),
                alt.Tooltip("gain:Q", format="+.4f", title="gain"),
                alt.Tooltip("gain_low:Q", format="+.4f", title="95% CI low"),
                alt.Tooltip("gain_high:Q", format="+.4f", title="95% CI high"),
                "verdict:N",
            ],
        )
    )
    zero = base.mark_rule(strokeDash=[2, 2], color="#333333").encode(y=alt.datum(0))
    return (
        alt.layer(band, lines, points, zero, data=_data(data))
        .properties(width=PANEL_WIDTH, height=PANEL_HEIGHT)
        .facet(facet=alt.Facet("panel:N", title=None, sort=names), columns=columns)
        .resolve_scale(y="shared")
        .properties(title="Accuracy gain after retraining, one panel per prioritizer")
    )
