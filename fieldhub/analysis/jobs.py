"""The worker's jobs and their schedules (seconds between the starts of two runs)."""

from __future__ import annotations

from fieldhub.analysis import alerts, housekeeping, imports, rollups, webhooks
from fieldhub.analysis.worker import Job

JOBS: tuple[Job, ...] = (
    Job("rollups", 60.0, rollups.run_job),
    Job("retention", 3600.0, housekeeping.run_retention),
    Job("offline", 15.0, housekeeping.run_offline_detection),
    Job("alerts", 15.0, alerts.run_evaluation),
    Job("webhooks", 5.0, webhooks.run_delivery),
    Job("command_expiry", 10.0, housekeeping.run_command_expiry),
    Job("imports", 5.0, imports.run_imports_job),
    Job("purge_deleted", 30.0, housekeeping.run_purge_deleted),
)


def job_named(name: str) -> Job:
    for job in JOBS:
        if job.name == name:
            return job
    raise ValueError(f"no job named {name!r}; jobs: {', '.join(j.name for j in JOBS)}")
