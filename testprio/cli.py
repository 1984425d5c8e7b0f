"""``testprio`` command line: run the pipeline locally, compile it for a cluster."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout, check_run_id, new_run_id
from testprio.metrics import METRICS

# Lines of the KFP local runner's output worth showing without --verbose: our own log lines
# (progress, stage timings) and the runner's task start/finish lines.
_PROGRESS_LINE = re.compile(r"testprio (INFO|WARNING|ERROR)|Executing task|finished with status")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _ProgressFilter(io.TextIOBase):
    """A stdout stand-in that passes through only progress lines, stripped of indentation."""

    def __init__(self, target) -> None:
        self._target = target
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if _PROGRESS_LINE.search(line):
                self._target.write(_ANSI.sub("", line).strip() + "\n")
                self._target.flush()
        return len(text)

    def flush(self) -> None:
        self._target.flush()


@contextlib.contextmanager
def _quiet_runner(verbose: bool) -> Iterator[None]:
    if verbose:
        yield
        return
    progress = _ProgressFilter(sys.stderr)
    with contextlib.redirect_stdout(progress), contextlib.redirect_stderr(progress):
        yield


RUN_DEFAULTS = {
    "run_id": "",
    "metric": "gini",
    "framework": "auto",
    "output_kind": "auto",
    "output_name": "",
    "input_shape": "",
    "shard_size": 10_000,
    "batch_size": 256,
    "top_k": 10,
}


def run_pipeline_locally(parameters: dict, *, verbose: bool = False) -> RunLayout:
    """Run ``prioritize`` through KFP's local subprocess runner; return the run's layout.

    ``parameters`` needs ``model``, ``data`` and ``root``; the rest default as on the
    command line (``run_id`` to a new timestamped id). Raises TestprioError with the run's
    own error sentence when a stage fails.
    """
    from kfp import local

    from pipelines.prioritize import prioritize

    parameters = {**RUN_DEFAULTS, **parameters}
    parameters["run_id"] = parameters["run_id"] or new_run_id()

    layout = RunLayout.create(parameters["root"], parameters["run_id"])
    storage.ensure_root(parameters["root"])
    if storage.exists(layout.run_json):
        raise TestprioError(f"run folder {layout.uri} already exists; choose another --run-id.")
    with tempfile.TemporaryDirectory(prefix="testprio-kfp-") as pipeline_root:
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=pipeline_root,
            raise_on_error=True,
        )
        original_print = builtins.print
        try:
            with _quiet_runner(verbose), warnings.catch_warnings():
                # Resource, GPU and image settings are for the cluster; locally they are no-ops.
                warnings.filterwarnings("ignore", message=".*have no effect in the current local")
                warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
                prioritize(**parameters)
        except RuntimeError:
            record = storage.read_json(layout.run_json) if storage.exists(layout.run_json) else {}
            raise TestprioError(
                record.get("error")
                or "the pipeline failed before it started the run; rerun with --verbose to "
                "see the task logs."
            ) from None
        finally:
            # KFP's local runner swaps in an indenting print and can leave it behind.
            builtins.print = original_print
    return layout


def _format_top(summary: dict, metric: str) -> str:
    rows = summary["top"]
    if not rows:
        return "  (no samples ranked)"
    has_labels = any(row.get("label") is not None for row in rows)
    header = f"  {'rank':>5} {'sample_id':>10} {'predicted':>9} {'confidence':>10} {metric:>16}"
    header += f" {'label':>5}" if has_labels else ""
    lines = [header]
    for row in rows:
        line = (
            f"  {row['rank']:>5} {row['sample_id']:>10} {row['predicted']:>9} "
            f"{row['confidence']:>10.4f} {row[metric]:>16.4f}"
        )
        if has_labels:
            label = row.get("label")
            line += f" {'-' if label is None else label:>5}"
        lines.append(line)
    return "\n".join(lines)


def format_run_result(layout: RunLayout) -> str:
    summary = storage.read_json(layout.summary)
    metric = summary["metric"]
    counts = summary["counts"]
    lines = [
        f"Ranked {counts['ranked']:,} of {counts['samples']:,} samples by {metric} "
        f"({counts['quarantined']:,} quarantined). Most uncertain first:",
        _format_top(summary, metric),
    ]
    labels = summary["labels"]
    if labels:
        line = (
            f"With the {labels['labeled']:,} known labels: accuracy {labels['accuracy']:.4f}, "
            f"{labels['misclassified']:,} misclassified"
        )
        if labels["apfd"]:
            apfd = labels["apfd"]
            line += f", APFD {apfd['raw']:.4f}"
            if apfd["normalized"] is not None:
                line += f" (normalized {apfd['normalized']:.4f}; a random order gives ~0.5)"
        lines.append(line + ".")
    lines += [
        f"Run folder: {layout.uri}",
        f"  ranking: {layout.ranking}",
        f"  summary: {layout.summary}",
        f"  run log: {layout.run_json}",
    ]
    return "\n\n".join(lines[:4]) + "\n" + "\n".join(lines[4:]) + "\n"


def _cmd_run(args: argparse.Namespace) -> int:
    parameters = {
        "model": args.model,
        "data": args.data,
        "root": storage.normalize_root(args.root),
        "run_id": args.run_id or new_run_id(),
        "metric": args.metric,
        "framework": args.framework,
        "output_kind": args.output_kind,
        "output_name": args.output_name,
        "input_shape": args.input_shape,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "top_k": args.top_k,
    }
    for key in ("model", "data"):
        value = parameters[key]
        if "://" not in value:
            parameters[key] = storage.normalize_root(value)
            if not storage.exists(parameters[key]):
                raise TestprioError(f"--{key} {value} does not exist; check the path.")
    from testprio.stages import validate_parameters

    validate_parameters(parameters)
    check_run_id(parameters["run_id"])
    print(
        f"testprio run {parameters['run_id']} -> "
        f"{storage.join(parameters['root'], parameters['run_id'])}",
        file=sys.stderr,
    )
    layout = run_pipeline_locally(parameters, verbose=args.verbose)
    print("\n" + format_run_result(layout), end="")
    return 0


def _parse_node_selector(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE")
    return key, value


def _cmd_compile(args: argparse.Namespace) -> int:
    import os

    from pipelines.prioritize import ClusterSettings, compile_pipeline

    selectors = tuple(args.node_selector) if args.node_selector else ClusterSettings.node_selector
    try:
        settings = ClusterSettings(
            gpu=not args.no_gpu,
            accelerator_type=args.gpu_type,
            gpu_count=args.gpu_count,
            node_selector=() if args.no_gpu else selectors,
            score_cpu=args.score_cpu,
            score_memory=args.score_memory,
            parallelism=args.parallelism,
        )
    except ValueError as exc:
        raise TestprioError(str(exc)) from None
    os.makedirs(args.out, exist_ok=True)
    path = compile_pipeline(os.path.join(args.out, "prioritize.yaml"), settings)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testprio",
        description="Rank unlabeled inputs by how unsure a classifier is about them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline locally (KFP local runner)")
    run.add_argument("--model", required=True, help="ONNX model file (local path or gs://)")
    run.add_argument("--data", required=True, help="pool: .npy, .npz (x, optional y) or .parquet")
    run.add_argument("--root", required=True, help="runs folder: local path or gs://bucket/prefix")
    run.add_argument("--run-id", default="", help="name of the run folder (default: timestamp)")
    run.add_argument("--metric", default="gini", help=f"one of {', '.join(METRICS)}")
    run.add_argument("--framework", default="auto", help="auto or onnx")
    run.add_argument("--input-shape", default="", help="per-sample shape, e.g. 1,28,28")
    run.add_argument("--output-kind", default="auto", help="auto, logits or probabilities")
    run.add_argument("--output-name", default="", help="model output holding class scores")
    run.add_argument("--shard-size", type=int, default=10_000, help="samples per shard")
    run.add_argument("--batch-size", type=int, default=256, help="samples per inference batch")
    run.add_argument("--top-k", type=int, default=10, help="rows shown and kept in the summary")
    run.add_argument("--verbose", action="store_true", help="show every KFP task log line")
    run.set_defaults(handler=_cmd_run)

    comp = commands.add_parser("compile", help="compile the pipeline to KFP YAML")
    comp.add_argument("--out", default="build", help="folder for prioritize.yaml")
    comp.add_argument("--gpu-type", default="nvidia.com/gpu", help="accelerator resource name")
    comp.add_argument("--gpu-count", type=int, default=1, help="GPUs per score task")
    comp.add_argument("--no-gpu", action="store_true", help="score on CPU nodes")
    comp.add_argument(
        "--node-selector",
        action="append",
        type=_parse_node_selector,
        metavar="KEY=VALUE",
        help="node label for score tasks (repeatable; default "
        "cloud.google.com/gke-accelerator=nvidia-tesla-t4)",
    )
    comp.add_argument("--score-cpu", default="4", help="CPU request of each score task")
    comp.add_argument("--score-memory", default="16G", help="memory of each score task")
    comp.add_argument("--parallelism", type=int, default=8, help="score tasks at once")
    comp.set_defaults(handler=_cmd_compile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except TestprioError as exc:
        print(f"testprio: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("testprio: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
