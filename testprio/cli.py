"""``testprio`` command line: run the pipeline locally, compile it for a cluster, submit and
follow runs there (``testprio.client``), open the report."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from testprio import containers, params, storage
from testprio.client import PIPELINES
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.local_run import RUN_DEFAULTS, RunInterrupted, run_pipeline_locally
from testprio.redact import redact_text

__all__ = ["RUN_DEFAULTS", "RunInterrupted", "build_parser", "main", "run_pipeline_locally"]


def _format_top(summary: dict, metric: str, sources: dict[int, str]) -> str:
    """The top-k rows as a text table; ``sources``: sample id -> where it came from."""
    rows = summary["top"]
    if not rows:
        return "  (no samples ranked)" if not summary["counts"]["ranked"] else ""
    has_labels = any(row.get("label") is not None for row in rows)
    header = f"  {'rank':>5} {'sample_id':>10} {'predicted':>9} {'confidence':>10} {metric:>16}"
    header += f" {'label':>5}" if has_labels else ""
    header += "  source" if sources else ""
    lines = [header]
    for row in rows:
        line = (
            f"  {row['rank']:>5} {row['sample_id']:>10} {row['predicted']:>9} "
            f"{row['confidence']:>10.4f} {row[metric]:>16.4f}"
        )
        if has_labels:
            label = row.get("label")
            line += f" {'-' if label is None else label:>5}"
        if sources:
            line += f"  {sources.get(row['sample_id'], '')}"
        lines.append(line)
    return "\n".join(lines)


def _top_sources(layout: RunLayout, summary: dict) -> dict[int, str]:
    """Where each top-k sample came from (a file of an image folder, a CSV line, ...)."""
    from testprio.report import data as reportdata

    ids = [row["sample_id"] for row in summary["top"]]
    samples = reportdata.read_samples(reportdata.load_run(layout), ids, columns=("source",))
    return {sample_id: str(sample.get("source") or "") for sample_id, sample in samples.items()}


def format_run_result(layout: RunLayout) -> str:
    summary = storage.read_json(layout.summary)
    metric = summary["metric"]
    counts = summary["counts"]
    extra = []
    if counts.get("duplicates"):
        extra.append(f"{counts['duplicates']:,} exact duplicates flagged")
    lines = [
        f"Ranked {counts['ranked']:,} of {counts['samples']:,} samples by {metric} "
        f"({counts['quarantined']:,} quarantined{''.join(', ' + e for e in extra)})."
        + (" Most uncertain first:" if summary["top"] or not counts["ranked"] else ""),
        _format_top(summary, metric, _top_sources(layout, summary)),
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
        f"  report:  {layout.report_html}",
    ]
    return "\n\n".join(lines[:4]) + "\n" + "\n".join(lines[4:]) + "\n"


def _cmd_run(args: argparse.Namespace) -> int:
    from testprio import api

    result = api.run(
        model=args.model,
        data=args.data,
        root=args.root,
        runner=args.runner,
        verbose=args.verbose,
        **{name: getattr(args, name) for name in RUN_DEFAULTS},
    )
    print("\n" + format_run_result(result.layout), end="")
    return 0


def _parse_node_selector(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE")
    return key, value


def _parse_timeout(text: str) -> tuple[str, int]:
    task, sep, seconds = text.partition("=")
    if not sep or not task or not seconds.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not TASK=SECONDS, e.g. ingest=43200")
    return task, int(seconds)


def _cmd_compile(args: argparse.Namespace) -> int:
    import os

    from pipelines.prioritize import ClusterSettings, compile_pipeline, pipeline_name

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
            timeouts=tuple(args.timeout or ()),
        )
    except ValueError as exc:
        raise TestprioError(str(exc)) from None
    try:
        os.makedirs(args.out, exist_ok=True)
        if args.pipeline == "evaluate":  # one task on CPU: the cluster settings do not apply
            from pipelines import evaluate as evaluation

            name = evaluation.pipeline_name(args.framework)
            target = os.path.join(args.out, f"{name}.yaml")
            path = evaluation.compile_pipeline(target, args.framework)
        else:
            name = pipeline_name(args.framework)
            target = os.path.join(args.out, f"{name}.yaml")
            path = compile_pipeline(target, settings, args.framework)
    except ValueError as exc:
        raise TestprioError(str(exc)) from None
    except OSError as exc:
        raise TestprioError(
            f"--out {args.out} cannot hold the compiled pipeline ({exc.strerror}); give a "
            "folder you can write to."
        ) from None
    print(path)
    return 0


def report_app_path() -> str:
    """``report_app/app.py``: from the installed ``report_app`` package, else beside testprio."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("report_app")
    if spec is not None and spec.submodule_search_locations:
        folder = list(spec.submodule_search_locations)[0]
    else:
        folder = os.path.join(os.path.dirname(os.path.dirname(__file__)), "report_app")
    path = os.path.join(os.path.abspath(folder), "app.py")
    if not os.path.exists(path):
        raise TestprioError("the report app (report_app/app.py) is missing; reinstall testprio.")
    return path


