"""testprio.client and ``testprio submit`` / ``testprio runs`` against a loopback KFP server.

A real Kubeflow Pipelines backend cannot run here. ``FakeKfp`` answers the KFP v2beta1 REST
endpoints that ``kfp.Client`` calls for these commands (healthz, experiments, runs create,
get, list, terminate) from memory and records every request, so the tests check what the
real ``kfp.Client`` really sends over HTTP. Uploads go to the GCS emulator.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import kfp
import numpy as np
import pytest
import yaml

from pipelines.prioritize import ClusterSettings, compile_pipeline
from testprio import cli, storage
from testprio.client import PIPELINE_SERVICE_ACCOUNT, Client, ClusterError, format_logs
from testprio.errors import TestprioError
from tests.conftest import BUCKET, linear_classifier, make_deterministic, write_pool

API = "/apis/v2beta1"
T0 = datetime(2026, 11, 24, 21, 0, tzinfo=timezone.utc)


def _time(offset: int) -> str:
    return (T0 + timedelta(seconds=offset)).isoformat().replace("+00:00", "Z")


class FakeKfp:
    """The few KFP v2beta1 endpoints testprio uses, in memory; ``requests`` records each call.

    ``script[run_id]`` optionally lists states that successive GETs of that run report.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.script: dict[str, list[str]] = {}
        self.fail_next: tuple[int, str] | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _answer(self, method: str) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append(
                    {"method": method, "path": url.path, "query": query, "body": body}
                )
                status, answer = fake.route(method, url.path, query, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - http.server's naming
                self._answer("GET")

            def do_POST(self):  # noqa: N802
                self._answer("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- what the server does ------------------------------------------------------------

    def route(self, method: str, path: str, query: dict, body) -> tuple[int, dict]:
        if self.fail_next and method == "POST":
            status, message = self.fail_next
            self.fail_next = None
            return status, {"error": message, "code": 3, "message": message}
        if (method, path) == ("GET", f"{API}/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", f"{API}/experiments"):
            wanted = json.loads(query.get("filter", "{}")).get("predicates", [])
            names = {p["stringValue"] for p in wanted if p["key"] == "display_name"}
            found = [
                e for e in self.experiments.values() if not names or e["display_name"] in names
            ]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{API}/experiments"):
            experiment = {
                "experiment_id": str(uuid.uuid4()),
                "display_name": body["display_name"],
                "created_at": _time(0),
            }
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if (method, path) == ("POST", f"{API}/runs"):
            run = {
                "run_id": str(uuid.uuid4()),
                "display_name": body["display_name"],
                "experiment_id": body.get("experiment_id"),
                "runtime_config": body.get("runtime_config"),
                "service_account": body.get("service_account"),
                "state": "PENDING",
                "created_at": _time(len(self.runs)),
            }
            self.runs[run["run_id"]] = run
            return 200, run
        if (method, path) == ("GET", f"{API}/runs"):
            runs = [
                r
                for r in self.runs.values()
                if "experiment_id" not in query or r["experiment_id"] == query["experiment_id"]
            ]
            runs.sort(
                key=lambda r: r["created_at"], reverse=query.get("sort_by", "").endswith("desc")
            )
            runs = runs[: int(query.get("page_size", 10))]
            return 200, {"runs": runs, "total_size": len(runs)}
        match = re.fullmatch(rf"{API}/runs/([^/:]+)(:terminate)?", path)
        if match and match.group(1) not in self.runs:
            return 404, {"error": "run not found", "code": 5, "message": "run not found"}
        if match and method == "POST" and match.group(2):
            self.runs[match.group(1)]["state"] = "CANCELING"
            return 200, {}
        if match and method == "GET":
            run = self.runs[match.group(1)]
            if self.script.get(run["run_id"]):
                run["state"] = self.script[run["run_id"]].pop(0)
            return 200, run
        return 404, {"error": f"{method} {path} is not implemented", "code": 12}

    def calls(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == API + path]


@pytest.fixture
def fake_kfp(tmp_path, monkeypatch):
    # kfp.Client reads ~/.config/kfp/context.json; a user's file must not change the requests.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.delenv("KF_PIPELINES_UI_ENDPOINT", raising=False)
    server = FakeKfp()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The compiled ONNX pipeline with the default GKE settings, as `make compile` writes it."""
    path = tmp_path_factory.mktemp("build") / "prioritize.yaml"
    return compile_pipeline(str(path), ClusterSettings())


@pytest.fixture
def inputs(tmp_path):
    rng = make_deterministic(4)
    model = linear_classifier(tmp_path / "model.onnx")
    pool = write_pool(tmp_path / "pool.npz", rng.normal(0, 1, (30, 1, 8, 8)).astype(np.float32))
    return model, pool


@pytest.fixture
def gcs_root(gcs_emulator):
    return f"gs://{BUCKET}/runs-{uuid.uuid4().hex[:8]}"


def test_submit_uploads_local_inputs_and_creates_the_run(fake_kfp, package, inputs, gcs_root):
    model, pool = inputs
    client = Client(fake_kfp.url)
    run = client.submit(
        {"model": str(model), "data": str(pool), "root": gcs_root, "metric": "entropy",
         "shard_size": "10", "gpu_batch_size": 512},
        package=package,
        service_account=PIPELINE_SERVICE_ACCOUNT,
    )  # fmt: skip

    run_id = run.parameters["run_id"]
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    assert run.run_uri == f"{gcs_root}/{run_id}"
    assert run.url == f"{fake_kfp.url}/#/runs/details/{run.kfp_run_id}"
    # The local files are in the run folder, byte for byte, and the run reads them there.
    uploaded_model, uploaded_pool = (
        f"{run.run_uri}/inputs/model.onnx",
        f"{run.run_uri}/inputs/pool.npz",
    )
    assert run.uploaded == {str(model): uploaded_model, str(pool): uploaded_pool}
    assert storage.read_bytes(uploaded_model) == model.read_bytes()
    assert storage.read_bytes(uploaded_pool) == pool.read_bytes()

    # What kfp.Client sent: health check, experiment lookup and creation, then the run.
    assert [(r["method"], r["path"]) for r in fake_kfp.requests] == [
        ("GET", f"{API}/healthz"),
        ("GET", f"{API}/experiments"),
        ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs"),
    ]
    lookup = json.loads(fake_kfp.requests[1]["query"]["filter"])["predicates"][0]
    assert (lookup["key"], lookup["stringValue"]) == ("display_name", "testprio")
    assert fake_kfp.requests[2]["body"]["display_name"] == "testprio"
    (created,) = fake_kfp.calls("POST", "/runs")
    body = created["body"]
    assert body["display_name"] == f"prioritize {run_id}"
    assert body["experiment_id"] == next(iter(fake_kfp.experiments))
    assert body["service_account"] == "testprio-pipeline-runner"
    assert body["runtime_config"]["parameters"] == {
        "model": uploaded_model,
        "data": uploaded_pool,
        "root": gcs_root,
        "run_id": run_id,
        "metric": "entropy",
        "shard_size": 10,  # typed as the package declares it
        "gpu_batch_size": 512,
    }
    # The whole compiled package travels with the run, GPU placement included.
    spec = body["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "prioritize"
    score = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert score["exec-score"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"
    }
    tasks = spec["pipeline_spec"]["root"]["dag"]["tasks"]
    assert tasks["ingest"]["cachingOptions"] == {"enableCache": True}  # compiled settings kept
    assert tasks["start"]["cachingOptions"] == {}


def test_submit_with_gs_inputs_reuses_the_experiment_and_can_turn_caching_off(
    fake_kfp, package, inputs, gcs_root
):
    model, pool = inputs
    storage.copy_file(str(model), f"{gcs_root}/shared/model.onnx")
    storage.copy_file(str(pool), f"{gcs_root}/shared/pool.npz")
    fake_kfp.experiments["e1"] = {"experiment_id": "e1", "display_name": "testprio"}
    run = Client(fake_kfp.url).submit(
        {"model": f"{gcs_root}/shared/model.onnx", "data": f"{gcs_root}/shared/pool.npz",
         "root": gcs_root + "/", "run_id": "nightly-7"},
        package=package,
        run_name="nightly",
        enable_caching=False,
    )  # fmt: skip
    assert run.uploaded == {}
    assert run.run_uri == f"{gcs_root}/nightly-7"
    assert not fake_kfp.calls("POST", "/experiments")
    (created,) = fake_kfp.calls("POST", "/runs")
    body = created["body"]
    assert (body["display_name"], body["experiment_id"]) == ("nightly", "e1")
    assert "service_account" not in body or body["service_account"] is None
    assert body["runtime_config"]["parameters"]["model"] == f"{gcs_root}/shared/model.onnx"
    tasks = body["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert {name: t.get("cachingOptions") for name, t in tasks.items()} == {
        name: {} for name in tasks
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, r"^'colour' is not a parameter of the compiled pipeline \(its "),
        ({"shard_size": "many"}, r"^parameter shard_size='many' is not a whole number\.$"),
        ({"strict_model_checks": "maybe"}, r"is not a boolean \(true or false\)\.$"),
        ({"root": "runs"}, r"^--root runs is not a gs:// URI; a cluster run writes to a bucket"),
        ({"metric": "hunch"}, r"hunch"),
        ({"run_id": "../up"}, r"^run id '\.\./up' is not allowed"),
        ({"root": None}, r"^the pipeline needs --root; give it\.$"),
    ],
)
def test_submit_refuses_bad_parameters_before_sending_anything(
    fake_kfp, package, inputs, change, message
):
    model, pool = inputs
    parameters = {"model": str(model), "data": str(pool), "root": "gs://b/runs", **change}
    parameters = {k: v for k, v in parameters.items() if v is not None}
    with pytest.raises(TestprioError, match=message):
        Client(fake_kfp.url).submit(parameters, package=package)
    assert not fake_kfp.calls("POST", "/runs")


def test_submit_needs_a_compiled_package_for_the_models_framework(fake_kfp, inputs, tmp_path):
    model, pool = inputs
    parameters = {"model": str(model), "data": str(pool), "root": "gs://b/runs"}
    missing = tmp_path / "build" / "prioritize.yaml"
    with pytest.raises(TestprioError, match=r"^pipeline package .*prioritize.yaml does not exist"):
        Client(fake_kfp.url).submit(parameters, package=str(missing))
    other = compile_pipeline(str(tmp_path / "torch.yaml"), ClusterSettings(), "pytorch")
    with pytest.raises(
        TestprioError,
        match=r"is the pipeline prioritize-pytorch, but the model is a onnx model, which runs "
        r"in prioritize; compile it with `testprio compile`\.$",
    ):
        Client(fake_kfp.url).submit(parameters, package=other)


def test_submit_refuses_an_existing_run_folder(fake_kfp, package, inputs, gcs_root):
    model, pool = inputs
    storage.write_json(f"{gcs_root}/taken/run.json", {"status": "succeeded"})
    with pytest.raises(TestprioError, match=r"run folder .*/taken already exists; choose another"):
        Client(fake_kfp.url).submit(
            {"model": str(model), "data": str(pool), "root": gcs_root, "run_id": "taken"},
            package=package,
        )


def test_server_errors_become_one_sentence(fake_kfp, package, inputs, gcs_root):
    model, pool = inputs
    fake_kfp.experiments["e1"] = {"experiment_id": "e1", "display_name": "testprio"}
    fake_kfp.fail_next = (400, "Invalid input error: pipeline spec is invalid")
    with pytest.raises(
        TestprioError,
        match=r"^Kubeflow Pipelines at http://127\.0\.0\.1:\d+ refused the request \(HTTP 400: "
        r"Invalid input error: pipeline spec is invalid\)\.$",
    ):
        Client(fake_kfp.url).submit(
            {"model": str(model), "data": str(pool), "root": gcs_root}, package=package
        )
    with pytest.raises(TestprioError, match=r"refused the request \(HTTP 404: run not found\)"):
        Client(fake_kfp.url).status("no-such-run")


def test_unreachable_server_is_one_sentence(fake_kfp):
    client = Client(fake_kfp.url)
    client.list_runs()  # kfp.Client made and working
    fake_kfp.stop()
    with pytest.raises(TestprioError, match=r"^cannot reach Kubeflow Pipelines at http://127"):
        client.status("r1")


def _closed_port() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


# One sentence, in words: no exception class (MaxRetryError, NewConnectionError), no urllib3.
_JARGON = re.compile(r"[A-Z]\w+(Error|Exception)|urllib3|Retry|errno|\[Errno")


def test_a_client_is_built_offline_and_its_first_call_says_why(fake_kfp):
    host = _closed_port()
    client = Client(host)  # no server there, and none needed yet
    with pytest.raises(ClusterError) as raised:
        client.status("r1")
    message = str(raised.value)
    assert message == (
        f"cannot reach Kubeflow Pipelines at {host}: nothing answers at that address; check "
        "--host (with KFP standalone: kubectl port-forward -n kubeflow svc/ml-pipeline-ui "
        "8080:80, then --host http://localhost:8080)."
    )
    assert not _JARGON.search(message) and raised.value.__suppress_context__
    with pytest.raises(ClusterError, match=r": its name does not resolve; check --host"):
        Client("http://no-such-host.invalid:8080").list_runs()
    # Against a live server, the constructor sends nothing either; the first call does.
    served = Client(fake_kfp.url)
    assert fake_kfp.requests == []
    served.list_runs()
    assert fake_kfp.requests


def test_a_notebook_shows_the_sentence_without_a_traceback(tmp_path):
    # A real Jupyter kernel (ipykernel) runs the cell; the error output is what the
    # notebook shows: the sentence alone, no frame of testprio.
    import nbformat
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    write_kernel_spec(tmp_path / "kernels" / "testprio-test")
    host = _closed_port()
    cell = nbformat.v4.new_code_cell(
        f"from testprio.client import Client\nclient = Client({host!r})\nclient.list_runs()"
    )
    notebook = nbformat.v4.new_notebook(cells=[cell])
    manager = AsyncKernelManager(
        kernel_name="testprio-test",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]),
    )
    NotebookClient(notebook, km=manager, timeout=120, allow_errors=True).execute()
    (error,) = [output for output in cell.outputs if output["output_type"] == "error"]
    assert error["ename"] == "ClusterError"
    assert error["traceback"] == [f"ClusterError: {error['evalue']}"]
    assert error["evalue"].startswith(f"cannot reach Kubeflow Pipelines at {host}: nothing ")


def _add_run(fake, name: str, offset: int, **fields) -> str:
    run_id = f"run-{name}"
    fake.runs[run_id] = {
        "run_id": run_id,
        "display_name": f"prioritize {name}",
        "experiment_id": fields.pop("experiment_id", "e1"),
        "state": "RUNNING",
        "created_at": _time(offset),
        **fields,
    }
    return run_id


def test_list_status_and_cancel_map_to_the_kfp_api(fake_kfp):
    fake_kfp.experiments["e2"] = {"experiment_id": "e2", "display_name": "nightly"}
    for offset, name in enumerate(("a", "b", "c")):
        _add_run(fake_kfp, name, offset)
    _add_run(fake_kfp, "n", 9, experiment_id="e2")
    client = Client(fake_kfp.url)

    newest = client.list_runs(limit=2)
    assert [run.kfp_run_id for run in newest] == ["run-n", "run-c"]
    (listed,) = fake_kfp.calls("GET", "/runs")
    assert (listed["query"]["page_size"], listed["query"]["sort_by"]) == ("2", "created_at desc")
    assert [run.kfp_run_id for run in client.list_runs(experiment="nightly")] == ["run-n"]
    assert fake_kfp.calls("GET", "/runs")[-1]["query"]["experiment_id"] == "e2"
    assert client.list_runs(experiment="no-such-experiment") == []

    fake_kfp.runs["run-b"].update(
        state="FAILED",
        error={"code": 2, "message": "task score failed"},
        runtime_config={"parameters": {"root": "gs://b/runs", "run_id": "b"}},
        run_details={
            "task_details": [
                {"display_name": "score", "state": "FAILED", "pod_name": "p-score",
                 "start_time": _time(20), "error": {"message": "OOMKilled"}},
                {"display_name": "start", "state": "SUCCEEDED", "pod_name": "p-start",
                 "start_time": _time(10)},
            ]
        },
    )  # fmt: skip
    status = client.status("run-b")
    assert (status.state, status.error, status.run_uri) == (
        "FAILED",
        "task score failed",
        "gs://b/runs/b",
    )
    assert [(t.name, t.state, t.pod, t.error) for t in status.tasks] == [
        ("start", "SUCCEEDED", "p-start", None),
        ("score", "FAILED", "p-score", "OOMKilled"),
    ]

    assert client.cancel("run-a").state == "CANCELING"
    assert fake_kfp.calls("POST", "/runs/run-a:terminate")


def test_logs_show_tasks_pods_and_the_run_record(fake_kfp, gcs_root):
    run_id = _add_run(
        fake_kfp,
        "x",
        0,
        state="FAILED",
        runtime_config={"parameters": {"root": gcs_root, "run_id": "x"}},
        run_details={"task_details": [{"display_name": "ingest", "state": "FAILED",
                                       "pod_name": "prioritize-x-ingest-1"}]},
    )  # fmt: skip
    client = Client(fake_kfp.url)
    text = format_logs(client.logs(run_id))
    assert f"{gcs_root}/x/run.json cannot be read yet" in text
    storage.write_json(
        f"{gcs_root}/x/run.json",
        {"status": "failed", "failed_stage": "ingest", "error": "pool.npz has no key 'x'.",
         "stages": [{"stage": "start", "seconds": 0.5}]},
    )  # fmt: skip
    text = format_logs(client.logs(run_id))
    assert "kubectl logs -n kubeflow prioritize-x-ingest-1 -c main" in text
    assert f"run.json: {gcs_root}/x/run.json" in text
    assert "failed in ingest: pool.npz has no key 'x'." in text


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b"\xff{",
        b'["a list"]',
        b'{"status": "failed", "stages": "x"}',
        b'{"status": "failed", "stages": [5, {"stage": [1], "seconds": "x"}], "error": {"a": 1}}',
    ],
)
def test_logs_of_a_run_with_a_malformed_run_json_say_so(fake_kfp, gcs_root, data):
    run_id = _add_run(
        fake_kfp, "m", 0, state="FAILED",
        runtime_config={"parameters": {"root": gcs_root, "run_id": "m"}},
    )  # fmt: skip
    storage.write_bytes(f"{gcs_root}/m/run.json", data)
    text = format_logs(Client(fake_kfp.url).logs(run_id))
    assert f"run.json: {gcs_root}/m/run.json" in text
    if data.startswith((b"[", b"\xff")) or b'"stages": "x"' in data:
        assert "is not a run record testprio wrote" in text


def test_watch_yields_each_change_until_the_run_ends(fake_kfp):
    run_id = _add_run(fake_kfp, "w", 0, state="PENDING")
    fake_kfp.script[run_id] = ["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"]
    states = [run.state for run in Client(fake_kfp.url).watch(run_id, interval=0)]
    assert states == ["PENDING", "RUNNING", "SUCCEEDED"]


def test_cli_submit_and_runs(fake_kfp, package, inputs, gcs_root, capsys):
    model, pool = inputs
    host = ["--host", fake_kfp.url]
    code = cli.main(
        ["submit", *host, "--model", str(model), "--data", str(pool), "--root", gcs_root,
         "--run-id", "cli-1", "--param", "metric=margin", "--param", "top-k=3",
         "--package", package, "--service-account", PIPELINE_SERVICE_ACCOUNT]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    (run_id,) = fake_kfp.runs
    assert out.out.splitlines() == [
        f"Submitted prioritize cli-1 (KFP run {run_id}).",
        f"  Kubeflow UI: {fake_kfp.url}/#/runs/details/{run_id}",
        f"  run folder:  {gcs_root}/cli-1",
        f"  follow it:   testprio runs logs {run_id} --follow --host {fake_kfp.url}",
    ]
    assert f"uploaded {model} -> {gcs_root}/cli-1/inputs/model.onnx" in out.err
    sent = fake_kfp.calls("POST", "/runs")[0]["body"]["runtime_config"]["parameters"]
    assert (sent["metric"], sent["top_k"], sent["run_id"]) == ("margin", 3, "cli-1")

    assert cli.main(["runs", "list", *host]) == 0
    assert run_id in capsys.readouterr().out
    assert cli.main(["runs", "status", run_id, *host]) == 0
    assert f"prioritize cli-1 ({run_id}): PENDING" in capsys.readouterr().out
    assert cli.main(["runs", "cancel", run_id, *host]) == 0
    assert (
        capsys.readouterr().out == f"cancel requested: prioritize cli-1 ({run_id}) is CANCELING\n"
    )

    fake_kfp.script[run_id] = ["RUNNING", "CANCELED"]
    assert cli.main(["runs", "logs", run_id, "--follow", "--interval", "0", *host]) == 1
    out = capsys.readouterr()
    assert out.out.startswith("RUNNING\nCANCELED\n")
    assert out.err.strip() == (
        f"testprio: error: run {run_id} ended CANCELED; see the task errors above."
    )


def test_cli_submit_errors_are_one_sentence(fake_kfp, tmp_path, capsys):
    code = cli.main(
        ["submit", "--host", fake_kfp.url, "--model", str(tmp_path / "none.onnx"),
         "--data", "pool.npz", "--root", "gs://b/runs"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("testprio: error: ") and err.count("\n") == 1


def test_compiled_package_parameters_match_what_submit_checks(package):
    parameters = next(yaml.safe_load_all(open(package)))["root"]["inputDefinitions"]["parameters"]
    assert {"model", "data", "root", "run_id", "gpu_batch_size"} <= set(parameters)
    assert "defaultValue" not in parameters["model"]


def test_submit_without_a_package_compiles_the_pipeline_now(fake_kfp, inputs, gcs_root):
    model, pool = inputs
    client = Client(fake_kfp.url)
    parameters = {"model": str(model), "data": str(pool), "root": gcs_root}
    client.submit({**parameters, "run_id": "default-settings"})
    client.submit(
        {**parameters, "run_id": "cpu-only"}, settings=ClusterSettings(gpu=False, parallelism=2)
    )
    default, cpu_only = (call["body"]["pipeline_spec"] for call in fake_kfp.calls("POST", "/runs"))
    assert default["pipeline_spec"]["pipelineInfo"]["name"] == "prioritize"
    executors = default["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-score"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"
    }
    assert "accelerator" not in json.dumps(cpu_only["pipeline_spec"])
    loop = cpu_only["pipeline_spec"]["root"]["dag"]["tasks"]["for-loop-1"]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    # The compiled parameter list is the one submit checks against.
    with pytest.raises(TestprioError, match=r"^'no_such' is not a parameter of the compiled"):
        client.submit({**parameters, "no_such": 1})


def test_submit_refuses_a_package_and_settings_together(fake_kfp, package, inputs):
    model, pool = inputs
    with pytest.raises(TestprioError, match=r"^give either package .* or settings .*not both\.$"):
        Client(fake_kfp.url).submit(
            {"model": str(model), "data": str(pool), "root": "gs://b/runs"},
            package=package,
            settings=ClusterSettings(),
        )


def test_wait_returns_the_final_state_or_times_out(fake_kfp):
    run_id = _add_run(fake_kfp, "wait", 0, state="PENDING")
    fake_kfp.script[run_id] = ["PENDING", "RUNNING", "SUCCEEDED"]
    client = Client(fake_kfp.url)
    assert client.wait(run_id, interval=0).state == "SUCCEEDED"
    stuck = _add_run(fake_kfp, "stuck", 1, state="RUNNING")
    with pytest.raises(TestprioError, match=rf"^run {stuck} is still RUNNING after 0 s; follow"):
        client.wait(stuck, timeout=0, interval=0)


def test_ranking_reads_the_run_folder_as_table_or_dataframe(fake_kfp, gcs_root):
    import pyarrow as pa

    run_id = _add_run(
        fake_kfp,
        "ranked",
        0,
        state="SUCCEEDED",
        runtime_config={"parameters": {"root": gcs_root, "run_id": "ranked"}},
    )
    client = Client(fake_kfp.url)
    with pytest.raises(TestprioError, match=r"has no ranking yet: .*ranking.parquet does not "
                       r"exist \(the run is SUCCEEDED\); wait for the run"):  # fmt: skip
        client.ranking(run_id)
    ranking = pa.table({"rank": [1, 2, 3], "sample_id": [7, 2, 5], "gini": [0.9, 0.5, 0.1]})
    storage.write_table(f"{gcs_root}/ranked/ranking.parquet", ranking)

    assert client.ranking(run_id).equals(ranking)
    top = client.ranking(client.status(run_id), top=2, columns=["sample_id"], pandas=True)
    assert top["sample_id"].tolist() == [7, 2]
    assert list(top.columns) == ["sample_id"]

    no_folder = _add_run(fake_kfp, "bare", 1, state="SUCCEEDED")
    with pytest.raises(TestprioError, match=r"has no run folder"):
        client.ranking(no_folder)
