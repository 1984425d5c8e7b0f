"""``LabelExport``: the rows of an export and the bytes of each file it writes (labels.csv,
the Label Studio tasks and labelling interface, README.txt). The images are ``images``'."""

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
    uri: str | None = None
    originals: dict[str, str] = field(default_factory=dict, repr=False)  # image -> source
    direct_base: str | None = field(default=None, repr=False)  # see images.direct_base

    @property
    def columns(self) -> list[str]:
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

    def csv_bytes(self) -> bytes:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            # Sources and class names are pool content: defuse spreadsheet formulas.
            cells = {key: reportdata.csv_cell(value) for key, value in row.items()}
            writer.writerow({**cells, "label": "" if row["label"] is None else row["label"]})
        return text.getvalue().encode()

    def image_url(self, image: str) -> str:
        if not self.url_prefix:
            return image
        return self.url_prefix.rstrip("/") + "/" + image

    def tasks(self) -> list[dict]:
        """Label Studio tasks: the image, ids in ``data`` and ``meta``, the model's guess as
        a prediction (pre-annotation) of the Choices control."""
        tasks = []
        for row in self.rows:
            tasks.append(
                {
                    "data": {
                        "image": self.image_url(row["image"]),
                        "sample_id": row["sample_id"],
                        "rank": row["rank"],
                        "predicted": row["predicted_name"],
                        "confidence": row["confidence"],
                        self.metric: row[self.metric],
                    },
                    "meta": {
                        "run_id": self.run_id,
                        "sample_id": row["sample_id"],
                        "rank": row["rank"],
                        "source": row["source"],
                    },
                    "predictions": [
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
                    ],
                }
            )
        return tasks

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
        return README.format(
            run_id=self.run_id,
            first=self.ranks.first,
            last=last,
            count=len(self.rows),
            metric=self.metric,
            data_uri=self.data_uri,
            image_note=self.image_note,
            images=f"{IMAGES_FOLDER}/rank-NNNNNNN_sample-ID.EXT",
        )


README = """\
testprio labelling export of run {run_id}: ranks {first}-{last} ({count} samples), ranked by
{metric} (most uncertain first).

labels.csv                  rank, sample_id, source, image, predicted (class index),
                            predicted_name, confidence, {metric}, label (current label, if
                            known). Fill in the label column (class name or index) and bring
                            it back with: testprio labels import --run RUN labels.csv
label_studio_tasks.json     Label Studio tasks (Import in a project); the model's class is a
                            pre-annotation
label_studio_config.xml     the project's labelling interface (Settings > Labeling Interface
                            > Code)
{images}
                            the images, named by rank and sample id only

Images: {image_note}
Pool: {data_uri}

After labelling in Label Studio: Export > JSON, then
  testprio labels import --run RUN EXPORTED.json
"""
