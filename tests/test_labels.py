"""The labelling round trip: export a rank range of real runs (an image folder, an archive of
one, an array pool; local and gs:// roots), label it, import the labels back."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from testprio import cli, labels, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.report import data as reportdata
from tests.conftest import BUCKET, linear_classifier, write_pool
from tests.reportkit import digits
from tests.stagekit import run_stages

REPO = Path(__file__).resolve().parents[1]

OPS = '[{"op": "scale", "divide": 255}, {"op": "layout", "to": "NCHW"}]'
CLASSES = [f"d{i}" for i in range(10)]


def make_digit_folder(folder: Path, count: int = 60) -> Path:
    """``count`` real 8x8 digits as PNGs in class folders d0..d9 (class names, not numbers)."""
    x, y = digits(count)
    for i in range(count):
        (folder / f"d{y[i]}").mkdir(parents=True, exist_ok=True)
        pixels = np.round(x[i, 0] * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"d{y[i]}" / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("labels-inputs")
    make_digit_folder(folder / "pool")
    linear_classifier(folder / "m.onnx", seed=1)
    return folder


@pytest.fixture(scope="module")
def image_run(inputs, tmp_path_factory) -> RunLayout:
    root = str(tmp_path_factory.mktemp("labels-runs") / "runs")
    return run_stages(
        inputs / "m.onnx", inputs / "pool", root, "img", ops=OPS, shard_size=25, top_k=6
    )


@pytest.fixture
def run_copy(image_run, tmp_path) -> RunLayout:
    """A fresh copy of the image-folder run, for tests that import labels into it."""
    target = tmp_path / "runs" / "img"
    shutil.copytree(image_run.uri, target)
    return RunLayout(str(target))


def ranking_of(layout: RunLayout) -> list[dict]:
    return storage.read_table(layout.ranking).to_pylist()


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def sources_of(layout: RunLayout) -> dict[int, str]:
    details = reportdata.load_run(layout)
    ids = [row["sample_id"] for row in ranking_of(layout)]
    return {
        i: row["source"]
        for i, row in reportdata.read_samples(details, ids, columns=("source",)).items()
    }


def reference_apfd(wrong: list[bool]) -> float:
    n, k = len(wrong), sum(wrong)
    return 1 - sum(i + 1 for i, w in enumerate(wrong) if w) / (k * n) + 1 / (2 * n)


def shard_digests(layout: RunLayout) -> dict[str, str]:
    folder = Path(layout.data_dir)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


# --- export -----------------------------------------------------------------------------


def test_export_top_k_copies_the_original_images(image_run, inputs, tmp_path):
    export = labels.export_labels(image_run, str(tmp_path / "out"), top_k=8, pre_annotate=True)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.txt",
        "images",
        "label_studio_config.xml",
        "label_studio_tasks.json",
        "labels.csv",
    ]
    rows = read_csv(out / "labels.csv")
    assert list(rows[0]) == [
        "rank",
        "sample_id",
        "source",
        "image",
        "predicted",
        "predicted_name",
        "confidence",
        "gini",
        "label",
    ]
    ranking = ranking_of(image_run)[:8]
    sources = sources_of(image_run)
    assert [int(r["rank"]) for r in rows] == list(range(1, 9))
    assert [int(r["sample_id"]) for r in rows] == [r["sample_id"] for r in ranking]
    for row, ranked in zip(rows, ranking, strict=True):
        assert int(row["predicted"]) == ranked["predicted"]
        assert row["predicted_name"] == CLASSES[ranked["predicted"]]
        assert float(row["confidence"]) == pytest.approx(ranked["confidence"], abs=1e-6)
        assert float(row["gini"]) == pytest.approx(ranked["gini"], abs=1e-6)
        assert int(row["label"]) == ranked["label"]  # the class folder's label
        assert row["source"] == sources[ranked["sample_id"]]
        # The original file, byte for byte, named so that its class folder is not shown.
        image = out / row["image"]
        assert image.read_bytes() == (inputs / "pool" / row["source"]).read_bytes()
        assert row["image"] == f"images/rank-{int(row['rank']):07d}_sample-{row['sample_id']}.png"
        assert row["source"].split("/")[0] not in row["image"]
    assert export.image_mode == "original" and export.ranks == labels.RankRange(1, 8)
    readme = (out / "README.txt").read_text()
    assert "ranks 1-8 (8 samples)" in readme
    assert f"the original files, copied from {inputs / 'pool'}" in readme
    assert "Pre-annotated export (--pre-annotate)" in readme


MODEL_ANSWER = {"predicted", "predicted_name", "confidence", "gini"}


def test_exports_are_blind_by_default(image_run, tmp_path):
    """No model answer in labels.csv or the tasks unless --pre-annotate: a labeller shown the
    model's class accepts it with one click."""
    assert cli.main(["labels", "export", "--run", image_run.uri, "--out", str(tmp_path / "b")]) == 0
    rows = read_csv(tmp_path / "b" / "labels.csv")
    assert list(rows[0]) == ["rank", "sample_id", "source", "image", "label"]
    tasks = json.loads((tmp_path / "b" / "label_studio_tasks.json").read_text())
    assert len(tasks) == 6  # the run's --top-k
    for task in tasks:
        assert "predictions" not in task
        assert set(task["data"]) == {"image", "sample_id", "rank"}
        assert not MODEL_ANSWER & set(task["meta"])
    readme = (tmp_path / "b" / "README.txt").read_text()
    assert "Blind export: labels.csv and the tasks carry no model answer" in readme
    assert "which Label Studio cannot fetch" in readme  # relative paths: says what to do
    argv = ["labels", "export", "--run", image_run.uri, "--out", str(tmp_path / "p")]
    assert cli.main([*argv, "--pre-annotate", "--url-prefix", "http://files.example/b"]) == 0
    tasks = json.loads((tmp_path / "p" / "label_studio_tasks.json").read_text())
    assert all(MODEL_ANSWER - {"predicted_name"} <= set(t["data"]) for t in tasks)
    assert all(len(t["predictions"]) == 1 for t in tasks)
    readme = (tmp_path / "p" / "README.txt").read_text()
    assert "http://files.example/b/images/..." in readme


