"""Evaluate: does labelling the top of a prioritizer's ranking pay off, and which one to trust?

For a model, a labeled pool, a held-out labeled test split and the model's (labeled)
training reference, each prioritizer of ``PRIORITIZERS`` orders the pool once (``random``
once per seed), and is judged by

- **APFD** of its order over the pool's misclassified samples (raw and normalized,
  ``testprio.summary.apfd``);
- **faults found** at each budget ``b`` (percent of the pool): misclassified samples among
  its top ``ceil(b * N / 100)``;
- its **fault-detection curve** over the whole pool (share of faults found against share of
  the pool inspected, ``CURVE_POINTS`` evenly spaced ranks; the mean over seeds for
  ``random``);
- **retraining**: the model fine-tuned on its training reference plus its top-b% with their
  labels (``testprio.retrain``), once per seed, and its accuracy on the test split: mean
  and 95% t-interval over the seeds. For a deterministic prioritizer the seed changes only
  the fine-tuning's randomness (batch order, dropout); for ``random`` it also draws the
  selection;
- its **verdict against random** (``vs_random``): the paired difference of its accuracies
  to random's, seed by seed, with a t-interval, a paired t-test and Holm's correction over
  every prioritizer x budget of the file; the winners of a budget are those significantly
  above random, none when none is;
- whether its scores are **degenerate** (one value for >= 95% of the pool: its order is
  the sample-id order).

Beside them, two **controls** fine-tuned with the same seeds: ``no_selection`` (the
training data alone: what the extra epochs do) and ``whole_pool`` (every pool sample
labelled: the ceiling of any selection). ``--splits N`` repeats it all over N seeded
pool/test splits and pools them.

One concern per module:

- ``experiment``: ``run_evaluation``, the I/O and the flow (ingest the three data sets,
  convert the model, hold out the test split, order, judge, retrain, write
  ``{root}/{run_id}/evaluation.json``);
- ``prioritizers``: the registry ``PRIORITIZERS`` and the ``Context`` they order from;
- ``options``: ``EvaluateOptions``, their parsing from CLI text and their checks;
- ``datasets``: the labeled data sets (``Labeled``), read, split and run through the model;
- ``fault_detection``: APFD, faults per budget and the fault-detection curve (pure);
- ``retraining``: the fine-tuning jobs over prioritizers, budgets and seeds;
- ``statistics``: summaries over seeds (mean and interval), the paired comparison with
  random (Holm) and the winners per budget (pure; the maths is ``testprio.stats``);
- ``splits``: the evaluations of several pool/test splits pooled (pure);
- ``presentation``: the evaluation as text, Markdown, KFP metrics and an HTML page;
- ``parameters``: the ``evaluate`` pipeline's entry points (its parameters as KFP passes them).

evaluation.json's name and its reading as tables (``evaluation_frames``) are
``testprio.evaluation_file``'s, which the report imports too. The modules import each
other directly, never this face; it only re-exports.
"""

from __future__ import annotations

from testprio.evaluation.datasets import (
    INFERENCE_BATCH,
    Labeled,
    class_probabilities,
    read_labeled,
    split_pool,
)
from testprio.evaluation.experiment import run_evaluation
from testprio.evaluation.fault_detection import (
    CURVE_POINTS,
    budget_size,
    curve_ranks,
    evaluate_orders,
    fault_curve,
)
from testprio.evaluation.options import (
    DEFAULT_BUDGETS,
    DEFAULT_EPOCHS,
    DEFAULT_SEEDS,
    MAX_SPLITS,
    EvaluateOptions,
    check_budgets,
    check_coverage_params,
    check_options,
    check_prioritizers,
    parse_budgets,
    parse_coverage_params,
    parse_names,
    parse_prioritizers,
)
from testprio.evaluation.parameters import (
    PIPELINE_INGEST_PARAMETERS,
    options_from_parameters,
    run_from_parameters,
    validate_parameters,
)
from testprio.evaluation.presentation import (
    EvaluationReport,
    evaluation_html,
    evaluation_markdown,
    evaluation_metrics,
    format_evaluation,
    report_outputs,
)
from testprio.evaluation.prioritizers import (
    DEFAULT_PRIORITIZERS,
    INSTABILITY_FOLLOWUPS,
    OPTIONAL_FAMILIES,
    PRIORITIZERS,
    Context,
    Prioritizer,
    default_prioritizers,
    order_by_score,
)
from testprio.evaluation.retraining import CONTROLS
from testprio.evaluation.splits import pool_splits
from testprio.evaluation.statistics import (
    accuracy_summary,
    comparison_record,
    retrain_summary,
    winners,
    with_vs_random,
)

__all__ = [
    "CONTROLS",
    "CURVE_POINTS",
    "DEFAULT_BUDGETS",
    "DEFAULT_EPOCHS",
    "DEFAULT_PRIORITIZERS",
    "DEFAULT_SEEDS",
    "INFERENCE_BATCH",
    "INSTABILITY_FOLLOWUPS",
    "MAX_SPLITS",
    "OPTIONAL_FAMILIES",
    "PIPELINE_INGEST_PARAMETERS",
    "PRIORITIZERS",
    "Context",
    "EvaluateOptions",
    "EvaluationReport",
    "Labeled",
    "Prioritizer",
    "accuracy_summary",
    "budget_size",
    "check_budgets",
    "check_coverage_params",
    "check_options",
    "check_prioritizers",
    "class_probabilities",
    "comparison_record",
    "curve_ranks",
    "default_prioritizers",
    "evaluate_orders",
    "evaluation_html",
    "evaluation_markdown",
    "evaluation_metrics",
    "fault_curve",
    "format_evaluation",
    "options_from_parameters",
    "order_by_score",
    "parse_budgets",
    "parse_coverage_params",
    "parse_names",
    "parse_prioritizers",
    "pool_splits",
    "read_labeled",
    "report_outputs",
    "retrain_summary",
    "run_evaluation",
    "run_from_parameters",
    "split_pool",
    "validate_parameters",
    "winners",
    "with_vs_random",
]
