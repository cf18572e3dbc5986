"""`fieldhub bench web`: the web app at 10,000 devices, with 30 days of data for one of them.

Measures, through a real gunicorn (`fieldhub web`, gevent workers) from an HTTP client:
- the device list (first page, a deep page, a search, a label filter): p50/p95 (target < 150 ms),
- the device page's 30-day history (rollups) and the API's 30-day telemetry: p95 (< 100 ms),
- live latency: a device publishes over MQTT, the real bridge stores it and notifies, and the
  reading arrives on an open event stream: p50/p95/max (target < 1 s),
- the device list again while hundreds of live streams are held open.

Starts its own PostgreSQL and Mosquitto in a scratch directory (same code as `fieldhub up`).
Also runnable as `python -m fieldhub.bench.web`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests

from fieldhub.bench.harness import Child, http_status
from fieldhub.bench.registry import Servers, scratch_servers
from fieldhub.broker.auth_sync import sync_once
from fieldhub.cli import Subparsers
from fieldhub.core import registry, users
from fieldhub.core.config import Settings
from fieldhub.core.db import connect
from fieldhub.core.passwords import generate_secret, hash_secret
from fieldhub.core.procs import free_port

ORG = "bench"
HOT_DEVICE = "bench-00000"
PASSWORD = "bench password 123"  # noqa: S105 (a throwaway scratch database)

SEED_SQL = [
    # Device state and three latest values per device, as a running installation has them.
    """INSERT INTO device_state (device_key, online, last_seen)
       SELECT device_key, random() < 0.7, now() - random() * interval '2 hours' FROM devices""",
    """INSERT INTO latest_values (device_key, metric, time, value)
       SELECT d.device_key, m.metric, now() - random() * interval '10 minutes',
              to_jsonb(round((random() * 100)::numeric, 2))
       FROM devices d, (VALUES ('temperature'), ('humidity'), ('battery')) AS m(metric)""",
    # 30 days of one reading every 10 s of two metrics for the hot device.
    """INSERT INTO readings (time, device_key, metric, value)
       SELECT t, d.device_key, m.metric, 20 + 5 * sin(extract(epoch FROM t) / 3600) + random()
       FROM devices d,
            generate_series(now() - interval '30 days', now(), interval '10 seconds') AS t,
            (VALUES ('temperature'), ('humidity')) AS m(metric)
       WHERE d.device_id = %(device)s""",
    # The analysis worker's rollups of those readings, as its jobs would have written them.
    """INSERT INTO rollup_1m (bucket, device_key, metric, unit, min, max, avg, count, last,
                             last_time)
       SELECT time_bucket('1 minute', time), device_key, metric, unit, min(value), max(value),
              avg(value), count(*), last(value, time), max(time)
       FROM readings GROUP BY 1, 2, 3, 4""",
    """INSERT INTO rollup_1h (bucket, device_key, metric, unit, min, max, avg, count, last,
                             last_time)
       SELECT time_bucket('1 hour', bucket), device_key, metric, unit, min(min), max(max),
              sum(avg * count) / sum(count), sum(count), last(last, last_time), max(last_time)
       FROM rollup_1m GROUP BY 1, 2, 3, 4""",
    "ANALYZE",
]


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def timed(fetch: Callable[[], requests.Response], repeat: int) -> dict[str, float]:
    fetch()  # warm: pool connections, plans, page cache
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = fetch()
        samples.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{response.url} answered {response.status_code}")
    return percentiles(samples)


def getter(session: requests.Session, url: str) -> Callable[[], requests.Response]:
    return lambda: session.get(url, timeout=30)


@dataclasses.dataclass(frozen=True)
class Seeded:
    device_secret: str  # of HOT_DEVICE
    token: str  # the bench user's API token
    bridge_password: str


def seed(servers: Servers, devices: int) -> Seeded:
    """Devices, data, a user and the bridge's account."""
    secret = generate_secret()
    shared_hash = hash_secret(secret)  # one hash for all: provisioning speed is another bench
    bridge_password = generate_secret()
    with connect(servers.database_url, autocommit=True) as conn:
        registry.create_org(conn, ORG)
        specs = [
            (
                registry.DeviceSpec(
                    f"bench-{i:05d}",
                    f"Sensor {i}",
                    {"site": f"site-{i % 40}", "kind": ("pump", "valve", "meter")[i % 3]},
                ),
                shared_hash,
            )
            for i in range(devices)
        ]
        registry.provision_devices(conn, ORG, specs)
        for sql in SEED_SQL:
            conn.execute(sql.encode(), {"device": HOT_DEVICE} if "%(device)s" in sql else None)
        users.create_user(conn, "bench@bench.example", org=ORG, role="member", password=PASSWORD)
        token, _ = users.create_api_token(conn, "bench@bench.example")
        registry.ensure_bridge_accounts(conn, bridge_password, 1)
        if sync_once(conn, servers.broker.auth_dir):
            servers.broker.reload()
    return Seeded(secret, token, bridge_password)


def login(base: str) -> requests.Session:
    session = requests.Session()
    page = session.get(base + "/login", timeout=10).text
    csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    response = session.post(
        base + "/login",
        data={"email": "bench@bench.example", "password": PASSWORD, "csrf_token": csrf},
        allow_redirects=False,
        timeout=10,
    )
    if response.status_code != 302:
        raise RuntimeError(f"login failed: {response.status_code}")
    return session