def test_label_studio_tasks_and_config(image_run, tmp_path):
    labels.export_labels(image_run, str(tmp_path / "rel"), ranks="1-5", pre_annotate=True)
    prefix = "http://localhost:8081/export/"
    labels.export_labels(
        image_run, str(tmp_path / "url"), ranks="1-5", url_prefix=prefix, pre_annotate=True
    )
    config = ET.fromstring((tmp_path / "rel" / "label_studio_config.xml").read_text())
    assert config.find("Image").attrib == {"name": "image", "value": "$image", "zoom": "true"}
    choices = config.find("Choices")
    assert (choices.get("name"), choices.get("toName")) == ("label", "image")
    assert [c.get("value") for c in choices.findall("Choice")] == CLASSES
    rows = read_csv(tmp_path / "rel" / "labels.csv")
    for folder, image_of in (("rel", lambda r: r["image"]), ("url", lambda r: prefix + r["image"])):
        tasks = json.loads((tmp_path / folder / "label_studio_tasks.json").read_text())
        assert len(tasks) == 5
        for task, row in zip(tasks, rows, strict=True):
            assert task["data"]["image"] == image_of(row)
            assert (task["data"]["sample_id"], task["data"]["rank"]) == (
                int(row["sample_id"]),
                int(row["rank"]),
            )
            assert task["meta"] == {
                "run_id": "img",
                "sample_id": int(row["sample_id"]),
                "rank": int(row["rank"]),
                "source": row["source"],
            }
            (prediction,) = task["predictions"]
            (result,) = prediction["result"]
            assert result == {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [row["predicted_name"]]},
            }
            assert prediction["score"] == pytest.approx(float(row["confidence"]))


def test_rank_ranges(image_run, tmp_path):
    total = len(ranking_of(image_run))
    export = labels.export_labels(image_run, str(tmp_path / "a"), ranks="5-9")
    assert [row["rank"] for row in export.rows] == [5, 6, 7, 8, 9]
    export = labels.export_labels(image_run, str(tmp_path / "b"), ranks="3..4")
    assert [row["rank"] for row in export.rows] == [3, 4]
    export = labels.export_labels(image_run, str(tmp_path / "c"), ranks=f"{total - 1}-9999")
    assert [row["rank"] for row in export.rows] == [total - 1, total]
    export = labels.export_labels(image_run, str(tmp_path / "d"), top_k=10_000)
    assert len(export.rows) == total and len(list((tmp_path / "d" / "images").iterdir())) == total
    export = labels.export_labels(image_run, str(tmp_path / "e"))  # the run's --top-k 6
    assert [row["rank"] for row in export.rows] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ranks": "9-5"}, r"--ranks '9-5' is not a range of ranks; write FIRST-LAST"),
        ({"ranks": "0-5"}, r"--ranks '0-5' is not a range"),
        ({"ranks": "top"}, r"--ranks 'top' is not a range"),
        ({"ranks": "1-5", "top_k": 5}, r"give --top-k or --ranks, not both"),
        ({"top_k": 0}, r"--top-k 0 must be a positive number of samples"),
        ({"ranks": "61-70"}, r"rank 61 is past the last of the 60 ranked samples of run img"),
    ],
)
def test_bad_rank_ranges_are_one_sentence(image_run, tmp_path, options, message):
    with pytest.raises(TestprioError, match=message):
        labels.export_labels(image_run, str(tmp_path / "out"), **options)
    assert not (tmp_path / "out" / "labels.csv").exists()


