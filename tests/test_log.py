import io
import logging
import sys

from testprio import log


def test_log_lines_follow_the_current_stderr(monkeypatch):
    log.configure()
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    log.get_logger("t").info("one")
    monkeypatch.setattr(sys, "stderr", second)
    log.get_logger("t").info("two")
    assert "testprio INFO one" in first.getvalue() and "two" not in first.getvalue()
    assert "testprio INFO two" in second.getvalue()


def test_configure_adds_one_handler():
    log.configure()
    log.configure()
    handlers = [
        h for h in logging.getLogger(log.LOGGER_NAME).handlers if getattr(h, "_testprio", 0)
    ]
    assert len(handlers) == 1


def test_progress_logs_now_and_then_and_at_the_end(monkeypatch):
    log.configure()
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    clock = iter([0.0, 1.0, 6.0, 7.0])  # made at 0; updates at 1, 6 (past 5 s), 7 (final)
    monkeypatch.setattr(log.time, "monotonic", lambda: next(clock))
    progress = log.Progress(log.get_logger("t"), "rank: wrote", "ranked rows", 3_000)
    progress.update(1_000)
    progress.update(2_000)
    progress.update(3_000, final=True)
    lines = [line for line in out.getvalue().splitlines() if "rank: wrote" in line]
    assert lines == [
        "testprio INFO rank: wrote 2,000/3,000 ranked rows",
        "testprio INFO rank: wrote 3,000/3,000 ranked rows",
    ]
