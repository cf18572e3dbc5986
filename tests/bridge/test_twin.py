"""Device twins through the real bridge, broker and database.

The device side is a plain MQTT client speaking the contract of docs/devices.md ("Twin"); the
people's side is fieldhub.core.twins, which the web app, the API and the CLI call."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.bridge.twin import TwinReport, apply_reports
from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.core import registry, twins
from fieldhub.core.command_requests import get_command, send_command
from fieldhub.core.db import Conn
from fieldhub.core.twin_documents import Report
from tests.support import (
    BridgeProcess,
    DeviceClient,
    TestStack,
    loopback_broker,
    unique_id,
    wait_for,
)

pytestmark = pytest.mark.integration

ACTOR = twins.Actor("tester@example.com", "api")


def desired_topic(device_id: str) -> str:
    return f"devices/{device_id}/twin/desired"


def delta_topic(device_id: str) -> str:
    return f"devices/{device_id}/twin/delta"


def last_payload(device: DeviceClient, topic: str) -> Any:
    payloads = [m.payload for m in list(device.received) if m.topic == topic]
    return json.loads(payloads[-1]) if payloads and payloads[-1] else None


def wait_payload(device: DeviceClient, topic: str, expected: Any, what: str) -> None:
    wait_for(lambda: last_payload(device, topic) == expected, what=what, timeout=20)


def published(conn: Conn, device_id: str) -> bool:
    row = conn.execute(
        "SELECT published_revision >= revision AS done FROM device_twins WHERE device_id = %s",
        (device_id,),
        prepare=False,
    ).fetchone()
    return bool(row and row["done"])


def report(device: DeviceClient, body: Any) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    device.publish(f"devices/{device.username}/twin/reported", payload)


def twin_login(port: int, device_id: str, secret: str) -> DeviceClient:
    device = DeviceClient(port, device_id, secret)
    device.connect()
    device.subscribe(desired_topic(device_id))
    device.subscribe(delta_topic(device_id))
    return device


def dead_letters(conn: Conn, device_id: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT reason, detail FROM dead_letters WHERE device_id = %s ORDER BY received_at, id",
        (device_id,),
        prepare=False,
    ).fetchall()
    return [(row["reason"], row["detail"]) for row in rows]


# -- end to end -------------------------------------------------------------------------------
def test_a_device_offline_when_desired_changes_gets_it_at_login_and_reports(
    stack: TestStack,
) -> None:
    device_id = unique_id("thermo")
    secret = stack.create_devices([device_id])[device_id]
    with BridgeProcess(stack).start().wait_ready():
        # The device is offline (never connected) while two people change its desired state.
        twins.update_desired(
            stack.conn, device_id, {"interval": 30, "led": {"color": "red"}}, actor=ACTOR
        )
        twin = twins.update_desired(stack.conn, device_id, {"led": {"blink": True}}, actor=ACTOR)
        assert twin.desired_version == 2
        wait_for(lambda: published(stack.conn, device_id), what="the twin to be published")

        device = twin_login(stack.broker.mqtt_devices, device_id, secret)
        try:
            desired = {"interval": 30, "led": {"color": "red", "blink": True}}
            wait_payload(
                device,
                desired_topic(device_id),
                {"version": 2, "state": desired},
                "the desired document at login",
            )
            retained = [m for m in list(device.received) if m.topic == desired_topic(device_id)]
            assert retained[0].retain
            wait_payload(
                device,
                delta_topic(device_id),
                {"version": 2, "state": desired},
                "the delta at login",
            )

            # The device applies all of it, reports it with something of its own.
            report(device, {"version": 2, "state": {**desired, "firmware": "1.4.2"}})
            wait_for(
                lambda: twins.get_twin(stack.conn, device_id).reported_version == 2,
                what="the report to be applied",
            )
            twin = twins.get_twin(stack.conn, device_id)
            assert twin.reported == {**desired, "firmware": "1.4.2"}
            assert twin.delta == {}
            assert twin.reported_at is not None
            wait_payload(
                device, delta_topic(device_id), {"version": 2, "state": {}}, "an empty delta"
            )

            # A change while it is online arrives at once, whole, with its delta.
            twins.update_desired(stack.conn, device_id, {"interval": 60, "led": None}, actor=ACTOR)
            wait_payload(
                device,
                desired_topic(device_id),
                {"version": 3, "state": {"interval": 60}},
                "version 3",
            )
            wait_payload(
                device, delta_topic(device_id), {"version": 3, "state": {"interval": 60}}, "delta 3"
            )
        finally:
            device.close()
    history = twins.desired_history(stack.conn, device_id)
    assert [(h["version"], h["actor"], h["source"]) for h in history] == [
        (3, ACTOR.name, "api"),
        (2, ACTOR.name, "api"),
        (1, ACTOR.name, "api"),
    ]
    assert history[0]["patch"] == {"interval": 60, "led": None}
    assert dead_letters(stack.conn, device_id) == []


def test_stale_and_malformed_reports_are_dead_lettered_and_change_nothing(
    stack: TestStack,
) -> None:
    device_id = unique_id("valve")
    secret = stack.create_devices([device_id])[device_id]
    twins.update_desired(stack.conn, device_id, {"open": False}, actor=ACTOR)
    twins.update_desired(stack.conn, device_id, {"open": True}, actor=ACTOR)
    with BridgeProcess(stack).start().wait_ready():
        device = twin_login(stack.broker.mqtt_devices, device_id, secret)
        try:
            bad: list[Any] = [
                {"version": 3, "state": {"open": "from the future"}},
                b"[1, 2]",
                {"version": 2},
                {"version": "2", "state": {}},
                {"version": 2, "state": {"text": "nul \u0000 inside"}},
                {"version": 2, "state": {"k": "x" * 20000}},
            ]
            for body in bad:
                report(device, body)
            report(device, {"version": 2, "state": {"open": True}})
            report(device, {"version": 1, "state": {"open": "late report of version 1"}})
            wait_for(
                lambda: len(dead_letters(stack.conn, device_id)) == len(bad) + 1,
                what="every refused report in the dead letters",
            )
        finally:
            device.close()
    reasons = [reason for reason, _ in dead_letters(stack.conn, device_id)]
    assert sorted(reasons) == sorted(["twin_stale"] * 2 + ["twin_invalid"] * 5)
    details = " | ".join(detail for _, detail in dead_letters(stack.conn, device_id))
    assert "desired document is at version 2" in details
    assert "arrived after one of version 2" in details
    assert "NUL" in details
    twin = twins.get_twin(stack.conn, device_id)
    assert (twin.reported, twin.reported_version) == ({"open": True}, 2)


def test_a_device_reads_only_its_own_twin(stack: TestStack) -> None:
    mine, other = unique_id("mine"), unique_id("other")
    secrets = stack.create_devices([mine, other])
    twins.update_desired(stack.conn, other, {"secret": "other's"}, actor=ACTOR)
    twins.update_desired(stack.conn, mine, {"mode": "eco"}, actor=ACTOR)
    with BridgeProcess(stack).start().wait_ready():
        wait_for(
            lambda: published(stack.conn, other) and published(stack.conn, mine), what="publish"
        )
        device = DeviceClient(stack.broker.mqtt_devices, mine, secrets[mine])
        device.connect()
        try:
            device.subscribe(desired_topic(other))
            device.subscribe(f"devices/{other}/twin/#")
            device.subscribe(desired_topic(mine))
            # Retained messages come in subscription order: once our own has arrived, the
            # other device's would have too.
            wait_payload(
                device, desired_topic(mine), {"version": 1, "state": {"mode": "eco"}}, "own"
            )
            assert not [m for m in list(device.received) if other in m.topic]
            # And it cannot write another device's report.
            report_as_other = json.dumps({"version": 1, "state": {"hacked": True}})
            device.publish(f"devices/{other}/twin/reported", report_as_other)
            report(device, {"version": 1, "state": {"mode": "eco"}})
            wait_for(
                lambda: twins.get_twin(stack.conn, mine).reported_version == 1, what="own report"
            )
        finally:
            device.close()
    assert twins.get_twin(stack.conn, other).reported == {}


# -- two bridges, reports in the other order ----------------------------------------------------
@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        registry.create_org(connection, "acme")
        registry.create_device(connection, "pump-1", org="acme")
        yield connection


def as_bridge(conn: Conn, device_id: str, *reports: Report) -> list[tuple[TwinReport, str, str]]:
    """One bridge's batch: its own transaction, committed."""
    items = [
        TwinReport(device_id, None, r, f"devices/{device_id}/twin/reported", b"{}", time.time())
        for r in reports
    ]
    with conn.transaction():
        return apply_reports(conn, items)


