"""Import labels into a run: check a labels file against the run (classes, duplicates, sample
ids), merge it into ``{run}/labels.parquet`` and record the figures of the labelled samples
(accuracy, APFD) in ``run.json`` under ``labelled``."""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from testprio import storage
from testprio.errors import TestprioError
from testprio.labels.formats import (
    LABELS_FILE,
    LABELS_SCHEMA,
    choice_names,
    class_lookup,
    imported_labels,
    labels_uri,
)
from testprio.labels.readers import (
    DEFAULT_MAX_FILE_MB,
    LABEL_READERS,
    FileLabel,
    file_kind,
    is_blank,
    read_file,
    short,
)
from testprio.layout import RunLayout, record_in_run
from testprio.log import get_logger
from testprio.report import data as reportdata
from testprio.summary import apfd

log = get_logger("labels")


@dataclass
class ImportResult:
    """What an import did: labels read from the file, how they changed ``labels.parquet``,
    and the figures now recorded in ``run.json`` under ``labelled``."""

    file: str
    read: int  # samples with a label in the file
    skipped: int  # rows or tasks without a label
    added: int
    changed: int
    labelled: dict
    uri: str
    report: str | None = None  # report.html, when it was rendered again with these labels

    def sentence(self) -> str:
        figures = self.labelled
        text = (
            f"Imported {self.read:,} labels from {self.file} ({self.added:,} new, "
            f"{self.changed:,} changed, {self.skipped:,} without a label skipped) into "
            f"{self.uri}. On the {figures['samples']:,} labelled samples (ranks "
            f"{figures['first_rank']}-{figures['last_rank']}): accuracy "
            f"{figures['accuracy']:.4f}, {figures['misclassified']:,} misclassified"
        )
        if figures["apfd"]:
            text += f", APFD {figures['apfd']['raw']:.4f}"
            if figures["apfd"]["normalized"] is not None:
                text += f" (normalized {figures['apfd']['normalized']:.4f})"
        else:
            text += ", no APFD (no misclassified sample)"
        text += "."
        if self.report:
            text += f" {self.report} shows them."
        return text


def class_index(label: FileLabel, lookup: dict[str, int], count: int, run_id: str, uri: str):
    """The class index a label names (a class name, a choice or an index in range)."""
    value = label.value
    if isinstance(value, str) and value.strip() in lookup:
        return lookup[value.strip()]
    text = value.strip() if isinstance(value, str) else str(value)
    if not isinstance(value, bool) and re.fullmatch(r"-?\d+", text):
        # Past 18 digits no class index is meant, and int() refuses 4,300 digits and more.
        index = int(text) if len(text) <= 19 else None
        if index is not None and 0 <= index < count:
            return index
        raise TestprioError(
            f"{label.where} (sample {label.sample_id}) of {uri} has the label "
            f"{short(text, 53)}, but run {run_id} has classes 0 to {count - 1}; use a class "
            "index in that range or a class name."
        )
    shown = ", ".join(list(lookup)[:12]) + (", ..." if len(lookup) > 12 else "")
    raise TestprioError(
        f"{label.where} (sample {label.sample_id}) of {uri} has the label "
        f"'{short(text, 53)}', which is not a class of run {run_id}; use one of its class "
        f"names ({shown}) or a class index."
    )


