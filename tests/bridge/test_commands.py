"""Commands on the bridge, against the real database and the real broker.

Three layers: `apply_acks` inside a transaction; the `CommandDispatcher` driven with a publish
callable on our own paho client (so crashes can be placed exactly); and end to end through the
real bridge process (tests.support.BridgeProcess) as the issue asks."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg.rows import dict_row

from fieldhub.bridge.commands import (
    AckMessage,
    CommandDispatcher,
    apply_acks,
    command_payload,
    message_expiry_s,
)
from fieldhub.core import registry
from fieldhub.core.command_requests import cancel_command, get_command, send_command
from fieldhub.core.db import Conn
from tests.support import (
    BridgeProcess,
    DeviceClient,
    TestStack,
    unique_id,
    wait_for,
)

pytestmark = pytest.mark.integration


# -- helpers ------------------------------------------------------------------------------
class ServicePublisher:
    """What the bridge gives the dispatcher: QoS 1 publish that blocks until the PUBACK."""

    def __init__(self, stack: TestStack) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=unique_id("test-pub"), protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(stack.service_account("svc.test-pub"), stack.bridge_password)
        self.reason_codes: dict[int, Any] = {}
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", stack.broker.mqtt_services, keepalive=30)
        self.client.loop_start()
        wait_for(self.client.is_connected, what="the test publisher to connect")
        self.published: list[tuple[str, bytes, bool, int | None]] = []

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.reason_codes[mid] = reason

    def __call__(self, topic: str, payload: bytes, retain: bool, expiry_s: int | None) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if expiry_s is not None:
            properties.MessageExpiryInterval = expiry_s
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        info.wait_for_publish(timeout=10)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic}")
        reason = self.reason_codes.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise RuntimeError(f"broker refused {topic}: {reason}")
        self.published.append((topic, payload, retain, expiry_s))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AckCollector:
    """Stands in for the bridge's ack routing: subscribes to every ack, applies on demand."""

    def __init__(self, stack: TestStack) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=unique_id("test-acks"), protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(stack.service_account("svc.test-acks"), stack.bridge_password)
        self.acks: list[AckMessage] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("devices/+/commands/+/ack", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", stack.broker.mqtt_services, keepalive=30)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK for the ack topics"

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        _, device_id, _, command_id, _ = message.topic.split("/")
        with self._lock:
            self.acks.append(AckMessage(device_id, command_id, bytes(message.payload), time.time()))

    def apply(self, conn: Conn, count: int) -> list[tuple[AckMessage, str, str]]:
        wait_for(lambda: len(self.acks) >= count, what=f"{count} acks")
        with self._lock:
            acks, self.acks = self.acks, []
        with conn.transaction():
            return apply_acks(conn, acks)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def commands_received(device: DeviceClient) -> list[dict[str, Any]]:
    """Command payloads the device got, in arrival order (empty payloads are clears)."""
    return [
        json.loads(m.payload)
        for m in list(device.received)
        if m.payload and m.topic.count("/") == 3 and not m.topic.endswith("/sentinel")
    ]


def login(stack: TestStack, device_id: str, secret: str) -> DeviceClient:
    device = DeviceClient(stack.broker.mqtt_devices, device_id, secret)
    device.connect()
    device.subscribe(f"devices/{device_id}/commands/+")
    return device


def flush(device: DeviceClient, publish: Callable[[str, bytes, bool, int | None], None]) -> None:
    """Wait until everything the broker sent the device before now has arrived.

    The broker delivers a subscription's retained messages before any later publish on the
    same connection, so once a sentinel published now has arrived nothing older is pending."""
    device_id = device.username
    marker = uuid.uuid4().hex.encode()
    publish(f"devices/{device_id}/commands/sentinel", marker, False, None)
    wait_for(
        lambda: any(m.payload == marker for m in list(device.received)),
        what=f"the sentinel to reach {device_id}",
    )


def status(conn: Conn, command_id: str) -> str:
    return str(get_command(conn, command_id)["status"])


def timeline(conn: Conn, command_id: str) -> list[str]:
    return [event["status"] for event in get_command(conn, command_id)["timeline"]]


def retained_cleared(conn: Conn, command_id: str) -> bool:
    row = conn.execute(
        "SELECT retained_cleared FROM commands WHERE id = %s", (command_id,), prepare=False
    ).fetchone()
    assert row is not None
    return bool(row["retained_cleared"])


def send(conn: Conn, device_id: str, name: str = "reboot", ttl_s: int = 600) -> str:
    return str(
        send_command(conn, device_id=device_id, name=name, params={"n": name}, ttl_s=ttl_s)["id"]
    )


def ack(device: DeviceClient, command_id: str, ack_status: str, **extra: Any) -> None:
    body = json.dumps({"status": ack_status, **extra})
    device.publish(f"devices/{device.username}/commands/{command_id}/ack", body)


# -- apply_acks ---------------------------------------------------------------------------
@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        registry.create_org(connection, "acme")
        registry.create_device(connection, "valve-1", org="acme")
        registry.create_device(connection, "valve-2", org="acme")
        yield connection


def acks_of(device_id: str, command_id: str, *bodies: Any) -> list[AckMessage]:
    return [
        AckMessage(
            device_id,
            command_id,
            body if isinstance(body, bytes) else json.dumps(body).encode(),
            time.time(),
        )
        for body in bodies
    ]


def apply(conn: Conn, acks: list[AckMessage]) -> list[tuple[AckMessage, str, str]]:
    with conn.transaction():
        return apply_acks(conn, acks)


def test_acks_move_a_command_through_its_states_and_keep_the_result(conn: Conn) -> None:
    command_id = send(conn, "valve-1")
    dead = apply(
        conn,
        acks_of(
            "valve-1",
            command_id,
            {"status": "accepted"},
            {"status": "in_progress", "result": {"percent": 50}},
            {"status": "succeeded", "result": {"opened": True}},
        ),
    )
    assert dead == []
    command = get_command(conn, command_id)
    assert command["status"] == "succeeded"
    assert command["result"] == {"opened": True}
    assert timeline(conn, command_id) == ["queued", "delivered", "succeeded"]


def test_failed_ack_keeps_the_error_text(conn: Conn) -> None:
    command_id = send(conn, "valve-1")
    apply(conn, acks_of("valve-1", command_id, {"status": "failed", "error": "motor stalled"}))
    command = get_command(conn, command_id)
    assert (command["status"], command["error"]) == ("failed", "motor stalled")
    assert command["timeline"][-1]["detail"] == {"error": "motor stalled"}


def test_out_of_order_duplicate_and_late_acks_are_ignored_not_dead(conn: Conn) -> None:
    command_id = send(conn, "valve-1")
    dead = apply(
        conn,
        acks_of(
            "valve-1",
            command_id,
            {"status": "succeeded"},
            {"status": "accepted"},
            {"status": "succeeded"},
            {"status": "failed", "error": "too late"},
        ),
    )
    assert dead == []
    assert timeline(conn, command_id) == ["queued", "succeeded"]
    assert get_command(conn, command_id)["error"] is None
    # In a later batch too: a final command stays as it is.
    assert apply(conn, acks_of("valve-1", command_id, {"status": "rejected"})) == []
    assert status(conn, command_id) == "succeeded"


def test_the_same_answer_through_a_second_broker_changes_nothing(conn: Conn) -> None:
    """With several brokers a device can see a command on two of them (it failed over, or
    a standby's copy arrived late) and answer twice, each answer reaching a different
    bridge: the second is a no-op, neither a dead letter nor a new result."""
    command_id = send(conn, "valve-1")
    first = {"status": "succeeded", "result": {"run": 1}}
    assert apply(conn, acks_of("valve-1", command_id, {"status": "accepted"}, first)) == []
    again = {"status": "succeeded", "result": {"run": 2}}
    assert apply(conn, acks_of("valve-1", command_id, {"status": "accepted"}, again)) == []
    command = get_command(conn, command_id)
    assert (command["status"], command["result"]) == ("succeeded", {"run": 1})
    assert timeline(conn, command_id) == ["queued", "delivered", "succeeded"]


def test_ack_after_cancel_is_ignored(conn: Conn) -> None:
    command_id = send(conn, "valve-1")
    cancel_command(conn, command_id)
    assert apply(conn, acks_of("valve-1", command_id, {"status": "succeeded"})) == []
    assert status(conn, command_id) == "cancelled"


def test_unusable_acks_are_returned_for_the_dead_letters(conn: Conn) -> None:
    mine = send(conn, "valve-1")
    theirs = send(conn, "valve-2")
    acks = [
        *acks_of("valve-1", str(uuid.uuid4()), {"status": "succeeded"}),
        *acks_of("valve-1", "not-a-uuid", {"status": "succeeded"}),
        *acks_of("valve-1", theirs, {"status": "succeeded"}),
        *acks_of("valve-1", mine, b"{not json", {"status": "done"}, [1], {"result": 1}),
        *acks_of("valve-1", mine, {"status": "accepted"}),
    ]
    dead = apply(conn, acks)
    # The bridge matches them back by identity, so the order does not matter.
    assert all(any(a is message for a in acks) for message, _, _ in dead)
    assert sorted((a.command_id, reason) for a, reason, _ in dead) == sorted(
        [
            (acks[0].command_id, "unknown_command"),
            ("not-a-uuid", "unknown_command"),
            (theirs, "foreign_command"),
            (mine, "invalid_ack"),
            (mine, "invalid_ack"),
            (mine, "invalid_ack"),
            (mine, "invalid_ack"),
        ]
    )
    details = {detail for _, reason, detail in dead if reason == "invalid_ack"}
    assert any("'done' is not one of" in detail for detail in details)
    assert any("not JSON" in detail for detail in details)
    assert any("must be a JSON object, not list" in detail for detail in details)
    # The usable ack in the same batch still counts; the other device's command is untouched.
    assert status(conn, mine) == "delivered"
    assert timeline(conn, theirs) == ["queued"]


def test_acks_with_a_nul_are_invalid_not_a_failed_batch(conn: Conn) -> None:
    # PostgreSQL stores neither text nor jsonb with U+0000; before, such an ack failed the
    # bridge's whole batch. Now it is an invalid ack and the rest of the batch goes on.
    command_id = send(conn, "valve-1")
    acks = acks_of(
        "valve-1",
        command_id,
        b'{"status": "failed", "error": "jammed\\u0000"}',
        b'{"status": "succeeded", "result": {"note": ["ok", "\\u0000"]}}',
        b'{"status": "succeeded", "result": {"k\\u0000": 1}}',
        {"status": "accepted", "result": {"text": "\\u0000 is fine as text"}},
    )
    dead = apply(conn, acks)
    assert [(reason, "NUL" in detail) for _, reason, detail in dead] == [("invalid_ack", True)] * 3
    assert status(conn, command_id) == "delivered"


def test_acks_roll_back_with_the_callers_transaction(conn: Conn) -> None:
    command_id = send(conn, "valve-1")

    class BatchFailed(Exception):
        pass

    def failing_batch() -> None:
        with conn.transaction():
            apply_acks(conn, acks_of("valve-1", command_id, {"status": "succeeded"}))
            raise BatchFailed

    with pytest.raises(BatchFailed):
        failing_batch()
    assert timeline(conn, command_id) == ["queued"]


# -- the dispatcher, with our own publish ---------------------------------------------------
@pytest.fixture
def publisher(stack: TestStack) -> Iterator[ServicePublisher]:
    pub = ServicePublisher(stack)
    yield pub
    pub.close()


@pytest.fixture
def collector(stack: TestStack) -> Iterator[AckCollector]:
    acks = AckCollector(stack)
    yield acks
    acks.close()


@pytest.fixture
def dispatchers() -> Iterator[list[CommandDispatcher]]:
    started: list[CommandDispatcher] = []
    yield started
    for dispatcher in started:
        dispatcher.stop()


def start_dispatcher(
    dispatchers: list[CommandDispatcher],
    stack: TestStack,
    publish: Callable[[str, bytes, bool, int | None], None],
) -> CommandDispatcher:
    dispatcher = CommandDispatcher(
        stack.database_url, publish, sweep_interval_s=0.5, retry_backoff_s=0.2
    )
    dispatcher.start()
    dispatchers.append(dispatcher)
    return dispatcher


def test_payload_and_expiry_follow_the_contract(conn: Conn) -> None:
    command_id = send(conn, "valve-1", "open", ttl_s=90)
    row = conn.execute(
        "SELECT id, name, params, created_at, expires_at FROM commands WHERE id = %s",
        (command_id,),
        prepare=False,
    ).fetchone()
    assert row is not None
    payload = json.loads(command_payload(row))
    assert set(payload) == {"id", "name", "params", "created_at", "expires_at"}
    assert payload["id"] == command_id
    assert payload["params"] == {"n": "open"}
    assert payload["created_at"].endswith("Z")
    assert message_expiry_s(89.2) == 90
    assert message_expiry_s(0.01) == 1


def test_dispatcher_delivers_in_creation_order_and_clears_final_commands(
    stack: TestStack,
    publisher: ServicePublisher,
    collector: AckCollector,
    dispatchers: list[CommandDispatcher],
) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    conn: Conn = stack.conn
    # Ten, not three: random ids make a lucky order unlikely (1 in 3,628,800).
    ids = [send(conn, device_id, f"step{i}") for i in range(10)]
    start_dispatcher(dispatchers, stack, publisher)
    wait_for(lambda: all(status(conn, i) == "sent" for i in ids), what="all sent")
    assert all(expiry is not None and 590 <= expiry <= 600 for *_, expiry in publisher.published)

    device = login(stack, device_id, secret)
    try:
        wait_for(lambda: len(commands_received(device)) >= 10, what="ten commands")
        received = commands_received(device)
        assert [c["id"] for c in received] == ids
        assert [c["name"] for c in received] == [f"step{i}" for i in range(10)]
        assert all(m.retain for m in device.received)  # they waited for the device
        first = device.received[0].properties
        assert first is not None
        assert 0 < getattr(first, "MessageExpiryInterval", 0) <= 600
        for command_id in ids:
            ack(device, command_id, "succeeded")
        assert collector.apply(conn, 10) == []
    finally:
        device.close()
    assert all(status(conn, i) == "succeeded" for i in ids)
    wait_for(lambda: all(retained_cleared(conn, i) for i in ids), what="retained cleared")

    again = login(stack, device_id, secret)
    try:
        flush(again, publisher)
        assert commands_received(again) == []
    finally:
        again.close()


def test_publish_failure_keeps_the_command_queued_until_the_broker_takes_it(
    stack: TestStack, publisher: ServicePublisher, dispatchers: list[CommandDispatcher]
) -> None:
    device_id = unique_id()
    stack.create_devices([device_id])
    conn: Conn = stack.conn
    failures = 3

    def flaky(topic: str, payload: bytes, retain: bool, expiry_s: int | None) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("broker unreachable")
        publisher(topic, payload, retain, expiry_s)

    first, second = send(conn, device_id, "first"), send(conn, device_id, "second")
    dispatcher = start_dispatcher(dispatchers, stack, flaky)
    wait_for(lambda: status(conn, second) == "sent", what="second sent")
    assert failures == 0
    assert dispatcher.last_error is not None
    assert "ConnectionError" in dispatcher.last_error
    # The failed attempts did not let the second command overtake the first.
    topics = [topic.rsplit("/", 1)[1] for topic, *_ in publisher.published]
    assert topics == [first, second]
    assert timeline(conn, first) == ["queued", "sent"]


def test_devices_are_published_in_parallel_each_in_order_and_a_failing_one_waits_alone(
    stack: TestStack, publisher: ServicePublisher, dispatchers: list[CommandDispatcher]
) -> None:
    devices = [unique_id() for _ in range(4)]
    stack.create_devices(devices)
    broken = devices[0]
    conn: Conn = stack.conn
    ids = {device: [send(conn, device, f"c{i}") for i in range(5)] for device in devices}
    lock = threading.Lock()
    order: list[tuple[str, str]] = []

    def publish(topic: str, payload: bytes, retain: bool, expiry_s: int | None) -> None:
        _, device_id, _, command_id = topic.split("/")
        if device_id == broken:
            raise ConnectionError("this device's publishes fail")
        publisher(topic, payload, retain, expiry_s)
        with lock:
            order.append((device_id, command_id))

    start_dispatcher(dispatchers, stack, publish)
    healthy = [command for device in devices[1:] for command in ids[device]]
    wait_for(lambda: all(status(conn, c) == "sent" for c in healthy), what="healthy ones sent")
    for device in devices[1:]:
        assert [c for d, c in order if d == device] == ids[device]
    assert all(status(conn, c) == "queued" for c in ids[broken])


# The doomed dispatcher's thread dies of the SystemExit we raise in it, on purpose.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_crash_between_publish_and_marking_sent_republishes(
    stack: TestStack, publisher: ServicePublisher, dispatchers: list[CommandDispatcher]
) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    conn: Conn = stack.conn
    device = login(stack, device_id, secret)
    try:
        command_id = send(conn, device_id)
        crashed = threading.Event()

        def publish_then_die(topic: str, payload: bytes, retain: bool, exp: int | None) -> None:
            publisher(topic, payload, retain, exp)
            crashed.set()
            raise SystemExit  # the process is gone before it records `sent`

        doomed = CommandDispatcher(stack.database_url, publish_then_die, sweep_interval_s=60)
        doomed.start()
        assert crashed.wait(10)
        doomed.stop()
        assert status(conn, command_id) == "queued"

        start_dispatcher(dispatchers, stack, publisher)
        wait_for(lambda: status(conn, command_id) == "sent", what="sent after restart")
        wait_for(lambda: len(commands_received(device)) >= 2, what="the second copy")
        # At least once: the device got it twice and tells the copies apart by id.
        assert {c["id"] for c in commands_received(device)} == {command_id}
    finally:
        device.close()


