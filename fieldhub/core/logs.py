"""Logging of every fieldhub process: plain text for people, or one JSON object per line.

With FIELDHUB_LOG_FORMAT=json each record is a single line holding `time` (UTC, ISO 8601 with
milliseconds), `level`, `logger`, `message`, `role` (which process: web, bridge, worker, ...),
`pid`, and `exception` (the formatted traceback) when there is one, so a log shipper needs no
parsing rules. Records go to stderr: under systemd that is the journal, in the local stack the
process's log file (which the supervisor rotates). gunicorn's own loggers (its error log and
the access log) get the same handler through gunicorn_log_config()."""

from __future__ import annotations

import datetime as dt
import logging
import logging.config
import os
import sys
import threading
from types import TracebackType
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=` and is kept.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "role"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "role": self.role,
            "pid": record.process or os.getpid(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        return orjson.dumps(entry, default=str).decode()


def first_line(exc: BaseException) -> str:
    """An exception's first line (at most 300 characters), or its type's name if it says nothing.

    For a log line or a status field: psycopg's messages run to several lines of context, and
    a whole traceback belongs in the record's `exception`, not in its message."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def formatter(log_format: str, role: str) -> logging.Formatter:
    return JsonFormatter(role) if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str | int, log_format: str, role: str) -> None:
    """Replace the root logger's handlers with one stderr handler in the chosen format."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format, role))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    route_uncaught_errors()


def route_uncaught_errors() -> None:
    """Errors Python would print to stderr itself (an exception nobody caught in a thread,
    one raised in a __del__) go through logging instead, so they are JSON lines too."""
    log = logging.getLogger("fieldhub.uncaught")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread else "?"
        log.error("uncaught exception in thread %s", name, exc_info=_exc_info(args))

    def unraisable_hook(args: Any) -> None:
        log.error(
            "%s: %r", args.err_msg or "exception ignored", args.object, exc_info=_exc_info(args)
        )

    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook


def _exc_info(
    args: Any,
) -> tuple[type[BaseException], BaseException, TracebackType | None] | None:
    if args.exc_type is None or args.exc_value is None:
        return None
    return (args.exc_type, args.exc_value, args.exc_traceback)


def gunicorn_log_config(level: str, log_format: str, role: str) -> dict[str, Any]:
    """gunicorn's logconfig_dict: its error and access logs and the app's own loggers (root)
    to stderr. In JSON every line is one object; in text an access line stays as gunicorn
    writes it (client address first, its own timestamp inside), which is what log tools and
    people expect of an access log."""
    if log_format == "json":
        fmt: dict[str, Any] = {"()": JsonFormatter, "role": role}
        access_fmt = fmt
    else:
        fmt = {"format": TEXT_FORMAT}
        access_fmt = {"format": "%(message)s"}
    stream = "ext://sys.stderr"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"fieldhub": fmt, "access": access_fmt},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "fieldhub", "stream": stream},
            "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": stream},
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    }
