"""What an export writes and an import reads back: the names of the export's files, the
Label Studio controls, one choice per class, and a run's ``labels.parquet``."""

from __future__ import annotations

import pyarrow as pa

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.report import data as reportdata

LABELS_FILE = "labels.parquet"
CSV_NAME = "labels.csv"
TASKS_NAME = "label_studio_tasks.json"
CONFIG_NAME = "label_studio_config.xml"
README_NAME = "README.txt"
IMAGES_FOLDER = "images"
# Names of the Label Studio controls: the Choices control ``label`` on the Image ``image``.
FROM_NAME = "label"
TO_NAME = "image"
LABELS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64()),
        pa.field("label", pa.int32()),
        pa.field("imported_at", pa.timestamp("ms", tz="UTC")),
    ]
)


def labels_uri(layout: RunLayout) -> str:
    """``{run}/labels.parquet``: the labels imported into a run."""
    return storage.join(layout.uri, LABELS_FILE)


def open_run(run_uri: str) -> RunLayout:
    """The run folder ``ROOT/RUN_ID`` (local or gs://) as a layout; it must hold a run.json."""
    layout = RunLayout(storage.normalize_root(run_uri))
    if not storage.exists(layout.run_json):
        raise TestprioError(
            f"--run {run_uri} holds no run.json, so it is not a run; give ROOT/RUN_ID as "
            "testprio run printed it."
        )
    return layout


def imported_labels(layout: RunLayout) -> dict[int, int]:
    """``{sample_id: class index}`` of the labels imported into a run (empty: none yet)."""
    uri = labels_uri(layout)
    if not storage.exists(uri):
        return {}
    table = storage.read_table(uri, columns=["sample_id", "label"])
    return dict(
        zip(table.column("sample_id").to_pylist(), table.column("label").to_pylist(), strict=True)
    )


# --- classes ----------------------------------------------------------------------------


def choice_names(details: reportdata.RunDetails) -> list[str]:
    """One unique Label Studio choice per class index: the run's class names, else the index.

    When the names repeat (or some are missing), ``reportdata.class_label`` ("3 cat") keeps
    them apart.
    """
    count = int(details.summary["num_classes"])
    names = reportdata.class_names(details) or []
    count = max(count, len(names))
    plain = [names[i] if i < len(names) and names[i] != "" else str(i) for i in range(count)]
    if len(set(plain)) == count:
        return plain
    return [reportdata.class_label(i, names) for i in range(count)]


def class_lookup(details: reportdata.RunDetails) -> dict[str, int]:
    """Class index of each text an import may carry: a choice of ``choice_names``, else a
    class name of the run (the first index of a repeated name)."""
    lookup: dict[str, int] = {}
    for index, name in enumerate(choice_names(details)):
        lookup.setdefault(name, index)
    for index, name in enumerate(reportdata.class_names(details) or []):
        lookup.setdefault(str(name), index)
    return lookup
