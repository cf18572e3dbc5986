"""Helpers for integration tests: a registry wired to the session's broker, and MQTT clients
that wait for conditions instead of sleeping."""

from __future__ import annotations

import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg.rows import dict_row

from fieldhub.bench import netlab
from fieldhub.bench.harness import Child, http_status, scrape
from fieldhub.bridge.app import DEVICE_TOPICS, SHARE_GROUP
from fieldhub.broker.auth_sync import advance_tombstones, sync_once
from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.core import device_ca, registry, tombstones
from fieldhub.core.migrate import apply_migrations
from fieldhub.core.passwords import generate_secret
from fieldhub.core.procs import free_port, wait_until
from fieldhub.core.tls import ensure_tls
from fieldhub.stack.patroni import Node, PatroniCluster

# The account of bridge instance 1; instance N is registry.bridge_account(N).
BRIDGE_ACCOUNT = registry.bridge_account(1)


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll until `condition()` is truthy and return its value; fail the test on timeout."""
    try:
        return wait_until(condition, timeout=timeout, interval=interval, what=what)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


BROKER = "broker-1"  # the session broker's name (the default of a one-broker stack)


# Why the lab can't run here (not root, no `ip netns`, ...), or None where it can.
NETNS_UNAVAILABLE = netlab.unavailable()
# The marks of every test that builds network-namespace hosts: skipped, with the reason, where
# namespaces cannot be created.
NEEDS_NETNS = [
    pytest.mark.integration,
    pytest.mark.skipif(
        NETNS_UNAVAILABLE is not None,
        reason=f"no network namespaces here: {NETNS_UNAVAILABLE}",
    ),
]

# Tests that run a real Patroni cluster on loopback: skipped, with the reason, without it.
NEEDS_PATRONI = pytest.mark.skipif(
    not (shutil.which("patroni") and shutil.which("etcd")),
    reason="Patroni and etcd are not installed (apt-get install patroni etcd-server)",
)


@contextmanager
def patroni_database(name: str) -> Iterator[tuple[PatroniCluster, Node, str]]:
    """A three-node Patroni cluster on loopback with one migrated database: the cluster, the
    node leading when it was created, the database's URL naming every node. Stopped and
    removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=f"fieldhub-test-{name}-"))
    base.chmod(0o755)
    cluster = PatroniCluster(base / "cluster")
    try:
        cluster.start()
        leader = cluster.primary()
        assert leader is not None
        url = cluster.create_database(name)
        apply_migrations(url)
        yield cluster, leader, url
    except BaseException:
        # Shown with the failure (pytest keeps a test's output): the logs go with the cluster.
        print(cluster.report())
        raise
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def failover_scenarios(*arguments: str, timeout: float = 540) -> list[dict[str, Any]]:
    """`fieldhub bench failover --json` with these arguments (the benchmark's own code); its
    scenarios, from the last line of its output."""
    done = subprocess.run(
        [sys.executable, "-m", "fieldhub", "bench", "failover", "--json", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scenarios: list[dict[str, Any]] = orjson.loads(done.stdout.strip().splitlines()[-1])[
        "scenarios"
    ]
    return scenarios


class TestStack:
    """One test's database and the session broker, with the registry kept in sync."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, database_url: str, broker: MosquittoBroker) -> None:
        self.database_url = database_url
        self.broker = broker
        self.conn = psycopg.connect(database_url, autocommit=True, row_factory=dict_row)
        self.bridge_password = generate_secret()
        registry.ensure_bridge_accounts(self.conn, self.bridge_password, 1)
        self.org = "test-org"
        registry.create_org(self.conn, self.org)
        self.sync()

    def __enter__(self) -> TestStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    # -- registry ------------------------------------------------------------------------
    def sync(self) -> None:
        """Render the registry into the broker's files and make the broker reload them, then
        do auth-sync's steps of deleted devices (as `fieldhub auth-sync` does after a reload)
        until none is left that auth-sync alone can do."""
        while True:
            rendered_without = tombstones.to_cut_off(self.conn, BROKER)
            if sync_once(self.conn, self.broker.auth_dir, tls_dir=self.broker.tls_dir):
                self.broker.reload()
            if not advance_tombstones(self.conn, self.broker.auth_dir, BROKER, rendered_without):
                return

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

    def can_login(self, username: str, password: str, *, services: bool = False) -> bool:
        port = self.broker.mqtt_services if services else self.broker.mqtt_devices
        client = DeviceClient(port, username, password)
        try:
            return client.connect(raise_on_refusal=False)
        finally:
            client.close()

    def service_account(
        self, prefix: str = "svc.test", acl: Iterable[str] = registry.BRIDGE_ACL
    ) -> str:
        """A new svc.* account with `acl` (default: the bridge's rights) and the stack's bridge
        password, accepted by the broker. The services listener names each session after its
        account, so every connection a test holds at once needs an account of its own."""
        username = f"{prefix}-{uuid.uuid4().hex[:8]}"
        registry.ensure_service_account(self.conn, username, list(acl), self.bridge_password)
        self.sync()
        wait_for(
            lambda: self.can_login(username, self.bridge_password, services=True),
            what=f"{username} to be accepted",
        )
        return username

    def ensure_bridge_account(self, instance: int) -> str:
        """Bridge instance `instance`'s account (`fieldhub service-account bridges` does this
        for a deployment), accepted by the broker."""
        username = registry.bridge_account(instance)
        if registry.ensure_service_account(
            self.conn, username, registry.BRIDGE_ACL, self.bridge_password
        ):
            self.sync()
            wait_for(
                lambda: self.can_login(username, self.bridge_password, services=True),
                what=f"{username} to be accepted",
            )
        return username

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
        self.session_present: bool | None = None
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        self.session_present = bool(flags.session_present)
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
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
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

    def publish_reason(self, topic: str, payload: bytes | str) -> str:
        """Publish at QoS 1 and return the broker's PUBACK reason ("Success", "Not
        authorized", ...): MQTT 5 says why a publish was refused."""
        reasons: dict[int, str] = {}
        self.client.on_publish = lambda c, u, mid, reason, props: reasons.__setitem__(
            mid, str(reason)
        )
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        return reasons.get(info.mid, "no PUBACK")

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it is still there after `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def loopback_broker(base: Path, *, autosave_interval: int = 5) -> MosquittoBroker:
    """A broker under `base` on free loopback ports, with its own TLS material (not started)."""
    if not (base / "tls" / "ca.crt").exists():
        ensure_tls(base / "tls", ["localhost"])
    return MosquittoBroker(
        base / "broker",
        base / "tls",
        free_port(),
        free_port(),
        free_port(),
        tls_bind="127.0.0.1",
        autosave_interval=autosave_interval,
        mqtt_devices_cert=free_port(),
    )


def cert_login(broker: MosquittoBroker, cert: Path, key: Path) -> bool:
    """One MQTT 3.1.1 login over TLS with the certificate on `broker`'s certificate listener,
    on a bare socket: accepted (CONNACK 0) or not. A paho client's teardown takes up to a
    second, which would blur the timing tests."""
    context = ssl.create_default_context(cafile=str(broker.tls_dir / "ca.crt"))
    context.load_cert_chain(str(cert), str(key))
    body = b"\x00\x04MQTT\x04\x02\x00\x1e" + b"\x00\x05probe"
    try:
        with (
            socket.create_connection(("127.0.0.1", broker.mqtt_devices_cert), 5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"\x10" + bytes([len(body)]) + body)
            connack = tls.recv(4)
    except (ssl.SSLError, OSError):
        return False  # the handshake was refused (a TLS 1.3 client learns it here, too)
    return len(connack) == 4 and connack[0] == 0x20 and connack[3] == 0


class SecondBroker:
    """broker-2: a Mosquitto of one test beside the session broker (broker-1), in its own
    directory, its files synced from the test's registry as its auth-sync would."""

    def __init__(
        self, stack: TestStack, *, autosave_interval: int = 1, shared_device_ca: bool = False
    ) -> None:
        self.stack = stack
        self.base = Path(tempfile.mkdtemp(prefix="fieldhub-test-broker2-"))
        # The broker's own user must reach its data directory.
        self.base.chmod(0o755)
        self.broker: MosquittoBroker = loopback_broker(
            self.base, autosave_interval=autosave_interval
        )
        if shared_device_ca:
            # As a second broker host is set up (docs/security.md): the device CA copied from
            # the host that made it, so the same certificates log in on both.
            for name in (device_ca.CA_CERT, device_ca.CA_KEY):
                shutil.copy2(stack.broker.tls_dir / name, self.broker.tls_dir / name)
        self.log_file = self.base / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = self.broker.start(self.log_file)
        self.sync()

    def sync(self) -> None:
        if sync_once(
            self.stack.conn, self.broker.auth_dir, broker="broker-2", tls_dir=self.broker.tls_dir
        ):
            self.broker.reload()

    def kill(self) -> None:
        """SIGKILL: the broker dies with whatever it had not saved."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, *, lose_retained: bool = False) -> None:
        """SIGTERM (the broker saves its database), and start again; with `lose_retained`
        the saved database is deleted first, as on a host restored without it."""
        if self.proc is not None:
            stop_process(self.proc)
        if lose_retained:
            (self.broker.data_dir / "mosquitto.db").unlink(missing_ok=True)
        self.start()

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.base, ignore_errors=True)

    def bridges_env(self) -> dict[str, str]:
        """What a `BridgeProcess(..., extra_args=["--broker", NAME])` of either broker needs:
        both brokers' device URLs, and broker-2's services listener."""
        return {
            "FIELDHUB_BROKERS": (
                f"broker-1=mqtt://127.0.0.1:{self.stack.broker.mqtt_devices},"
                f"broker-2=mqtt://127.0.0.1:{self.broker.mqtt_devices}"
            ),
            "FIELDHUB_BROKER_SERVICE_URLS": (
                f"broker-2=mqtt://127.0.0.1:{self.broker.mqtt_services}"
            ),
        }


def unique_id(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


__all__ = [
    "BRIDGE_ACCOUNT",
    "BridgeProcess",
    "DeviceClient",
    "SecondBroker",
    "TestStack",
    "cert_login",
    "http_status",
    "loopback_broker",
    "scrape",
    "stop_process",
    "unique_id",
    "wait_for",
]


class BridgeProcess:
    """`python -m fieldhub.cli bridge` as a child process against a test's stack.

    start() launches it, wait_ready() waits until it is connected and subscribed (its
    metrics endpoint reports fieldhub_bridge_ready 1), kill(sig) signals it without waiting,
    stop() sends SIGTERM and returns the exit code. metrics() parses its /metrics endpoint;
    log() returns its stderr so far. Usable as a context manager (stopped on exit). The
    process itself is fieldhub.bench.harness.Child, which the benchmarks use too."""

    def __init__(
        self,
        stack: TestStack,
        *,
        instance: int = 1,
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.stack = stack
        self.instance = instance
        self.username = stack.ensure_bridge_account(instance)
        self.metrics_port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix="fieldhub-test-bridge-"))
        password = quote(stack.bridge_password, safe="")
        self.child = Child(
            "bridge",
            [
                "--instance",
                str(instance),
                "--metrics-port",
                str(self.metrics_port),
                *(extra_args or []),
            ],
            {
                "DATABASE_URL": stack.database_url,
                "MQTT_URL": f"mqtt://{registry.BRIDGE_ACCOUNT_BASE}:{password}@127.0.0.1:"
                f"{stack.broker.mqtt_services}",
                "FIELDHUB_BRIDGE_METRICS_PORT": str(self.metrics_port),
                "FIELDHUB_HOME": str(self.home),
                **(extra_env or {}),
            },
            self.home / f"bridge-{instance}.log",
            metrics_port=self.metrics_port,
        )

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.child.proc

    def start(self) -> BridgeProcess:
        self.child.start()
        return self

    def wait_ready(self, timeout: float = 30.0) -> BridgeProcess:
        self.child.wait_ready(
            lambda: self.metrics().get("fieldhub_bridge_ready", 0.0) == 1.0,
            timeout=timeout,
            what=f"bridge {self.instance} to be ready",
        )
        return self

    def metrics(self) -> dict[str, float]:
        """name{labels} -> value from the bridge's /metrics (empty if not answering yet)."""
        return self.child.metrics()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.child.kill(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.child.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (flush, commit, ack, disconnect) and the exit code."""
        code = self.child.stop(timeout)
        if code is None:
            raise AssertionError(f"bridge ignored SIGTERM for {timeout}s:\n{self.log()}")
        return code

    def forget_session(self) -> None:
        """Discard the instance's durable broker session. A stopped bridge's session stays in
        the shared-subscription group and keeps taking its share of messages (queued for its
        return), which would starve the next test's bridge."""
        # Its subscriptions first, then the session: Mosquitto 2.0.11 keeps a discarded
        # session's $share subscriptions in the group, and the next session it frees (a reaped
        # device's, say) crashes it (measured: a segfault at the reaper's login, every time,
        # after two bridges' sessions were discarded this way).
        resumed = DeviceClient(
            self.stack.broker.mqtt_services,
            self.username,
            self.stack.bridge_password,
            clean_start=False,
        )
        try:
            resumed.connect()
            done = threading.Event()
            resumed.client.on_unsubscribe = lambda *args: done.set()
            resumed.client.unsubscribe(
                [f"$share/{SHARE_GROUP}/{topic}" for topic in DEVICE_TOPICS]
                + [tombstones.MARKER_FILTER]
            )
            if not done.wait(5):
                raise AssertionError("no UNSUBACK")
        finally:
            resumed.close()
        client = DeviceClient(
            self.stack.broker.mqtt_services,
            self.username,
            self.stack.bridge_password,
            clean_start=True,
        )
        try:
            client.connect()
        finally:
            client.close()

    def log(self) -> str:
        return self.child.log()

    def __enter__(self) -> BridgeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
            self.forget_session()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


class TcpRelay:
    """A TCP relay from a free loopback port to `upstream_port`: every connection it accepts
    gets its own to the upstream and a thread per direction running `pump(src, dst,
    from_client)`, which subclasses write to decide what passes (a broken link, a lost
    packet) with no hook in the code under test."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._upstreams: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._upstreams.append(upstream)
            threading.Thread(target=self.pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, False), daemon=True).start()

    def pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._server.close()