def live_latency(
    base: str, session: requests.Session, servers: Servers, secret: str, readings: int
) -> dict[str, float]:
    """Publish over MQTT as the device; time until each reading arrives on the event stream."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    arrivals: queue.Queue[tuple[float, float]] = queue.Queue()
    stream = session.get(f"{base}/devices/{HOT_DEVICE}/live", stream=True, timeout=60)

    def read() -> None:
        event = None
        try:
            for raw in stream.iter_lines():
                line = raw.decode()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "readings":
                    now = time.time()
                    for reading in json.loads(line[6:]):
                        if reading["metric"] == "bench_probe":
                            arrivals.put((reading["value"], now))
        except (requests.RequestException, AttributeError, ValueError):
            return

    threading.Thread(target=read, daemon=True).start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=HOT_DEVICE, protocol=mqtt.MQTTv5)
    client.username_pw_set(HOT_DEVICE, secret)
    client.connect("127.0.0.1", servers.broker.mqtt_devices)
    client.loop_start()
    latencies = []
    try:
        time.sleep(1.0)  # let the stream subscribe before the first probe
        for i in range(readings):
            sent = time.time()
            payload = {"ts": sent, "values": {"bench_probe": float(i)}}
            client.publish(f"devices/{HOT_DEVICE}/telemetry", json.dumps(payload), qos=1)
            while True:
                value, arrived = arrivals.get(timeout=10)
                if value == float(i):
                    latencies.append(arrived - sent)
                    break
            time.sleep(0.2)
    finally:
        client.loop_stop()
        client.disconnect()
        stream.close()
    return percentiles(latencies)


def run(devices: int, repeat: int, streams: int, workers: int) -> dict[str, Any]:
    with scratch_servers("fieldhub-bench-web-") as servers:
        t0 = time.perf_counter()
        seeded = seed(servers, devices)
        secret, token = seeded.device_secret, seeded.token
        seed_s = time.perf_counter() - t0
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            "DATABASE_URL": servers.database_url,
            "FIELDHUB_HOME": str(servers.workdir),
            "FIELDHUB_LOG_LEVEL": "WARNING",
            "FIELDHUB_SECRET_KEY": generate_secret() * 2,
        }
        web = Child(
            "web",
            ["--workers", str(workers), "--bind", f"127.0.0.1:{port}"],
            env,
            servers.workdir / "web.log",
        ).start()
        password = quote(seeded.bridge_password, safe="")
        metrics_port = free_port()
        bridge = Child(
            "bridge",
            ["--metrics-port", str(metrics_port)],
            {
                **env,
                "MQTT_URL": f"mqtt://svc.bridge:{password}@127.0.0.1:"
                f"{servers.broker.mqtt_services}",
            },
            servers.workdir / "bridge.log",
            metrics_port=metrics_port,
        ).start()
        try:
            web.wait_ready(lambda: http_status(base + "/login", timeout=2) == 200, timeout=60)
            session = login(base)
            api = {"Authorization": f"Bearer {token}"}
            result: dict[str, Any] = {"devices": devices, "workers": workers, "seed_s": seed_s}
            pages = {
                "list_first_page": "/devices",
                "list_page_100": "/devices?page=100",
                "list_search": "/devices?q=bench-0999",
                "list_label_filter": "/devices?label=site%3Dsite-7",
            }
            for name, path in pages.items():
                result[name] = timed(getter(session, base + path), repeat)
            history = f"/devices/{HOT_DEVICE}/history.json?metric=temperature&range=30d"
            result["history_30d"] = timed(lambda: session.get(base + history, timeout=30), repeat)
            result["history_1h_raw"] = timed(
                lambda: session.get(base + history.replace("30d", "1h"), timeout=30), repeat
            )
            telemetry = f"/api/v1/devices/{HOT_DEVICE}/telemetry?metric=temperature&bucket=3600"
            start_30d = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30 * 86400))
            result["api_telemetry_30d_1h_buckets"] = timed(
                lambda: requests.get(
                    f"{base}{telemetry}&start={start_30d}", headers=api, timeout=30
                ),
                repeat,
            )
            bridge.wait_ready(
                lambda: bridge.metrics().get("fieldhub_bridge_ready") == 1.0, timeout=60
            )
            result["live_publish_to_browser"] = live_latency(base, session, servers, secret, 30)
            held = [
                session.get(f"{base}/devices/bench-{i:05d}/live", stream=True, timeout=60)
                for i in range(streams)
            ]
            result[f"list_first_page_with_{streams}_open_streams"] = timed(
                lambda: session.get(base + "/devices", timeout=30), repeat
            )
            del held  # stopping gunicorn ends them
        finally:
            bridge.stop(timeout=20)
            web.stop(timeout=20)
        return result


def register(subparsers: Subparsers) -> None:
    web = subparsers.add_parser("web", help="device list, 30-day history and live latency")
    web.add_argument("--devices", type=int, default=10_000)
    web.add_argument("--repeat", type=int, default=100, help="requests per measurement")
    web.add_argument("--streams", type=int, default=300, help="live streams held open")
    web.add_argument("--workers", type=int, default=2)
    web.set_defaults(handler=bench_web)


def bench_web(settings: Settings | None, args: argparse.Namespace) -> int:
    if args.devices < 1 or args.repeat < 1:
        raise ValueError("--devices and --repeat must be at least 1")
    result = run(args.devices, args.repeat, args.streams, args.workers)
    print(json.dumps({"bench": "web", **result}, indent=2))
    ok = (
        result["list_first_page"]["p95_ms"] < 150
        and result["history_30d"]["p95_ms"] < 100
        and result["live_publish_to_browser"]["p95_ms"] < 1000
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fieldhub.bench.web")
    register(parser.add_subparsers(dest="bench", required=True))
    args = parser.parse_args(argv)
    return bench_web(None, args)


if __name__ == "__main__":
    sys.exit(main())