def test_reports_committed_in_the_other_order_never_go_back(conn: Conn) -> None:
    """The device sent A then B (same desired version, seq 1 then 2); bridge 2 committed B
    before bridge 1 committed A. A must not overwrite B: it is refused as stale, in any later
    batch too, and a report of the next version goes on from B."""
    twins.update_desired(conn, "pump-1", {"speed": 3}, actor=ACTOR)
    a = Report(1, 1, {"speed": 2, "phase": "ramping"})
    b = Report(1, 2, {"speed": 3, "phase": "steady"})
    assert as_bridge(conn, "pump-1", b) == []
    refused = as_bridge(conn, "pump-1", a)
    assert [
        (reason, "seq 1 of version 1 arrived after seq 2" in detail)
        for _, reason, detail in refused
    ] == [("twin_stale", True)]
    twin = twins.get_twin(conn, "pump-1")
    assert twin.reported == {"speed": 3, "phase": "steady"}
    assert (twin.reported_version, twin.reported_seq) == (1, 2)
    # Within one batch the same rule holds, report by report.
    twins.update_desired(conn, "pump-1", {"speed": 4}, actor=ACTOR)
    refused = as_bridge(
        conn,
        "pump-1",
        Report(2, 5, {"speed": 4}),
        Report(1, 9, {"speed": 1}),
        Report(2, 4, {"x": 1}),
    )
    assert [reason for _, reason, _ in refused] == ["twin_stale", "twin_stale"]
    assert twins.get_twin(conn, "pump-1").reported == {"speed": 4, "phase": "steady"}


