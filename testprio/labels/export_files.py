"""``LabelExport``: the rows of an export and the bytes of each file it writes (labels.csv,
the Label Studio tasks and labelling interface, README.txt). The images are ``images``'.

An export is blind unless ``pre_annotate``: labels.csv and the tasks carry no model answer
(predicted class, confidence, the metric's score, ``predictions``), because a labeller shown
the model's class accepts it with one click and the faults the ranking found go unseen."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from testprio.labels.formats import FROM_NAME, IMAGES_FOLDER, TO_NAME
from testprio.labels.ranks import RankRange
from testprio.report import data as reportdata


@dataclass
class LabelExport:
    """What an export holds, before (``plan_export``) and after it is written.

    ``rows``: one dict per sample in rank order (the ``labels.csv`` columns).
    ``image_mode``: ``original`` (files copied from the pool) or ``rendered`` (tensor PNGs);
    ``image_note``: why, in one sentence, for ``README.txt``.
    ``pre_annotate``: the model's class and scores go into labels.csv and the tasks (its class
    as a Label Studio prediction); without it the export is blind.
    ``image_urls``: the address of an image in the tasks where it is not ``url_prefix`` +
    its path: a ``data:`` URI (embedded) or the URL Label Studio gave an uploaded file.
    """

    run_id: str
    metric: str
    ranks: RankRange
    rows: list[dict]
    choices: list[str]
    image_mode: str
    image_note: str
    data_uri: str
    url_prefix: str = ""
    pre_annotate: bool = False
    uri: str | None = None
    image_urls: dict[str, str] = field(default_factory=dict, repr=False)
    originals: dict[str, str] = field(default_factory=dict, repr=False)  # image -> source
    direct_base: str | None = field(default=None, repr=False)  # see images.direct_base

    @property
    def columns(self) -> list[str]:
        """labels.csv's columns: the model's answer only when ``pre_annotate``."""
        if not self.pre_annotate:
            return ["rank", "sample_id", "source", "image", "label"]
        return [
            "rank",
            "sample_id",
            "source",
            "image",
            "predicted",
            "predicted_name",
            "confidence",
            self.metric,
            "label",
        ]

    @property
    def images_embedded(self) -> bool:
        return bool(self.image_urls) and all(
            url.startswith("data:") for url in self.image_urls.values()
        )

    def csv_bytes(self) -> bytes:
        text = io.StringIO()
        writer = csv.DictWriter(
            text, fieldnames=self.columns, lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        for row in self.rows:
            # Sources and class names are pool content: defuse spreadsheet formulas.
            cells = {key: reportdata.csv_cell(value) for key, value in row.items()}
            writer.writerow({**cells, "label": "" if row["label"] is None else row["label"]})
        return text.getvalue().encode()

    def image_url(self, image: str) -> str:
        if image in self.image_urls:
            return self.image_urls[image]
        if not self.url_prefix:
            return image
        return self.url_prefix.rstrip("/") + "/" + image

    def tasks(self, rows: list[dict] | None = None) -> list[dict]:
        """Label Studio tasks of ``rows`` (default: all): the image, ids in ``data`` and
        ``meta``; with ``pre_annotate`` also the model's class and scores in ``data`` and its
        class as a prediction (pre-annotation) of the Choices control."""
        return [self._task(row) for row in (self.rows if rows is None else rows)]

    def _task(self, row: dict) -> dict:
        task: dict = {
            "data": {
                "image": self.image_url(row["image"]),
                "sample_id": row["sample_id"],
                "rank": row["rank"],
            },
            "meta": {
                "run_id": self.run_id,
                "sample_id": row["sample_id"],
                "rank": row["rank"],
                "source": row["source"],
            },
        }
        if not self.pre_annotate:
            return task
        task["data"].update(
            predicted=row["predicted_name"],
            confidence=row["confidence"],
            **{self.metric: row[self.metric]},
        )
        task["predictions"] = [
            {
                "model_version": f"testprio {self.run_id}",
                "score": row["confidence"],
                "result": [
                    {
                        "from_name": FROM_NAME,
                        "to_name": TO_NAME,
                        "type": "choices",
                        "value": {"choices": [row["predicted_name"]]},
                    }
                ],
            }
        ]
        return task

    def tasks_bytes(self) -> bytes:
        return json.dumps(self.tasks(), indent=1).encode() + b"\n"

    def config_xml(self) -> str:
        choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in self.choices)
        return (
            "<View>\n"
            f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" '
            'showInLine="true">\n'
            f"{choices}\n"
            "  </Choices>\n"
            "</View>\n"
        )

    def readme(self) -> str:
        last = self.rows[-1]["rank"] if self.rows else self.ranks.first
        if self.pre_annotate:
            columns = README_COLUMNS_PRE_ANNOTATED.format(metric=self.metric)
            answer = README_PRE_ANNOTATED
        else:
            columns, answer = README_COLUMNS_BLIND, README_BLIND.format(metric=self.metric)
        if self.images_embedded:
            loading = README_EMBEDDED
        elif self.url_prefix:
            loading = README_PREFIX.format(prefix=self.url_prefix.rstrip("/") + "/")
        else:
            loading = README_RELATIVE
        return README.format(
            run_id=self.run_id,
            first=self.ranks.first,
            last=last,
            count=len(self.rows),
            metric=self.metric,
            answer=answer,
            columns=columns,
            loading=loading,
            data_uri=self.data_uri,
            image_note=self.image_note,
            images=f"{IMAGES_FOLDER}/rank-NNNNNNN_sample-ID.EXT",
        )


README = """\
testprio labelling export of run {run_id}: ranks {first}-{last} ({count} samples), ranked by
{metric} (most uncertain first).

