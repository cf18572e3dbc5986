"""Command round-trip benchmark: `fieldhub bench commands`.

One online device and the real bridge process (`fieldhub bridge`, whose command dispatcher
publishes): for each of 1,000 commands, one at a time, the time from `send_command` returning
(committed) until the device has it, and until its `succeeded` ack is visible in the database
(the `commands` notification, sent on COMMIT). Target: p95 of the whole round trip < 500 ms.

Starts its own PostgreSQL and Mosquitto in a scratch directory (fieldhub.bench.registry's
scratch_servers), so it never touches the local stack. Also runnable as
`python -m fieldhub.bench.commands`."""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.bench.registry import scratch_servers
from fieldhub.broker.auth_sync import sync_once
from fieldhub.cli import Subparsers
from fieldhub.core import registry
from fieldhub.core.command_requests import send_command
from fieldhub.core.config import Settings
from fieldhub.core.db import connect
from fieldhub.core.passwords import generate_secret
from fieldhub.core.procs import free_port, tail, wait_until

DEVICE_ID = "bench-cmd-1"
BRIDGE_ACCOUNT = registry.BRIDGE_ACCOUNT_BASE
TARGET_P95_MS = 500.0


def register(subparsers: Subparsers) -> None:
    bench = subparsers.add_parser(
        "commands", help="command round trip with an online device (p50/p95)"
    )
    bench.add_argument("--commands", type=int, default=1000, help="round trips to time")
    bench.set_defaults(handler=run_bench)


def run_bench(settings: Settings | None, args: argparse.Namespace) -> int:
    if args.commands < 1:
        raise ValueError("--commands must be at least 1")
    result = bench_commands(args.commands)
    print(json.dumps({"bench": "commands", **result}, indent=2))
    return 0 if result["ok"] else 1


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class EchoDevice:
    """A device that acks `succeeded` the moment a command arrives, noting when it arrived."""

    def __init__(self, port: int, password: str, device_id: str = DEVICE_ID) -> None:
        self.arrived: dict[str, float] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(device_id, password)
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda client, *_: client.subscribe(
            f"devices/{device_id}/commands/+", qos=1
        )
        self.client.connect("127.0.0.1", port, keepalive=30)
        # paho leaves Nagle on; a device that answers at once should not wait for its ACK.
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        if not subscribed.wait(15):
            raise RuntimeError("the bench device could not subscribe to its commands")

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return  # a cleared retained message
        command = json.loads(message.payload)
        if command["id"] in self.arrived:
            return  # a duplicate: at-least-once delivery
        self.arrived[command["id"]] = time.perf_counter()
        client.publish(
            f"{message.topic}/ack", json.dumps({"status": "succeeded", "result": {}}), qos=1
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _bridge_ready(metrics_port: int) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=2
        ) as response:
            text = response.read().decode()
    except OSError:
        return False
    return "fieldhub_bridge_ready 1.0" in text


def bench_commands(count: int = 1000) -> dict[str, Any]:
    with scratch_servers("fieldhub-bench-commands-") as servers:
        admin = connect(servers.database_url, autocommit=True)
        bridge_password = generate_secret()
        registry.ensure_bridge_accounts(admin, bridge_password, 1, base=BRIDGE_ACCOUNT)
        registry.create_org(admin, "bench")
        device_password = registry.create_device(admin, DEVICE_ID, org="bench").password
        if sync_once(admin, servers.broker.auth_dir):
            servers.broker.reload()

        metrics_port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": servers.database_url,
            "MQTT_URL": f"mqtt://{BRIDGE_ACCOUNT}:{quote(bridge_password, safe='')}"
            f"@127.0.0.1:{servers.broker.mqtt_services}",
            "FIELDHUB_HOME": str(servers.workdir / "home"),
            "FIELDHUB_BRIDGE_METRICS_PORT": str(metrics_port),
        }
        log_path = servers.workdir / "bridge.log"
        with log_path.open("ab") as log:
            bridge = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fieldhub.cli",
                    "bridge",
                    "--metrics-port",
                    str(metrics_port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        listener = connect(servers.database_url, autocommit=True)
        device: EchoDevice | None = None
        try:
            wait_until(
                lambda: bridge.poll() is not None or _bridge_ready(metrics_port),
                timeout=60,
                what="the bridge to be ready",
            )
            if bridge.poll() is not None:
                raise RuntimeError(f"the bridge exited; see {log_path}:\n{tail(log_path)}")
            # The auth sync and broker reload above can lag the first login a little.
            device = _connect_device(servers.broker.mqtt_devices, device_password)
            listener.execute("LISTEN commands")
            delivered_ms, round_trip_ms = _measure(admin, listener, device, count)
        finally:
            if device is not None:
                device.close()
            bridge.terminate()
            bridge.wait(timeout=30)
            listener.close()
            admin.close()
    p95 = percentile(round_trip_ms, 0.95)
    return {
        "commands": count,
        "round_trip_p50_ms": round(percentile(round_trip_ms, 0.50), 1),
        "round_trip_p95_ms": round(p95, 1),
        "round_trip_max_ms": round(max(round_trip_ms), 1),
        "delivery_p50_ms": round(percentile(delivered_ms, 0.50), 1),
        "delivery_p95_ms": round(percentile(delivered_ms, 0.95), 1),
        "mean_ms": round(statistics.fmean(round_trip_ms), 1),
        "target_p95_ms": TARGET_P95_MS,
        "ok": p95 < TARGET_P95_MS,
    }


def _connect_device(port: int, password: str) -> EchoDevice:
    deadline = time.monotonic() + 15
    while True:
        try:
            return EchoDevice(port, password)
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _measure(
    admin: Any, listener: Any, device: EchoDevice, count: int
) -> tuple[list[float], list[float]]:
    delivered_ms: list[float] = []
    round_trip_ms: list[float] = []
    for i in range(count):
        started = time.perf_counter()
        command = send_command(admin, device_id=DEVICE_ID, name="bench", params={"i": i}, ttl_s=600)
        command_id = command["id"]
        done = f"{command_id} succeeded"
        deadline = started + 10
        finished: float | None = None
        while finished is None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise RuntimeError(f"command {i} ({command_id}) did not succeed within 10 s")
            for notify in listener.notifies(timeout=remaining, stop_after=1):
                if notify.payload.endswith(done):
                    finished = time.perf_counter()
                    break
        round_trip_ms.append((finished - started) * 1000)
        delivered_ms.append((device.arrived[command_id] - started) * 1000)
    return delivered_ms, round_trip_ms


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fieldhub.bench.commands")
    parser.add_argument("--commands", type=int, default=1000)
    return run_bench(None, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
