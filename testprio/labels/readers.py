"""Read a labels file: one reader per format (a Label Studio JSON or JSON-MIN export, a CSV
with ``sample_id`` and ``label`` columns), each yielding the entries as they are written
(class names or indices; ``None`` for a task or row without a label), one at a time.

Files come from people and tools, so nothing in them is trusted: the file must be a regular
file within a size limit (``--max-file-mb``), it is parsed an entry at a time (memory stays
within a few times its size), every field is checked for its JSON type, numbers for their
range, and no sentence quotes a header cell (a file that is not a labels file, a token, say,
has its secret on its first line).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from testprio import storage
from testprio.errors import TestprioError
from testprio.labels.formats import FROM_NAME, TASKS_NAME

# --max-file-mb: a Label Studio export of 100,000 tasks is about 200 MB.
DEFAULT_MAX_FILE_MB = 256.0
MAX_SAMPLE_ID = 2**63 - 1  # sample_id is int64
_WHOLE = re.compile(r"\s*\d+\s*")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def short(value: Any, limit: int) -> str:
    """``value`` as text of at most ``limit`` characters (a cell may be megabytes long)."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class FileLabel:
    """One entry as a file gives it, before it is checked against the run: ``value`` is
    a class name, an index or its text, None where the task or row has no label."""

    sample_id: int
    value: Any
    unit: str  # "line" or "task"
    number: int

    @property
    def where(self) -> str:
        """For messages: ``line 4`` or ``task 3``."""
        return f"{self.unit} {self.number}"


def _sample_id(value: Any, where: str, uri: str) -> int:
    if isinstance(value, bool) or value is None:
        number = None
    elif isinstance(value, int):
        number = value
    else:
        text = str(value)
        # Past 19 digits it is out of range anyway; int() refuses 4,300 digits and more.
        number = int(text) if _WHOLE.fullmatch(text) and len(text.strip()) <= 19 else None
    if number is None or not 0 <= number <= MAX_SAMPLE_ID:
        shown = short(value, 53) if isinstance(value, str) else short(repr(value), 53)
        if isinstance(value, str):
            shown = f"'{shown}'"
        raise TestprioError(
            f"{where} of {uri} has the sample_id {shown}, which is not a sample id (a whole "
            f"number from 0 to {MAX_SAMPLE_ID:,}); keep the sample_id column as testprio "
            "exported it."
        )
    return number


def read_file(uri: str, data: bytes | None = None, *, max_file_mb: float = DEFAULT_MAX_FILE_MB):
    """The labels file's bytes: ``data`` (an upload) when given, else the file at ``uri``,
    which must be a regular file; at most ``max_file_mb`` MB either way."""
    if not max_file_mb > 0:
        raise TestprioError(f"--max-file-mb {max_file_mb} must be a positive number of MB.")
    limit = int(max_file_mb * 2**20)

    def too_large(size: str) -> TestprioError:
        return TestprioError(
            f"{uri} is larger than the limit of {max_file_mb:g} MB for a labels file "
            f"({size} bytes); import it in parts or raise --max-file-mb."
        )

    if data is not None:
        if len(data) > limit:
            raise too_large(f"{len(data):,}")
        return data
    if not uri.startswith(storage.GCS_SCHEME):
        try:
            status = os.stat(uri)
        except FileNotFoundError:
            raise TestprioError(f"the label file {uri} does not exist; check the path.") from None
        except OSError as exc:
            raise TestprioError(
                f"the label file {uri} cannot be read ({exc.strerror}); check the path."
            ) from None
        if stat.S_ISDIR(status.st_mode):
            raise TestprioError(
                f"the label file {uri} is a folder; give the labels file in it (a Label "
                "Studio JSON export or a CSV)."
            )
        if not stat.S_ISREG(status.st_mode):  # /dev/zero, a FIFO, a socket: endless or stuck
            raise TestprioError(
                f"the label file {uri} is not a regular file (a device, pipe or socket); give "
                "the labels file itself (a Label Studio JSON export or a CSV)."
            )
        if status.st_size > limit:
            raise too_large(f"{status.st_size:,}")
    elif not storage.exists(uri):
        raise TestprioError(f"the label file {uri} does not exist; check the path.")
    with storage.open_read(uri) as handle:
        data = handle.read(limit + 1)  # a file that grows meanwhile stops here too
    if len(data) > limit:
        raise too_large(f"more than {limit:,}")
    return data


