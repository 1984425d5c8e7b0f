"""The whole pipeline through KFP's local runner, on a local root and on an emulator gs:// root,
with a real PyTorch CNN exported to ONNX; plus the command line around it."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from testprio import cli, storage
from testprio.ingest import shard_tensors
from testprio.layout import RunLayout
from tests.conftest import linear_classifier, write_pool

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory):
    """The demo's CNN, trained (seeded) on half the digits and exported by torch.onnx."""
    from demo.train_digits import train_and_export

    return train_and_export(tmp_path_factory.mktemp("digits"), seed=0)


def _parameters(model: str, data: str, root: str, run_id: str, **overrides) -> dict:
    from tests.stagekit import parameters

    values = parameters(model, data, root, run_id, shard_size=300, batch_size=128)
    values.pop("job_name")
    values.update(overrides)
    return values


def test_pipeline_runs_end_to_end(root, digits_model):
    model, data = str(digits_model["model"]), str(digits_model["pool"])
    if root.startswith("gs://"):  # remote inputs too
        storage.copy_file(model, storage.join(root, "inputs", "model.onnx"))
        storage.copy_file(data, storage.join(root, "inputs", "pool.npz"))
        model, data = (
            storage.join(root, "inputs", "model.onnx"),
            storage.join(root, "inputs", "pool.npz"),
        )
    layout = cli.run_pipeline_locally(_parameters(model, data, root, "digits"))

    record = storage.read_json(layout.run_json)
    assert record["status"] == "succeeded", record
    stage_names = [timing["stage"] for timing in record["stages"]]
    assert stage_names[:3] == ["start", "ingest", "convert"]
    assert sorted(stage_names[3:6]) == [f"score-shard-0000{i}" for i in range(3)]
    assert stage_names[-2:] == ["rank", "report"]
    assert all(timing["end"] >= timing["start"] for timing in record["stages"])
    # The report task's outputs: the run's report/ folder (the KFP artifacts carry the same).
    assert storage.list_names(layout.report_dir) == [
        "export.zip",
        "report.html",
        "report.json",
        "report.md",
    ]
    figures = storage.read_json(layout.report_json)
    assert figures["metrics"]["samples"] == 899
    assert figures["labels"]["confusion"] and figures["labels"]["fault_curve"]

    assert storage.list_names(layout.data_dir) == [
        "duplicates.parquet",
        "manifest.json",
        "quarantine.parquet",
        "shard-00000.parquet",
        "shard-00001.parquet",
        "shard-00002.parquet",
    ]
    assert storage.list_names(layout.scores_dir) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
        "shard-00002.parquet",
    ]
    ranking = storage.read_table(layout.ranking)
    assert ranking.num_rows == digits_model["pool_size"] == 899
    gini = ranking.column("gini").to_numpy()
    assert (np.diff(gini) <= 0).all()
    summary = storage.read_json(layout.summary)
    # The ranking's accuracy is the torch model's own accuracy on the pool.
    assert summary["labels"]["accuracy"] == pytest.approx(digits_model["pool_accuracy"], abs=1e-6)
    # A trained model's uncertainty finds its mistakes far sooner than a random order.
    assert summary["labels"]["apfd"]["normalized"] > 0.75
    model_json = storage.read_json(layout.model_json)
    assert model_json["producer_name"] == "pytorch"
    assert model_json["output_kind"] == "logits"


def test_failed_stage_marks_the_run_failed(local_root, tmp_path, digits_model):
    data = write_pool(
        tmp_path / "wrong.npz", np.random.default_rng(0).random((20, 3, 8, 8), np.float32)
    )
    with pytest.raises(
        cli.TestprioError,
        match=r"expects shape \(N, 1, 8, 8\) but the data "
        r"samples have shape \(N, 3, 8, 8\)",
    ):
        cli.run_pipeline_locally(
            _parameters(str(digits_model["model"]), str(data), local_root, "bad")
        )
    layout = RunLayout.create(local_root, "bad")
    record = storage.read_json(layout.run_json)
    assert (record["status"], record["failed_stage"]) == ("failed", "convert")
    assert not storage.exists(layout.ranking)
    assert not storage.exists(layout.scores_dir)


