"""The ingest path as a state machine (Hypothesis, stateful) against the real services.

Random mixes of QoS 1 messages from several devices (with and without ts, arrays that repeat
a metric, SenML with units and relative times, repeats of the same bytes, conflicting pairs,
poison: bad JSON, NUL strings, oversized payloads) and random kill -9 of the bridge process,
some right after a commit is seen in the database (aiming at the window between COMMIT and
PUBACK), then restarts of the same bridge session. After every run, once the bridge has
recovered, stored readings and dead letters account for every message sent:
- every reading of a valid message is stored exactly once (its value is unique to it);
- of a conflicting pair, exactly one is stored and the other is dead-lettered `conflict`;
- every poison message is dead-lettered with its reason, and none of it is stored;
- nothing else is stored.

Settings: the profile `ingest-suite` (a few minutes) by default; FIELDHUB_INGEST_SOAK=1 selects
`ingest-soak`, a long run for a soak."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg.rows import dict_row

from fieldhub.core import registry
from fieldhub.core.decode import MAX_PAYLOAD_BYTES
from tests.support import BridgeProcess, DeviceClient, TcpRelay, TestStack, wait_for

pytestmark = pytest.mark.integration


def _register(name: str, examples: int, steps: int) -> None:
    settings.register_profile(
        name,
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        # No shrinking: every example restarts real processes, and the database keeps what
        # earlier examples sent, so a shrunk sequence would not replay alone anyway.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )


# A few minutes in the suite; the soak profile for a long run.
_register("ingest-suite", examples=4, steps=14)
_register("ingest-soak", examples=20, steps=50)
PROFILE = "ingest-soak" if os.environ.get("FIELDHUB_INGEST_SOAK") else "ingest-suite"

DEVICES = ("prop-a", "prop-b", "prop-c")
BASE_MS = 1_764_000_000_000
VALID = ("ts", "no_ts", "array_ts", "array_no_ts", "senml_relative", "senml_absolute")
POISON = {"bad_json": "invalid_json", "nul": "bad_string", "oversized": "payload_too_large"}


class CuttingProxy(TcpRelay):
    """A TCP relay between the bridge and the broker that can stop passing what the bridge
    sends (its PUBACKs) and then drop the broker connection: the broker then never learns
    that the bridge acknowledged what it committed, which is the COMMIT-PUBACK window held
    open on purpose, with no hook in the bridge."""

    def __init__(self, upstream_port: int) -> None:
        self.swallow = threading.Event()
        super().__init__(upstream_port)

    def pump(self, src: socket.socket, dst: socket.socket, from_bridge: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_bridge and self.swallow.is_set():
                    continue
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()

    def cut(self) -> None:
        """Drop every broker connection (what the bridge sent meanwhile never arrives)."""
        with self._lock:
            upstreams, self._upstreams = self._upstreams, []
        for sock in upstreams:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        super().close()
        self.cut()


@dataclass
class World:
    """What was sent, across every run of the machine (they share one database)."""

    stack: TestStack
    bridge: BridgeProcess
    clients: dict[str, DeviceClient]
    proxy: CuttingProxy
    counter: int = 0
    # value -> how many times it must be stored (exactly once each)
    values: set[float] = field(default_factory=set)
    # (first value, second value, second payload): exactly one stored, the other a conflict
    conflicts: list[tuple[float, float, bytes, bytes]] = field(default_factory=list)
    # (payload, reason)
    poison: list[tuple[bytes, str]] = field(default_factory=list)
    kills: int = 0
    kills_after_commit: int = 0
    kills_before_puback: int = 0
    # fieldhub_bridge_ledger_reused_total of each bridge process, read before it is killed.
    reused_by_pid: dict[int, float] = field(default_factory=dict)
    without_ts_redelivered: bool = False

    def count_reuses(self) -> None:
        if self.bridge.proc is not None and self.bridge.proc.poll() is None:
            self.reused_by_pid[self.bridge.proc.pid] = self.bridge.metrics().get(
                "fieldhub_bridge_ledger_reused_total", 0.0
            )

    @property
    def ledger_reused(self) -> float:
        return sum(self.reused_by_pid.values())

    def next_id(self) -> int:
        self.counter += 1
        return self.counter


def fresh(database_url: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def stored_values(world: World) -> dict[float, int]:
    rows = fresh(
        world.stack.database_url,
        "SELECT value, count(*) AS n FROM readings JOIN devices USING (device_key)"
        " WHERE device_id = ANY(%s) GROUP BY value",
        (list(DEVICES),),
    )
    return {float(r["value"]): int(r["n"]) for r in rows}


def dead_letters(world: World) -> list[tuple[bytes, str]]:
    rows = fresh(
        world.stack.database_url,
        "SELECT payload, reason FROM dead_letters WHERE device_id = ANY(%s)",
        (list(DEVICES),),
    )
    return [(bytes(r["payload"]), r["reason"]) for r in rows]


def valid_message(kind: str, n: int) -> tuple[bytes, list[float], bool]:
    """(payload, the values it stores, whether it carries ts); values are n*10 + index."""
    v = float(n * 10)
    ts = BASE_MS + n * 10
    doc: Any
    if kind == "ts":
        doc, values = {"ts": ts, "seq": n, "values": {"v": v}}, [v]
    elif kind == "no_ts":
        doc, values = {"values": {"v": v}}, [v]
    elif kind == "array_ts":
        doc = [{"ts": ts, "values": {"v": v}}, {"ts": ts + 1, "values": {"v": v + 1}}]
        values = [v, v + 1]
    elif kind == "array_no_ts":
        # The same metric twice: two readings (one receive stamp per object).
        doc, values = [{"values": {"v": v}}, {"values": {"v": v + 1}}], [v, v + 1]
    elif kind == "senml_relative":
        # Two records that differ by unit, the second relative to the receive time.
        doc = [{"bn": "s", "n": "", "u": "V", "v": v}, {"n": "", "u": "A", "t": -1, "v": v + 1}]
        values = [v, v + 1]
    else:
        doc = [{"bn": "s", "bt": ts / 1000, "u": "V", "v": v}, {"u": "A", "v": v + 1}]
        values = [v, v + 1]
    return orjson.dumps(doc), values, kind in ("ts", "array_ts", "senml_absolute")


def poison_message(kind: str, n: int) -> bytes:
    if kind == "bad_json":
        return b'{"values": {"v": %d' % n
    if kind == "nul":
        return orjson.dumps({"values": {"s": f"x\u0000{n}"}})
    filler = "x" * (MAX_PAYLOAD_BYTES + 1)
    return orjson.dumps({"values": {"s": filler}, "n": n})


class IngestMachine(RuleBasedStateMachine):
    world: World

    def __init__(self) -> None:
        super().__init__()
        # What the rules draw from is this run's own state, never the world's (Hypothesis
        # replays a run from its choices, so they must not depend on earlier runs): each run
        # starts with the bridge up and repeats only what it sent itself.
        bridge = self.world.bridge
        if bridge.proc is None or bridge.proc.poll() is not None:
            bridge.start().wait_ready()
        self.up = True
        self.sent_with_ts: list[tuple[str, bytes]] = []

    def _publish(self, device: str, payload: bytes) -> None:
        topic = f"devices/{device}/telemetry"
        if payload.startswith(b'[{"bn"') or payload.startswith(b'[{"n"'):
            topic += "/senml"
        self.world.clients[device].publish(topic, payload, qos=1)

    @rule(kind=st.sampled_from(VALID), device=st.sampled_from(DEVICES))
    def send_valid(self, kind: str, device: str) -> None:
        payload, values, with_ts = valid_message(kind, self.world.next_id())
        self.world.values.update(values)
        if with_ts:
            self.sent_with_ts.append((device, payload))
        self._publish(device, payload)

    @precondition(lambda self: bool(self.sent_with_ts))
    @rule(data=st.data())
    def repeat(self, data: st.DataObject) -> None:
        device, payload = data.draw(st.sampled_from(self.sent_with_ts))
        self._publish(device, payload)

    @rule(device=st.sampled_from(DEVICES))
    def send_conflicting_pair(self, device: str) -> None:
        n = self.world.next_id()
        ts = BASE_MS + n * 10
        first = orjson.dumps({"ts": ts, "seq": n, "values": {"c": float(n * 10)}})
        second = orjson.dumps({"ts": ts, "seq": n, "values": {"c": float(n * 10 + 5)}})
        self.world.conflicts.append((float(n * 10), float(n * 10 + 5), first, second))
        self._publish(device, first)
        self._publish(device, second)

    @rule(kind=st.sampled_from(sorted(POISON)), device=st.sampled_from(DEVICES))
    def send_poison(self, kind: str, device: str) -> None:
        payload = poison_message(kind, self.world.next_id())
        self.world.poison.append((payload, POISON[kind]))
        self._publish(device, payload)

    @precondition(lambda self: self.up)
    @rule()
    def kill_bridge(self) -> None:
        self._kill()
        self.world.kills += 1

    def _kill(self) -> None:
        self.world.count_reuses()
        self.world.bridge.kill()
        self.world.bridge.wait()
        self.up = False

    @precondition(lambda self: self.up)
    @rule(device=st.sampled_from(DEVICES), burst=st.integers(1, 30))
    def kill_right_after_a_commit(self, device: str, burst: int) -> None:
        """Publish messages without ts and kill -9 the bridge the moment the database shows
        their rows: as close to between COMMIT and PUBACK as a test can get from outside."""
        with psycopg.connect(self.world.stack.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
            assert row is not None
            before = row[0]
        for _ in range(burst):
            payload, values, _ts = valid_message("no_ts", self.world.next_id())
            self.world.values.update(values)
            self.world.clients[device].client.publish(f"devices/{device}/telemetry", payload, 1)
        with psycopg.connect(self.world.stack.database_url, autocommit=True) as conn:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                row = conn.execute("SELECT count(*) FROM readings").fetchone()
                assert row is not None
                if row[0] > before:
                    break
        self._kill()
        self.world.kills_after_commit += 1

    @precondition(lambda self: self.up)
    @rule(
        device=st.sampled_from(DEVICES),
        kinds=st.lists(st.sampled_from(VALID), min_size=0, max_size=30),
    )
    def kill_between_commit_and_puback(self, device: str, kinds: list[str]) -> None:
        """The bridge commits messages but the broker never gets their PUBACKs: it sends them
        again to the restarted bridge, with DUP=1 and the same packet ids. At least one of
        them has no ts."""
        world = self.world
        world.proxy.swallow.set()
        try:
            sent: list[float] = []
            for kind in [*kinds, "no_ts"]:
                payload, values, with_ts = valid_message(kind, world.next_id())
                world.values.update(values)
                sent += values
                if with_ts:
                    self.sent_with_ts.append((device, payload))
                self._publish(device, payload)
            wait_for(
                lambda: all(v in stored_values(world) for v in sent),
                timeout=30,
                interval=0.05,
                what="the burst to be committed",
            )
            self._kill()
            world.proxy.cut()
            world.without_ts_redelivered = True
        finally:
            world.proxy.swallow.clear()
        world.kills_before_puback += 1

    @precondition(lambda self: not self.up)
    @rule()
    def restart_bridge(self) -> None:
        self.world.bridge.start().wait_ready()
        self.up = True

    @invariant()
    def bridge_state_is_known(self) -> None:
        proc = self.world.bridge.proc
        alive = proc is not None and proc.poll() is None
        assert alive == self.up, self.world.bridge.log()[-2000:]

    def teardown(self) -> None:
        world = self.world
        if not self.up:
            world.bridge.start().wait_ready()
        poison_expected = {(p, r) for p, r in world.poison}

        def accounted() -> bool:
            stored = stored_values(world)
            letters = set(dead_letters(world))
            return (
                all(v in stored for v in world.values)
                and all(
                    first in stored or second in stored for first, second, *_ in world.conflicts
                )
                and poison_expected <= letters
                and all(
                    (second, "conflict") in letters or (first, "conflict") in letters
                    for _f, _s, first, second in world.conflicts
                )
            )

        wait_for(accounted, timeout=120, interval=0.5, what="every message accounted for")
        world.count_reuses()
        stored = stored_values(world)
        letters = dead_letters(world)
        # Every valid reading exactly once.
        twice = {v: n for v, n in stored.items() if n != 1}
        assert not twice, f"stored more than once: {twice}"
        # Of each conflicting pair exactly one stored, the other dead-lettered as conflict.
        allowed = set(world.values)
        for first, second, first_payload, second_payload in world.conflicts:
            assert (first in stored) != (second in stored), (first, second)
            loser = second_payload if first in stored else first_payload
            assert (loser, "conflict") in letters
            allowed.add(first if first in stored else second)
        # Nothing stored that was not sent as a valid reading; poison never stored.
        assert set(stored) <= allowed, sorted(set(stored) - allowed)[:10]
        # Every dead letter is a poison message with its reason or a conflict's loser.
        conflict_payloads = {p for c in world.conflicts for p in c[2:]}
        for payload, reason in letters:
            assert (payload, reason) in poison_expected or (
                reason == "conflict" and payload in conflict_payloads
            ), (payload[:80], reason)


# The suite's profile takes 1-3 minutes on the shared machine; the soak as long as it takes.
@pytest.mark.timeout(600 if PROFILE == "ingest-suite" else 7200)
def test_ingest_state_machine(stack: TestStack) -> None:
    secrets = stack.create_devices(DEVICES)
    clients = {d: DeviceClient(stack.broker.mqtt_devices, d, secrets[d]) for d in DEVICES}
    for client in clients.values():
        client.connect()
    proxy = CuttingProxy(stack.broker.mqtt_services)
    # Through the proxy: the same address every time, so the same broker session.
    password = quote(stack.bridge_password, safe="")
    bridge = BridgeProcess(
        stack,
        instance=16,
        extra_env={
            "MQTT_URL": f"mqtt://{registry.BRIDGE_ACCOUNT_BASE}:{password}@127.0.0.1:{proxy.port}"
        },
    )
    world = World(stack, bridge, clients, proxy)
    try:
        bridge.start().wait_ready()

        class Machine(IngestMachine):
            pass

        Machine.world = world
        run_state_machine_as_test(  # type: ignore[no-untyped-call]
            Machine, settings=settings.get_profile(PROFILE)
        )
    finally:
        for client in clients.values():
            client.close()
        bridge.__exit__(None, None, None)
        proxy.close()
    # The run's figures (shown with -s), for the soak run's report.
    print(
        f"ingest state machine ({PROFILE}): {world.counter} messages, {world.kills} kills, "
        f"{world.kills_after_commit} kills right after a commit, "
        f"{world.kills_before_puback} kills between COMMIT and PUBACK, "
        f"{world.ledger_reused:.0f} ledger reuses"
    )
    assert world.counter > 0
    if world.without_ts_redelivered:
        # The broker sent committed messages without ts again: the ledger gave them their
        # stamps back (without it they would have been stored twice, which teardown checks).
        assert world.ledger_reused > 0
