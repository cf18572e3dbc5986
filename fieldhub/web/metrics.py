"""Prometheus metrics of the web app: request latency by route, open live streams, and the
connection pools (waits, timeouts, size).

gunicorn runs several worker processes, so these use prometheus_client's multiprocess mode:
`fieldhub web` points PROMETHEUS_MULTIPROC_DIR at an emptied folder before gunicorn starts,
each worker writes its values to files there, and the gunicorn master serves /metrics on the
metrics port by adding them up (fieldhub.web.gunicorn_conf). Gauges say how to add up:
`livesum` counts only workers that are alive (a dead worker's files are marked dead by the
master). Without PROMETHEUS_MULTIPROC_DIR (tests, the Flask test client) the same objects
are plain in-process metrics.

Latency is the time until the response starts: for a live stream (server-sent events) that
is until its headers, and the stream itself is counted in fieldhub_web_live_streams."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from psycopg_pool import ConnectionPool, PoolTimeout

from fieldhub.core.db import Conn

# The objects live for the process, not the app: tests build many apps in one process.
REGISTRY = CollectorRegistry(auto_describe=True)
REQUEST_SECONDS = Histogram(
    "fieldhub_web_request_duration_seconds",
    "time from request to response start, by route (the URL rule, not the URL)",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
LIVE_STREAMS = Gauge(
    "fieldhub_web_live_streams",
    "open live streams (server-sent events), by kind",
    ["stream"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
POOL_WAIT_SECONDS = Histogram(
    "fieldhub_web_pool_wait_seconds",
    "time to get a database connection from a pool",
    ["pool"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
POOL_TIMEOUTS = Counter(
    "fieldhub_web_pool_timeouts",
    "requests for a pool connection that gave up waiting",
    ["pool"],
    registry=REGISTRY,
)
POOL_CONNECTIONS = Gauge(
    "fieldhub_web_pool_connections",
    "connections of the pools: size (open) and available (idle), summed over workers",
    ["pool", "state"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
POOL_MAX = Gauge(
    "fieldhub_web_pool_max_connections",
    "the pools' maximum size, summed over workers",
    ["pool"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)


# Series that exist before anything happens, so a dashboard shows 0 rather than nothing.
for _kind in ("device", "alerts"):
    LIVE_STREAMS.labels(_kind)
for _pool in ("read", "write"):
    POOL_TIMEOUTS.labels(_pool)


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_observe)


def _start() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started: float | None = g.get("metrics_started")
    if started is not None:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        REQUEST_SECONDS.labels(rule, request.method, str(response.status_code)).observe(
            time.perf_counter() - started
        )
    return response


@contextmanager
def waited_for(kind: str, pool: ConnectionPool[Conn]) -> Iterator[None]:
    """Time a wait for a pool connection; count the ones that time out."""
    started = time.perf_counter()
    try:
        yield
    except PoolTimeout:
        POOL_TIMEOUTS.labels(kind).inc()
        raise
    finally:
        POOL_WAIT_SECONDS.labels(kind).observe(time.perf_counter() - started)
        pool_state(kind, pool)


def pool_state(kind: str, pool: ConnectionPool[Conn]) -> None:
    stats = pool.get_stats()
    POOL_CONNECTIONS.labels(kind, "size").set(stats.get("pool_size", 0))
    POOL_CONNECTIONS.labels(kind, "available").set(stats.get("pool_available", 0))
    POOL_MAX.labels(kind).set(stats.get("pool_max", pool.max_size))


def stream_opened(kind: str) -> None:
    LIVE_STREAMS.labels(kind).inc()


def stream_closed(kind: str) -> None:
    LIVE_STREAMS.labels(kind).dec()
