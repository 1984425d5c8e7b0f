"""Label Studio through its REST API: push an export (the labelling interface, the images,
the tasks) into a project, pull the project's annotations back into the run.

Only documented endpoints: ``/api/token/refresh/`` (a personal access token, a JWT refresh
token, is traded for a short-lived access token sent as ``Authorization: Bearer``; a legacy
token is sent as it is, ``Authorization: Token``), ``/api/current-user/whoami``,
``/api/projects/`` (list, create, read, update), ``/api/projects/{id}/import`` (the images
uploaded as files with ``commit_to_project=false``, so that no task is made of them, then
the tasks as JSON), ``/api/projects/{id}/file-uploads`` (where the uploaded images went) and
``/api/projects/{id}/export`` (every task with its annotations, as Label Studio's JSON
export). Uploading the images works with any server, local or remote, with no storage to
set up on it; the tasks address them where Label Studio serves uploads (``/data/upload/``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from testprio.errors import TestprioError
from testprio.labels.export import plan_export
from testprio.labels.export_files import LabelExport
from testprio.labels.images import IMAGE_WRITERS, web_image
from testprio.labels.merge import ImportResult, import_labels
from testprio.labels.ranks import RankRange
from testprio.layout import RunLayout
from testprio.log import get_logger

log = get_logger("labels")

CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 300
# Label Studio takes at most 100 files in one request (DATA_UPLOAD_MAX_NUMBER_FILES).
UPLOAD_BATCH_FILES = 50
UPLOAD_BATCH_BYTES = 50 << 20
TASK_BATCH = 1000
TITLE_MAX = 50  # Label Studio's limit on a project's title
# Where Label Studio serves a file uploaded into a project (its MEDIA_URL).
MEDIA_PATH = "/data/"
_JWT = re.compile(r"^[\w-]+\.[\w-]+\.[\w-]+$")


def default_project_title(run_id: str) -> str:
    """The project ``push`` makes, and ``pull`` reads, when no ``project`` is given."""
    return f"testprio {run_id}"[:TITLE_MAX]


class LabelStudio:
    """A session with the Label Studio server at ``url``, authenticated by ``token``: a
    personal access token (a JWT, refreshed into a Bearer access token) or a legacy token.

    Every failure is a ``TestprioError`` with one sentence: an unreachable server, a
    refused token (legacy tokens turned off: use a personal access token), a missing
    project, a request the server refused.
    """

    def __init__(self, url: str, token: str) -> None:
        import requests

        url = (url or "").strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise TestprioError(
                f"--label-studio '{url}' is not the address of a Label Studio server; give "
                "its URL, e.g. http://localhost:8080."
            )
        token = (token or "").strip()
        if not token:
            raise TestprioError(
                "no Label Studio token given; copy a personal access token from Label Studio "
                "(Account & Settings > Personal Access Token) and pass it with --token or "
                "LABEL_STUDIO_API_KEY."
            )
        self.url = url
        self.token = token
        self.personal = bool(_JWT.match(token))
        self.session = requests.Session()
        self._authorize()
        self.request("GET", "/api/current-user/whoami", doing="identify its user")

    # --- requests -------------------------------------------------------------------------

    def _authorize(self) -> None:
        if not self.personal:
            self.session.headers["Authorization"] = f"Token {self.token}"
            return
        response = self._send(
            "POST", "/api/token/refresh/", json={"refresh": self.token}, authorized=False
        )
        if response.status_code != 200:
            raise TestprioError(
                f"Label Studio at {self.url} refused the personal access token "
                f"({_detail(response)}); copy a new one from Account & Settings > Personal "
                "Access Token."
            )
        self.session.headers["Authorization"] = f"Bearer {self._json(response)['access']}"

    def _send(self, method: str, path: str, *, authorized: bool = True, **kwargs):
        import requests

        kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        send = self.session.request if authorized else requests.request
        try:
            response = send(method, self.url + path, **kwargs)
        except requests.RequestException as exc:
            reason = type(exc).__name__.replace("Error", " error").lower()
            raise TestprioError(
                f"Label Studio at {self.url} does not answer ({reason}); check the URL and "
                "that the server is running."
            ) from None
        if response.status_code == 401 and authorized and self.personal:
            # The access token lives minutes and a push can take longer: refresh, once.
            self._authorize()
            response = send(method, self.url + path, **kwargs)
        return response

    def request(self, method: str, path: str, *, doing: str, **kwargs) -> Any:
        """The JSON answer of one API call; ``doing`` says what it was for, in messages."""
        return self._check(self._send(method, path, **kwargs), doing)

    def _check(self, response, doing: str) -> Any:
        """The JSON answer of ``response``, or the sentence for its refusal."""
        if response.status_code in (401, 403):
            detail = _detail(response)
            if "legacy token authentication has been disabled" in detail:
                raise TestprioError(
                    f"Label Studio at {self.url} has legacy tokens turned off for its "
                    "organization; use a personal access token (Account & Settings > "
                    "Personal Access Token) instead of the legacy token."
                )
            kind = "personal access token" if self.personal else "token"
            raise TestprioError(
                f"Label Studio at {self.url} refused the {kind} ({detail}) when asked to "
                f"{doing}; copy a personal access token from Account & Settings > Personal "
                "Access Token."
            )
        if response.status_code >= 300:
            raise TestprioError(
                f"Label Studio at {self.url} could not {doing} (HTTP {response.status_code}: "
                f"{_detail(response)})."
            )
        return self._json(response)

    def _json(self, response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise TestprioError(
                f"{self.url} answered {response.request.method} "
                f"{urlsplit(response.url).path} with something other than Label Studio's "
                "JSON; check that the URL is a Label Studio server."
            ) from None

    # --- projects -------------------------------------------------------------------------

    def find_project(self, project: str) -> dict | None:
        """The project with ID ``project`` (it must exist), or the one titled ``project``
        (None: no such title)."""
        if project.strip().isdigit():
            response = self._send("GET", f"/api/projects/{int(project)}/")
            if response.status_code == 404:
                raise TestprioError(
                    f"Label Studio at {self.url} has no project with ID {int(project)} that "
                    "this token may see; check the ID in the project's URL, or give a "
                    "project title."
                )
            return self._check(response, f"read project {int(project)}")
        found, page = [], 1
        while page:
            answer = self.request(
                "GET",
                "/api/projects/",
                params={"title": project, "page": page, "page_size": 100},
                doing="list its projects",
            )
            found += [p for p in answer.get("results", []) if p.get("title") == project]
            page = page + 1 if answer.get("next") else 0
        if len(found) > 1:
            ids = ", ".join(str(p["id"]) for p in found)
            raise TestprioError(
                f"Label Studio at {self.url} has {len(found)} projects titled '{project}' "
                f"(IDs {ids}); give the ID of the one you mean with --project."
            )
        return found[0] if found else None

    def project_tasks(self, project_id: int) -> tuple[bytes, list[dict]]:
        """Every task of the project with its annotations: Label Studio's JSON export, as
        bytes and parsed."""
        response = self._send(
            "GET",
            f"/api/projects/{project_id}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )
        tasks = self._check(response, f"export project {project_id}")
        if not isinstance(tasks, list):
            raise TestprioError(
                f"Label Studio at {self.url} exported project {project_id} as something "
                "other than a list of tasks; check that the URL is a Label Studio server."
            )
        return response.content, tasks

    def project_url(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}/"

    def media_url(self, name: str) -> str:
        """The address (without the host) Label Studio serves an uploaded file ``name`` at:
        under the server's path, if it is served under one."""
        return urlsplit(self.url).path.rstrip("/") + MEDIA_PATH + name


