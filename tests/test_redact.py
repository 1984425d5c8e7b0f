"""URLs without their secrets (user:password@, query, fragment) in every sentence, log line,
run.json field and line of `testprio run --verbose`, whatever the URL's scheme."""

from __future__ import annotations

import io

import pytest

from testprio import local_run, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout, fail_run, record_in_run, start_run
from testprio.redact import redact_text, redact_url

SECRETS = ("pw", "SECRET", "TOKEN", "FRAG", "AKIA")


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("ftp://user:pw@example.com/pool.npy?token=TOKEN#FRAG", "ftp://example.com/pool.npy"),
        ("file:///etc/passwd?x=SECRET", "file:///etc/passwd"),
        ("s3://AKIA:SECRET@bucket/key.npy?X-Amz-Signature=SECRET", "s3://bucket/key.npy"),
        ("HTTPS://user:pw@Host.example/p?sig=SECRET", "https://host.example/p"),
        ("redis://:pw@10.0.0.1:6379/0", "redis://10.0.0.1:6379/0"),
        ("gs://user:pw@bucket/pool?.npy", "gs://bucket/pool?.npy"),  # '?' names an object
        ("weird+scheme://u:pw@h/x?SECRET", "weird+scheme://h/x"),
        ("ftp://u:pw@[::1/x?SECRET", "ftp://(an unparsable URL)"),
        ("/data/pool.npy", "/data/pool.npy"),
    ],
)
def test_redact_url_of_every_scheme(uri, shown):
    assert redact_url(uri) == shown
    for secret in SECRETS:
        assert secret not in redact_url(uri)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "pool.npy redirects to ftp://u:pw@h/x?token=TOKEN, which is not an http(s) URL.",
            "pool.npy redirects to ftp://h/x, which is not an http(s) URL.",
        ),
        (
            "downloading (redirected to https://h/p.npy?sig=SECRET) failed.",
            "downloading (redirected to https://h/p.npy) failed.",
        ),
        (
            "args: {'data': 'https://u:pw@h/p.npy?X-Goog-Signature=SECRET', 'n': 1}",
            "args: {'data': 'https://h/p.npy', 'n': 1}",
        ),
        ('"model": "s3://AKIA:SECRET@b/m.onnx"', '"model": "s3://b/m.onnx"'),
        # A quoted value is one URL, a literal space in its query too.
        (
            "args: {'data': 'https://h/p.npy?sig=SEC RET&token=MORE', 'n': 1}",
            "args: {'data': 'https://h/p.npy', 'n': 1}",
        ),
        ('{"data": "https://h/p.npy?a=1 b=SECRET"}', '{"data": "https://h/p.npy"}'),
        ("'gs://b/my pool/x.npy' stays", "'gs://b/my pool/x.npy' stays"),
        ("two: http://a/x?SECRET and file:///y#FRAG.", "two: http://a/x and file:///y."),
        ("no URL here: /data/pool.npy, gs://b/p.npy", "no URL here: /data/pool.npy, gs://b/p.npy"),
    ],
)
def test_redact_text_redacts_every_url_in_a_sentence(text, shown):
    assert redact_text(text) == shown


def test_every_error_sentence_is_redacted():
    error = TestprioError("ftp://u:pw@h/pool.npy?token=TOKEN cannot be read.")
    assert str(error) == "ftp://h/pool.npy cannot be read."


def test_log_lines_are_redacted(capsys):
    from testprio.log import configure, get_logger

    configure()
    get_logger("test").warning("fetching %s now", "ftp://u:pw@h/p.npy?token=TOKEN")
    err = capsys.readouterr().err
    assert "testprio WARNING fetching ftp://h/p.npy now" in err
    assert "TOKEN" not in err and "pw" not in err


def test_run_json_fields_are_redacted_and_a_run_resumes_with_the_same_url(tmp_path):
    layout = RunLayout.create(str(tmp_path / "runs"), "r1")
    model = "s3://AKIA:SECRET@bucket/m.onnx?X-Amz-Signature=SECRET"
    parameters = {"model": model, "data": "https://u:pw@h/p.npy?sig=SECRET"}
    start_run(layout, parameters)
    record_in_run(layout, "note", ["see ftp://u:pw@h/x?TOKEN"])
    fail_run(layout, "ingest", "downloading https://u:pw@h/p.npy?sig=SECRET failed.")
    text = storage.read_bytes(layout.run_json).decode()
    for secret in SECRETS:
        assert secret not in text
    record = storage.read_json(layout.run_json)
    assert record["parameters"]["model"] == "s3://bucket/m.onnx"
    assert record["error"] == "downloading https://h/p.npy failed."
    start_run(layout, parameters)  # the same command resumes it: compared redacted
    assert storage.read_json(layout.run_json)["status"] == "running"


@pytest.mark.parametrize("verbose", [True, False])
def test_verbose_task_logs_are_redacted(verbose):
    target = io.StringIO()
    progress = local_run._ProgressFilter(target, verbose=verbose)
    progress.write(
        "    testprio INFO ingest-pool(data='https://u:pw@h/p.npy?X-Goog-Signature=SECRET')\n"
    )
    progress.write("    testprio.errors.TestprioError: ftp://u:pw@h/x?TOKEN is gone.\n")
    assert "ingest-pool(data='https://h/p.npy')" in target.getvalue()
    for secret in SECRETS:
        assert secret not in target.getvalue()
    assert progress.error == "ftp://h/x is gone."


def test_cli_error_lines_are_redacted(tmp_path, capsys):
    from testprio import cli

    code = cli.main(
        ["run", "--model", "ftp://u:pw@h/m.onnx?TOKEN", "--data", str(tmp_path / "p.npy"),
         "--root", str(tmp_path / "runs")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "testprio: error:" in err
    for secret in SECRETS:
        assert secret not in err