def _not_utf8(uri: str) -> TestprioError:
    return TestprioError(
        f"{uri} is not UTF-8 text; save it as UTF-8 (JSON from Label Studio or CSV)."
    )


def _unreadable_json(uri: str, reason: str) -> TestprioError:
    return TestprioError(
        f"{uri} cannot be read as a Label Studio export ({reason}); export the project from "
        "Label Studio again as JSON."
    )


def _decode_error(uri: str, text: str, exc: ValueError, position: int) -> TestprioError:
    if isinstance(exc, json.JSONDecodeError):
        return TestprioError(
            f"{uri} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "export the project from Label Studio again as JSON."
        )
    if "digits" in str(exc):  # Python's limit on int conversion (4,300 digits)
        return _unreadable_json(uri, "a number has more than 4,300 digits")
    line = text.count("\n", 0, position) + 1
    return _unreadable_json(uri, f"a value at line {line} cannot be read")


def _json_values(uri: str, text: str) -> Iterator[Any]:
    """The values of the JSON array ``text``, decoded one at a time (a whole export in
    Python objects takes 15 to 20 times its size; one task at a time, next to nothing)."""
    decoder = json.JSONDecoder()
    position = _JSON_SPACE.match(text).end()

    def value_at(start: int) -> tuple[Any, int]:
        try:
            return decoder.raw_decode(text, start)
        except RecursionError:
            raise _unreadable_json(uri, "its values are nested too deeply") from None
        except ValueError as exc:
            raise _decode_error(uri, text, exc, start) from None

    if not text.startswith("[", position):
        value_at(position)  # not JSON at all, or JSON of another shape
        raise TestprioError(
            f"{uri} is JSON but not a Label Studio export (a list of tasks); export the "
            "project from Label Studio as JSON."
        )
    position = _JSON_SPACE.match(text, position + 1).end()
    if text.startswith("]", position):
        position += 1
    else:
        while True:
            value, position = value_at(position)
            yield value
            position = _JSON_SPACE.match(text, position).end()
            if text.startswith(",", position):
                position = _JSON_SPACE.match(text, position + 1).end()
                continue
            if text.startswith("]", position):
                position += 1
                break
            raise _invalid_at(uri, text, "Expecting ',' delimiter", position)
    position = _JSON_SPACE.match(text, position).end()
    if position != len(text):
        raise _invalid_at(uri, text, "Extra data", position)


def _invalid_at(uri: str, text: str, message: str, position: int) -> TestprioError:
    """As json's own error for the whole text would say it."""
    line = text.count("\n", 0, position) + 1
    column = position - text.rfind("\n", 0, position)
    return TestprioError(
        f"{uri} is not valid JSON ({message} at line {line}, column {column}); export the "
        "project from Label Studio again as JSON."
    )


