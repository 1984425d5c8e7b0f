"""testprio labels push/pull and the report app's zip against a real Label Studio server
(``make label-studio`` installs it; tests/labelstudiokit.py starts it on a loopback port):
the tasks and images arrive, annotations made through Label Studio's API come back as the
run's labels, with a personal access token and a legacy token; each failure is one
sentence."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import zipfile

import pytest
import requests

from testprio import api, cli, labels, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from tests import labelstudiokit
from tests.conftest import _free_port, linear_classifier
from tests.stagekit import run_stages
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS
from tests.test_labels import CLASSES, OPS, make_digit_folder

# Outside CI a developer without `make label-studio` may skip these tests; CI (CI=true)
# never skips them: `make test` installs Label Studio, so a missing server is a failure.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not labelstudiokit.installed() and os.environ.get("CI") != "true",
        reason="Label Studio is not installed (make label-studio)",
    ),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A pool of 40 real digits as PNGs in class folders d0..d9, and a tiny model."""
    folder = tmp_path_factory.mktemp("label-studio-inputs")
    make_digit_folder(folder / "pool", count=40)
    linear_classifier(folder / "m.onnx", seed=1)
    return folder


@pytest.fixture(scope="module")
def ranked_run(inputs, tmp_path_factory) -> RunLayout:
    root = str(tmp_path_factory.mktemp("label-studio-runs") / "runs")
    return run_stages(inputs / "m.onnx", inputs / "pool", root, "img", ops=OPS, top_k=6)


@pytest.fixture
def run_copy(ranked_run, tmp_path) -> RunLayout:
    """A fresh copy of the run, for a test that imports labels into it."""
    shutil.copytree(ranked_run.uri, tmp_path / "runs" / "img")
    return RunLayout(str(tmp_path / "runs" / "img"))


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """Label Studio over a copy of the template data folder; stopped at the end."""
    running = labelstudiokit.start(tmp_path_factory.mktemp("label-studio"))
    yield running.url
    running.stop()


@pytest.fixture(scope="session")
def legacy_token(server) -> str:
    return labelstudiokit.LEGACY_TOKEN


@pytest.fixture(scope="session")
def personal_token(server, legacy_token) -> str:
    """A personal access token (a JWT refresh token) of the test user, made through the API
    as Account & Settings > Personal Access Token makes it."""
    answer = requests.post(f"{server}/api/token/", headers=_legacy(legacy_token), timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()["token"]


def _legacy(token: str) -> dict:
    return {"Authorization": f"Token {token}"}


def ls(server: str, method: str, path: str, **kwargs):
    """A call to Label Studio as the test user (legacy token): what a labeller's browser does."""
    headers = _legacy(labelstudiokit.LEGACY_TOKEN)
    answer = requests.request(method, server + path, headers=headers, timeout=60, **kwargs)
    assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text[:300]}"
    return answer


def project_tasks(server: str, project_id: int) -> list[dict]:
    params = {"exportType": "JSON", "download_all_tasks": "true"}
    return ls(server, "GET", f"/api/projects/{project_id}/export", params=params).json()


def annotate(server: str, task: dict, choice: str) -> None:
    """A labeller's Submit: one annotation choosing ``choice``."""
    result = [{"from_name": "label", "to_name": "image", "type": "choices"}]
    result[0]["value"] = {"choices": [choice]}
    ls(server, "POST", f"/api/tasks/{task['id']}/annotations/", json={"result": result})


def imported(layout: RunLayout) -> dict[int, int]:
    table = storage.read_table(labels.labels_uri(layout))
    ids, values = table.column("sample_id").to_pylist(), table.column("label").to_pylist()
    return dict(zip(ids, values, strict=True))


def test_push_and_pull_with_a_personal_access_token(server, personal_token, run_copy, inputs):
    result = api.push_labels(run_copy.uri, url=server, token=personal_token, top_k=8)
    assert (result.created, result.added, result.already) == (True, 8, 0)
    assert result.project_title == "testprio img"
    assert result.sentence().startswith(
        "Pushed ranks 1-8 of run img to Label Studio project 'testprio img' (new, ID "
    )
    project = ls(server, "GET", f"/api/projects/{result.project_id}/").json()
    assert project["label_config"] == result.export.config_xml().strip()
    tasks = sorted(project_tasks(server, result.project_id), key=lambda t: t["data"]["rank"])
    rows = result.export.rows
    assert [t["data"]["sample_id"] for t in tasks] == [row["sample_id"] for row in rows]
    for task, row in zip(tasks, rows, strict=True):
        # Blind: the labeller sees the image, not the model's class.
        assert task["predictions"] == [] and set(task["data"]) == {"image", "sample_id", "rank"}
        assert task["meta"]["run_id"] == "img"
        image = ls(server, "GET", task["data"]["image"])
        assert image.headers["Content-Type"] == "image/png"
        assert image.content == (inputs / "pool" / row["source"]).read_bytes()
    # Five labels: the pool's own class for some samples, another class for the others.
    truth = {row["sample_id"]: int(row["source"].split("/")[0][1:]) for row in rows}
    chosen = {}
    for number, task in enumerate(tasks[:5]):
        sample_id = task["data"]["sample_id"]
        chosen[sample_id] = truth[sample_id] if number % 2 else (truth[sample_id] + 1) % 10
        annotate(server, task, CLASSES[chosen[sample_id]])
    pulled = api.pull_labels(run_copy.uri, url=server, token=personal_token)
    assert (pulled.read, pulled.skipped, pulled.added) == (5, 3, 5)
    assert imported(run_copy) == chosen
    assert pulled.labelled["file"] == f"Label Studio project {result.project_id} at {server}"
    predicted = {row["sample_id"]: row["predicted"] for row in rows}
    wrong = sum(chosen[i] != predicted[i] for i in chosen)
    assert pulled.labelled["misclassified"] == wrong
    assert pulled.report == run_copy.report_html  # rendered again with them
    html = storage.read_bytes(run_copy.report_html).decode()
    assert 'id="imported-labels"' in html and f"{len(chosen)} samples labelled" in html