def test_cli_run_prints_top_k_and_the_run_folder(local_root, digits_model, capsys):
    code = cli.main(
        [
            "run",
            "--model",
            str(digits_model["model"]),
            "--data",
            str(digits_model["pool"]),
            "--root",
            local_root,
            "--run-id",
            "cli",
            "--metric",
            "margin",
            "--top-k",
            "5",
            "--shard-size",
            "500",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Ranked 899 of 899 samples by margin" in out
    assert f"Run folder: {local_root}/cli" in out
    table_rows = [
        line for line in out.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 7
    ]
    ranking = pq.read_table(f"{local_root}/cli/ranking.parquet").slice(0, 5).to_pylist()
    assert [int(line.split()[1]) for line in table_rows] == [r["sample_id"] for r in ranking]
    # The last column says where each sample came from: pool.npz[sample_id].
    assert [line.split()[-1] for line in table_rows] == [
        f"pool.npz[{r['sample_id']}]" for r in ranking
    ]
    assert "APFD" in out


def test_cli_refuses_an_existing_run_id(local_root, tmp_path, capsys):
    model = linear_classifier(tmp_path / "m.onnx")
    data = write_pool(tmp_path / "p.npy", np.random.default_rng(0).random((5, 1, 8, 8), np.float32))
    args = [
        "run",
        "--model",
        str(model),
        "--data",
        str(data),
        "--root",
        local_root,
        "--run-id",
        "same",
    ]
    assert cli.main(args) == 0
    before = storage.read_bytes(f"{local_root}/same/run.json")
    capsys.readouterr()
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"testprio: error: run folder {local_root}/same already holds a succeeded run; "
        "choose another --run-id."
    )
    assert storage.read_bytes(f"{local_root}/same/run.json") == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--metric", "gin"],
            "unknown metric 'gin'; choose one of gini, entropy, margin, least_confidence, nac-ctm",
        ),
        (["--run-id", "../up"], "run id '../up' is not allowed"),
        (["--data", "missing.npz"], "--data missing.npz does not exist; check the path."),
    ],
)
def test_cli_bad_input_is_one_sentence(tmp_path, capsys, args, message):
    model = linear_classifier(tmp_path / "m.onnx")
    data = write_pool(tmp_path / "p.npy", np.random.default_rng(0).random((5, 1, 8, 8), np.float32))
    base = ["run", "--model", str(model), "--data", str(data), "--root", str(tmp_path / "r")]
    assert cli.main(base + args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("testprio: error: ") and message in err[0]
    assert not (tmp_path / "r").exists()


def test_notebook_call_with_defaults(local_root, tmp_path):
    model = linear_classifier(tmp_path / "m.onnx", softmax=True)
    x = np.random.default_rng(3).normal(0, 1, (40, 1, 8, 8)).astype(np.float32)
    data = write_pool(tmp_path / "p.npy", x)
    layout = cli.run_pipeline_locally({"model": str(model), "data": str(data), "root": local_root})
    record = storage.read_json(layout.run_json)
    assert record["status"] == "succeeded"
    assert record["parameters"]["metric"] == "gini"
    assert record["parameters"]["shard_size"] == 10_000
    assert layout.run_id == record["run_id"] and layout.run_id[:2] == "20"
    assert storage.read_table(layout.ranking).num_rows == 40


def _digit_image_zip(folder) -> tuple:
    """A .zip of 8x8 digit PNGs in class folders 0..9 (40 images, one corrupt file)."""
    import zipfile

    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    archive = folder / "digits.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for i in range(40):
            image = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), "L")
            png = folder / f"{i}.png"
            image.save(png)
            handle.write(png, f"digits/{digits.target[i]}/{i:03d}.png")
        handle.writestr("digits/3/broken.png", b"\x89PNG\r\n\x1a\n not really")
    return archive, digits


def test_cli_runs_an_image_archive_with_ops(local_root, tmp_path, capsys):
    archive, digits = _digit_image_zip(tmp_path)
    model = linear_classifier(tmp_path / "m.onnx", sample_shape=(1, 8, 8))
    ops = '[{"op": "scale", "divide": 255}, {"op": "layout", "to": "NCHW"}]'
    args = ["run", "--model", str(model), "--data", str(archive), "--root", local_root]
    assert cli.main([*args, "--run-id", "pngs", "--ops", ops]) == 0
    layout = RunLayout(f"{local_root}/pngs")
    summary = storage.read_json(layout.summary)
    assert summary["counts"]["samples"] == 41
    assert summary["counts"]["ranked"] + summary["counts"]["quarantined"] == 41
    assert summary["counts"]["quarantine_kinds"] == {"unreadable": 1}
    assert summary["class_names"] == [str(i) for i in range(10)]
    assert summary["labels"]["labeled"] == 40
    record = storage.read_json(layout.run_json)
    assert record["parameters"]["ops"] == ops
    assert [op["op"] for op in record["preprocessing"]] == ["scale", "layout"]
    html = storage.read_bytes(layout.report_html).decode()
    assert "scale(" in html and "unreadable" in html
    # The ranked samples are the images' pixels / 255, in NCHW.
    first = storage.read_table(layout.ranking).slice(0, 1).to_pylist()[0]
    shard = storage.read_table(layout.data_shard(0))
    position = shard["sample_id"].to_pylist().index(first["sample_id"])
    x = shard_tensors(shard["x"], shard.schema)[position]
    index = int(shard["source"][position].as_py().split("/")[-1].split(".")[0])
    expected = (digits.images[index] * 255 / 16).astype(np.uint8) / 255.0
    np.testing.assert_allclose(np.reshape(x, (8, 8)), expected, atol=1e-6)


