"""`fieldhub web`: the web app and API, served by gunicorn."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from fieldhub.cli import CommandError, Subparsers
from fieldhub.core import endpoints
from fieldhub.core.config import Settings

# gevent: one greenlet per connection, so hundreds of open live streams cost memory, not
# threads, and never block other requests (psycopg >= 3.1.14 cooperates with gevent's
# monkey-patching when it is imported after the patch, which gunicorn's gevent worker does
# before it imports fieldhub.web.wsgi).
WORKER_CLASS = "gevent"
WORKER_CONNECTIONS = 1000
KEEP_ALIVE_S = 75  # longer than nginx's upstream keepalive_timeout (60 s)


def register(subparsers: Subparsers) -> None:
    web = subparsers.add_parser("web", help="serve the web app and API with gunicorn")
    web.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default FIELDHUB_WEB_WORKERS, 2)",
    )
    web.add_argument(
        "--instance",
        type=int,
        default=1,
        help="instance N of this host (what fieldhub-web@N.service passes): listens on "
        "FIELDHUB_WEB_PORT + N - 1, metrics on FIELDHUB_WEB_METRICS_PORT + N - 1 (default 1)",
    )
    web.add_argument("--bind", help="HOST:PORT (default FIELDHUB_WEB_HOST and the port above)")
    web.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of the workers' summed /metrics, served by gunicorn's master (0 = off)",
    )
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
        # nginx keeps idle connections to an instance open for up to 60 s (its upstream
        # keepalive_timeout) and reuses them. gunicorn's default closes them after 2 s, so
        # nginx now and then sends a request into a connection being closed ("upstream
        # prematurely closed"), counts a failure and, with max_fails=1, takes the instance
        # out of rotation: seen in the multi-host benchmark as 502s while one web host was up.
        # Idle connections must outlive nginx's hold on them.
        "--keep-alive",
        str(KEEP_ALIVE_S),
        "--log-level",
        settings.log_level.lower(),
        "--access-logfile",
        "-",
        # Hooks, metrics and logging (the module says what each does).
        "--config",
        "python:fieldhub.web.gunicorn_conf",
        # gunicorn >= 25 opens a control socket at a fixed path under $HOME by default; two
        # instances on one host would fight over it, and nothing here uses it.
        "--no-control-socket",
        "fieldhub.web.wsgi:app",
    ]


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    endpoints.database_url(settings)  # fail here, clearly, rather than in every worker
    if args.instance < 1:
        raise CommandError("--instance must be 1 or more")
    offset = args.instance - 1
    settings = dataclasses.replace(
        settings,
        ports=dataclasses.replace(
            settings.ports,
            web=settings.ports.web + offset,
            web_metrics=settings.ports.web_metrics + offset
            if args.metrics_port is None
            else args.metrics_port,
        ),
    )
    workers = settings.web_workers if args.workers is None else args.workers
    argv = gunicorn_argv(settings, workers, args.bind)
    metrics_dir = settings.web_metrics_dir or (
        settings.home / "run" / f"web-metrics-{settings.ports.web_metrics or settings.ports.web}"
    )
    # What gunicorn's config module and prometheus_client read in the new process.
    os.environ["FIELDHUB_WEB_METRICS_PORT"] = str(settings.ports.web_metrics)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    # Replace this process: gunicorn's master handles SIGTERM (graceful stop) itself, and the
    # workers import psycopg fresh, after gevent's patching.
    os.execv(argv[0], argv)  # noqa: S606 (our own interpreter and argument list)
    return 0  # pragma: no cover
