"""Helpers for integration tests: a registry wired to the session's broker, and MQTT clients
that wait for conditions instead of sleeping."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg.rows import dict_row

from broker_bridge.auth_sync import sync_once
from fieldhub import registry
from fieldhub.passwords import generate_secret
from fieldhub.stack.mosquitto import MosquittoBroker

BRIDGE_ACCOUNT = "svc.bridge"


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll until `condition()` is truthy and return its value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class TestStack:
    """One test's database and the session broker, with the registry kept in sync."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, database_url: str, broker: MosquittoBroker) -> None:
        self.database_url = database_url
        self.broker = broker
        self.conn = psycopg.connect(database_url, autocommit=True, row_factory=dict_row)
        self.bridge_password = generate_secret()
        registry.ensure_service_account(
            self.conn, BRIDGE_ACCOUNT, registry.BRIDGE_ACL, self.bridge_password
        )
        self.org = "test-org"
        registry.create_org(self.conn, self.org)
        self.sync()

    def __enter__(self) -> TestStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    # -- registry ------------------------------------------------------------------------
    def sync(self) -> None:
        """Render the registry into the broker's files and make the broker reload them."""
        if sync_once(self.conn, self.broker.auth_dir):
            self.broker.reload()

    def create_devices(self, device_ids: Iterable[str], org: str | None = None) -> dict[str, str]:
        """Register devices, sync the broker, and wait until the last one can log in."""
        secrets: dict[str, str] = {}
        for device_id in device_ids:
            creds = registry.create_device(self.conn, device_id, org=org or self.org)
            secrets[device_id] = creds.password
        self.sync()
        last = list(secrets)[-1]
        wait_for(lambda: self.can_login(last, secrets[last]), what=f"{last} to be accepted")
        return secrets

    def can_login(self, username: str, password: str) -> bool:
        client = DeviceClient(self.broker.mqtt_devices, username, password)
        try:
            return client.connect(raise_on_refusal=False)
        finally:
            client.close()

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.broker.mqtt_services}"

    def query(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        return self.conn.execute(sql.encode() if isinstance(sql, str) else sql, params).fetchall()


class DeviceClient:
    """A paho MQTT v5 client that records what it receives, for tests."""

    def __init__(
        self,
        port: int,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
        clean_start: bool = True,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.port = port
        self.username = username
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or username, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(username, password)
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.clean_start = clean_start
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.received: list[mqtt.MQTTMessage] = []
        self.connack: Any = None
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        self._connected.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.disconnected.set()
        self._connected.set()  # wake a connect() that is waiting on a refusal

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.received.append(message)
        self.messages.put(message)

    def connect(self, *, raise_on_refusal: bool = True, timeout: float = 5.0) -> bool:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if self.clean_start else 3600
        self.client.connect(
            "127.0.0.1", self.port, keepalive=30, clean_start=self.clean_start, properties=props
        )
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise AssertionError("no CONNACK from the broker")
        ok = self.connack is not None and not self.connack.is_failure
        if not ok and raise_on_refusal:
            raise AssertionError(f"connection refused: {self.connack}")
        return ok

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos=qos)
        if not done.wait(5):
            raise AssertionError(f"no SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(timeout=10)

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def unique_id(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


__all__ = ["BRIDGE_ACCOUNT", "DeviceClient", "TestStack", "unique_id", "wait_for"]