def test_push_again_adds_only_new_samples_with_a_legacy_token(
    server, legacy_token, run_copy, capsys
):
    base = ["labels", "push", "--run", run_copy.uri, "--label-studio", server]
    argv = [*base, "--token", legacy_token, "--project", "batches", "--pre-annotate"]
    assert cli.main([*argv, "--top-k", "3"]) == 0
    assert "3 tasks added with their original images uploaded (pre-annotated)" in (
        capsys.readouterr().out
    )
    assert cli.main([*argv, "--ranks", "1-5"]) == 0
    printed = capsys.readouterr().out
    assert "2 tasks added" in printed and "3 samples that had a task there already" in printed
    (project,) = ls(server, "GET", "/api/projects/", params={"title": "batches"}).json()["results"]
    tasks = sorted(project_tasks(server, project["id"]), key=lambda t: t["data"]["rank"])
    assert [t["data"]["rank"] for t in tasks] == [1, 2, 3, 4, 5]
    rows = {
        row["sample_id"]: row
        for row in labels.plan_export(
            run_copy, ranks=labels.RankRange(1, 5), pre_annotate=True
        ).rows
    }
    for task in tasks:  # pre-annotated: the model's class is a prediction Label Studio shows
        (prediction,) = ls(server, "GET", "/api/predictions/", params={"task": task["id"]}).json()
        row = rows[task["data"]["sample_id"]]
        assert prediction["result"][0]["value"] == {"choices": [row["predicted_name"]]}
        assert task["data"]["predicted"] == row["predicted_name"]
    annotate(server, tasks[0], "d7")
    pull = ["labels", "pull", "--run", run_copy.uri, "--label-studio", server]
    assert cli.main([*pull, "--token", legacy_token, "--project", str(project["id"])]) == 0
    assert capsys.readouterr().out.startswith("Imported 1 labels from Label Studio project")
    assert imported(run_copy) == {tasks[0]["data"]["sample_id"]: 7}


def test_a_project_holds_one_run(server, personal_token, run_copy, tmp_path):
    other = tmp_path / "runs" / "other"
    shutil.copytree(run_copy.uri, other)
    api.push_labels(run_copy.uri, url=server, token=personal_token, top_k=2, project="one run")
    with pytest.raises(
        TestprioError,
        match=r"project \d+ at http://127\.0\.0\.1:\d+ holds tasks of run img, not of run "
        r"other; give each run a project of its own \(--project\)\.$",
    ):
        api.push_labels(str(other), url=server, token=personal_token, top_k=2, project="one run")
    with pytest.raises(TestprioError, match=r"holds tasks of run img, not of run other"):
        api.pull_labels(str(other), url=server, token=personal_token, project="one run")


def test_failures_are_one_sentence(server, personal_token, legacy_token, run_copy):
    def push(url=server, token=personal_token, **options):
        return api.push_labels(run_copy.uri, url=url, token=token, top_k=1, **options)

    free = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(
        TestprioError,
        match=rf"^Label Studio at {free} does not answer \(connection error\); check the URL "
        "and that the server is running.$",
    ):
        push(url=free)
    with pytest.raises(TestprioError, match=r"^--label-studio 'localhost:8080' is not the addr"):
        push(url="localhost:8080")
    with pytest.raises(TestprioError, match=r"^no Label Studio token given; copy a personal"):
        push(token="")
    with pytest.raises(
        TestprioError,
        match=r"refused the token \(Invalid token\.\) when asked to identify its user; copy a "
        r"personal access token from Account & Settings > Personal Access Token\.$",
    ):
        push(token="0" * 40)
    with pytest.raises(
        TestprioError, match=r"refused the personal access token \(Token is invalid\); copy a new"
    ):
        push(token=personal_token[:-4] + "AAAA")
    with pytest.raises(
        TestprioError, match=r"has no project with ID 9999 that this token may see; check the ID"
    ):
        push(project="9999")
    with pytest.raises(
        TestprioError,
        match=r"has no project titled 'never pushed'; give the title or ID that testprio "
        r"labels push printed with --project\.$",
    ):
        api.pull_labels(run_copy.uri, url=server, token=personal_token, project="never pushed")
    # Label Studio 1.23 turns legacy tokens off for new organizations: say what to use.
    settings = {"api_tokens_enabled": True, "legacy_api_tokens_enabled": False}
    bearer = _bearer(server, personal_token)
    requests.post(f"{server}/api/jwt/settings", json=settings, headers=bearer, timeout=30)
    try:
        with pytest.raises(
            TestprioError,
            match=r"has legacy tokens turned off for its organization; use a personal access "
            r"token \(Account & Settings > Personal Access Token\) instead of the legacy token",
        ):
            push(token=legacy_token)
    finally:
        settings["legacy_api_tokens_enabled"] = True
        answer = requests.post(
            f"{server}/api/jwt/settings", json=settings, headers=bearer, timeout=30
        )
        assert answer.status_code < 300, answer.text