def test_reports_of_a_deleted_device_are_returned_not_failed(conn: Conn) -> None:
    registry.create_device(conn, "gone-1", org="acme")
    registry.delete_device(conn, "gone-1")
    refused = as_bridge(conn, "gone-1", Report(0, None, {"a": 1}))
    assert [reason for _, reason, _ in refused] == ["unknown_device"]


# -- a broker that lost its retained messages ---------------------------------------------------
@pytest.fixture
def own_broker() -> Iterator[tuple[MosquittoBroker, list[Any]]]:
    """A broker of this test only: it is killed and restarted without its snapshot."""
    base = Path(tempfile.mkdtemp(prefix="fieldhub-test-twin-broker-"))
    base.chmod(0o755)
    broker = loopback_broker(base, autosave_interval=1)
    procs = [broker.start(base / "mosquitto.log")]
    try:
        yield broker, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def test_after_a_broker_restart_without_its_retained_messages_everything_is_published_again(
    database_url: str, own_broker: tuple[MosquittoBroker, list[Any]]
) -> None:
    broker, procs = own_broker
    with TestStack(database_url, broker) as stack:
        device_id = unique_id("meter")
        secret = stack.create_devices([device_id])[device_id]
        twins.update_desired(stack.conn, device_id, {"tariff": "night"}, actor=ACTOR)
        command_id = str(
            send_command(stack.conn, device_id=device_id, name="sync", params={}, ttl_s=600)["id"]
        )
        with BridgeProcess(stack).start().wait_ready() as bridge:
            wait_for(lambda: published(stack.conn, device_id), what="the twin to be published")
            wait_for(lambda: get_command(stack.conn, command_id)["status"] == "sent", what="sent")
            # Kill the broker and throw its snapshot away: it comes back knowing nothing.
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(timeout=10)
            for snapshot in broker.data_dir.glob("mosquitto.db*"):
                snapshot.unlink()
            procs.append(broker.start(broker.base_dir.parent / "mosquitto.log"))
            stack.sync()
            bridge.wait_ready(timeout=30)
            device = DeviceClient(broker.mqtt_devices, device_id, secret)
            device.connect()
            try:
                device.subscribe(desired_topic(device_id))
                device.subscribe(f"devices/{device_id}/commands/+")
                wait_payload(
                    device,
                    desired_topic(device_id),
                    {"version": 1, "state": {"tariff": "night"}},
                    "the desired document on the restarted broker",
                )
                wait_for(
                    lambda: any(m.topic.endswith(command_id) for m in list(device.received)),
                    what="the sent command on the restarted broker",
                    timeout=20,
                )
            finally:
                device.close()