def test_an_ack_that_overtakes_the_sent_mark_is_not_overwritten(conn: Conn) -> None:
    command_id = send(conn, "valve-1")
    apply(conn, acks_of("valve-1", command_id, {"status": "accepted"}))
    # What the dispatcher runs after the PUBACK, late:
    conn.execute(
        "UPDATE commands SET status = 'sent' WHERE id = %s AND status = 'queued'",
        (command_id,),
        prepare=False,
    )
    assert status(conn, command_id) == "delivered"


def test_only_one_dispatcher_works_at_a_time(
    stack: TestStack, publisher: ServicePublisher, dispatchers: list[CommandDispatcher]
) -> None:
    first = start_dispatcher(dispatchers, stack, publisher)
    second = start_dispatcher(dispatchers, stack, publisher)
    wait_for(lambda: first.is_leader or second.is_leader, what="a leader")
    leader, standby = (first, second) if first.is_leader else (second, first)
    assert not standby.is_leader
    leader.stop()
    wait_for(lambda: standby.is_leader, what="the standby to take over")


def test_a_new_leader_republishes_sent_commands_once(
    stack: TestStack, publisher: ServicePublisher, dispatchers: list[CommandDispatcher]
) -> None:
    device_id = unique_id()
    stack.create_devices([device_id])
    conn: Conn = stack.conn
    waiting = send(conn, device_id, "waiting")
    first = start_dispatcher(dispatchers, stack, publisher)
    wait_for(lambda: status(conn, waiting) == "sent", what="sent")
    first.stop()
    topic = f"devices/{device_id}/commands/{waiting}"
    assert [t for t, *_ in publisher.published].count(topic) == 1

    second = start_dispatcher(dispatchers, stack, publisher)
    wait_for(lambda: second.sweeps >= 3, what="a few sweeps of the new leader")
    # Once (in case the broker lost it), not on every sweep; still `sent`.
    assert [t for t, *_ in publisher.published].count(topic) == 2
    assert timeline(conn, waiting) == ["queued", "sent"]


