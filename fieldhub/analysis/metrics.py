"""Prometheus metrics of the analysis worker, in a registry of their own (like the bridge's).

Per job: runs by outcome and their duration, recorded by the worker after each run it did;
the time of the newest successful run and the webhook backlog are read from the database
every REFRESH_S by a thread of their own, so every worker reports the same truth whichever
of them ran a job (the advisory lock gives each run to one worker). A dashboard therefore
alerts on `time() - max by (job) (fieldhub_worker_job_last_success_timestamp_seconds)`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fieldhub.core.db import Conn, Queries, connect

QUERIES = Queries(Path(__file__).with_name("metrics.sql"))
REFRESH_S = 10.0

log = logging.getLogger(__name__)


class WorkerMetrics:
    def __init__(self, jobs: Sequence[str]) -> None:
        self.jobs = list(jobs)
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.runs = Counter(
            "fieldhub_worker_job_runs", "job runs by outcome", ["job", "outcome"], registry=reg
        )
        self.duration = Histogram(
            "fieldhub_worker_job_duration_seconds",
            "how long a job run took",
            ["job"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=reg,
        )
        self.last_success = Gauge(
            "fieldhub_worker_job_last_success_timestamp_seconds",
            "end of the newest successful run of the job (any worker), Unix time",
            ["job"],
            registry=reg,
        )
        self.webhook_backlog = Gauge(
            "fieldhub_worker_webhook_backlog",
            "webhook deliveries waiting to be delivered (or retried)",
            registry=reg,
        )
        self.webhook_oldest = Gauge(
            "fieldhub_worker_webhook_oldest_pending_seconds",
            "how long the oldest pending webhook delivery has waited",
            registry=reg,
        )
        self.refresh_errors = Counter(
            "fieldhub_worker_metrics_refresh_errors",
            "failed reads of the database-derived metrics",
            registry=reg,
        )
        for job in self.jobs:
            # Known from the start, so a job that never ran shows 0 runs rather than nothing.
            for outcome in ("ok", "error", "skipped"):
                self.runs.labels(job, outcome)
            self.duration.labels(job)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, job: str, outcome: str, seconds: float) -> None:
        self.runs.labels(job, outcome).inc()
        self.duration.labels(job).observe(seconds)

    def refresh(self, conn: Conn) -> None:
        for row in conn.execute(QUERIES["last_successes"], {"jobs": self.jobs}):
            if row["finished_at"] is not None:
                self.last_success.labels(str(row["job"])).set(float(row["finished_at"]))
        backlog = conn.execute(QUERIES["webhook_backlog"]).fetchone()
        if backlog is not None:
            self.webhook_backlog.set(float(backlog["pending"]))
            self.webhook_oldest.set(float(backlog["oldest_s"]))

    def start_refresh(self, database_url: str) -> None:
        self._thread = threading.Thread(
            target=self._refresh_loop, args=(database_url,), name="worker-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _refresh_loop(self, database_url: str) -> None:
        conn: Conn | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect(database_url, autocommit=True, application_name="worker:metrics")
                self.refresh(conn)
            except psycopg.Error as exc:
                self.refresh_errors.inc()
                log.debug("worker metrics: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(REFRESH_S)
        if conn is not None:
            conn.close()