class _Entries:
    """The labelled entries of a file as three compact arrays (sample id, class index, and
    line or task number: 20 bytes an entry), not a Python object each."""

    def __init__(self) -> None:
        self.ids = array("q")
        self.classes = array("i")
        self.numbers = array("q")

    def add(self, sample_id: int, index: int, number: int) -> None:
        self.ids.append(sample_id)
        self.classes.append(index)
        self.numbers.append(number)

    def first_conflict(self) -> tuple[int, int, int, int, int] | None:
        """The earliest entry (in file order) whose label differs from its sample's first:
        ``(sample_id, first class, its number, other class, its number)``, or None."""
        ids = np.frombuffer(self.ids, dtype=np.int64)
        classes = np.frombuffer(self.classes, dtype=np.dtype(f"i{self.classes.itemsize}"))
        numbers = np.frombuffer(self.numbers, dtype=np.int64)
        order = np.lexsort((numbers, ids))  # by sample, then file order
        ids, classes, numbers = ids[order], classes[order], numbers[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        first = np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
        differs = np.flatnonzero(classes != classes[first])
        if not len(differs):
            return None
        at = differs[np.argmin(numbers[differs])]
        head = first[at]
        return (int(ids[at]), int(classes[head]), int(numbers[head]), int(classes[at]),
                int(numbers[at]))  # fmt: skip

    def labels(self) -> dict[int, int]:
        """``{sample_id: class index}`` (no conflicts left: one label a sample)."""
        ids = np.frombuffer(self.ids, dtype=np.int64)
        classes = np.frombuffer(self.classes, dtype=np.dtype(f"i{self.classes.itemsize}"))
        unique, where = np.unique(ids, return_index=True)
        return dict(zip(unique.tolist(), classes[where].tolist(), strict=True))


def read_label_file(
    layout: RunLayout,
    uri: str,
    *,
    data: bytes | None = None,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
) -> tuple[dict[int, int], int]:
    """``{sample_id: class index}`` from a Label Studio JSON export or a CSV, and how many
    tasks or rows had no label. Checks classes, duplicates and sample ids against the run.

    ``data``: the file's bytes when it is stored nowhere (an upload); ``uri`` then only
    names it (its extension says JSON or CSV). Either way at most ``max_file_mb`` MB, read
    an entry at a time."""
    details = reportdata.load_run(layout)
    if details.summary is None:
        raise TestprioError(
            f"{layout.uri} has no ranking yet, so labels cannot be checked against it; let "
            "the run finish its rank stage first."
        )
    data = read_file(uri, data, max_file_mb=max_file_mb)
    if is_blank(data):
        raise TestprioError(f"{uri} is empty; give a Label Studio JSON export or a CSV.")
    lookup = class_lookup(details)
    count = len(choice_names(details))
    entries, skipped, unit = _Entries(), 0, "line"
    for entry in LABEL_READERS[file_kind(uri, data)](uri, data):
        unit = entry.unit
        if entry.value is None:
            skipped += 1
            continue
        entries.add(entry.sample_id, class_index(entry, lookup, count, layout.run_id, uri),
                    entry.number)  # fmt: skip
    if not entries.ids:
        raise TestprioError(
            f"{uri} holds no labels ({skipped:,} tasks or rows without one); label some "
            "samples first."
        )
    conflict = entries.first_conflict()
    if conflict is not None:
        sample_id, first, first_number, other, number = conflict
        names = choice_names(details)
        raise TestprioError(
            f"sample {sample_id} has two different labels in {uri} ({names[first]} at "
            f"{unit} {first_number}, {names[other]} at {unit} {number}); keep one of them."
        )
    labels = entries.labels()
    del entries
    ranked = storage.read_table(layout.ranking, columns=["sample_id"]).column("sample_id")
    wanted = np.fromiter(labels, dtype=np.int64, count=len(labels))
    unknown = wanted[~np.isin(wanted, ranked.to_numpy())]
    if len(unknown):
        shown = ", ".join(str(i) for i in sorted(unknown.tolist())[:5])
        raise TestprioError(
            f"{uri} labels sample_id {shown}{', ...' if len(unknown) > 5 else ''}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not among the {len(ranked):,} ranked "
            f"samples of run {layout.run_id}; import labels exported from this run's pool."
        )
    return labels, skipped


def labelled_figures(layout: RunLayout, labels: dict[int, int]) -> dict:
    """Accuracy and APFD of the labelled samples, taken in rank order.

    APFD is that of the labelled samples alone: position 1 is the best-ranked labelled one.
    """
    ranking = storage.read_table(layout.ranking, columns=["sample_id", "rank", "predicted"])
    ids = ranking.column("sample_id").to_numpy()
    keep = np.isin(ids, np.fromiter(labels, dtype=np.int64, count=len(labels)))
    ranks = ranking.column("rank").to_numpy()[keep]
    predicted = ranking.column("predicted").to_numpy()[keep]
    truth = np.array([labels[int(i)] for i in ids[keep]], dtype=np.int64)
    order = np.argsort(ranks, kind="stable")  # the ranking is in rank order already
    wrong = truth[order] != predicted[order]
    return {
        "samples": int(len(wrong)),
        "accuracy": round(float(1.0 - wrong.mean()), 6),
        "misclassified": int(wrong.sum()),
        "apfd": apfd(wrong),
        "first_rank": int(ranks.min()),
        "last_rank": int(ranks.max()),
    }


def import_labels(
    layout: RunLayout,
    uri: str,
    *,
    data: bytes | None = None,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
) -> ImportResult:
    """Merge the labels of ``uri`` into ``{run}/labels.parquet``; record figures in run.json.

    A label for a sample that already has one replaces it. Nothing is written when the file
    has any problem. ``data``: the file's bytes when it is stored nowhere (an upload in the
    report app); ``uri`` is then its name, for messages and the record. ``max_file_mb``:
    the largest file read (``--max-file-mb``).
    """
    labels, skipped = read_label_file(layout, uri, data=data, max_file_mb=max_file_mb)
    before = imported_labels(layout)
    now = datetime.now(timezone.utc)
    previous_times: dict[int, Any] = {}
    if before:
        table = storage.read_table(labels_uri(layout))
        previous_times = dict(
            zip(
                table.column("sample_id").to_pylist(),
                table.column("imported_at").to_pylist(),
                strict=True,
            )
        )
    merged = {**before, **labels}
    ids = sorted(merged)
    table = pa.table(
        {
            "sample_id": ids,
            "label": [merged[i] for i in ids],
            "imported_at": [now if i in labels else previous_times[i] for i in ids],
        },
        schema=LABELS_SCHEMA,
    )
    storage.write_table(labels_uri(layout), table)
    figures = labelled_figures(layout, merged)
    figures.update(labels=LABELS_FILE, file=uri, imported_at=now.isoformat(timespec="seconds"))
    record_in_run(layout, "labelled", figures)
    added = sum(1 for i in labels if i not in before)
    changed = sum(1 for i in labels if i in before and before[i] != labels[i])
    result = ImportResult(
        file=uri,
        read=len(labels),
        skipped=skipped,
        added=added,
        changed=changed,
        labelled=figures,
        uri=labels_uri(layout),
    )
    log.info("labels: %s", result.sentence())
    return result