# -- end to end through the real bridge -----------------------------------------------------
@pytest.fixture
def bridge(stack: TestStack) -> Iterator[BridgeProcess]:
    # Its own instance number, so its broker session is not one an earlier test's bridge left
    # behind on the session-wide broker (a restart within the test reuses it, as in the field).
    with BridgeProcess(stack, instance=random.randrange(100, 1_000_000)) as process:
        yield process


def test_offline_device_gets_three_commands_in_order_then_none(
    stack: TestStack, bridge: BridgeProcess, publisher: ServicePublisher
) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    conn: Conn = stack.conn
    bridge.start().wait_ready()
    ids = [send(conn, device_id, name) for name in ("first", "second", "third")]
    wait_for(lambda: all(status(conn, i) == "sent" for i in ids), what="all three sent")

    device = login(stack, device_id, secret)
    try:
        wait_for(lambda: len(commands_received(device)) >= 3, what="three commands")
        assert [c["id"] for c in commands_received(device)] == ids
        for command_id in ids:
            ack(device, command_id, "accepted")
            ack(device, command_id, "succeeded", result={"ok": True})
        wait_for(lambda: all(status(conn, i) == "succeeded" for i in ids), what="succeeded")
    finally:
        device.close()
    assert all(timeline(conn, i) == ["queued", "sent", "delivered", "succeeded"] for i in ids)
    wait_for(lambda: all(retained_cleared(conn, i) for i in ids), what="retained cleared")

    again = login(stack, device_id, secret)
    try:
        flush(again, publisher)
        assert commands_received(again) == []
    finally:
        again.close()