def _list_field(value: Any, what: str, where: str, uri: str) -> list:
    """``value`` when it is a list, ``[]`` for null or absent; otherwise one sentence
    (``what``: "annotations that are", naming the field and its verb)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise TestprioError(
            f"{where} of {uri} has {what} not a list; export the project from Label Studio "
            "again as JSON."
        )
    return value


def _choice_of(task: dict, where: str, uri: str) -> Any | None:
    """The one class the task's annotations chose (None: not labelled)."""
    chosen: list[Any] = []
    annotations = _list_field(task.get("annotations"), "annotations that are", where, uri)
    for annotation in annotations:
        if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
            continue
        results = annotation.get("result")
        for result in _list_field(results, "an annotation whose result is", where, uri):
            value = result.get("value") if isinstance(result, dict) else None
            choices = value.get("choices") if isinstance(value, dict) else None
            if choices is None:
                continue
            if not isinstance(choices, list) or len(choices) != 1:
                raise TestprioError(
                    f"{where} of {uri} chose {short(repr(choices), 80)}, not one class; label "
                    "every image with exactly one class."
                )
            chosen.append(choices[0])
    distinct = list(dict.fromkeys(short(str(choice), 40) for choice in chosen))
    if len(distinct) > 1:
        raise TestprioError(
            f"{where} of {uri} has annotations with conflicting labels "
            f"({', '.join(distinct[:5])}); keep one annotation per task in Label Studio and "
            "export again."
        )
    return chosen[0] if chosen else None


def read_label_studio(uri: str, data: bytes) -> Iterator[FileLabel]:
    """A Label Studio JSON export (annotations per task) or JSON-MIN export (the choice on
    the task itself), a task at a time."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(uri) from None
    for number, task in enumerate(_json_values(uri, text), 1):
        where = f"task {number}"
        if not isinstance(task, dict):
            raise TestprioError(
                f"{where} of {uri} is not a JSON object; export the project from Label "
                "Studio as JSON."
            )
        data_field = task.get("data") if isinstance(task.get("data"), dict) else {}
        meta = task.get("meta") if isinstance(task.get("meta"), dict) else {}
        # JSON-MIN exports flatten data and the choice onto the task itself.
        raw_id = data_field.get("sample_id", meta.get("sample_id", task.get("sample_id")))
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
        yield FileLabel(sample_id, None if choice == "" else choice, "task", number)


def _columns(row: list[str], uri: str) -> tuple[int, int]:
    """The positions of the sample_id and label columns in the header ``row``. Header
    cells are never quoted: a file that is no labels file may hold a secret there."""
    names = [(cell or "").strip().lower() for cell in row]
    for wanted in ("sample_id", "label"):
        if wanted not in names:
            raise TestprioError(
                f"none of the {len(names):,} columns in the header row of {uri} is named "
                f"{wanted}; give a CSV with a header line holding sample_id and label, like "
                "the labels.csv that testprio labels export wrote."
            )
    return names.index("sample_id"), names.index("label")


def read_csv(uri: str, data: bytes) -> Iterator[FileLabel]:
    """A CSV with a header line holding ``sample_id`` and ``label`` (any other columns), a
    row at a time; decoded as it is read."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if header is None:
            raise TestprioError(f"{uri} is empty; give a Label Studio JSON export or a CSV.")
        id_column, label_column = _columns(header, uri)
        for row in reader:
            where = f"line {reader.line_num}"
            value = row[label_column].strip() if label_column < len(row) else ""
            raw_id = row[id_column].strip() if id_column < len(row) else ""
            if not value:
                yield FileLabel(-1, None, "line", reader.line_num)
                continue
            yield FileLabel(_sample_id(raw_id, where, uri), value, "line", reader.line_num)
    except UnicodeDecodeError:
        raise _not_utf8(uri) from None
    except csv.Error as exc:
        raise TestprioError(
            f"{uri} is not a readable CSV file ({exc} near line {reader.line_num}); save it "
            "as CSV again."
        ) from None


LABEL_READERS: dict[str, Callable[[str, bytes], Iterator[FileLabel]]] = {
    "json": read_label_studio,
    "csv": read_csv,
}


def file_kind(uri: str, data: bytes) -> str:
    """The key in ``LABEL_READERS``: by extension, else by the first character."""
    extension = os.path.splitext(uri)[1].lower().lstrip(".")
    if extension in LABEL_READERS:
        return extension
    start = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    return "json" if start.lstrip()[:1] in (b"[", b"{") else "csv"


def is_blank(data: bytes) -> bool:
    """Whether the file holds nothing but a byte-order mark and white space."""
    start = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    return not start.strip()
