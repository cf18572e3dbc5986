"""`fieldhub bench http-ingest`: POST /api/v1/ingest/telemetry through a real gunicorn.

Measures requests/s and readings/s of HTTP ingest (fieldhub.web.ingest) through `fieldhub web`
(gevent workers) on this machine, from `--clients` client threads that each keep one HTTP/1.1
connection and send as fast as answers come back, one device per client (so the per-device
budget, raised here to `--rate`, is not what is measured). Each request carries `--readings`
reading objects of one value each, with `ts` and a seq of their own, so every reading is new.
Run twice: without and with an Idempotency-Key per request (a unique key: the cost of
claiming and finishing it, not of replays). Afterwards the readings table must hold exactly
what was acknowledged.

The client runs on the same cores as gunicorn and PostgreSQL, so the figures are a floor for
a machine where the devices are elsewhere. Starts its own PostgreSQL (and Mosquitto, unused)
in a scratch directory. Also runnable as `python -m fieldhub.bench.http_ingest`."""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fieldhub.bench.harness import Child
from fieldhub.bench.registry import Servers, scratch_servers
from fieldhub.cli import Subparsers
from fieldhub.core import registry
from fieldhub.core.config import Settings
from fieldhub.core.db import connect
from fieldhub.core.passwords import generate_secret
from fieldhub.core.procs import free_port

ORG = "bench"


def seed(servers: Servers, devices: int) -> list[tuple[str, str]]:
    with connect(servers.database_url, autocommit=True) as conn:
        registry.create_org(conn, ORG, "Bench")
        return [
            (creds.device_id, creds.password)
            for creds in (
                registry.create_device(conn, f"http-{i:04d}", org=ORG) for i in range(devices)
            )
        ]


class Client(threading.Thread):
    def __init__(
        self,
        port: int,
        device: tuple[str, str],
        readings: int,
        idempotency: bool,
        until: float,
        start_ms: int,
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.device_id, secret = device
        self.auth = "Basic " + base64.b64encode(f"{self.device_id}:{secret}".encode()).decode()
        self.readings = readings
        self.idempotency = idempotency
        self.until = until
        self.next_ms = start_ms
        self.latencies: list[float] = []
        self.stored = 0
        self.errors: dict[int, int] = {}

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        n = 0
        while time.monotonic() < self.until:
            objects = []
            for _ in range(self.readings):
                objects.append({"ts": self.next_ms, "seq": n, "values": {"temp": n % 100}})
                self.next_ms += 1
                n += 1
            body = json.dumps(objects).encode()
            headers = {"Authorization": self.auth, "Content-Type": "application/json"}
            if self.idempotency:
                headers["Idempotency-Key"] = f"{self.device_id}-{n}"
            t0 = time.perf_counter()
            conn.request("POST", "/api/v1/ingest/telemetry", body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            self.latencies.append(time.perf_counter() - t0)
            if response.status == 200:
                self.stored += int(json.loads(answer)["stored"])
            else:
                self.errors[response.status] = self.errors.get(response.status, 0) + 1
        conn.close()


def measure(
    port: int,
    devices: list[tuple[str, str]],
    readings: int,
    idempotency: bool,
    seconds: float,
    start_ms: int,
) -> dict[str, Any]:
    until = time.monotonic() + seconds
    clients = [Client(port, d, readings, idempotency, until, start_ms) for d in devices]
    t0 = time.perf_counter()
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    elapsed = time.perf_counter() - t0
    latencies = sorted(x for c in clients for x in c.latencies)
    errors: dict[int, int] = {}
    for client in clients:
        for status, count in client.errors.items():
            errors[status] = errors.get(status, 0) + count
    stored = sum(c.stored for c in clients)
    return {
        "idempotency_key": idempotency,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed),
        "readings_per_s": round(stored / elapsed),
        "stored": stored,
        "errors": errors,
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1000, 1),
    }


def run(clients: int, readings: int, seconds: float, workers: int, rate: int) -> dict[str, Any]:
    with scratch_servers("fieldhub-bench-http-ingest-") as servers:
        devices = seed(servers, clients * 2)
        port = free_port()
        env = {
            "DATABASE_URL": servers.database_url,
            "FIELDHUB_HOME": str(servers.workdir),
            "FIELDHUB_LOG_LEVEL": "WARNING",
            "FIELDHUB_SECRET_KEY": generate_secret() * 2,
            "FIELDHUB_INGEST_RATE_PER_S": str(rate),
        }
        web = Child(
            "web",
            ["--workers", str(workers), "--bind", f"127.0.0.1:{port}"],
            env,
            Path(servers.workdir) / "web.log",
        ).start()
        try:
            web.wait_ready(lambda: _answers(port), timeout=60, what="gunicorn")
            result: dict[str, Any] = {
                "clients": clients,
                "readings_per_request": readings,
                "workers": workers,
                "seconds": seconds,
            }
            base_ms = int(time.time() * 1000) - 3_600_000
            # Separate devices per run, so the second run's readings cannot meet the first's.
            result["without_key"] = measure(
                port, devices[:clients], readings, False, seconds, base_ms
            )
            result["with_key"] = measure(port, devices[clients:], readings, True, seconds, base_ms)
            with connect(servers.database_url) as conn:
                row = conn.execute("SELECT count(*) AS n FROM readings").fetchone()
            result["readings_in_table"] = int(row["n"]) if row else 0
            result["all_acknowledged_stored"] = result["readings_in_table"] == (
                result["without_key"]["stored"] + result["with_key"]["stored"]
            )
        finally:
            web.stop(timeout=20)
        return result


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("POST", "/api/v1/ingest/telemetry", body=b"{}")
        status = conn.getresponse().status
        conn.close()
    except OSError:
        return False
    return status == 401


def register(subparsers: Subparsers) -> None:
    bench = subparsers.add_parser(
        "http-ingest", help="HTTP ingest through gunicorn: requests/s and readings/s"
    )
    bench.add_argument("--clients", type=int, default=16, help="client connections (devices)")
    bench.add_argument("--readings", type=int, default=10, help="reading objects per request")
    bench.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    bench.add_argument("--workers", type=int, default=2)
    bench.add_argument("--rate", type=int, default=100_000, help="FIELDHUB_INGEST_RATE_PER_S")
    bench.set_defaults(handler=bench_http_ingest)


def bench_http_ingest(settings: Settings | None, args: argparse.Namespace) -> int:
    if args.clients < 1 or args.readings < 1 or args.seconds <= 0:
        raise ValueError("--clients, --readings and --seconds must be positive")
    result = run(args.clients, args.readings, args.seconds, args.workers, args.rate)
    print(json.dumps({"bench": "http-ingest", **result}, indent=2))
    return 0 if result["all_acknowledged_stored"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fieldhub.bench.http_ingest")
    register(parser.add_subparsers(dest="bench", required=True))
    args = parser.parse_args(argv)
    return bench_http_ingest(None, args)


if __name__ == "__main__":
    sys.exit(main())