def test_expired_and_cancelled_commands_are_never_delivered(
    stack: TestStack, bridge: BridgeProcess, publisher: ServicePublisher
) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    conn: Conn = stack.conn
    bridge.start().wait_ready()
    short = send(conn, device_id, "short", ttl_s=10)
    cancelled = send(conn, device_id, "cancel_me")
    wait_for(lambda: status(conn, cancelled) == "sent", what="published while offline")
    cancel_command(conn, cancelled)
    # `sent` with no answer stays `sent` until its time runs out, then ends `expired`.
    wait_for(lambda: status(conn, short) == "expired", timeout=20, what="expiry")
    wait_for(
        lambda: retained_cleared(conn, short) and retained_cleared(conn, cancelled),
        what="retained cleared",
    )
    device = login(stack, device_id, secret)
    try:
        flush(device, publisher)
        assert commands_received(device) == []
    finally:
        device.close()
    assert timeline(conn, short) == ["queued", "sent", "expired"]
    assert timeline(conn, cancelled) == ["queued", "sent", "cancelled"]


def test_commands_created_while_the_bridge_is_down_go_out_when_it_is_back(
    stack: TestStack, bridge: BridgeProcess
) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    conn: Conn = stack.conn
    device = login(stack, device_id, secret)
    try:
        command_id = send(conn, device_id)
        assert status(conn, command_id) == "queued"
        bridge.start().wait_ready()
        wait_for(lambda: commands_received(device), what="the command")
        assert commands_received(device)[0]["id"] == command_id
        ack(device, command_id, "succeeded")
        wait_for(lambda: status(conn, command_id) == "succeeded", what="succeeded")
    finally:
        device.close()


