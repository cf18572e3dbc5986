"""FIELDHUB_LOG_FORMAT=json: one JSON object per line, in every process (gunicorn's included)."""

from __future__ import annotations

import json
import logging
import logging.config
import subprocess
import sys

import pytest

from fieldhub.core import logs


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(
        "fieldhub.bridge", logging.WARNING, __file__, 1, message, args, exc_info
    )


def test_a_record_is_one_json_line_with_the_agreed_fields() -> None:
    line = logs.JsonFormatter("bridge").format(_record("held %d messages\nfor now", 3, exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "fieldhub.bridge"
    assert entry["message"] == "held 3 messages\nfor now"
    assert entry["role"] == "bridge"
    assert entry["time"].endswith("+00:00")
    assert "T" in entry["time"]
    assert "ValueError: bad" in entry["exception"]


def test_extra_fields_are_kept() -> None:
    record = _record("x")
    record.device = "d-1"
    assert json.loads(logs.JsonFormatter("web").format(record))["device"] == "d-1"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_cli_logs_in_the_chosen_format(fmt: str) -> None:
    # A fresh interpreter, as every fieldhub process configures its logging at start.
    code = (
        "import logging, sys\n"
        "from fieldhub.core import logs\n"
        f"logs.configure('INFO', {fmt!r}, 'worker')\n"
        "logging.getLogger('fieldhub.analysis').warning('job %s failed', 'rollups')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    line = result.stderr.strip()
    if fmt == "json":
        assert json.loads(line)["message"] == "job rollups failed"
        assert json.loads(line)["role"] == "worker"
    else:
        assert line.endswith("WARNING fieldhub.analysis: job rollups failed")


def test_gunicorn_logs_use_the_same_format() -> None:
    config = logs.gunicorn_log_config("INFO", "json", "web")
    logging.config.dictConfig(config)
    try:
        handler = logging.getLogger("gunicorn.access").handlers[0]
        line = handler.format(_record('"GET / HTTP/1.1" 200'))
        assert json.loads(line)["role"] == "web"
        assert logging.getLogger("gunicorn.error").handlers[0].formatter is not None
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})


def test_in_text_gunicorns_access_lines_start_with_the_client() -> None:
    config = logs.gunicorn_log_config("INFO", "text", "web")
    logging.config.dictConfig(config)
    try:
        handler = logging.getLogger("gunicorn.access").handlers[0]
        line = handler.format(_record('127.0.0.2 - - [01/Dec/2026] "GET / HTTP/1.1" 200'))
        assert line.startswith("127.0.0.2 - - ")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
