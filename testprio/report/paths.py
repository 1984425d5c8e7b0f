"""Paths under the report's root: every file the report reads or serves is reached here.

Everything that comes from a URL parameter goes through ``resolve_run``, which accepts a
plain run id under the root and nothing else (no ``..``, no absolute path, no scheme); every
file of a run goes through ``run_file`` or ``shard_file``, which refuse one whose real path
leads out of the root.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import RUN_ID_PATTERN, SHARD_NAME_PATTERN, RunLayout


def resolve_under_root(root: str, relative: str) -> str:
    """``root/relative`` for a relative path that stays under ``root``; refuses the rest.

    Refused: absolute paths, ``..`` or ``.`` components, backslashes, URI schemes, empty
    parts. Local paths are also checked after resolving symbolic links.
    """
    root = storage.normalize_root(root)
    text = str(relative)
    parts = text.split("/")
    if (
        not text
        or text.startswith("/")
        or "\\" in text
        or "://" in text
        or ":" in parts[0]
        or "\x00" in text
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise TestprioError(f"'{text}' is not a path under the report's root {root}.")
    target = storage.join(root, *parts)
    if not root.startswith(storage.GCS_SCHEME):
        real_root = os.path.realpath(root)
        real_target = os.path.realpath(target)
        if os.path.commonpath([real_root, real_target]) != real_root:
            raise TestprioError(f"'{text}' leads outside the report's root {root}.")
    return target


def resolve_run(root: str, run_id: str) -> RunLayout:
    """The run ``run_id`` under ``root``: a single folder name, as ``--run-id`` allows."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise TestprioError(f"'{run_id}' is not a run id; pick a run from the list.")
    return RunLayout(resolve_under_root(root, run_id))


def run_file(layout: RunLayout, uri: str) -> str:
    """``uri``, a file of the run at ``layout``, if its real path stays under the runs root.

    Every file the report reads or serves goes through here (or ``shard_file``), so that a
    symbolic link or a crafted name inside a run folder cannot reach a file elsewhere.
    """
    base = layout.uri.rstrip("/")
    root, _, run_id = base.rpartition("/")
    if not uri.startswith(base + "/"):
        raise TestprioError(f"'{uri}' is not a file of run {run_id}.")
    return resolve_under_root(root, f"{run_id}/{uri[len(base) + 1 :]}")


def shard_file(layout: RunLayout, folder: str, name: Any) -> str:
    """Shard ``name`` (as ``data/manifest.json`` lists it) in the run's ``data/`` or ``scores/``."""
    if not isinstance(name, str) or not SHARD_NAME_PATTERN.match(name):
        raise TestprioError(
            f"data/manifest.json of run {layout.run_id} lists the shard '{name}', which is not "
            "a shard-NNNNN.parquet file name; the run folder was changed after ingest wrote it."
        )
    return run_file(layout, storage.join(layout.uri, folder, name))


def read_json_or_none(uri: str | None) -> Any:
    """The JSON at ``uri``; None for no uri, a missing file or one that is not JSON."""
    if uri is None:
        return None
    try:
        return storage.read_json(uri)
    except (TestprioError, ValueError):
        return None


def basename(uri: str | None) -> str:
    """The last part of a path or URI (``model.onnx`` of ``gs://b/models/model.onnx/``)."""
    return posixpath.basename(str(uri or "").rstrip("/"))
