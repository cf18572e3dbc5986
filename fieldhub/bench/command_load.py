"""Commands sent while `fieldhub bench failover` breaks something.

`devices` real MQTT device clients (fieldhub.bench.commands.EchoDevice: subscribed to their
commands, answering each with `succeeded`) log in to the devices listener with their own
credentials, and one sender thread queues a command every 1/`rate` s through
`send_command` on the URL the web app would use (the multi-host URL during a database
failover), round-robin over those devices. A send that fails for a connection reason is
retried on a new connection, as a user retries a web request that failed; what it measures is
the longest a send waited (`send_stall_s`: from its first attempt to its commit).

The outcome is read from the database, so a send whose COMMIT raised but did commit (in doubt
during a failover) counts like any other: commands_sent (every command of the run),
commands_succeeded, commands_failed (failed, rejected, expired or cancelled), commands_lost
(still open when `settle` gave up) and command_latency_max_s (created to succeeded, on the
database's clock). "Commands continue" is commands_succeeded == commands_sent."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from fieldhub.bench.commands import EchoDevice
from fieldhub.bench.registry import Servers
from fieldhub.broker.auth_sync import sync_once
from fieldhub.core import db, registry
from fieldhub.core.command_requests import send_command
from fieldhub.core.db import Queries
from fieldhub.core.passwords import generate_secret, hash_secret
from fieldhub.core.procs import wait_until

QUERIES = Queries(Path(__file__).with_name("command_load.sql"))
COMMAND = "bench-failover"
RETRY_S = 0.2  # between attempts of one failed send


class CommandLoad:
    """`devices` answering devices and a sender at `rate` commands/s; `start`, `stop`,
    `settle`, `close`."""

    def __init__(self, servers: Servers, org: str, *, devices: int = 20, rate: float = 2.0):
        self.url = servers.database_url
        self.rate = rate
        self.device_ids = [f"cmd-{n:03d}" for n in range(devices)]
        self.devices: list[EchoDevice] = []
        self.send_errors = 0
        self.send_stall_s = 0.0
        self._error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send_loop, name="commands", daemon=True)
        # One hash of one secret for all of them, as the load generator's devices: provisioning
        # takes a moment instead of a PBKDF2 round per device.
        secret = generate_secret()
        password_hash = hash_secret(secret)
        with db.connect(self.url, autocommit=True) as conn:
            for device_id in self.device_ids:
                registry.create_device(
                    conn, device_id, org=org, password_hash=password_hash, secret=secret
                )
            sync_once(conn, servers.broker.auth_dir)
        servers.broker.reload()
        port = servers.broker.mqtt_devices
        try:
            for device_id in self.device_ids:
                device = wait_until(
                    functools.partial(_connected, port, secret, device_id),
                    timeout=30,  # the reload can lag the first login a little
                    interval=0.2,
                    what=f"device {device_id} to log in",
                )
                assert device is not None  # wait_until returns a true value
                self.devices.append(device)
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=120)

    def settle(self, timeout: float = 120.0) -> dict[str, Any]:
        """Stop sending, wait until every command of the run is final (or `timeout`), and
        report the outcome."""
        self.stop()
        if self._error is not None:
            raise RuntimeError(f"the command sender stopped: {self._error}") from self._error

        def outcome() -> dict[str, Any] | None:
            with contextlib.suppress(psycopg.OperationalError):
                with db.connect(self.url, connect_timeout=2) as conn:
                    row = conn.execute(QUERIES["command_outcomes"], {"name": COMMAND}).fetchone()
                if row and row["sent"] == row["succeeded"] + row["failed"]:
                    return dict(row)
            return None

        deadline = time.monotonic() + timeout
        row = outcome()
        while row is None and time.monotonic() < deadline:
            time.sleep(0.5)
            row = outcome()
        if row is None:  # not final in time: count what is still open as lost
            with db.connect(self.url) as conn:
                found = conn.execute(QUERIES["command_outcomes"], {"name": COMMAND}).fetchone()
            row = dict(found or {"sent": 0, "succeeded": 0, "failed": 0, "longest_s": 0.0})
        return {
            "command_devices": len(self.device_ids),
            "commands_sent": int(row["sent"]),
            "commands_succeeded": int(row["succeeded"]),
            "commands_failed": int(row["failed"]),
            "commands_lost": int(row["sent"]) - int(row["succeeded"]) - int(row["failed"]),
            "command_latency_max_s": round(float(row["longest_s"]), 1),
            "command_send_errors": self.send_errors,
            "command_send_stall_s": round(self.send_stall_s, 1),
        }

    def close(self) -> None:
        self.stop()
        for device in self.devices:
            with contextlib.suppress(Exception):  # a device already cut off: nothing to do
                device.close()
        self.devices = []

    def _send_loop(self) -> None:
        try:
            self._send_steadily()
        except Exception as error:  # anything but a lost connection: reported by settle()
            self._error = error

    def _send_steadily(self) -> None:
        conn: db.Conn | None = None
        index = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            device_id = self.device_ids[index % len(self.device_ids)]
            first_try = time.monotonic()
            while not self._stop.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = db.connect(self.url, autocommit=True)  # as the web pool
                    send_command(
                        conn, device_id=device_id, name=COMMAND, params={"i": index}, ttl_s=600
                    )
                    self.send_stall_s = max(self.send_stall_s, time.monotonic() - first_try)
                    break
                except psycopg.OperationalError:
                    # The primary is gone or the link is down: a new connection finds the
                    # primary (target_session_attrs=read-write) once there is one again.
                    self.send_errors += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                    self._stop.wait(RETRY_S)
            index += 1
            next_at = max(next_at + 1 / self.rate, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()


def _connected(port: int, secret: str, device_id: str) -> EchoDevice | None:
    try:
        return EchoDevice(port, secret, device_id)
    except (OSError, RuntimeError):
        return None