def report_server_command(root: str, port: int, host: str) -> list[str]:
    """The ``streamlit run`` command line of the report app on ``root``."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        report_app_path(),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.showErrorDetails",  # none: no message or traceback reaches the browser
        "none",
        "--client.toolbarMode",  # viewer: no Deploy button or other developer options
        "viewer",
        "--",
        "--root",
        root,
    ]


def check_port_free(host: str, port: int) -> None:
    """Fail with one sentence when ``host:port`` cannot be listened on (before Streamlit
    prints a URL that would then not be its own)."""
    import socket

    with socket.socket() as probe:
        # As Streamlit's server does: a port that only lingers in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise TestprioError(
                f"cannot serve the report on {host}:{port} ({exc.strerror}); the port is in "
                "use or not allowed: choose another with --port."
            ) from None


def _cmd_report(args: argparse.Namespace) -> int:
    import importlib.util
    import os
    import signal
    import subprocess

    root = storage.normalize_root(args.root)
    if not root.startswith(storage.GCS_SCHEME) and not os.path.isdir(root):
        raise TestprioError(
            f"--root {args.root} is not a folder; give the folder that holds your runs "
            "(the --root of testprio run)."
        )
    if importlib.util.find_spec("streamlit") is None:
        raise TestprioError("the report app needs streamlit; pip install streamlit, then retry.")
    check_port_free(args.host, args.port)
    command = report_server_command(root, args.port, args.host)
    print(f"testprio report on {root}: http://{args.host}:{args.port}/ (Ctrl-C stops it)")
    sys.stdout.flush()
    server = subprocess.Popen(command, env={**os.environ, "TESTPRIO_REPORT_ROOT": root})
    # Stopping this command (SIGTERM; Ctrl-C reaches both) stops the server with it.
    previous = signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        return server.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=10)


def _cmd_labels(args: argparse.Namespace) -> int:
    from testprio import api, labels

    if args.labels_command == "import":
        print(api.import_labels(args.run, args.file, max_file_mb=args.max_file_mb).sentence())
        return 0
    if args.labels_command == "pull":
        print(api.pull_labels(args.run, **_label_studio(args)).sentence())
        return 0
    chosen = {"top_k": args.top_k, "ranks": args.ranks, "pre_annotate": args.pre_annotate}
    if args.labels_command == "push":
        result = api.push_labels(args.run, **_label_studio(args), **chosen, data=args.data or None)
        print(result.sentence())
        return 0
    export = api.export_labels(
        args.run, args.out, **chosen, url_prefix=args.url_prefix, data=args.data or None
    )
    print(
        f"Exported ranks {export.ranks} of run {export.run_id} ({len(export.rows):,} samples, "
        f"{export.image_mode} images, {'pre-annotated' if export.pre_annotate else 'blind'}) "
        f"to {export.uri}: {labels.CSV_NAME}, {labels.TASKS_NAME}, {labels.CONFIG_NAME}, "
        f"{labels.IMAGES_FOLDER}/, {labels.README_NAME}."
    )
    return 0


def _label_studio(args: argparse.Namespace) -> dict:
    """The server, token and project of ``labels push`` and ``labels pull``."""
    return {"url": args.label_studio, "token": args.token, "project": args.project or None}


def _parse_param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE")
    return key.replace("-", "_"), value


def _cluster_client(args: argparse.Namespace):
    from testprio.client import Client

    return Client(args.host or None, namespace=args.namespace or None, ui_host=args.ui_host or None)


def _cmd_submit(args: argparse.Namespace) -> int:
    parameters = {"model": args.model, "data": args.data, "root": args.root, **dict(args.param)}
    if args.run_id:
        parameters["run_id"] = args.run_id
    client = _cluster_client(args)
    run = client.submit(
        parameters,
        package=args.package or None,
        run_name=args.run_name or None,
        experiment=args.experiment,
        service_account=args.service_account or None,
        enable_caching=False if args.no_cache else None,
        pipeline=args.pipeline,
    )
    for local, uri in run.uploaded.items():
        print(f"uploaded {local} -> {uri}", file=sys.stderr)
    host = f" --host {args.host}" if args.host else ""
    print(f"Submitted {run.name} (KFP run {run.kfp_run_id}).")
    print(f"  Kubeflow UI: {run.url}")
    print(f"  run folder:  {run.run_uri}")
    print(f"  follow it:   testprio runs logs {run.kfp_run_id} --follow{host}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from testprio import client as kfp_runs

    client = _cluster_client(args)
    if args.runs_command == "list":
        runs = client.list_runs(limit=args.limit, experiment=args.experiment or None)
        print(kfp_runs.format_run_list(runs))
    elif args.runs_command == "status":
        print(kfp_runs.format_run(client.status(args.run)))
    elif args.runs_command == "cancel":
        run = client.cancel(args.run)
        print(f"cancel requested: {run.name} ({run.kfp_run_id}) is {run.state}")
    elif not args.follow:
        print(kfp_runs.format_logs(client.logs(args.run)))
    else:
        for run in client.watch(args.run, interval=args.interval):
            tasks = ", ".join(f"{task.name} {task.state}" for task in run.tasks)
            print(f"{run.state}" + (f" ({tasks})" if tasks else ""), flush=True)
        print(kfp_runs.format_logs(client.logs(args.run)))
        if run.state != "SUCCEEDED":
            raise TestprioError(
                f"run {run.kfp_run_id} ended {run.state}"
                + (f": {run.error}" if run.error else "; see the task errors above.")
            )
    return 0


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="",
        help="Kubeflow Pipelines API or UI address, e.g. http://localhost:8080 (default: "
        "$KF_PIPELINES_ENDPOINT, or in-cluster / kube config discovery)",
    )
    parser.add_argument("--namespace", default="", help="your profile namespace (multi-user)")
    parser.add_argument("--ui-host", default="", help="UI address for links (default: --host)")


_ARGPARSE_TYPES = {str: str, int: int, float: params.finite_float}


class _Parser(argparse.ArgumentParser):
    """argparse, with testprio's one convention for errors: a mistake on the command line
    exits 1 with ``testprio: error: <sentence>`` as its last line, as every other error of
    every command does (argparse's own exits 2 with ``PROG: error:``). Its subcommands'
    parsers are of this class too (``add_subparsers`` makes them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"testprio: error: {_sentence(message)}", file=sys.stderr)
        sys.exit(1)


def _sentence(message: str) -> str:
    """``message`` without the secrets of its URLs, ending in a full stop."""
    message = redact_text(message.strip())
    return message if message.endswith((".", "?", "!")) else message + "."


def _add_run_parameters(run: argparse.ArgumentParser) -> None:
    """One option per command-line parameter of ``testprio.params``; their defaults are set
    once, by ``set_defaults(**RUN_DEFAULTS)``."""
    for parameter in params.PARAMETERS:
        if not parameter.cli:
            continue
        text = parameter.help
        if parameter.choices and not parameter.argparse_choices:
            text += f"; one of {', '.join(parameter.choices)}"
        if not parameter.required and parameter.default not in ("", False):
            text += f" (default {parameter.default})"
        options: dict = {"help": text}
        if parameter.type is bool:
            options["action"] = "store_true"
        else:
            options["type"] = _ARGPARSE_TYPES[parameter.type]
            choices = "{" + ",".join(parameter.choices) + "}" if parameter.choices else None
            options["metavar"] = parameter.metavar or choices
        if parameter.argparse_choices:
            options["choices"] = parameter.choices
            options.pop("metavar")
        if parameter.required:
            options["required"] = True
        if parameter.bare is not None:
            options.update(nargs="?", const=parameter.bare)
        run.add_argument(parameter.flag, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="testprio",
        description="Rank unlabeled inputs by how unsure a classifier is about them.",
        epilog="Exit status of every command: 0 on success; 1 on any error, a mistake on the "
        "command line included, with one sentence 'testprio: error: ...' as the last line; "
        "128 + the signal's number when interrupted (130: Ctrl-C, 143: SIGTERM).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline locally (KFP local runner)")
    _add_run_parameters(run)
    run.add_argument("--verbose", action="store_true", help="show every KFP task log line")
    run.add_argument(
        "--runner",
        choices=containers.RUNNERS,
        default="subprocess",
        help="subprocess (default: tasks in this Python environment) or docker (each task "
        "in its own image, as in a cluster; make images builds them)",
    )
    run.set_defaults(handler=_cmd_run, **RUN_DEFAULTS)  # one source of the run defaults

    comp = commands.add_parser("compile", help="compile the pipeline to KFP YAML")
    comp.add_argument("--out", default="build", help="folder for prioritize.yaml")
    comp.add_argument(
        "--pipeline",
        choices=tuple(PIPELINES),
        default="prioritize",
        help="prioritize (default) or evaluate (evaluate[-framework].yaml; the GPU and score "
        "options do not apply to it)",
    )
    comp.add_argument(
        "--framework",
        default="onnx",
        help="models the pipeline converts: onnx (default; prioritize.yaml), pytorch, "
        "tensorflow or paddle (prioritize-<framework>.yaml, with that framework's image)",
    )
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
    comp.add_argument(
        "--timeout",
        action="append",
        type=_parse_timeout,
        metavar="TASK=SECONDS",
        help="deadline of one task's pod, replacing its default (repeatable; tasks: start, "
        "ingest, convert, score, rank, report; defaults 600, 21600, 7200, 7200, 3600, 3600)",
    )
    comp.set_defaults(handler=_cmd_compile)

    from testprio.evaluate_cli import add_evaluate_parser  # its options live with it

    add_evaluate_parser(commands)

    rep = commands.add_parser("report", help="open the report app (Streamlit) on a runs root")
    rep.add_argument("--root", required=True, help="runs folder: local path or gs://bucket/prefix")
    rep.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    rep.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    rep.set_defaults(handler=_cmd_report)

    lab = commands.add_parser(
        "labels", help="export ranks for labelling or push them to Label Studio; import labels"
    )
    lab_commands = lab.add_subparsers(dest="labels_command", required=True)
    lab_export = lab_commands.add_parser("export", help="top-k or ranks A-B, for Label Studio")
    lab_import = lab_commands.add_parser("import", help="Label Studio JSON export or CSV")
    lab_push = lab_commands.add_parser("push", help="top-k or ranks A-B to a Label Studio project")
    lab_pull = lab_commands.add_parser("pull", help="import a Label Studio project's labels")
    for command in (lab_export, lab_import, lab_push, lab_pull):
        command.add_argument("--run", required=True, help="run folder ROOT/RUN_ID (or gs://)")
    lab_export.add_argument("--out", required=True, help="new folder (local or gs://)")
    for command in (lab_export, lab_push):
        which = command.add_mutually_exclusive_group()
        which.add_argument("--top-k", type=int, help="ranks 1..K (default: the run's --top-k)")
        which.add_argument("--ranks", help="ranks A-B, inclusive, e.g. 101-200")
        command.add_argument(
            "--pre-annotate",
            action="store_true",
            help="show the model's class as a pre-annotation (default: blind, no model answer)",
        )
        command.add_argument("--data", default="", help="the pool, if it moved since the run")
    lab_export.add_argument(
        "--url-prefix", default="", help="put before images/... in the Label Studio tasks"
    )
    for command in (lab_push, lab_pull):
        command.add_argument(
            "--label-studio",
            default=os.environ.get("LABEL_STUDIO_URL", ""),
            metavar="URL",
            help="the Label Studio server (default: $LABEL_STUDIO_URL)",
        )
        command.add_argument(
            "--token",
            default=os.environ.get("LABEL_STUDIO_API_KEY", ""),
            help="personal access token or legacy token (default: $LABEL_STUDIO_API_KEY)",
        )
        command.add_argument(
            "--project",
            default="",
            metavar="NAME|ID",
            help="project title or ID (default: 'testprio RUN_ID'; push makes a new title)",
        )
    lab_import.add_argument("file", help="Label Studio JSON export, or CSV with sample_id,label")
    lab_import.add_argument(
        "--max-file-mb",
        type=params.finite_float,
        default=None,  # labels.readers.DEFAULT_MAX_FILE_MB (not imported: it loads labels)
        help="largest labels file read, in MB (default 256)",
    )
    lab.set_defaults(handler=_cmd_labels)

    sub = commands.add_parser("submit", help="start a run on a Kubeflow Pipelines cluster")
    _add_cluster_options(sub)
    sub.add_argument("--model", required=True, help="model: local path (uploaded) or gs://")
    sub.add_argument("--data", required=True, help="pool: local path (uploaded) or gs://")
    sub.add_argument("--root", required=True, help="runs folder: gs://bucket/prefix")
    sub.add_argument("--run-id", default="", help="name of the run folder (default: timestamp)")
    sub.add_argument(
        "--param",
        action="append",
        default=[],
        type=_parse_param,
        metavar="KEY=VALUE",
        help="any other pipeline parameter, e.g. metric=entropy or shard_size=5000 (repeatable)",
    )
    sub.add_argument(
        "--package",
        default="",
        help="compiled pipeline (testprio compile); default: the pipeline of the model's "
        "framework, compiled now with the default cluster settings",
    )
    sub.add_argument(
        "--pipeline",
        choices=tuple(PIPELINES),
        default="prioritize",
        help="prioritize (default) or evaluate (give train_data, and test_data or split, with "
        "--param; local files are uploaded)",
    )
    sub.add_argument("--experiment", default="testprio", help="KFP experiment (default testprio)")
    sub.add_argument("--run-name", default="", help="name in the UI (default: PIPELINE RUN_ID)")
    sub.add_argument(
        "--service-account",
        default="testprio-pipeline-runner",  # client.PIPELINE_SERVICE_ACCOUNT, of manifests/
        help="Kubernetes service account of the run's pods (default testprio-pipeline-runner, "
        "from manifests/: no Kubernetes API rights); '' for the cluster's default",
    )
    sub.add_argument("--no-cache", action="store_true", help="turn KFP caching off for this run")
    sub.set_defaults(handler=_cmd_submit)

    runs = commands.add_parser("runs", help="list, inspect, cancel or follow cluster runs")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_commands.add_parser("list", help="the newest runs")
    _add_cluster_options(runs_list)
    runs_list.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    runs_list.add_argument("--experiment", default="", help="only this experiment's runs")
    for name, text in (
        ("status", "state of a run and of its tasks"),
        ("cancel", "terminate a run"),
        ("logs", "task states, pods to `kubectl logs`, and the run's run.json"),
    ):
        command = runs_commands.add_parser(name, help=text)
        _add_cluster_options(command)
        command.add_argument("run", metavar="KFP_RUN_ID", help="as testprio submit printed it")
        if name == "logs":
            command.add_argument("--follow", action="store_true", help="until the run ends")
            command.add_argument(
                "--interval", type=params.finite_float, default=10.0, help="seconds per poll"
            )
    runs.set_defaults(handler=_cmd_runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except RunInterrupted as exc:
        print(f"testprio: {exc}", file=sys.stderr)
        return exc.exit_code
    except TestprioError as exc:
        print(f"testprio: error: {_sentence(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("testprio: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
