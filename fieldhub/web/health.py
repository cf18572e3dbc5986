"""/healthz and /readyz of the web app, and the gate that answers 503 while it is not ready.

`/healthz` answers 200 while the process serves requests. `/readyz` answers 200 when the
primary accepts writes, the read pool hands out a working connection within 2 s, and every
migration this code ships is applied; 503 with the failing checks otherwise (fieldhub.core.
health: cached 1.5 s, never waited on for more than 3 s).

nginx OSS has no active health checks, so readiness reaches it through the answers
themselves: while a process is not ready, every request except the probes and static files
gets 503 (with Retry-After), and nginx's `proxy_next_upstream ... http_503` passes idempotent
requests on to the next instance and takes this one out of rotation for `fail_timeout`. A web
process started before its migrations (a rolling upgrade done in the wrong order), or whose
database went away, thus drops out of the pool by itself instead of failing requests."""

from __future__ import annotations

import os
import threading
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import ServiceUnavailable

from fieldhub.core.health import ReadinessProbe
from fieldhub.core.health_checks import QUERIES, ProbeConnection
from fieldhub.web.db import Pools

# Requests the gate lets through whatever the state: the probes themselves, and static files
# (they need no database).
UNGATED = frozenset({"healthz", "readyz", "static"})
RETRY_AFTER_S = 5
READ_POOL_TIMEOUT_S = 2.0


def init_app(app: Flask) -> None:
    app.extensions["fieldhub.readiness"] = _ProcessProbe(app.extensions["fieldhub.pools"])
    app.add_url_rule("/healthz", "healthz", healthz)
    app.add_url_rule("/readyz", "readyz", readyz)
    app.config.setdefault("READY_GATE", True)
    app.before_request(_gate)
    app.after_request(_retry_after)


class _ProcessProbe:
    """One ReadinessProbe per process: gunicorn forks its workers after the app is built, and
    a probe's thread and connection must not be shared across a fork."""

    def __init__(self, pools: Pools) -> None:
        self.pools = pools
        self._lock = threading.Lock()
        self._pid = 0
        self._probe: ReadinessProbe | None = None

    def get(self) -> ReadinessProbe:
        with self._lock:
            if self._probe is None or self._pid != os.getpid():
                primary = ProbeConnection(self.pools.write_url, "fieldhub-web-health")
                self._probe = ReadinessProbe(
                    {
                        "database": primary.writable,
                        "read_pool": self._read_pool,
                        "migrations": primary.migrations_applied,
                    }
                )
                self._pid = os.getpid()
            return self._probe

    def close(self) -> None:
        with self._lock:
            if self._probe is not None and self._pid == os.getpid():
                self._probe.close()
            self._probe = None

    def _read_pool(self) -> None:
        with self.pools.get("read").connection(timeout=READ_POOL_TIMEOUT_S) as conn:
            conn.execute(QUERIES["database_answers"])


def probe() -> ReadinessProbe:
    holder: _ProcessProbe = current_app.extensions["fieldhub.readiness"]
    return holder.get()


def healthz() -> Any:
    return _no_store(jsonify({"alive": True}))


def readyz() -> Any:
    state = probe().current()
    response = _no_store(jsonify(state.as_json()))
    response.status_code = 200 if state.ready else 503
    return response


def _gate() -> None:
    if request.endpoint in UNGATED or not current_app.config["READY_GATE"]:
        return
    state = probe().current()
    if not state.ready:
        g.not_ready = True
        raise ServiceUnavailable()


def _retry_after(response: Response) -> Response:
    if response.status_code == 503 and (g.get("not_ready") or request.endpoint == "readyz"):
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