def test_cli_refuses_a_custom_op_before_the_run_starts(local_root, tmp_path, capsys):
    model = linear_classifier(tmp_path / "m.onnx")
    data = write_pool(tmp_path / "p.npy", np.random.default_rng(0).random((5, 1, 8, 8), np.float32))
    (tmp_path / "ops.py").write_text("import numpy as np\n\ndef op(x):\n    return eval('x')\n")
    args = ["run", "--model", str(model), "--data", str(data), "--root", local_root]
    assert cli.main([*args, "--custom-ops", str(tmp_path / "ops.py")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ops.py line 4" in err[0] and "eval" in err[0]
    assert not storage.exists(local_root) or not storage.list_folders(local_root)


def test_cli_runs_a_custom_op_in_its_sandbox(local_root, tmp_path):
    model = linear_classifier(tmp_path / "m.onnx")
    x = np.random.default_rng(4).random((30, 1, 8, 8), np.float32)
    data = write_pool(tmp_path / "p.npy", x)
    (tmp_path / "ops.py").write_text(
        "import numpy as np\n\n\ndef op(x):\n    return np.sqrt(x) * 2.0 - 1.0\n"
    )
    args = ["run", "--model", str(model), "--data", str(data), "--root", local_root]
    assert cli.main([*args, "--run-id", "custom", "--custom-ops", str(tmp_path / "ops.py")]) == 0
    layout = RunLayout(f"{local_root}/custom")
    (op,) = storage.read_json(layout.run_json)["preprocessing"]
    assert op["op"] == "custom" and op["file"] == "ops.py" and len(op["sha256"]) == 64
    shard = storage.read_table(layout.data_shard(0)).sort_by("sample_id")
    stored = shard_tensors(shard.column("x"), shard.schema).reshape(30, -1)
    np.testing.assert_allclose(stored, (np.sqrt(x) * 2.0 - 1.0).reshape(30, -1), rtol=1e-6)


def test_pipeline_with_reference_metamorphic_and_cam_ranking(local_root, tmp_path, digits_model):
    """--train-data, --metamorphic and --metric kmnc-cam through the KFP local runner: the
    reference task runs between convert and score, and the ranking is coverage.cam_order of
    the pool's hidden activations (boundaries from the training half)."""
    import onnx

    from demo.train_digits import load_split
    from testprio import coverage
    from testprio.activations import hidden_layer_names, layer_activations, with_layer_outputs
    from testprio.model import create_session

    x_train, y_train, x_pool, _ = load_split(0)
    train = write_pool(tmp_path / "train.npz", x_train, y_train)
    model = str(digits_model["model"])
    layout = cli.run_pipeline_locally(
        _parameters(
            model,
            str(digits_model["pool"]),
            local_root,
            "prio",
            train_data=str(train),
            metamorphic="default",
            followups=2,
            metric="kmnc-cam",
        )
    )
    record = storage.read_json(layout.run_json)
    assert record["status"] == "succeeded", record
    stage_names = [timing["stage"] for timing in record["stages"]]
    assert stage_names[:4] == ["start", "ingest", "convert", "reference"]

    proto = onnx.load(model)
    layers = hidden_layer_names(proto)
    session = create_session(with_layer_outputs(proto, layers).SerializeToString(), device="cpu")
    profile = coverage.NeuronProfile(layers)
    profile.update(layer_activations(session, {"input": x_train}, layers)[1]).finish()
    pool_acts = layer_activations(session, {"input": x_pool}, layers)[1]
    scores, covered = coverage.kmnc(pool_acts, profile)
    expected = coverage.cam_order(covered, scores, np.arange(len(x_pool)))
    ranking = storage.read_table(layout.ranking)
    np.testing.assert_array_equal(ranking.column("sample_id").to_numpy(), expected)
    summary = storage.read_json(layout.summary)
    assert (summary["prioritizer"], summary["metric"]) == ("kmnc-cam", "kmnc")
    assert {"dsa", "instability", "kmnc-cam", "gini"} <= set(summary["prioritizers"])
    assert summary["metamorphic"]["rows"] == 2 * len(x_pool)