def test_export_refuses_a_folder_holding_an_export(image_run, tmp_path):
    labels.export_labels(image_run, str(tmp_path / "out"), top_k=2)
    with pytest.raises(TestprioError, match=r"already holds a labelling export \(labels.csv\)"):
        labels.export_labels(image_run, str(tmp_path / "out"), top_k=2)


def test_a_moved_pool_is_named_and_data_points_at_its_new_place(image_run, inputs, tmp_path):
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    Image.new("L", (8, 8)).save(elsewhere / "unrelated.png")
    with pytest.raises(TestprioError, match=r"the original image d\d/\d+\.png is not in the pool"):
        labels.export_labels(image_run, str(tmp_path / "a"), top_k=3, data_uri=str(elsewhere))
    moved = tmp_path / "moved"
    shutil.copytree(inputs / "pool", moved)
    export = labels.export_labels(image_run, str(tmp_path / "b"), top_k=3, data_uri=str(moved))
    for row in export.rows:
        assert (tmp_path / "b" / row["image"]).read_bytes() == (moved / row["source"]).read_bytes()
    assert f"copied from {moved}" in (tmp_path / "b" / "README.txt").read_text()


def test_archive_pool_originals_come_out_of_the_archive(inputs, tmp_path):
    archive = tmp_path / "pool.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted((inputs / "pool").rglob("*.png")):
            handle.write(path, "pool/" + path.relative_to(inputs / "pool").as_posix())
    layout = run_stages(inputs / "m.onnx", archive, str(tmp_path / "runs"), "zip", ops=OPS)
    export = labels.export_labels(layout, str(tmp_path / "out"), top_k=4)
    assert export.image_mode == "original"
    for row in export.rows:
        original = zipfile.ZipFile(archive).read("pool/" + row["source"])
        assert (tmp_path / "out" / row["image"]).read_bytes() == original
    # The report stage does not extract the archive again: it renders the tensors.
    plan = labels.plan_export(layout, ranks=labels.RankRange(1, 4), download=False)
    assert plan.image_mode == "rendered" and "is an archive or a download" in plan.image_note
    assert all(row["image"].endswith(".png") for row in plan.rows)


def test_array_pool_images_are_rendered_tensors(tmp_path):
    x, y = digits(30)
    pool = write_pool(tmp_path / "digits.npz", x, y)
    model = linear_classifier(tmp_path / "m.onnx", seed=1)
    layout = run_stages(model, pool, str(tmp_path / "runs"), "arrays", shard_size=10)
    export = labels.export_labels(layout, str(tmp_path / "out"), top_k=5)
    assert export.image_mode == "rendered"
    readme = (tmp_path / "out" / "README.txt").read_text()
    assert "array pool (npz) without image files" in readme
    assert "rendered to PNG" in readme and "not an original file" in readme
    for row in export.rows:
        assert row["source"] == f"digits.npz[{row['sample_id']}]"
        image = np.asarray(Image.open(tmp_path / "out" / row["image"]))
        expected = reportdata.upscale(reportdata.display_image(x[row["sample_id"]]))
        np.testing.assert_array_equal(image, expected)
    # No class names: the choices are the class indices.
    config = ET.fromstring((tmp_path / "out" / "label_studio_config.xml").read_text())
    assert [c.get("value") for c in config.iter("Choice")] == [str(i) for i in range(10)]


# --- import -----------------------------------------------------------------------------