{answer}

labels.csv                  {columns}
                            Fill in the label column (class name or index) and bring it
                            back with: testprio labels import --run RUN labels.csv
label_studio_tasks.json     Label Studio tasks (Import in a project)
label_studio_config.xml     the project's labelling interface (Settings > Labeling Interface
                            > Code)
{images}
                            the images, named by rank and sample id only

Images: {image_note}
Pool: {data_uri}

Loading it into Label Studio:
1. Create a project; Settings > Labeling Interface > Code: paste label_studio_config.xml,
   Save.
2. {loading}
3. After labelling: Export > JSON (or JSON-MIN), then
     testprio labels import --run RUN EXPORTED.json

testprio labels push --run RUN --label-studio URL --token TOKEN does steps 1 and 2 through
Label Studio's API (it uploads the images), and testprio labels pull does step 3.
"""
README_BLIND = """\
Blind export: labels.csv and the tasks carry no model answer (no predicted class, confidence
or {metric} score, no pre-annotation), so each label is the labeller's own. Export with
--pre-annotate to show the model's class."""
README_PRE_ANNOTATED = """\
Pre-annotated export (--pre-annotate): the tasks carry the model's class as a prediction that
Label Studio pre-selects, and its class and scores as data; a labeller who submits without
looking accepts the model's answer, which hides the faults the ranking found."""
README_COLUMNS_BLIND = """\
rank, sample_id, source, image, label (current label, if
                            known)."""
README_COLUMNS_PRE_ANNOTATED = """\
rank, sample_id, source, image, predicted (class index),
                            predicted_name, confidence, {metric}, label (current label, if
                            known)."""
README_EMBEDDED = """\
Import > upload label_studio_tasks.json. Each task carries its image inline (a data: URI),
   so the images show in any Label Studio, local or remote, with no storage to set up."""
README_PREFIX = """\
Import > upload label_studio_tasks.json. Each task addresses its image as
   {prefix}images/...: serve this folder's images there (for example
   python -m http.server in this folder), or the images will not load."""
README_RELATIVE = """\
Import > upload label_studio_tasks.json. Each task addresses its image by its path in
   this folder (images/...), which Label Studio cannot fetch: export again with --url-prefix
   set to where you serve this folder, or use testprio labels push, which uploads the
   images. The report app's zip embeds them instead."""