def _bearer(server: str, personal_token: str) -> dict:
    answer = requests.post(
        f"{server}/api/token/refresh/", json={"refresh": personal_token}, timeout=30
    )
    return {"Authorization": f"Bearer {answer.json()['access']}"}


def test_the_app_zip_works_in_label_studio_as_it_is(server, run_copy):
    """The report app's zip, loaded as its README says (config pasted, tasks file
    uploaded): the tasks carry their images, and the exported annotations import back."""
    archive = zipfile.ZipFile(io.BytesIO(labels.export_zip_bytes(run_copy, top_k=3)))
    readme = archive.read("README.txt").decode()
    assert "Blind export" in readme and "carries its image inline (a data: URI)" in readme
    config = archive.read("label_studio_config.xml").decode()
    project = ls(server, "POST", "/api/projects/", json={"title": "zip", "label_config": config})
    project_id = project.json()["id"]
    upload = {"file": ("label_studio_tasks.json", archive.read("label_studio_tasks.json"))}
    ls(server, "POST", f"/api/projects/{project_id}/import", files=upload)
    tasks = sorted(project_tasks(server, project_id), key=lambda t: t["data"]["rank"])
    rows = list(labels.plan_export(run_copy, ranks=labels.RankRange(1, 3)).rows)
    assert len(tasks) == 3
    for task, row in zip(tasks, rows, strict=True):
        head, _, payload = task["data"]["image"].partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(payload) == archive.read(row["image"])
    annotate(server, tasks[1], "d2")
    exported = json.dumps(project_tasks(server, project_id)).encode()
    result = labels.import_labels(run_copy, "project.json", data=exported)
    assert result.read == 1 and imported(run_copy) == {tasks[1]["data"]["sample_id"]: 2}


@pytest.mark.browser
@pytest.mark.skipif(
    not shutil.which(CHROMIUM) and os.environ.get("CI") != "true",
    reason=f"{CHROMIUM} is missing (make test installs chromium)",
)
def test_the_images_show_in_label_studio_in_chromium(server, run_copy):
    """A labeller's view: the pushed (uploaded) images and the app zip's embedded images are
    drawn in Label Studio's labelling page; no class is chosen beforehand unless the export
    is pre-annotated, where Label Studio ticks the model's class."""
    from playwright.sync_api import sync_playwright

    def push(project: str, pre_annotate: bool) -> int:
        return api.push_labels(
            run_copy.uri,
            url=server,
            token=labelstudiokit.LEGACY_TOKEN,
            top_k=2,
            project=project,
            pre_annotate=pre_annotate,
        ).project_id

    archive = zipfile.ZipFile(io.BytesIO(labels.export_zip_bytes(run_copy, top_k=2)))
    config = archive.read("label_studio_config.xml").decode()
    zipped = ls(
        server, "POST", "/api/projects/", json={"title": "seen zip", "label_config": config}
    )
    upload = {"file": ("label_studio_tasks.json", archive.read("label_studio_tasks.json"))}
    ls(server, "POST", f"/api/projects/{zipped.json()['id']}/import", files=upload)
    views = [  # project, where its images come from, classes ticked when the page opens
        (push("seen", False), "/data/upload/", 0),
        (zipped.json()["id"], "data:image/png", 0),
        (push("seen pre-annotated", True), "/data/upload/", 1),
    ]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{server}/user/login/")
        page.fill('input[name="email"]', labelstudiokit.USERNAME)
        page.fill('input[name="password"]', labelstudiokit.PASSWORD)
        page.click('button[type="submit"]')
        page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)
        for project_id, source, ticked in views:
            task = project_tasks(server, project_id)[0]
            page.goto(f"{server}/projects/{project_id}/data?tab=0&task={task['id']}")
            drawn = f'img[src*="{source}"]'
            page.wait_for_function(
                f"Array.from(document.querySelectorAll('{drawn}')).some(i => i.naturalWidth > 0)",
                timeout=90_000,
            )
            page.get_by_role("button", name="Submit").wait_for(timeout=30_000)
            choices = "document.querySelectorAll('input[type=checkbox]').length >= 10"
            page.wait_for_function(choices, timeout=30_000)  # one per class
            assert page.locator('input[type="checkbox"]:checked').count() == ticked
        chromium.close()