def annotated(tasks: list[dict], answers: dict[int, list]) -> list[dict]:
    """Label Studio's JSON export of ``tasks``: ``answers`` sample_id -> chosen classes, one
    annotation each (None: a cancelled annotation)."""
    exported = []
    for number, task in enumerate(tasks, 1):
        annotations = []
        for choice in answers.get(task["data"]["sample_id"], []):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "was_cancelled": choice is None,
                    "result": []
                    if choice is None
                    else [
                        {
                            "from_name": "label",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": [choice]},
                        }
                    ],
                }
            )
        exported.append({"id": number, **task, "annotations": annotations})
    return exported


def test_import_label_studio_export(run_copy, tmp_path):
    labels.export_labels(run_copy, str(tmp_path / "out"), top_k=10)
    tasks = json.loads((tmp_path / "out" / "label_studio_tasks.json").read_text())
    ranking = ranking_of(run_copy)
    truth = {row["sample_id"]: row["label"] for row in ranking}
    ids = [row["sample_id"] for row in ranking[:10]]
    answers = {i: [CLASSES[truth[i]]] for i in ids[:8]}
    answers[ids[0]] = [CLASSES[truth[ids[0]]], CLASSES[truth[ids[0]]]]  # two agreeing people
    answers[ids[1]] = [None, CLASSES[(truth[ids[1]] + 1) % 10]]  # a cancelled one, then wrong
    answers[ids[8]] = [None]  # only cancelled: not labelled
    path = tmp_path / "project.json"
    path.write_text(json.dumps(annotated(tasks, answers)))
    before = shard_digests(run_copy)

    result = labels.import_labels(run_copy, str(path))

    assert (result.read, result.skipped, result.added, result.changed) == (8, 2, 8, 0)
    table = storage.read_table(labels.labels_uri(run_copy))
    assert table.schema == labels.LABELS_SCHEMA
    got = dict(
        zip(table.column("sample_id").to_pylist(), table.column("label").to_pylist(), strict=True)
    )
    expected = {i: truth[i] for i in ids[:8]}
    expected[ids[1]] = (truth[ids[1]] + 1) % 10
    assert got == expected
    assert shard_digests(run_copy) == before  # the shards are never touched
    predicted = {row["sample_id"]: row["predicted"] for row in ranking}
    wrong = [expected[i] != predicted[i] for i in ids[:8]]
    record = storage.read_json(run_copy.run_json)
    figures = record["labelled"]
    assert figures["samples"] == 8 and (figures["first_rank"], figures["last_rank"]) == (1, 8)
    assert figures["accuracy"] == pytest.approx(1 - sum(wrong) / 8, abs=1e-6)
    assert figures["misclassified"] == sum(wrong)
    assert figures["apfd"]["raw"] == pytest.approx(reference_apfd(wrong))
    assert figures["labels"] == "labels.parquet" and figures["file"] == str(path)
    assert record["status"] == "succeeded"  # the rest of run.json is kept
    assert result.sentence().startswith(f"Imported 8 labels from {path} (8 new, 0 changed, 2 ")
    assert f"accuracy {figures['accuracy']:.4f}" in result.sentence()


