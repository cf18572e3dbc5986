"""Command dispatchers scoped to one broker each (several brokers), against real PostgreSQL.

The publish callable records topics instead of talking to a broker: what is checked here is
which commands each broker's dispatcher takes and that the leader lock is one per broker. The
path through real brokers is the cluster test in tests/fieldhub/test_stack.py."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.bridge.commands import CommandDispatcher
from fieldhub.core import db, registry
from fieldhub.core.command_requests import get_command, send_command
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


def test_each_broker_dispatcher_publishes_only_its_devices_commands(
    conn: Conn, database_url: str
) -> None:
    north = send_command(conn, device_id="north-1", name="open", params={}, ttl_s=60)["id"]
    south = send_command(conn, device_id="south-1", name="open", params={}, ttl_s=60)["id"]
    publishers = {"broker-1": Recorder(), "broker-2": Recorder()}
    dispatchers = {
        name: CommandDispatcher(database_url, publish, broker=name)
        for name, publish in publishers.items()
    }
    with db.connect(database_url, autocommit=True) as own:
        assert dispatchers["broker-2"].sweep(own).published == 1
    assert publishers["broker-2"].topics == [f"devices/south-1/commands/{south}"]
    assert get_command(conn, str(north))["status"] == "queued"
    with db.connect(database_url, autocommit=True) as own:
        assert dispatchers["broker-1"].sweep(own).published == 1
    assert publishers["broker-1"].topics == [f"devices/north-1/commands/{north}"]


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
