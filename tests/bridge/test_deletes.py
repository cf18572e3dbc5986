"""Deleting a device, then creating one with the same id in another organisation: nothing of
the old device reaches the new one through the broker (retained commands and twin, the stored
session, messages still on their way) or the bridge (attribution), and a stopped bridge
holds the re-registration up, visibly (issue #11; design in fieldhub.core.tombstone_steps)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from fieldhub.cli import main
from fieldhub.core import registry, tombstones, twins
from fieldhub.core.command_requests import list_commands, send_command
from tests.conftest import SessionBroker
from tests.support import BridgeProcess, DeviceClient, TestStack, unique_id, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def fresh_broker(session_broker: SessionBroker) -> None:
    # The reaper frees sessions; Mosquitto 2.0.11 segfaults freeing one after any earlier test
    # discarded a session that held $share subscriptions (docs/scaling.md). These tests start
    # from a broker process that holds nothing of earlier tests.
    session_broker.restart()


@pytest.fixture
def bridge(stack: TestStack) -> Iterator[BridgeProcess]:
    # Its own instance number: a fresh durable session on the session-wide broker.
    with BridgeProcess(stack, instance=random.randrange(100, 1_000_000)) as process:
        yield process


def _persistent(stack: TestStack, device_id: str, secret: str) -> DeviceClient:
    client = DeviceClient(stack.broker.mqtt_devices, device_id, secret, clean_start=False)
    client.connect()
    return client


def _can_log_in_after_sync(stack: TestStack, device_id: str, secret: str) -> bool:
    """One round of auth-sync (render, reload, its tombstone steps), then try to log in."""
    stack.sync()
    return stack.can_login(device_id, secret)


def _key(stack: TestStack, device_id: str) -> int:
    return int(registry.get_device(stack.conn, device_id)["device_key"])


def _readings(stack: TestStack, key: int) -> int:
    row = stack.query("SELECT count(*) AS n FROM readings WHERE device_key = %s", (key,))[0]
    return int(row["n"])


def test_recreated_id_in_another_org_gets_nothing_of_the_old_device(
    stack: TestStack, bridge: BridgeProcess
) -> None:
    device_id = unique_id("reuse")
    secret = stack.create_devices([device_id])[device_id]
    bridge.start().wait_ready()
    conn = stack.conn

    # The old device: a durable session subscribed to its commands and twin, telemetry stored,
    # one command delivered (retained) and one queued in its session while it is offline.
    old = _persistent(stack, device_id, secret)
    old.subscribe(f"devices/{device_id}/commands/+")
    old.subscribe(f"devices/{device_id}/twin/desired")
    old.publish(f"devices/{device_id}/telemetry", orjson.dumps({"values": {"t": 1.5}}))
    old_key = _key(stack, device_id)
    wait_for(lambda: _readings(stack, old_key) == 1, what="the old device's reading")
    first = send_command(conn, device_id=device_id, name="old-1", params={}, ttl_s=3600)
    twins.update_desired(conn, device_id, {"secret": "old-owner"}, actor=twins.Actor("test", "cli"))
    wait_for(lambda: len(old.received) >= 2, what="old command and twin at the old device")
    old.close()
    second = send_command(conn, device_id=device_id, name="old-2", params={}, ttl_s=3600)
    wait_for(
        lambda: (
            stack.query("SELECT status FROM commands WHERE id = %s", (second["id"],))[0]["status"]
            == "sent"
        ),
        what="the second command published while the old device is offline",
    )

    registry.delete_device(conn, device_id)
    registry.create_org(conn, "other-org")
    creds = registry.create_device(conn, device_id, org="other-org")
    new_key = _key(stack, device_id)
    assert new_key != old_key

    wait_for(
        lambda: _can_log_in_after_sync(stack, device_id, creds.password),
        timeout=30,
        what="the re-created device to be let in once the old one is worked off",
    )
    progress = stack.query(
        "SELECT cut_off_at, retained_cleared_at, drained_at, session_cleared_at "
        "FROM tombstone_brokers WHERE device_key = %s",
        (old_key,),
    )
    assert len(progress) == 1
    assert all(v is not None for v in progress[0].values())
    assert tombstones.pending(conn, device_id) == []

    # The new owner: no stored session, no queued message, no retained command or twin. A
    # command of its own, sent after it subscribed, is the first and only thing it receives.
    new = DeviceClient(stack.broker.mqtt_devices, device_id, creds.password, clean_start=False)
    new.connect()
    try:
        assert new.session_present is False
        new.subscribe(f"devices/{device_id}/commands/+")
        new.subscribe(f"devices/{device_id}/twin/desired")
        own = send_command(conn, device_id=device_id, name="new-1", params={}, ttl_s=3600)
        wait_for(lambda: len(new.received) >= 1, what="the new device's own command")
        got: list[Any] = [(m.topic, orjson.loads(m.payload)["id"]) for m in new.received]
        assert got == [(f"devices/{device_id}/commands/{own['id']}", str(own["id"]))]
        assert str(first["id"]) not in str(got)
        assert str(second["id"]) not in str(got)
    finally:
        new.close()
    # Nothing of the old device under the new one: readings, dead letters, commands.
    assert _readings(stack, new_key) == 0
    letters = stack.query(
        "SELECT count(*) AS n FROM dead_letters WHERE device_key = %s", (new_key,)
    )
    assert letters[0]["n"] == 0
    listed = list_commands(conn, device_id=device_id)
    assert [c["id"] for c in listed] == [own["id"]]


def test_messages_held_back_in_a_stopped_bridge_are_never_the_new_devices(
    stack: TestStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    device_id = unique_id("held")
    secret = stack.create_devices([device_id])[device_id]
    runs, stopped_instance = random.sample(range(100, 1_000_000), 2)
    with (
        BridgeProcess(stack, instance=runs) as running,
        BridgeProcess(stack, instance=stopped_instance) as stopped,
    ):
        running.start().wait_ready()
        stopped.start().wait_ready()
        assert stopped.stop() == 0  # its session stays, in the $share group, and queues
        old = DeviceClient(stack.broker.mqtt_devices, device_id, secret)
        old.connect()
        for n in range(20):
            old.publish(f"devices/{device_id}/telemetry", orjson.dumps({"values": {"n": n}}))
        old.close()
        old_key = _key(stack, device_id)
        # The running bridge stores its share; the stopped one's share waits in the broker.
        wait_for(lambda: _readings(stack, old_key) >= 1, what="the running bridge's share")
        held = 20 - _readings(stack, old_key)
        assert held > 0, "the stopped bridge's session queued none of the old messages"

        registry.delete_device(stack.conn, device_id)
        registry.create_org(stack.conn, "other-org")
        creds = registry.create_device(stack.conn, device_id, org="other-org")
        new_key = _key(stack, device_id)

        # Blocked, visibly: everything but the stopped bridge's pass is done.
        def waiting_on_the_stopped_bridge() -> bool:
            stack.sync()
            rows = tombstones.pending(stack.conn, device_id)
            return (
                bool(rows)
                and rows[0]["retained_cleared_at"] is not None
                and rows[0]["sessions_behind"] == [stopped.username]
            )

        wait_for(waiting_on_the_stopped_bridge, timeout=30, what="all steps but the drain")
        rows = tombstones.pending(stack.conn, device_id)
        assert rows[0]["drained_at"] is None
        assert running.username not in rows[0]["sessions_behind"]
        assert stopped.username in rows[0]["waiting_for"]
        assert "a stopped bridge blocks this" in rows[0]["waiting_for"]
        assert not stack.can_login(device_id, creds.password)
        # What support reads: `fieldhub device show` says what the new device waits for.
        monkeypatch.setenv("DATABASE_URL", stack.database_url)
        capsys.readouterr()
        assert main(["device", "show", device_id]) == 0
        shown = capsys.readouterr().out
        assert "can log in:         not yet" in shown
        assert f"(not yet: {stopped.username})" in shown

        stopped.start().wait_ready()
        wait_for(
            lambda: _can_log_in_after_sync(stack, device_id, creds.password),
            timeout=30,
            what="the re-created device to be let in after the stopped bridge returned",
        )
        # Every held-back message was dead-lettered as the deleted device's, none is the new
        # device's.
        letters = stack.query(
            "SELECT device_key, reason FROM dead_letters WHERE device_id = %s", (device_id,)
        )
        assert letters == [{"device_key": None, "reason": "deleted_device"}] * held
        assert _readings(stack, new_key) == 0


def _retained_under(stack: TestStack, account: str, device_id: str) -> list[str]:
    """The retained command topics of `device_id` the broker holds now: a sentinel retained
    message is published first and comes in the same burst as every other retained match."""
    checker = DeviceClient(stack.broker.mqtt_services, account, stack.bridge_password)
    checker.connect()
    try:
        sentinel = f"devices/{device_id}/commands/zz-sentinel"
        checker.publish(sentinel, b"s", retain=True)
        checker.subscribe(f"devices/{device_id}/commands/+")
        wait_for(lambda: any(m.topic == sentinel for m in checker.received), what="sentinel")
        checker.publish(sentinel, b"", retain=True)
        return sorted(m.topic for m in checker.received if m.topic != sentinel)
    finally:
        checker.close()


def test_a_broker_that_lost_a_clear_is_cleared_again_when_the_bridge_reconnects(
    stack: TestStack, bridge: BridgeProcess
) -> None:
    device_id = unique_id("stale")
    stack.create_devices([device_id])
    bridge.start().wait_ready()
    command = send_command(stack.conn, device_id=device_id, name="old", params={}, ttl_s=3600)
    old_topic = f"devices/{device_id}/commands/{command['id']}"
    account = stack.service_account(
        "svc.test-stale", ["readwrite devices/+/commands/+", "readwrite devices/+/twin/desired"]
    )
    wait_for(lambda: _retained_under(stack, account, device_id) == [old_topic], what="sent")
    registry.delete_device(stack.conn, device_id)

    def cleared() -> bool:
        stack.sync()
        return _retained_under(stack, account, device_id) == []

    wait_for(cleared, timeout=30, what="the old command's retained message cleared")
    # The broker comes back from a snapshot older than the clear: the old command is back.
    publisher = DeviceClient(stack.broker.mqtt_services, account, stack.bridge_password)
    publisher.connect()
    publisher.publish(old_topic, b'{"stale": true}', retain=True)
    publisher.close()
    assert _retained_under(stack, account, device_id) == [old_topic]
    # The bridge reconnects (as after a broker restart): the dispatcher clears it again.
    assert bridge.stop() == 0
    bridge.start().wait_ready()
    wait_for(
        lambda: _retained_under(stack, account, device_id) == [],
        timeout=30,
        what="the stale retained command cleared again",
    )
