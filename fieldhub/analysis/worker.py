"""The worker loop: every job on a schedule, never run twice at once across worker instances.

Each job has its own thread and database connection. Before a run the thread takes a
session-level PostgreSQL advisory lock named after the job, then checks in `job_runs` whether
the job is due; only the lock holder decides and runs, so two workers (on one host or many)
can never overlap runs of one job nor run it more often than its interval. The lock lives as
long as the connection: a worker that dies mid-run frees the job for the others at once."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from fieldhub.analysis.metrics import WorkerMetrics
from fieldhub.core.config import Settings
from fieldhub.core.db import Conn, Queries, connect

QUERIES = Queries(Path(__file__).with_name("worker.sql"))
# First key of the two-int advisory lock space; the job name's hash is the second.
LOCK_NAMESPACE = 0x4A4F4253  # "JOBS"

log = logging.getLogger(__name__)


class JobSkipped(Exception):
    """The job cannot do its work now (e.g. a migration it needs is missing); not an error."""


@dataclasses.dataclass
class JobContext:
    conn: Conn  # autocommit: jobs open their own `conn.transaction()` blocks
    settings: Settings
    worker: str
    stopping: threading.Event


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    interval_s: float
    run: Callable[[JobContext], dict[str, Any] | None]


@dataclasses.dataclass(frozen=True)
class RunResult:
    run_id: int
    outcome: str
    details: dict[str, Any]
    error: str | None


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_if_due(
    conn: Conn,
    job: Job,
    settings: Settings,
    *,
    worker: str,
    stopping: threading.Event | None = None,
    force: bool = False,
) -> RunResult | None:
    """Run `job` once if it is due (or `force`) and no other worker holds it; else None."""
    params = {"namespace": LOCK_NAMESPACE, "job": job.name}
    row = conn.execute(QUERIES["try_lock"], params).fetchone()
    if row is None or not row["locked"]:
        return None
    try:
        if not force:
            last = conn.execute(QUERIES["last_start"], {"job": job.name}).fetchone()
            assert last is not None
            if last["started_at"] is not None:
                elapsed = (last["now"] - last["started_at"]).total_seconds()
                if elapsed < job.interval_s:
                    return None
        conn.execute(QUERIES["abandon_running"], {"job": job.name})
        run = conn.execute(QUERIES["start_run"], {"job": job.name, "worker": worker}).fetchone()
        assert run is not None
        context = JobContext(conn, settings, worker, stopping or threading.Event())
        outcome, error, details = "ok", None, {}
        try:
            details = job.run(context) or {}
        except JobSkipped as exc:
            outcome, error = "skipped", str(exc)
            log.info("job %s skipped: %s", job.name, exc)
        except Exception as exc:
            outcome, error = "error", f"{type(exc).__name__}: {exc}"[:2000]
            log.exception("job %s failed", job.name)
            if conn.closed:
                raise
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
        conn.execute(
            QUERIES["finish_run"],
            {"id": run["id"], "outcome": outcome, "error": error, "details": Jsonb(details)},
        )
        return RunResult(run["id"], outcome, details, error)
    finally:
        if not conn.closed:
            conn.execute(QUERIES["unlock"], params)


class Worker:
    """Runs `jobs` on their schedules until `stop()`; one thread per job."""

    def __init__(
        self,
        database_url: str,
        jobs: Sequence[Job],
        settings: Settings,
        *,
        name: str | None = None,
        poll_s: float = 1.0,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.database_url = database_url
        self.jobs = list(jobs)
        self.settings = settings
        self.name = name or default_worker_name()
        self.poll_s = poll_s
        self.metrics = metrics
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for job in self.jobs:
            thread = threading.Thread(
                target=self._job_loop, args=(job,), name=f"job-{job.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info("worker %s started %d jobs", self.name, len(self.jobs))

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        log.info("worker %s stopped", self.name)

    def alive(self) -> bool:
        """Every job's thread is running (what /healthz reports)."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def wait(self) -> None:
        while not self._stopping.wait(1.0):
            pass

    def _job_loop(self, job: Job) -> None:
        conn: Conn | None = None
        # Never sleep longer than the job's interval, and never spin when it is zero.
        pause = max(0.01, min(self.poll_s, job.interval_s))
        while not self._stopping.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect(
                        self.database_url, autocommit=True, application_name=f"worker:{job.name}"
                    )
                started = time.monotonic()
                result = run_if_due(
                    conn, job, self.settings, worker=self.name, stopping=self._stopping
                )
                if result is not None and self.metrics is not None:
                    self.metrics.record(job.name, result.outcome, time.monotonic() - started)
            except psycopg.Error as exc:
                # The database went away or the connection broke: the lock went with it, so
                # another worker may take over; reconnect after a pause.
                log.warning("job %s: database error, reconnecting: %s", job.name, exc)
                if conn is not None:
                    conn.close()
                conn = None
                self._stopping.wait(min(5.0, max(pause, 1.0)))
                continue
            self._stopping.wait(pause)
        if conn is not None:
            conn.close()


def recent_runs(conn: Conn, *, job: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(QUERIES["recent_runs"], {"job": job, "limit": limit})]


def load_state(conn: Conn, job: str) -> dict[str, Any]:
    row = conn.execute(QUERIES["get_state"], {"job": job}).fetchone()
    return dict(row["state"]) if row else {}


def save_state(conn: Conn, job: str, state: dict[str, Any]) -> None:
    conn.execute(QUERIES["put_state"], {"job": job, "state": Jsonb(state)})
