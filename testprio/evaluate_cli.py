"""``testprio evaluate``: its options and handler (``testprio.cli`` adds the subcommand).

It runs the evaluation in this process (``testprio.api.evaluate``, which calls
``testprio.evaluation.run_evaluation``), not through the KFP local runner: the work is one
task, and the fine-tunings run in child processes of their own. The ``evaluate`` pipeline
(``pipelines/evaluate.py``) runs the same evaluation.
"""

from __future__ import annotations

import argparse

from testprio import params

# testprio run's ingest options that say how to read and preprocess data: the pool, the
# test split and the training reference are all read with them. (flag, type, help)
INGEST_FLAGS = (
    ("--preset", str, "preprocessing preset, as for testprio run"),
    ("--ops", str, "preprocessing ops (JSON list), as for testprio run"),
    ("--custom-ops", str, "custom ops file, as for testprio run"),
    ("--input-shape", str, "per-sample shape C,H,W of the model input, as for testprio run"),
    ("--value-range", str, "LOW,HIGH range of valid input values, as for testprio run"),
    ("--tensor-column", str, "column of the inputs in Parquet/CSV data (default x)"),
    ("--label-column", str, "column of the labels in Parquet/CSV data"),
    ("--on-bad-sample", str, "quarantine (default) or fail, as for testprio run"),
)


def add_evaluate_parser(commands) -> argparse.ArgumentParser:
    """Add ``evaluate`` to the ``commands`` subparsers of ``testprio``."""
    # testprio.evaluation imports every prioritizer family: only the evaluate command needs it.
    parser = commands.add_parser(
        "evaluate",
        help="compare prioritizers: APFD, faults found and accuracy after retraining",
        description="Evaluate prioritizers on a labeled pool: APFD, faults found in the top "
        "b% and the test accuracy of the model retrained on its training data plus the "
        "top b%; writes ROOT/RUN_ID/evaluation.json.",
    )
    parser.add_argument("--model", required=True, help="model: ONNX, TorchScript/.pt2, Keras")
    parser.add_argument("--data", required=True, help="the labeled pool to prioritize")
    parser.add_argument("--train-data", required=True, help="the model's labeled training data")
    parser.add_argument("--test-data", default="", help="held-out labeled test data")
    parser.add_argument("--root", required=True, help="runs folder: local path or gs://")
    parser.add_argument("--run-id", default="", help="name of the run folder (default: timestamp)")
    parser.add_argument(
        "--budgets", default="1,2,5,10", help="percents of the pool to label (default 1,2,5,10)"
    )
    parser.add_argument(
        "--prioritizers",
        default=None,  # not given: the defaults; given, it must name some
        help="comma-separated names (default: gini, entropy, margin, least_confidence, "
        "instability, nac-cam, kmnc, dsa, random; those installed)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds, 1 to 100 (default 5)")
    parser.add_argument(
        "--split",
        type=params.finite_float,
        default=0.0,
        help="without --test-data: share of the pool held out as the test split (seeded)",
    )
    parser.add_argument(
        "--splits",
        type=int,
        default=1,
        help="with --split: repeat the whole evaluation over N seeded pool/test splits and "
        "pool them (1 to 20; default 1)",
    )
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs, 1 to 100 (3)")
    parser.add_argument("--framework", default="auto", help="auto, onnx, pytorch, tensorflow")
    parser.add_argument("--output-kind", default="auto", help="auto, logits or probabilities")
    parser.add_argument("--output-name", default="", help="class-score output of the model")
    parser.add_argument("--shard-size", type=int, default=10_000, help="samples per shard")
    parser.add_argument(
        "--layers",
        default="",
        help="comma-separated ONNX tensor names the coverage and surprise prioritizers read "
        "(default: up to 8 hidden layers found in the model)",
    )
    parser.add_argument(
        "--surprise-layer",
        default="",
        help="the ONNX tensor LSA/DSA/MDSA read (default: the last of --layers)",
    )
    parser.add_argument(
        "--surprise-reduce",
        default="mean",
        choices=tuple(params.BY_NAME["surprise_reduce"].choices),
        help=params.BY_NAME["surprise_reduce"].help,
    )
    parser.add_argument(
        "--coverage-params",
        default="",
        help='coverage parameters as JSON, e.g. \'{"kmnc": {"sections": 20}, "nac": '
        '{"threshold": 0.5}}\' (defaults: nac threshold 0, kmnc sections 10, nbc/snac '
        "scaler 0.5, tknc top_neurons 1)",
    )
    parser.add_argument(
        "--metamorphic-transforms",
        default="",
        help="comma-separated transforms of the instability prioritizer: rotate, translate, "
        "scale, brightness, contrast, blur, noise (default: all for images, noise otherwise)",
    )
    parser.add_argument(
        "--followups",
        type=int,
        default=10,
        help="metamorphic follow-ups per sample for instability, 1 to 1,000 (default 10)",
    )
    for flag, kind, text in INGEST_FLAGS:
        parser.add_argument(flag, type=kind, default="", help=text)
    parser.set_defaults(handler=cmd_evaluate)
    return parser


def cmd_evaluate(args: argparse.Namespace) -> int:
    from testprio import api, evaluation
    from testprio.log import configure

    options = {name: getattr(args, name) for name in api.EVALUATE_OPTIONS}
    if options["prioritizers"] is None:  # left out: the defaults
        del options["prioritizers"]
    inputs = {name: getattr(args, name) for name in ("model", "data", "train_data", "test_data")}
    configure()
    result = api.evaluate(root=args.root, run_id=args.run_id, **inputs, **options)
    print("\n" + evaluation.format_evaluation(result.evaluation), end="")
    print(f"\nEvaluation: {result.evaluation_path}")
    return 0
