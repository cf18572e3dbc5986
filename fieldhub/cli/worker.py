"""`fieldhub worker`: the analysis jobs, on a schedule or one of them once."""

from __future__ import annotations

import argparse
import signal
import threading

import orjson

from fieldhub.analysis.jobs import JOBS, job_named
from fieldhub.analysis.metrics import WorkerMetrics
from fieldhub.analysis.worker import Worker, default_worker_name, run_if_due
from fieldhub.cli import CommandError, Subparsers
from fieldhub.core import endpoints
from fieldhub.core.config import Settings
from fieldhub.core.db import connect
from fieldhub.core.health import HealthServer, ReadinessProbe
from fieldhub.core.health_checks import ProbeConnection


def register(subparsers: Subparsers) -> None:
    worker = subparsers.add_parser(
        "worker", help="run the analysis jobs (rollups, retention, alerts, imports, ...)"
    )
    worker.add_argument(
        "--once",
        metavar="JOB",
        choices=[job.name for job in JOBS],
        help="run this job once now and exit (unless another worker is running it)",
    )
    worker.add_argument("--name", help="this worker's name in job runs (default host:pid)")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of /metrics, /healthz and /readyz (0 = off; default "
        "FIELDHUB_WORKER_METRICS_PORT)",
    )
    worker.set_defaults(handler=cmd_worker)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    url = endpoints.database_url(settings)
    name = args.name or default_worker_name()
    if args.once:
        with connect(url, autocommit=True, application_name=f"worker:{args.once}") as conn:
            result = run_if_due(conn, job_named(args.once), settings, worker=name, force=True)
        if result is None:
            raise CommandError(f"job {args.once} is running on another worker right now")
        print(f"{args.once}: {result.outcome}" + (f" ({result.error})" if result.error else ""))
        print(orjson.dumps(result.details, option=orjson.OPT_INDENT_2).decode())
        return 0 if result.outcome in ("ok", "skipped") else 1

    metrics = WorkerMetrics([job.name for job in JOBS])
    runner = Worker(url, JOBS, settings, name=name, metrics=metrics)
    readiness = ReadinessProbe({"database": ProbeConnection(url, "worker:health").answers})
    stopped = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.start()
    metrics.start_refresh(url)
    server = None
    port = settings.ports.worker_metrics if args.metrics_port is None else args.metrics_port
    if port:
        server = HealthServer(
            settings.metrics_host,
            port,
            metrics.registry,
            alive=runner.alive,
            probe=readiness,
        )
    while not stopped.wait(1.0):
        pass
    runner.stop()
    metrics.stop()
    if server is not None:
        server.close()
    readiness.close()
    return 0
