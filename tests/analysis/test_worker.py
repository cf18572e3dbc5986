"""Scheduling: several workers on one database never run one job at the same time (real DB)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub import cli
from fieldhub.analysis import worker
from fieldhub.analysis.jobs import JOBS
from fieldhub.analysis.worker import Job, JobContext, JobSkipped, Worker, run_if_due
from fieldhub.core.config import Settings
from fieldhub.core.db import Conn
from tests.support import wait_for

pytestmark = pytest.mark.integration

SETTINGS = Settings.from_env({"FIELDHUB_ENV": "test"})


def _slow_job(name: str, seconds: float) -> Job:
    def run(context: JobContext) -> dict[str, Any]:
        # Long enough that two unsynchronised workers would certainly overlap.
        time.sleep(seconds)
        return {"slept": seconds}

    return Job(name, 0.0, run)


def overlaps(runs: list[dict[str, Any]]) -> list[tuple[int, int]]:
    ordered = sorted(runs, key=lambda r: r["started_at"])
    return [
        (a["id"], b["id"])
        for a, b in itertools.pairwise(ordered)
        if b["started_at"] < a["finished_at"]
    ]


def test_two_workers_never_overlap_runs_of_one_job(database_url: str, db: Conn) -> None:
    # The real jobs (on an empty database) with no pause between runs, plus a slow one.
    jobs = [Job(job.name, 0.0, job.run) for job in JOBS if job.name != "imports"]
    jobs.append(_slow_job("slow", 0.05))
    workers = [
        Worker(database_url, jobs, SETTINGS, name=f"worker-{i}", poll_s=0.01) for i in range(2)
    ]
    for w in workers:
        w.start()
    try:

        def enough_runs() -> bool:
            rows = db.execute(
                "SELECT count(DISTINCT worker) AS workers, count(*) AS runs FROM job_runs"
                " WHERE job = 'slow' AND outcome = 'ok'"
            ).fetchone()
            return rows is not None and rows["workers"] == 2 and rows["runs"] >= 20

        wait_for(enough_runs, timeout=60, interval=0.2, what="both workers to run the slow job")
    finally:
        for w in workers:
            w.stop()
    runs = db.execute(
        "SELECT id, job, started_at, finished_at, outcome, worker FROM job_runs ORDER BY id"
    ).fetchall()
    assert all(r["outcome"] != "running" for r in runs)
    assert {r["worker"] for r in runs} == {"worker-0", "worker-1"}
    by_job: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_job.setdefault(run["job"], []).append(run)
    assert set(by_job) >= {"rollups", "alerts", "offline", "retention", "slow"}
    for name, job_runs in by_job.items():
        assert overlaps(job_runs) == [], f"runs of {name} overlapped"


def test_interval_is_respected_across_workers(database_url: str, db: Conn) -> None:
    job = Job("ticker", 3600.0, lambda context: {"ran": True})
    with (
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as one,
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as two,
    ):
        first = run_if_due(one, job, SETTINGS, worker="one")
        assert first is not None
        assert first.outcome == "ok"
        assert run_if_due(two, job, SETTINGS, worker="two") is None  # not due again for 1 h
        assert run_if_due(one, job, SETTINGS, worker="one") is None
        forced = run_if_due(two, job, SETTINGS, worker="two", force=True)
        assert forced is not None
        assert forced.outcome == "ok"


def test_a_held_job_is_not_run_and_a_dead_run_is_closed(database_url: str, db: Conn) -> None:
    job = Job("held", 0.0, lambda context: {})
    entered = threading.Event()
    release = threading.Event()

    def blocking(context: JobContext) -> dict[str, Any]:
        entered.set()
        release.wait(10)
        return {}

    holder = threading.Thread(
        target=lambda: run_if_due(
            psycopg.connect(database_url, autocommit=True, row_factory=dict_row),
            Job("held", 0.0, blocking),
            SETTINGS,
            worker="holder",
        )
    )
    holder.start()
    assert entered.wait(10)
    try:
        assert run_if_due(db, job, SETTINGS, worker="other", force=True) is None
    finally:
        release.set()
        holder.join(10)

    # A run left 'running' by a worker that died is closed by the next lock holder.
    db.execute("INSERT INTO job_runs (job, worker) VALUES ('held', 'ghost')")
    assert run_if_due(db, job, SETTINGS, worker="other", force=True) is not None
    ghost = db.execute("SELECT outcome, error FROM job_runs WHERE worker = 'ghost'").fetchone()
    assert ghost is not None
    assert ghost["outcome"] == "error"
    assert "stopped" in ghost["error"]


def test_outcomes_are_recorded(db: Conn) -> None:
    def failing(context: JobContext) -> dict[str, Any]:
        raise RuntimeError("boom")

    def skipping(context: JobContext) -> dict[str, Any]:
        raise JobSkipped("not today")

    for name, run in (("failing", failing), ("skipping", skipping)):
        run_if_due(db, Job(name, 0.0, run), SETTINGS, worker="w")
    runs = {r["job"]: r for r in worker.recent_runs(db)}
    assert runs["failing"]["outcome"] == "error"
    assert runs["failing"]["error"] == "RuntimeError: boom"
    assert runs["failing"]["duration_ms"] is not None
    assert runs["skipping"]["outcome"] == "skipped"
    assert runs["skipping"]["error"] == "not today"
    # A skipped run counts for the schedule: it is not retried on every poll.
    assert run_if_due(db, Job("skipping", 3600.0, skipping), SETTINGS, worker="w") is None


def test_command_expiry_runs(db: Conn) -> None:
    job = next(j for j in JOBS if j.name == "command_expiry")
    result = run_if_due(db, job, SETTINGS, worker="w", force=True)
    assert result is not None
    assert result.outcome == "ok"
    assert result.details == {"expired": 0}


def test_cli_runs_a_job_once_and_lists_runs(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert cli.main(["worker", "--once", "offline"]) == 0
    assert capsys.readouterr().out.startswith("offline: ok")
    assert cli.main(["jobs", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(r["job"], r["outcome"]) for r in runs] == [("offline", "ok")]
    assert runs[0]["details"] == {"marked_offline": 0, "devices": []}
    assert cli.main(["jobs"]) == 0
    assert " offline " in capsys.readouterr().out
