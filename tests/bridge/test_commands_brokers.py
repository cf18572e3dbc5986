"""Command dispatchers of several brokers, against real PostgreSQL.

The publish callable records topics instead of talking to a broker: what is checked here is
that each broker's dispatcher publishes every device's commands and twins and records its own
broker, and that the leader lock is one per broker. The path through two real brokers is
tests/bridge/test_brokers_retained.py."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.bridge.commands import CommandDispatcher, SweepResult
from fieldhub.core import db, registry, twins
from fieldhub.core.command_requests import cancel_command, send_command
from fieldhub.core.db import Conn
from tests.support import wait_for

pytestmark = pytest.mark.integration


class Recorder:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def __call__(self, topic: str, payload: bytes, retain: bool, expiry_s: int | None) -> None:
        self.topics.append(topic)


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        registry.create_org(connection, "acme")
        registry.create_device(connection, "north-1", org="acme", broker="broker-1")
        registry.create_device(connection, "south-1", org="acme", broker="broker-2")
        yield connection


BROKERS = ("broker-1", "broker-2")


def dispatcher_of(database_url: str, broker: str, publish: Recorder) -> CommandDispatcher:
    return CommandDispatcher(database_url, publish, broker=broker, brokers=BROKERS)


def sweep(database_url: str, dispatcher: CommandDispatcher) -> SweepResult:
    with db.connect(database_url, autocommit=True) as own:
        return dispatcher.sweep(own)


def flags(conn: Conn, command_id: str) -> dict[str, object]:
    row = conn.execute(
        "SELECT status, published_everywhere, retained_cleared FROM commands WHERE id = %s",
        (command_id,),
    ).fetchone()
    assert row is not None
    return dict(row)


def test_every_broker_dispatcher_publishes_every_devices_commands(
    conn: Conn, database_url: str
) -> None:
    """Whichever broker a device is homed on, each broker's dispatcher publishes its commands
    (a device that fails over finds them there); the first PUBACK makes the command `sent`,
    and it leaves the sweeps' candidates only once every broker has it."""
    north = str(send_command(conn, device_id="north-1", name="open", params={}, ttl_s=60)["id"])
    south = str(send_command(conn, device_id="south-1", name="open", params={}, ttl_s=60)["id"])
    publishers = {name: Recorder() for name in BROKERS}
    dispatchers = {name: dispatcher_of(database_url, name, publishers[name]) for name in BROKERS}
    both = {f"devices/north-1/commands/{north}", f"devices/south-1/commands/{south}"}

    assert sweep(database_url, dispatchers["broker-2"]).published == 2
    assert set(publishers["broker-2"].topics) == both
    assert flags(conn, north) == {
        "status": "sent",
        "published_everywhere": False,
        "retained_cleared": False,
    }
    # Nothing twice to the same broker.
    assert sweep(database_url, dispatchers["broker-2"]).published == 0

    assert sweep(database_url, dispatchers["broker-1"]).published == 2
    assert set(publishers["broker-1"].topics) == both
    assert flags(conn, north)["published_everywhere"] is True
    assert flags(conn, south)["published_everywhere"] is True


def test_a_final_command_is_cleared_on_every_broker(conn: Conn, database_url: str) -> None:
    command = str(send_command(conn, device_id="north-1", name="open", params={}, ttl_s=60)["id"])
    publishers = {name: Recorder() for name in BROKERS}
    dispatchers = {name: dispatcher_of(database_url, name, publishers[name]) for name in BROKERS}
    for name in BROKERS:
        sweep(database_url, dispatchers[name])
    cancel_command(conn, command)
    topic = f"devices/north-1/commands/{command}"

    assert sweep(database_url, dispatchers["broker-1"]).cleared == 1
    assert flags(conn, command)["retained_cleared"] is False  # broker-2 still holds it
    assert sweep(database_url, dispatchers["broker-1"]).cleared == 0
    assert sweep(database_url, dispatchers["broker-2"]).cleared == 1
    assert flags(conn, command)["retained_cleared"] is True
    assert publishers["broker-1"].topics == [topic, topic]  # the command, then its clear
    assert publishers["broker-2"].topics == [topic, topic]


def test_a_twin_goes_to_every_broker(conn: Conn, database_url: str) -> None:
    twins.update_desired(conn, "south-1", {"fan": "on"}, actor=twins.Actor("t@example.com", "cli"))
    publishers = {name: Recorder() for name in BROKERS}
    dispatchers = {name: dispatcher_of(database_url, name, publishers[name]) for name in BROKERS}
    assert sweep(database_url, dispatchers["broker-1"]).twins == 1
    assert "devices/south-1/twin/desired" in publishers["broker-1"].topics
    assert sweep(database_url, dispatchers["broker-1"]).twins == 0
    held = "SELECT published_revision >= revision AS done FROM device_twins WHERE device_id = %s"
    assert conn.execute(held, ("south-1",)).fetchone() == {"done": False}
    assert sweep(database_url, dispatchers["broker-2"]).twins == 1
    assert "devices/south-1/twin/desired" in publishers["broker-2"].topics
    assert conn.execute(held, ("south-1",)).fetchone() == {"done": True}


def test_the_leader_lock_is_one_per_broker(conn: Conn, database_url: str) -> None:
    """Two dispatchers for different brokers both lead; a second one for a broker does not."""
    started = [
        CommandDispatcher(database_url, Recorder(), broker=name, sweep_interval_s=0.2)
        for name in ("broker-1", "broker-2", "broker-2")
    ]
    for dispatcher in started:
        dispatcher.start()
    try:
        wait_for(
            lambda: started[0].is_leader and (started[1].is_leader or started[2].is_leader),
            what="a leader for each broker",
        )
        assert not (started[1].is_leader and started[2].is_leader)
    finally:
        for dispatcher in started:
            dispatcher.stop()
