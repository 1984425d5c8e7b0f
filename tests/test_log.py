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
