"""run.json lifecycle: resuming an unfinished run, and a retry that succeeds."""

import pytest

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout, fail_run, finish_run, start_run


def test_unfinished_run_resumes_only_with_the_same_parameters(local_root):
    layout = RunLayout.create(local_root, "r1")
    start_run(layout, {"model": "a.onnx", "metric": "gini", "job_name": "job-1"})
    # The same parameters under another KFP job name: resumed, record unchanged.
    start_run(layout, {"model": "a.onnx", "metric": "gini", "job_name": "job-2"})
    assert storage.read_json(layout.run_json)["parameters"]["job_name"] == "job-1"
    with pytest.raises(TestprioError, match=r"started with other parameters \(metric, model\)"):
        start_run(layout, {"model": "b.onnx", "metric": "entropy", "job_name": "job-3"})


def test_finished_run_is_never_restarted(local_root):
    layout = RunLayout.create(local_root, "r2")
    start_run(layout, {"model": "a.onnx"})
    finish_run(layout)
    with pytest.raises(TestprioError, match=r"already holds a succeeded run; choose another"):
        start_run(layout, {"model": "a.onnx"})


def test_a_retry_that_succeeds_clears_the_failure(local_root):
    layout = RunLayout.create(local_root, "r3")
    start_run(layout, {"model": "a.onnx"})
    fail_run(layout, "score-shard-00001", "a transient failure.")
    assert storage.read_json(layout.run_json)["failed_stage"] == "score-shard-00001"
    record = finish_run(layout)
    assert (record["status"], record["error"]) == ("succeeded", None)
    assert "failed_stage" not in storage.read_json(layout.run_json)


def test_a_stage_records_its_peak_resident_memory(tmp_path):
    """``peak_rss_mb`` on each stage entry: at least what the stage held at once."""
    import numpy as np

    from testprio.layout import RunLayout, collect_stage_timings, stage

    run = RunLayout.create(str(tmp_path), "rss")
    with stage(run, "rank"):
        held = np.ones(300 * 2**20 // 8)  # 300 MiB, every page touched
        del held
    (timing,) = collect_stage_timings(run)
    assert 300 <= timing["peak_rss_mb"] < 64 * 1024


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"[" * 100_000, "its values are nested too deeply"),
        (b"\xff\xfe\x00", "it is not"),
        (b'["run"]', "it holds no JSON object"),
        (
            b'{"status": "failed", "parameters": [1, 2]}',
            "its field 'parameters' is not a JSON object",
        ),
        (
            b'{"status": "failed", "parameters": {}, "resumed": 5}',
            "its field 'resumed' is not a list",
        ),
        (b'{"status": 5, "parameters": {"model": "a.onnx"}}', "its field 'status' is not text"),
    ],
)
def test_a_malformed_run_record_is_one_sentence_on_resume(local_root, data, problem):
    layout = RunLayout.create(local_root, "bad")
    storage.write_bytes(layout.run_json, data)
    with pytest.raises(TestprioError, match=rf"run.json is not a readable run record \({problem}"):
        start_run(layout, {"model": "a.onnx"})
    assert storage.read_bytes(layout.run_json) == data  # nothing written


def test_a_run_json_that_is_a_folder_is_one_sentence(local_root):
    layout = RunLayout.create(local_root, "folder")
    import os

    os.makedirs(layout.run_json)
    with pytest.raises(TestprioError, match=r"run.json cannot be read \(Is a directory\)"):
        start_run(layout, {"model": "a.onnx"})
