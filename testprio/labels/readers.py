"""Read a labels file: one reader per format (a Label Studio JSON or JSON-MIN export, a CSV
with ``sample_id`` and ``label`` columns), each giving the labelled entries as they are
written (class names or indices) and how many tasks or rows had no label."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from testprio import storage
from testprio.errors import TestprioError
from testprio.labels.formats import FROM_NAME, TASKS_NAME


@dataclass(frozen=True)
class FileLabel:
    """One label as a file gives it, before it is checked against the run."""

    sample_id: int
    value: Any  # a class name, an index, or its text
    where: str  # for messages: "line 4" or "task 3"


def _sample_id(value: Any, where: str, uri: str) -> int:
    if isinstance(value, bool) or value is None:
        ok = False
    elif isinstance(value, int):
        ok = True
    else:
        ok = bool(re.fullmatch(r"\s*\d+\s*", str(value)))
    if not ok:
        raise TestprioError(
            f"{where} of {uri} has the sample_id {value!r}, which is not a sample id (a "
            "whole number); keep the sample_id column as testprio exported it."
        )
    return int(value)


def read_text(uri: str, data: bytes | None = None) -> str:
    """The labels file as text: ``data`` (an upload) when given, else the file at ``uri``."""
    if data is None:
        if not storage.exists(uri):
            raise TestprioError(f"the label file {uri} does not exist; check the path.")
        data = storage.read_bytes(uri)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TestprioError(
            f"{uri} is not UTF-8 text; save it as UTF-8 (JSON from Label Studio or CSV)."
        ) from None


def _choice_of(task: dict, where: str, uri: str) -> Any | None:
    """The one class the task's annotations chose (None: not labelled)."""
    chosen: list[Any] = []
    for annotation in task.get("annotations") or []:
        if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
            continue
        for result in annotation.get("result") or []:
            value = result.get("value") if isinstance(result, dict) else None
            choices = value.get("choices") if isinstance(value, dict) else None
            if choices is None:
                continue
            if not isinstance(choices, list) or len(choices) != 1:
                raise TestprioError(
                    f"{where} of {uri} chose {choices!r}, not one class; label every image "
                    "with exactly one class."
                )
            chosen.append(choices[0])
    distinct = list(dict.fromkeys(str(choice) for choice in chosen))
    if len(distinct) > 1:
        raise TestprioError(
            f"{where} of {uri} has annotations with conflicting labels "
            f"({', '.join(distinct)}); keep one annotation per task in Label Studio and "
            "export again."
        )
    return chosen[0] if chosen else None


def read_label_studio(uri: str, text: str) -> tuple[list[FileLabel], int]:
    """A Label Studio JSON export (annotations per task) or JSON-MIN export (the choice on
    the task itself)."""
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TestprioError(
            f"{uri} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "export the project from Label Studio again as JSON."
        ) from None
    if not isinstance(tasks, list):
        raise TestprioError(
            f"{uri} is JSON but not a Label Studio export (a list of tasks); export the "
            "project from Label Studio as JSON."
        )
    labels, skipped = [], 0
    for number, task in enumerate(tasks, 1):
        where = f"task {number}"
        if not isinstance(task, dict):
            raise TestprioError(
                f"{where} of {uri} is not a JSON object; export the project from Label "
                "Studio as JSON."
            )
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        meta = task.get("meta") if isinstance(task.get("meta"), dict) else {}
        # JSON-MIN exports flatten data and the choice onto the task itself.
        raw_id = data.get("sample_id", meta.get("sample_id", task.get("sample_id")))
        if raw_id is None:
            raise TestprioError(
                f"{where} of {uri} has no data.sample_id; label the tasks from "
                f"{TASKS_NAME} that testprio labels export wrote, which carry it."
            )
        sample_id = _sample_id(raw_id, where, uri)
        if "annotations" in task:
            choice = _choice_of(task, f"{where} (sample {sample_id})", uri)
        else:
            choice = task.get(FROM_NAME)
        if choice is None or choice == "":
            skipped += 1
            continue
        labels.append(FileLabel(sample_id, choice, where))
    return labels, skipped


def read_csv(uri: str, text: str) -> tuple[list[FileLabel], int]:
    """A CSV with a header line holding ``sample_id`` and ``label`` (any other columns)."""
    reader = csv.DictReader(io.StringIO(text))
    header = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    if "sample_id" not in header or "label" not in header:
        raise TestprioError(
            f"{uri} has no sample_id and label columns (found: "
            f"{', '.join(n for n in header if n) or 'none'}); give a CSV with a header line "
            "holding both, like the labels.csv that testprio labels export wrote."
        )
    labels, skipped = [], 0
    try:
        for row in reader:
            where = f"line {reader.line_num}"
            value = (row.get(header["label"]) or "").strip()
            raw_id = (row.get(header["sample_id"]) or "").strip()
            if not value:
                skipped += 1
                continue
            sample_id = _sample_id(raw_id, where, uri)
            labels.append(FileLabel(sample_id, value, where))
    except csv.Error as exc:
        raise TestprioError(
            f"{uri} is not a readable CSV file ({exc} near line {reader.line_num}); save it "
            "as CSV again."
        ) from None
    return labels, skipped


LABEL_READERS: dict[str, Callable[[str, str], tuple[list[FileLabel], int]]] = {
    "json": read_label_studio,
    "csv": read_csv,
}


def file_kind(uri: str, text: str) -> str:
    """The key in ``LABEL_READERS``: by extension, else by the first character."""
    extension = os.path.splitext(uri)[1].lower().lstrip(".")
    if extension in LABEL_READERS:
        return extension
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"
