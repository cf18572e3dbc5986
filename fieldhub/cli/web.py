"""`fieldhub web`: the web app and API, served by gunicorn."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from fieldhub.cli import CommandError
from fieldhub.core import endpoints
from fieldhub.core.config import Settings

# gevent: one greenlet per connection, so hundreds of open live streams cost memory, not
# threads, and never block other requests (psycopg >= 3.1.14 cooperates with gevent's
# monkey-patching when it is imported after the patch, which gunicorn's gevent worker does
# before it imports fieldhub.web.wsgi).
WORKER_CLASS = "gevent"
WORKER_CONNECTIONS = 1000


def register(subparsers: Any) -> None:
    web = subparsers.add_parser("web", help="serve the web app and API with gunicorn")
    web.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    web.add_argument("--bind", help="HOST:PORT (default FIELDHUB_WEB_HOST:FIELDHUB_WEB_PORT)")
    web.set_defaults(handler=cmd_web)


def gunicorn_argv(settings: Settings, workers: int, bind: str | None) -> list[str]:
    if workers < 1:
        raise CommandError("--workers must be at least 1")
    address = bind or f"{settings.web_host}:{settings.ports.web}"
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        WORKER_CLASS,
        "--worker-connections",
        str(WORKER_CONNECTIONS),
        "--workers",
        str(workers),
        "--bind",
        address,
        # Live streams stay open for hours; on shutdown they are cut after this grace.
        "--graceful-timeout",
        "5",
        "--log-level",
        settings.log_level.lower(),
        "--access-logfile",
        "-",
        "fieldhub.web.wsgi:app",
    ]


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    endpoints.database_url(settings)  # fail here, clearly, rather than in every worker
    argv = gunicorn_argv(settings, args.workers, args.bind)
    # Replace this process: gunicorn's master handles SIGTERM (graceful stop) itself, and the
    # workers import psycopg fresh, after gevent's patching.
    os.execv(argv[0], argv)  # noqa: S606 (our own interpreter and argument list)
    return 0  # pragma: no cover
