"""Labelling round trip: export a rank range of a finished run for labelling, import the labels.

**Export** (``export_labels``) writes into a folder (local or ``gs://``):

- ``labels.csv``: rank, sample_id, source, image and ``label`` (the current label: an
  imported one, else the pool's); with ``pre_annotate`` also predicted, predicted_name,
  confidence and the run's metric score;
- ``label_studio_tasks.json``: Label Studio tasks whose ``data.image`` is the exported image
  (a path relative to the folder, under a URL prefix, or in the report app's zip the image
  itself as a ``data:`` URI), carrying sample_id and rank in ``data`` and ``meta``; with
  ``pre_annotate`` also the model's class and scores in ``data`` and its class as a
  pre-annotation (``predictions``) of a ``Choices`` control over the class names. Blind by
  default: a labeller shown the model's class accepts it with one click;
- ``label_studio_config.xml``: that labelling interface;
- ``images/rank-NNNNNNN_sample-ID.EXT``: the ORIGINAL files of an image-folder pool, copied
  from the run's data source; array pools have no files, so their preprocessed tensors are
  rendered to PNG instead (``README.txt`` says which);
- ``README.txt``.

Image files are named by rank and sample id only: an image folder's class folder would tell
the labeller the pool's label.

**Import** (``import_labels``) reads a Label Studio JSON export or a CSV with ``sample_id`` and
``label`` columns, maps class names (or indices) to class indices, merges the labels into
``{run}/labels.parquet`` (sample_id, label, imported_at; the shards are never touched) and
records accuracy and APFD of the labelled samples in ``run.json`` under ``labelled``.

One concern per module:

- ``formats``: what export writes and import reads back: the file names, the Label Studio
  control names, one choice per class (``choice_names``), ``labels.parquet`` and ``open_run``;
- export: ``ranks`` (``--top-k``/``--ranks``), ``export_files`` (``LabelExport``: the rows
  and the bytes of labels.csv, the tasks, the labelling interface, README.txt), ``images``
  (original files or rendered tensors; ``original_image`` for the report app), ``sinks``
  (a folder or a zip) and ``export`` (``plan_export``, ``write_export``, ``export_labels``,
  ``export_zip_bytes``);
- import: ``readers`` (one reader per file format: Label Studio JSON and JSON-MIN, CSV) and
  ``merge`` (check against the run, merge into labels.parquet, the labelled figures,
  ``import_labels``).

- Label Studio's API: ``label_studio`` (``LabelStudio``, a session with a server and a
  personal access or legacy token; ``push_export`` makes or reuses a project with the
  interface, uploads the images and imports the tasks that ``plan_export`` and
  ``LabelExport`` make; ``pull_project`` exports the project and hands it to
  ``import_labels`` with ``data=``, as an upload does).

The modules import each other directly, never this face; it only re-exports.
"""

from testprio.labels.export import (
    export_labels,
    export_zip_bytes,
    plan_export,
    write_export,
)
from testprio.labels.export_files import README, LabelExport
from testprio.labels.formats import (
    CONFIG_NAME,
    CSV_NAME,
    FROM_NAME,
    IMAGES_FOLDER,
    LABELS_FILE,
    LABELS_SCHEMA,
    README_NAME,
    TASKS_NAME,
    TO_NAME,
    choice_names,
    labels_uri,
    open_run,
)
from testprio.labels.images import (
    IMAGE_WRITERS,
    ORIGINAL_IMAGE_MAX_BYTES,
    RENDER_CHUNK,
    original_image,
)
from testprio.labels.label_studio import LabelStudio, PushResult, pull_project, push_export
from testprio.labels.merge import (
    ImportResult,
    import_labels,
    labelled_figures,
    read_label_file,
)
from testprio.labels.ranks import RankRange, parse_ranks, rank_range
from testprio.labels.readers import LABEL_READERS
from testprio.labels.sinks import FolderSink, ZipSink

__all__ = [
    "CONFIG_NAME",
    "CSV_NAME",
    "FROM_NAME",
    "IMAGES_FOLDER",
    "IMAGE_WRITERS",
    "LABELS_FILE",
    "LABELS_SCHEMA",
    "LABEL_READERS",
    "ORIGINAL_IMAGE_MAX_BYTES",
    "README",
    "README_NAME",
    "RENDER_CHUNK",
    "TASKS_NAME",
    "TO_NAME",
    "FolderSink",
    "ImportResult",
    "LabelExport",
    "LabelStudio",
    "PushResult",
    "RankRange",
    "ZipSink",
    "choice_names",
    "export_labels",
    "export_zip_bytes",
    "import_labels",
    "labelled_figures",
    "labels_uri",
    "open_run",
    "original_image",
    "parse_ranks",
    "plan_export",
    "pull_project",
    "push_export",
    "rank_range",
    "read_label_file",
    "write_export",
]
