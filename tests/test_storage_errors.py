"""Unreachable or unwritable storage stops with one sentence, through the CLI too."""

import numpy as np
import pytest

from testprio import cli, storage
from testprio.errors import TestprioError
from tests.conftest import linear_classifier, write_pool


def test_missing_bucket_is_one_sentence(gcs_emulator):
    with pytest.raises(
        TestprioError,
        match=r"bucket 'no-such-bucket' or the object does not "
        r"exist .*create the bucket or correct the URI",
    ):
        storage.write_json("gs://no-such-bucket/runs/x/run.json", {"a": 1})


def test_cli_run_into_a_root_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    model = linear_classifier(tmp_path / "m.onnx")
    data = write_pool(tmp_path / "p.npy", np.random.default_rng(0).random((4, 1, 8, 8), np.float32))
    code = cli.main(
        [
            "run",
            "--model",
            str(model),
            "--data",
            str(data),
            "--root",
            str(blocker / "runs"),
            "--run-id",
            "r1",
        ]
    )
    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"testprio: error: cannot create the folder {blocker}/runs (")
    assert "choose a --root you can write to." in last


def test_cli_run_into_a_missing_bucket(gcs_emulator, tmp_path, capsys):
    model = linear_classifier(tmp_path / "m.onnx")
    data = write_pool(tmp_path / "p.npy", np.random.default_rng(0).random((4, 1, 8, 8), np.float32))
    code = cli.main(
        [
            "run",
            "--model",
            str(model),
            "--data",
            str(data),
            "--root",
            "gs://missing-bucket/runs",
            "--run-id",
            "r1",
        ]
    )
    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "bucket 'missing-bucket' or the object does not exist" in last
