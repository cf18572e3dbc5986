"""gunicorn's configuration for `fieldhub web` (`gunicorn -c python:fieldhub.web.gunicorn_conf`).

`fieldhub web` sets the environment this reads before it becomes gunicorn: the settings as
usual, FIELDHUB_WEB_METRICS_PORT for this instance and PROMETHEUS_MULTIPROC_DIR (the folder
the workers write their metrics to). The hooks:
- on_starting: empty that folder, so counters start from zero and no dead worker of an
  earlier run is added in;
- when_ready: the master serves /metrics (every worker's values added up, see
  fieldhub.web.metrics) and /healthz on FIELDHUB_METRICS_HOST:FIELDHUB_WEB_METRICS_PORT;
- child_exit: a worker that exits is marked dead, so its live-sum gauges stop counting;
- logconfig_dict: gunicorn's error and access logs and the app's own logs in one format
  (FIELDHUB_LOG_FORMAT).
The master never imports the app (no preload): each worker imports fieldhub.web.wsgi after
the fork, after gevent's patching."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess

from fieldhub.core import logs
from fieldhub.core.config import Settings
from fieldhub.core.health import HealthServer, ReadinessProbe

_settings = Settings.from_env()
logconfig_dict = logs.gunicorn_log_config(_settings.log_level, _settings.log_format, "web")
_server: HealthServer | None = None


def on_starting(server: Any) -> None:
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, mode=0o700)


def when_ready(server: Any) -> None:
    global _server
    port = _settings.ports.web_metrics
    if not port:
        return
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    # The master has no database of its own to check: it is ready while it supervises its
    # workers, and each worker's readiness is answered on the web port (/readyz).
    try:
        _server = HealthServer(
            _settings.metrics_host, port, registry, alive=lambda: True, probe=ReadinessProbe({})
        )
    except OSError as exc:
        # Serving the app matters more than its metrics: say so loudly and go on.
        server.log.error(
            "cannot serve metrics on %s:%d (%s); the web app runs without them",
            _settings.metrics_host,
            port,
            exc.strerror,
        )


def post_fork(server: Any, worker: Any) -> None:
    # The metrics server belongs to the master; a worker must not keep its listening socket.
    if _server is not None:
        _server.close_socket()
    logs.route_uncaught_errors()


def worker_exit(server: Any, worker: Any) -> None:
    """Close the worker's pools and listeners before its interpreter is torn down (a pool
    left to the garbage collector then fails in its __del__, under gevent)."""
    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        from fieldhub.web import shutdown

        shutdown(app)


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    if _server is not None:
        _server.close()
