#!/usr/bin/env python3
"""A complete fieldhub device in Python with paho-mqtt: the reference for firmware authors.

What it does (docs/devices.md is the contract; docs/examples/README.md compares the examples):
  * logs in with its credentials and falls back along `mqtt_urls` (home broker first, then
    the standbys), reconnecting with exponential backoff and full jitter;
  * marks itself online (retained status, with a Last Will of "offline");
  * publishes telemetry every `interval` seconds;
  * keeps its twin in step: applies the desired document it receives (retained, so also the
    changes made while it was offline) and reports what it applied;
  * answers commands with an ack, once per command id, even when a command arrives twice.

Run:   pip install paho-mqtt==2.1.0
       fieldhub device create my-device --org my-org --json > creds.json
       python3 fieldhub_device.py creds.json
For mqtts:// URLs with a private CA, set FIELDHUB_CA_FILE=/path/to/ca.crt.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

FIRMWARE = "example-python-1.0"
DEFAULT_INTERVAL_S = 10.0
BACKOFF_BASE_S = 1.0  # first retry within 0-2 s, then 0-4 s, 0-8 s ... (full jitter)
BACKOFF_CAP_S = 60.0  # never wait longer than this between two attempts
REMEMBERED_COMMANDS = 200  # ids answered, to answer a repeat without running it again


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def now_ms() -> int:
    return int(time.time() * 1000)


class Device:
    def __init__(self, credentials: dict[str, Any]) -> None:
        self.device_id: str = credentials["device_id"]
        self.username: str = credentials["username"]
        self.password: str = credentials["password"]
        # Home broker first, then the standbys; older credentials only have mqtt_url.
        self.urls: list[str] = credentials.get("mqtt_urls") or [credentials["mqtt_url"]]
        self.topic = f"devices/{self.device_id}"
        self.interval_s = DEFAULT_INTERVAL_S
        self.applied_version = -1  # desired version we last applied and reported
        self.answered: dict[str, dict[str, Any]] = {}  # command id -> final ack sent
        self.seq = 0
        self.started = time.monotonic()
        self.running = True

    # -- connection --------------------------------------------------------------------------
    def run(self) -> None:
        attempt = 0  # failed attempts since the last good connection
        while self.running:
            # Each attempt takes the next URL: home first, then each standby, then home again.
            url = self.urls[attempt % len(self.urls)]
            if attempt:
                cap = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
                delay = random.uniform(0, cap)  # noqa: S311 - jitter, not a secret
                log(f"retrying in {delay:.1f} s with {url}")
                self.sleep(delay)
                if not self.running:
                    break
            try:
                client = self.connect(url)
            except (OSError, ConnectionError) as exc:
                log(f"cannot connect to {url}: {exc}")
                attempt += 1
                continue
            attempt = 0
            self.serve(client)  # returns when the connection is lost or we stop
        log("stopped")

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once to stop."""
        deadline = time.monotonic() + seconds
        while self.running and time.monotonic() < deadline:
            time.sleep(min(0.2, deadline - time.monotonic()))

    def connect(self, url: str) -> mqtt.Client:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        # The broker forces the client id to the username anyway.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv311
        )
        client.username_pw_set(self.username, self.password)
        if tls:
            client.tls_set(ca_certs=os.environ.get("FIELDHUB_CA_FILE"))
        # The broker publishes this for us if we vanish without saying goodbye.
        client.will_set(f"{self.topic}/status", "offline", qos=1, retain=True)
        client.on_message = self.on_message
        connected: list[Any] = []
        client.on_connect = lambda c, u, flags, reason, props: connected.append(reason)
        client.connect(parts.hostname or "localhost", parts.port or (8883 if tls else 1883), 30)
        deadline = time.monotonic() + 10
        while not connected and time.monotonic() < deadline:
            client.loop(timeout=0.2)
        if not connected or connected[0].is_failure:
            client.disconnect()
            raise ConnectionError(f"refused: {connected[0] if connected else 'no CONNACK'}")
        log(f"connected to {url}" + (" (home)" if url == self.urls[0] else " (standby)"))
        client.publish(f"{self.topic}/status", "online", qos=1, retain=True)
        # Retained messages make both subscriptions deliver what waits for us right away:
        # the whole desired document and every pending command.
        client.subscribe([(f"{self.topic}/twin/desired", 1), (f"{self.topic}/commands/+", 1)])
        return client

    def serve(self, client: mqtt.Client) -> None:
        next_telemetry = time.monotonic()
        while self.running:
            if time.monotonic() >= next_telemetry:
                self.publish_telemetry(client)
                next_telemetry = time.monotonic() + self.interval_s
            if client.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS:
                log("connection lost")
                return
        client.publish(f"{self.topic}/status", "offline", qos=1, retain=True)
        client.disconnect()

    # -- what the device publishes ----------------------------------------------------------
    def publish_telemetry(self, client: mqtt.Client) -> None:
        self.seq += 1
        reading = {
            "ts": now_ms(),
            "seq": self.seq,
            "values": {
                "temperature": round(20 + random.uniform(-2, 2), 2),  # noqa: S311 - a fake sensor
                "uptime_s": int(time.monotonic() - self.started),
            },
        }
        client.publish(f"{self.topic}/telemetry", json.dumps(reading), qos=1)

    def report(self, client: mqtt.Client, version: int, state: dict[str, Any]) -> None:
        # version: the desired version we applied; seq: our clock, so that two reports of one
        # version are applied in the order we sent them.
        body = {"version": version, "seq": now_ms(), "state": state}
        client.publish(f"{self.topic}/twin/reported", json.dumps(body), qos=1)

    def ack(self, client: mqtt.Client, command_id: str, body: dict[str, Any]) -> None:
        client.publish(f"{self.topic}/commands/{command_id}/ack", json.dumps(body), qos=1)

    # -- what the device receives ------------------------------------------------------------
    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return  # an empty retained message: the backend cleared a finished command
        try:
            body = json.loads(message.payload)
        except ValueError:
            log(f"ignoring a message that is not JSON on {message.topic}")
            return
        if not isinstance(body, dict):
            log(f"ignoring a message that is not a JSON object on {message.topic}")
        elif message.topic.endswith("/twin/desired"):
            self.on_desired(client, body)
        else:
            self.on_command(client, message.topic.rsplit("/", 1)[-1], body)

    def on_desired(self, client: mqtt.Client, desired: dict[str, Any]) -> None:
        version, state = desired.get("version"), desired.get("state")
        if not isinstance(version, int) or not isinstance(state, dict):
            log("ignoring a desired document without version and state")
            return
        if version == self.applied_version:
            return  # the same document again (a reconnect): nothing new to apply
        interval = state.get("interval")
        # Apply what we can; report what we really run, so a value we refuse shows as a delta.
        if (
            isinstance(interval, int | float)
            and not isinstance(interval, bool)
            and 1 <= interval <= 3600
        ):
            self.interval_s = float(interval)
        applied = {**state, "interval": self.interval_s, "firmware": FIRMWARE}
        log(f"applied desired version {version}: {json.dumps(state)}")
        self.report(client, version, applied)
        self.applied_version = version

    def on_command(self, client: mqtt.Client, command_id: str, command: dict[str, Any]) -> None:
        if command_id in self.answered:
            # Delivery is at least once: answer again, never run it twice.
            self.ack(client, command_id, self.answered[command_id])
            return
        name, params = command.get("name"), command.get("params") or {}
        answer: dict[str, Any]
        if name == "ping":
            answer = {"status": "succeeded", "result": {"pong": True}, "error": None}
        elif name == "set_interval" and isinstance(params.get("seconds"), int):
            self.interval_s = float(min(max(params["seconds"], 1), 3600))
            answer = {"status": "succeeded", "result": {"interval": self.interval_s}, "error": None}
        else:
            answer = {"status": "rejected", "result": None, "error": f"unknown command {name!r}"}
        log(f"command {name} ({command_id}): {answer['status']}")
        self.ack(client, command_id, answer)
        self.answered[command_id] = answer
        while len(self.answered) > REMEMBERED_COMMANDS:
            self.answered.pop(next(iter(self.answered)))


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: fieldhub_device.py CREDENTIALS.json", file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as handle:
        device = Device(json.load(handle))

    def stop(signum: int, frame: object) -> None:
        device.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    device.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