def test_import_csv_merges_with_earlier_labels(run_copy, tmp_path):
    export = labels.export_labels(run_copy, str(tmp_path / "out"), ranks="1-6")
    rows = read_csv(tmp_path / "out" / "labels.csv")
    ids = [int(row["sample_id"]) for row in rows]
    # A spreadsheet: names for some rows, indices for others, two rows left empty.
    for i, row in enumerate(rows):
        row["label"] = "" if i >= 4 else (CLASSES[int(row["label"])] if i % 2 else row["label"])
    first = tmp_path / "first.csv"
    with open(first, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = labels.import_labels(run_copy, str(first))
    assert (result.read, result.skipped, result.added) == (4, 2, 4)
    stamp = storage.read_table(labels.labels_uri(run_copy)).column("imported_at").to_pylist()

    truth = {row["sample_id"]: row["label"] for row in ranking_of(run_copy)}
    second = tmp_path / "second.csv"
    second.write_text(f"sample_id,label\n{ids[0]},{(truth[ids[0]] + 1) % 10}\n{ids[5]},d3\n")
    result = labels.import_labels(run_copy, str(second))
    assert (result.read, result.added, result.changed) == (2, 1, 1)
    table = storage.read_table(labels.labels_uri(run_copy)).to_pylist()
    by_id = {row["sample_id"]: row for row in table}
    assert sorted(by_id) == sorted([*ids[:4], ids[5]])
    assert by_id[ids[0]]["label"] == (truth[ids[0]] + 1) % 10
    assert by_id[ids[5]]["label"] == 3
    kept = [row for row in table if row["sample_id"] in ids[1:4]]
    assert {row["imported_at"] for row in kept} <= set(stamp)  # earlier labels keep their time
    assert result.labelled["samples"] == 5 and result.labelled["last_rank"] == 6
    # The next export shows the imported labels as the current ones.
    again = labels.export_labels(run_copy, str(tmp_path / "again"), ranks="1-6")
    assert again.rows[0]["label"] == (truth[ids[0]] + 1) % 10
    assert export.rows[0]["label"] == truth[ids[0]]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def task_json(sample_id, *choices) -> dict:
    return {
        "data": {"image": "images/x.png", "sample_id": sample_id},
        "annotations": [
            {"result": [{"type": "choices", "value": {"choices": [c]}}]} for c in choices
        ],
    }


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "unknown.csv",
            "sample_id,label\n{a},d1\n{b},cat\n",
            r"line 3 \(sample {b}\) of .*unknown\.csv has the label 'cat', which is not a class "
            r"of run img; use one of its class names \(d0, d1",
        ),
        (
            "range.csv",
            "sample_id,label\n{a},10\n",
            r"has the label 10, but run img has classes 0 to 9",
        ),
        (
            "missing.csv",
            "sample_id,label\n{a},1\n99999,2\n",
            r"labels sample_id 99999, which is not among the 60 ranked samples of run img",
        ),
        (
            "conflict.csv",
            "sample_id,label\n{a},d1\n{b},d2\n{a},4\n",
            r"sample {a} has two different labels in .*conflict\.csv "
            r"\(d1 at line 2, d4 at line 4\); keep one",
        ),
        (
            "columns.csv",
            "id,class\n1,2\n",
            r"none of the 2 columns in the header row of .*columns\.csv is named sample_id; ",
        ),
        (
            "nolabel.csv",
            "sample_id,klass\n{a},2\n",
            r"none of the 2 columns in the header row of .*nolabel\.csv is named label; ",
        ),
        (
            "types.json",
            '[{"data": {"sample_id": {a}}, "annotations": 5}]',
            r"task 1 \(sample {a}\) of .*types\.json has annotations that are not a list",
        ),
        (
            "result.json",
            '[{"data": {"sample_id": {a}}, "annotations": [{"result": "x"}]}]',
            r"task 1 \(sample {a}\) of .*result\.json has an annotation whose result is not",
        ),
        (
            "deep.json",
            "[" * 50_000 + "]" * 50_000,
            r"deep\.json cannot be read as a Label Studio export \(its values are nested too "
            r"deeply\); export",
        ),
        (
            "deeptask.json",
            '[{"data": {"sample_id": {a}}, "x": ' + "[" * 50_000 + "]" * 50_000 + "}]",
            r"deeptask\.json cannot be read as a Label Studio export \(its values are nested",
        ),
        (
            "digits.json",
            '[{"data": {"sample_id": ' + "9" * 5000 + "}}]",
            r"digits\.json cannot be read as a Label Studio export \(a number has more than "
            r"4,300 digits\)",
        ),
        (
            "bigid.json",
            '[{"data": {"sample_id": ' + "9" * 30 + '}, "label": "d1"}]',
            r"task 1 of .*bigid\.json has the sample_id 9{30}, which is not a sample id \(a "
            r"whole number from 0 to 9,223,372,036,854,775,807\)",
        ),
        (
            "bigid.csv",
            "sample_id,label\n" + "9" * 5000 + ",d1\n",
            r"line 2 of .*bigid\.csv has the sample_id '9{50}\.\.\.', which is not a sample id",
        ),
        (
            "biglabel.csv",
            "sample_id,label\n{a}," + "7" * 5000 + "\n",
            r"has the label 7{50}\.\.\., but run img has classes 0 to 9",
        ),
        (
            "biglabel.json",
            '[{"data": {"sample_id": {a}}, "label": ' + "7" * 30 + "}]",
            r"has the label 7{30}, but run img has classes 0 to 9",
        ),
        (
            "notint.csv",
            "sample_id,label\nabc,1\n",
            r"line 2 of .*notint\.csv has the sample_id 'abc', which is not a sample id",
        ),
        (
            "nothing.csv",
            "sample_id,label\n{a},\n",
            r"holds no labels \(1 tasks or rows without one\)",
        ),
        ("empty.json", "  \n", r"empty\.json is empty"),
        (
            "broken.json",
            '[{"data": {"sample_id": 1}',
            r"broken\.json is not valid JSON \(.* at line 1, column \d+\); export the project",
        ),
        (
            "object.json",
            '{"tasks": []}',
            r"is JSON but not a Label Studio export \(a list of tasks\)",
        ),
        (
            "noid.json",
            '[{"data": {"image": "x.png"}, "annotations": []}]',
            r"task 1 of .*noid\.json has no data\.sample_id",
        ),
        (
            "twice.json",
            "TWICE",
            r"task 2 \(sample {a}\) of .*twice\.json has annotations with conflicting "
            r"labels \(d1, d2\)",
        ),
        ("multi.json", "MULTI", r"chose \['d1', 'd2'\], not one class"),
        (
            "dupes.json",
            "DUPES",
            r"sample {a} has two different labels in .*dupes\.json "
            r"\(d1 at task 1, d5 at task 2\)",
        ),
    ],
)
def test_bad_label_files_are_one_sentence(run_copy, tmp_path, name, content, message):
    a, b = (row["sample_id"] for row in ranking_of(run_copy)[:2])
    special = {
        "TWICE": [task_json(b, "d3"), task_json(a, "d1", "d2")],
        "MULTI": [
            {
                "data": {"sample_id": a},
                "annotations": [{"result": [{"value": {"choices": ["d1", "d2"]}}]}],
            }
        ],
        "DUPES": [task_json(a, "d1"), task_json(a, "d5")],
    }

    def fill(text: str) -> str:
        return text.replace("{a}", str(a)).replace("{b}", str(b))

    text = json.dumps(special[content]) if content in special else fill(content)
    uri = write(tmp_path / name, text)
    with pytest.raises(TestprioError, match=fill(message)) as caught:
        labels.import_labels(run_copy, uri)
    assert str(caught.value).count(". ") == 0  # one sentence
    assert not storage.exists(labels.labels_uri(run_copy))
    assert "labelled" not in storage.read_json(run_copy.run_json)