def test_bridge_killed_in_the_middle_leaves_nothing_stuck(
    stack: TestStack, bridge: BridgeProcess
) -> None:
    device_id = unique_id()
    secret = stack.create_devices([device_id])[device_id]
    conn: Conn = stack.conn
    bridge.start().wait_ready()
    device = login(stack, device_id, secret)
    try:
        working = send(conn, device_id, "working")
        wait_for(lambda: commands_received(device), what="the first command")
        ack(device, working, "accepted")
        wait_for(lambda: status(conn, working) == "delivered", what="delivered")

        bridge.kill()
        bridge.wait()
        # While the bridge is down: the device finishes, and a new command is queued.
        ack(device, working, "succeeded")
        later = send(conn, device_id, "later")

        bridge.start().wait_ready()
        wait_for(lambda: status(conn, working) == "succeeded", what="the ack sent while down")
        wait_for(lambda: len(commands_received(device)) >= 2, what="the later command")
        assert commands_received(device)[-1]["id"] == later
        ack(device, later, "succeeded")
        wait_for(lambda: status(conn, later) == "succeeded", what="later succeeded")
        wait_for(
            lambda: retained_cleared(conn, working) and retained_cleared(conn, later),
            what="both cleared",
        )
    finally:
        device.close()


def test_a_device_cannot_ack_or_read_another_devices_commands(
    stack: TestStack, bridge: BridgeProcess, publisher: ServicePublisher
) -> None:
    victim, intruder = unique_id("victim"), unique_id("intruder")
    secrets = stack.create_devices([victim, intruder])
    conn: Conn = stack.conn
    bridge.start().wait_ready()
    target = send(conn, victim)
    wait_for(lambda: status(conn, target) == "sent", what="published")

    spy = DeviceClient(stack.broker.mqtt_devices, intruder, secrets[intruder])
    spy.connect()
    try:
        spy.subscribe(f"devices/{victim}/commands/+")
        spy.subscribe("devices/#")
        flush(spy, publisher)
        assert [m for m in spy.received if victim in m.topic] == []

        # Acking on the victim's topic is refused by the broker's ACL ...
        spy.publish(f"devices/{victim}/commands/{target}/ack", '{"status": "succeeded"}')
        # ... and acking the victim's command id on its own topic is dead-lettered.
        spy.publish(f"devices/{intruder}/commands/{target}/ack", '{"status": "succeeded"}')
        wait_for(
            lambda: stack.query(
                "SELECT 1 FROM dead_letters WHERE device_id = %s AND reason = 'foreign_command'",
                (intruder,),
            ),
            what="the foreign ack in the dead letters",
        )
    finally:
        spy.close()
    assert timeline(conn, target) == ["queued", "sent"]

    owner = login(stack, victim, secrets[victim])
    try:
        wait_for(lambda: commands_received(owner), what="the owner to get its command")
        ack(owner, target, "succeeded")
        wait_for(lambda: status(conn, target) == "succeeded", what="the owner's ack")
    finally:
        owner.close()
    assert timeline(conn, target) == ["queued", "sent", "succeeded"]