def _detail(response) -> str:
    """Label Studio's own words for a refusal (its ``detail`` and validation errors)."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    text = str(body.get("detail") or "").strip()
    errors = body.get("validation_errors")
    if errors:
        text = (text + " " if text else "") + json.dumps(errors)[:300]
    return text or f"HTTP {response.status_code}"


# --- push -----------------------------------------------------------------------------------


@dataclass
class PushResult:
    """What a push did: the project, the tasks it added, those already there."""

    project_id: int
    project_title: str
    project_url: str
    created: bool  # a new project
    added: int
    already: int  # samples the project had tasks for already (not pushed again)
    export: LabelExport = field(repr=False)

    def sentence(self) -> str:
        export = self.export
        answer = "pre-annotated" if export.pre_annotate else "blind"
        text = (
            f"Pushed ranks {export.ranks} of run {export.run_id} to Label Studio project "
            f"'{self.project_title}' ({'new, ' if self.created else ''}ID {self.project_id}): "
            f"{self.added:,} tasks added with their {export.image_mode} images uploaded "
            f"({answer})"
        )
        if self.already:
            text += f", {self.already:,} samples that had a task there already left as they were"
        return f"{text}. Label them at {self.project_url}, then run testprio labels pull."


@dataclass
class _UploadSink:
    """The export's images, uploaded into a project in batches; ``urls``: image name -> the
    address the tasks give it."""

    client: LabelStudio
    project_id: int
    urls: dict[str, str] = field(default_factory=dict)
    _batch: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    _bytes: int = 0

    def put_bytes(self, name: str, data: bytes) -> None:
        shown_name, mime, shown = web_image(name, data)
        self._batch.append((name, os.path.basename(shown_name), mime, shown))
        self._bytes += len(shown)
        if len(self._batch) >= UPLOAD_BATCH_FILES or self._bytes >= UPLOAD_BATCH_BYTES:
            self.flush()

    def put_file(self, name: str, uri: str) -> None:
        from testprio import storage

        self.put_bytes(name, storage.read_bytes(uri))

    def flush(self) -> None:
        if not self._batch:
            return
        files = [
            (f"file{i}", (base, data, mime)) for i, (_, base, mime, data) in enumerate(self._batch)
        ]
        answer = self.client.request(
            "POST",
            f"/api/projects/{self.project_id}/import",
            params={"commit_to_project": "false"},
            files=files,
            doing=f"take {len(files)} images into project {self.project_id}",
        )
        ids = answer.get("file_upload_ids") if isinstance(answer, dict) else None
        if not ids or len(ids) != len(files):
            raise TestprioError(
                f"Label Studio at {self.client.url} took {len(ids or [])} of {len(files)} "
                f"images into project {self.project_id}; push again, or check the server's "
                "upload limits (DATA_UPLOAD_MAX_NUMBER_FILES, DATA_UPLOAD_MAX_MEMORY_SIZE)."
            )
        uploads = self.client.request(
            "GET",
            f"/api/projects/{self.project_id}/file-uploads",
            params={"ids": json.dumps(ids)},
            doing=f"list the images uploaded into project {self.project_id}",
        )
        # Label Studio stores an upload as upload/PROJECT/XXXXXXXX-NAME: find each by NAME.
        stored = {os.path.basename(u["file"]).split("-", 1)[-1]: u["file"] for u in uploads}
        for name, base, _, _ in self._batch:
            if base not in stored:
                raise TestprioError(
                    f"Label Studio at {self.client.url} does not list the uploaded image "
                    f"{base} in project {self.project_id}; push again."
                )
            self.urls[name] = self.client.media_url(stored[base])
        self._batch, self._bytes = [], 0


def _project_for_push(client: LabelStudio, project: str, export: LabelExport) -> tuple[dict, bool]:
    """The project to push into (found, or made with the export's interface), and whether
    it was made now; a found project gets the export's interface if it has another."""
    config = export.config_xml()
    found = client.find_project(project)
    if found is None:
        made = client.request(
            "POST",
            "/api/projects/",
            json={
                "title": project[:TITLE_MAX],
                "description": f"testprio run {export.run_id}, ranked by {export.metric}",
                "label_config": config,
            },
            doing=f"create the project '{project}'",
        )
        return made, True
    if _squeeze(found.get("label_config", "")) != _squeeze(config):
        client.request(
            "PATCH",
            f"/api/projects/{found['id']}/",
            json={"label_config": config},
            doing=f"set the labelling interface of project {found['id']}",
        )
    return found, False


def _squeeze(xml: str) -> str:
    return re.sub(r"\s+", "", xml)


def _sample_ids_of_run(client: LabelStudio, project_id: int, tasks: list[dict], run_id: str):
    """The sample ids the project's tasks carry; every task must be of run ``run_id``."""
    ids = set()
    for task in tasks:
        meta = task.get("meta") if isinstance(task.get("meta"), dict) else {}
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        other = meta.get("run_id")
        if other is not None and str(other) != run_id:
            raise TestprioError(
                f"Label Studio project {project_id} at {client.url} holds tasks of run "
                f"{other}, not of run {run_id}; give each run a project of its own "
                "(--project)."
            )
        sample_id = data.get("sample_id", meta.get("sample_id"))
        if sample_id is not None:
            ids.add(int(sample_id))
    return ids


def push_export(
    layout: RunLayout,
    client: LabelStudio,
    *,
    ranks: RankRange,
    project: str | None = None,
    pre_annotate: bool = False,
    data_uri: str | None = None,
) -> PushResult:
    """Push ranks ``ranks`` of a run into a Label Studio project: the project titled (or
    with the ID) ``project``, made when no project has that title (default: "testprio
    RUN_ID"). Uploads the images and imports one task per sample the project does not hold
    yet; blind unless ``pre_annotate``."""
    export = plan_export(layout, ranks=ranks, data_uri=data_uri, pre_annotate=pre_annotate)
    title = (project or "").strip() or default_project_title(layout.run_id)
    found, created = _project_for_push(client, title, export)
    project_id = int(found["id"])
    _, tasks = client.project_tasks(project_id)
    present = _sample_ids_of_run(client, project_id, tasks, layout.run_id)
    rows = [row for row in export.rows if row["sample_id"] not in present]
    if rows:
        images = {row["image"] for row in rows}
        part = replace(
            export,
            rows=rows,
            originals={k: v for k, v in export.originals.items() if k in images},
        )
        sink = _UploadSink(client, project_id)
        IMAGE_WRITERS[part.image_mode](part, sink, layout)
        sink.flush()
        export.image_urls = sink.urls
        for start in range(0, len(rows), TASK_BATCH):
            client.request(
                "POST",
                f"/api/projects/{project_id}/import",
                json=export.tasks(rows[start : start + TASK_BATCH]),
                doing=f"import the tasks into project {project_id}",
            )
    result = PushResult(
        project_id=project_id,
        project_title=str(found.get("title") or title),
        project_url=client.project_url(project_id),
        created=created,
        added=len(rows),
        already=len(export.rows) - len(rows),
        export=export,
    )
    log.info("labels: %s", result.sentence())
    return result


# --- pull -----------------------------------------------------------------------------------


def pull_project(layout: RunLayout, client: LabelStudio, *, project: str | None = None):
    """Import the annotations of a Label Studio project into the run, as ``import_labels``
    does with an exported file: the project titled (or with the ID) ``project`` (default:
    "testprio RUN_ID"). Returns the ``ImportResult``."""
    title = (project or "").strip() or default_project_title(layout.run_id)
    found = client.find_project(title)
    if found is None:
        raise TestprioError(
            f"Label Studio at {client.url} has no project titled '{title}'; give the title "
            "or ID that testprio labels push printed with --project."
        )
    project_id = int(found["id"])
    data, tasks = client.project_tasks(project_id)
    _sample_ids_of_run(client, project_id, tasks, layout.run_id)
    name = f"Label Studio project {project_id} at {client.url}"
    result: ImportResult = import_labels(layout, name, data=data)
    return result