def test_a_csv_without_a_header_is_not_quoted_back(run_copy, tmp_path):
    secret = tmp_path / "secret.env"
    secret.write_text("API_TOKEN=s3cr3t-value,other\nmore=x\n")
    link = tmp_path / "labels.csv"
    os.symlink(secret, link)
    with pytest.raises(TestprioError, match=r"none of the 2 columns in the header row") as caught:
        labels.import_labels(run_copy, str(link))
    assert "s3cr3t" not in str(caught.value) and "API_TOKEN" not in str(caught.value)


@pytest.mark.parametrize("kind", ["folder", "device", "fifo"])
def test_a_label_file_that_is_no_regular_file_is_refused(run_copy, tmp_path, kind):
    path = {"folder": tmp_path, "device": Path("/dev/zero"), "fifo": tmp_path / "pipe.csv"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    message = (
        "is a folder;"
        if kind == "folder"
        else r"is not a regular file \(a device, pipe or socket\);"
    )
    with pytest.raises(TestprioError, match=rf"the label file {path} {message} give the"):
        labels.import_labels(run_copy, str(path))
    assert not storage.exists(labels.labels_uri(run_copy))


def test_a_label_file_over_the_size_limit_is_refused(run_copy, tmp_path):
    a = ranking_of(run_copy)[0]["sample_id"]
    uri = write(tmp_path / "big.csv", "sample_id,label\n" + f"{a},d1\n" * 200_000)
    with pytest.raises(
        TestprioError,
        match=r"big\.csv is larger than the limit of 1 MB for a labels file \([0-9,]+ bytes\); "
        r"import it in parts or raise --max-file-mb",
    ):
        labels.import_labels(run_copy, uri, max_file_mb=1)
    with pytest.raises(TestprioError, match=r"upload\.csv is larger than the limit of 1 MB"):
        labels.import_labels(run_copy, "upload.csv", data=Path(uri).read_bytes(), max_file_mb=1)
    assert labels.import_labels(run_copy, uri, max_file_mb=2).read == 1


def test_cli_import_of_a_folder_is_one_sentence_and_takes_a_size(run_copy, tmp_path, capsys):
    assert cli.main(["labels", "import", "--run", run_copy.uri, str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the label file {tmp_path} is a folder" in err[0]
    a = ranking_of(run_copy)[0]["sample_id"]
    uri = write(tmp_path / "l.csv", "sample_id,label\n" + f"{a},d1\n" * 100_000)
    argv = ["labels", "import", "--run", run_copy.uri, uri, "--max-file-mb", "0.5"]
    assert cli.main(argv) == 1
    assert "raise --max-file-mb" in capsys.readouterr().err
    from testprio.labels.readers import DEFAULT_MAX_FILE_MB

    commands = cli.build_parser()._subparsers._group_actions[0].choices
    importing = commands["labels"]._subparsers._group_actions[0].choices["import"]
    assert f"(default {DEFAULT_MAX_FILE_MB:g})" in " ".join(importing.format_help().split())


# Peak RSS from VmHWM in a fresh process: before the import (run loaded) and after.
_MEASURE_IMPORT = """
import sys
from testprio import labels
layout = labels.open_run(sys.argv[1])
def peak():
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmHWM"].split()[0]) // 1024
from testprio.report import data as reportdata
reportdata.load_run(layout)
before = peak()
labels.import_labels(layout, sys.argv[2])
print(before, peak())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("kind", ["json", "csv"])
def test_import_memory_stays_within_a_few_times_the_file(run_copy, tmp_path, kind):
    ids = [row["sample_id"] for row in ranking_of(run_copy)]
    path = tmp_path / f"export.{kind}"
    with open(path, "w") as handle:
        if kind == "json":  # Label Studio's export: a task per sample, again and again
            handle.write("[")
            for number in range(120_000):
                task = task_json(ids[number % len(ids)], "d1")
                task["data"]["image"] = f"/data/upload/1/{number:08d}.png"
                handle.write(("," if number else "") + json.dumps(task))
            handle.write("]")
        else:
            handle.write("sample_id,label,rank,source\n")
            for number in range(600_000):
                handle.write(f"{ids[number % len(ids)]},d1,{number},cat/{number:07d}.png\n")
    size_mb = path.stat().st_size / 2**20
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE_IMPORT, run_copy.uri, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = (int(value) for value in result.stdout.split()[-2:])
    assert after - before < 5 * size_mb, (
        f"importing a {size_mb:.0f} MB {kind} file raised peak RSS by {after - before} MB"
    )


def test_import_refuses_a_missing_file_and_a_non_run(run_copy, tmp_path):
    with pytest.raises(TestprioError, match=r"the label file .*nope\.json does not exist"):
        labels.import_labels(run_copy, str(tmp_path / "nope.json"))
    with pytest.raises(TestprioError, match=r"--run .* holds no run\.json, so it is not a run"):
        labels.open_run(str(tmp_path))


def test_a_quarantined_sample_cannot_be_labelled(tmp_path):
    x, y = digits(20)
    x = x.copy()
    x[4] = np.nan
    layout = run_stages(
        linear_classifier(tmp_path / "m.onnx"),
        write_pool(tmp_path / "p.npz", x, y),
        str(tmp_path / "runs"),
        "q",
    )
    uri = write(tmp_path / "l.csv", "sample_id,label\n3,1\n4,1\n")
    with pytest.raises(TestprioError, match=r"labels sample_id 4, which is not among the 19 "):
        labels.import_labels(layout, uri)


def test_json_min_export_is_read(run_copy, tmp_path):
    a, b = (row["sample_id"] for row in ranking_of(run_copy)[:2])
    minimal = [
        {"id": 1, "image": "x.png", "sample_id": a, "label": "d7"},
        {"id": 2, "sample_id": b},
    ]
    result = labels.import_labels(run_copy, write(tmp_path / "min.json", json.dumps(minimal)))
    assert (result.read, result.skipped) == (1, 1)
    table = storage.read_table(labels.labels_uri(run_copy)).to_pylist()
    assert [(row["sample_id"], row["label"]) for row in table] == [(a, 7)]


# --- command line -----------------------------------------------------------------------


def test_cli_export_and_import(run_copy, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(
        ["labels", "export", "--run", run_copy.uri, "--out", str(out), "--ranks", "2-4"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"Exported ranks 2-4 of run img (3 samples, original images, blind) to {out}" in printed
    assert [int(r["rank"]) for r in read_csv(out / "labels.csv")] == [2, 3, 4]

    assert cli.main(["labels", "import", "--run", run_copy.uri, str(out / "labels.csv")]) == 0
    printed = capsys.readouterr().out
    figures = storage.read_json(run_copy.run_json)["labelled"]
    assert "Imported 3 labels" in printed and f"accuracy {figures['accuracy']:.4f}" in printed
    assert "(ranks 2-4)" in printed

    bad = write(tmp_path / "bad.csv", "sample_id,label\n99999,1\n")
    assert cli.main(["labels", "import", "--run", run_copy.uri, bad]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("testprio: error: ") and "99999" in err[0]
    with pytest.raises(SystemExit):
        cli.main(
            [
                "labels",
                "export",
                "--run",
                run_copy.uri,
                "--out",
                "x",
                "--top-k",
                "3",
                "--ranks",
                "1-3",
            ]
        )
    assert "not allowed with argument" in capsys.readouterr().err


# --- gs:// ------------------------------------------------------------------------------


def test_round_trip_on_gcs(gcs_emulator, inputs, tmp_path):
    base = f"gs://{BUCKET}/labels-{uuid.uuid4().hex[:8]}"
    pool = f"{base}/pools/digits"
    for path in sorted((inputs / "pool").rglob("*.png")):
        storage.copy_file(str(path), f"{pool}/{path.relative_to(inputs / 'pool').as_posix()}")
    layout = run_stages(inputs / "m.onnx", pool, f"{base}/runs", "gcs", ops=OPS, top_k=4)
    out = f"{base}/exports/top"
    export = labels.export_labels(labels.open_run(layout.uri), out, top_k=4, pre_annotate=True)
    assert export.image_mode == "original"
    assert storage.list_names(out) == [
        "README.txt",
        "label_studio_config.xml",
        "label_studio_tasks.json",
        "labels.csv",
    ]
    for row in export.rows:
        copied = storage.read_bytes(storage.join(out, row["image"]))
        assert copied == (inputs / "pool" / row["source"]).read_bytes()
    tasks = json.loads(storage.read_bytes(storage.join(out, "label_studio_tasks.json")))
    exported = annotated(tasks, {t["data"]["sample_id"]: [t["data"]["predicted"]] for t in tasks})
    storage.write_bytes(f"{base}/project.json", json.dumps(exported).encode())
    result = labels.import_labels(layout, f"{base}/project.json")
    assert result.labelled["accuracy"] == 1.0 and result.labelled["apfd"] is None
    assert storage.read_table(labels.labels_uri(layout)).num_rows == 4
    assert storage.read_json(layout.run_json)["labelled"]["samples"] == 4


# --- for the report app: bytes in, bytes out --------------------------------------------


def test_app_functions_take_and_give_bytes(run_copy, inputs, tmp_path):
    data = labels.export_zip_bytes(run_copy, ranks="2-3")
    archive = zipfile.ZipFile(io.BytesIO(data))
    rows = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode())))
    assert [int(row["rank"]) for row in rows] == [2, 3]
    for row in rows:  # a plain folder is read directly, so the originals come without download
        assert archive.read(row["image"]) == (inputs / "pool" / row["source"]).read_bytes()
    assert {"README.txt", "label_studio_tasks.json", "label_studio_config.xml"} <= set(
        archive.namelist()
    )
    # The tasks carry their images, so that the zip works in Label Studio as it is.
    tasks = json.loads(archive.read("label_studio_tasks.json"))
    for task, row in zip(tasks, rows, strict=True):
        head, _, payload = task["data"]["image"].partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(payload) == archive.read(row["image"])
        assert "predictions" not in task
    assert "carries its image inline" in archive.read("README.txt").decode()
    prefixed = zipfile.ZipFile(
        io.BytesIO(labels.export_zip_bytes(run_copy, ranks="2-3", url_prefix="https://f.example"))
    )
    tasks = json.loads(prefixed.read("label_studio_tasks.json"))
    assert [t["data"]["image"] for t in tasks] == [f"https://f.example/{r['image']}" for r in rows]
    upload = f"sample_id,label\n{rows[0]['sample_id']},d4\n".encode()
    result = labels.import_labels(run_copy, "upload.csv", data=upload)
    assert result.read == 1 and result.labelled["file"] == "upload.csv"
    with pytest.raises(TestprioError, match=r"upload\.json is not valid JSON"):
        labels.import_labels(run_copy, "upload.json", data=b"[{")
    with pytest.raises(TestprioError, match=r"upload\.csv is not UTF-8 text"):
        labels.import_labels(run_copy, "upload.csv", data=b"sample_id,label\n1,\xff\xfe\n")
