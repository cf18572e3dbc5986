"""Health of a process, for load balancers, systemd operators and `fieldhub status`.

Two questions with two answers:
- `/healthz` (liveness): the process is serving. 200 while it is, whatever its dependencies
  say, so nothing restarts a process only because the database is away.
- `/readyz` (readiness): it can do its work now. Each process names its checks (the web app:
  the primary, the read pool and the migrations; the bridge: broker connected and subscribed,
  database writable; the worker: database reachable); 200 when all pass, 503 with the failing
  ones otherwise, as JSON.

Probes must never overload what they probe, nor hang on it: a ReadinessProbe runs its checks
at most once per `ttl_s` (1.5 s) in a thread of its own, every caller in between gets the
cached answer, and a caller never waits more than `timeout_s` (3 s) for a check in flight: a
database that stopped answering (not refusing: a host that vanished, a stuck server) turns
the answer into 503 within that time, instead of piling up waiting probes. So a process is
reported not ready within ttl + timeout = 4.5 s of its database going away.

The bridge and the worker serve /metrics, /healthz and /readyz on their metrics port with
HealthServer; the web app answers both on its own port (fieldhub.web.health). The database
checks are in fieldhub.core.health_checks: this module must not import psycopg, because
gunicorn's master imports it (for its metrics server) before it forks the workers, and
psycopg chooses a blocking wait function for good when it is imported before gevent's
patching."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from fieldhub.core.logs import first_line

CHECK_TTL_S = 1.5
CHECK_TIMEOUT_S = 3.0

log = logging.getLogger(__name__)

Check = Callable[[], None]  # raises (with a message worth showing) when not ready


class NotReady(Exception):
    """A check's finding, e.g. migrations that are not applied yet."""


@dataclasses.dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str]  # check name -> "ok" or what is wrong
    checked_at: float  # time.monotonic()

    def as_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "checks": self.checks}


class ReadinessProbe:
    """Named checks, run together at most once per `ttl_s`, never waited for longer than
    `timeout_s` (see the module docstring)."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        *,
        ttl_s: float = CHECK_TTL_S,
        timeout_s: float = CHECK_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checks = dict(checks)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: Readiness | None = None
        self._in_flight: tuple[threading.Event, float] | None = None

    def current(self) -> Readiness:
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last.checked_at < self.ttl_s:
                return self._last
            if self._in_flight is None:
                self._in_flight = (threading.Event(), now)
                threading.Thread(
                    target=self._run, args=(self._in_flight[0],), name="readiness", daemon=True
                ).start()
            done, started = self._in_flight
        if done.wait(max(0.0, self.timeout_s - (self.clock() - started))):
            with self._lock:
                assert self._last is not None
                return self._last
        waited = self.clock() - started
        return Readiness(
            False, {"checks": f"no answer for {waited:.1f} s (a dependency hangs)"}, self.clock()
        )

    def close(self) -> None:
        """Close what the checks are bound to (a ProbeConnection's connection)."""
        for check in self.checks.values():
            close = getattr(getattr(check, "__self__", None), "close", None)
            if close is not None:
                close()

    def _run(self, done: threading.Event) -> None:
        results: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:  # every failure is a finding, reported by name
                results[name] = first_line(exc)
        with self._lock:
            self._last = Readiness(all(r == "ok" for r in results.values()), results, self.clock())
            self._in_flight = None
        done.set()


# -- the metrics and health server of the bridge and the worker --------------------------------
class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds are not worth a log line each."""


def health_app(
    registry: CollectorRegistry, *, alive: Callable[[], bool], probe: ReadinessProbe
) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok = alive()
            return _json(start_response, 200 if ok else 503, {"alive": ok})
        if path == "/readyz":
            state = probe.current()
            return _json(start_response, 200 if state.ready else 503, state.as_json())
        result: Iterable[bytes] = metrics(environ, start_response)
        return result

    return app


def _json(start_response: Callable[..., Any], status: int, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body).encode()
    reason = "OK" if status == 200 else "Service Unavailable"
    start_response(
        f"{status} {reason}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [payload]


class HealthServer:
    """/metrics, /healthz and /readyz on one port, served from a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        alive: Callable[[], bool],
        probe: ReadinessProbe,
    ) -> None:
        self._server = make_server(
            host,
            port,
            health_app(registry, alive=alive, probe=probe),
            server_class=_Server,
            handler_class=_QuietHandler,
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-server", daemon=True
        )
        self._thread.start()
        log.info("metrics and health on http://%s:%d/ (/metrics /healthz /readyz)", host, port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def close_socket(self) -> None:
        """In a forked child: drop the inherited listening socket (the thread serving it
        was not copied by the fork)."""
        self._server.socket.close()
