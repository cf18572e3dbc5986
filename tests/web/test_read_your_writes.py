"""Read-your-writes with a lagging replica.

The "replica" here is a migrated database that never receives the primary's writes, i.e. a
replica lagging for ever: the only way a page can show what was just written is by reading
from the primary."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask

from fieldhub.stack.postgres import PostgresCluster
from fieldhub.web import create_app
from tests.conftest import TEMPLATE_DB
from tests.support import NEEDS_PATRONI, patroni_database, wait_for
from tests.web.helpers import World, login, seed

pytestmark = pytest.mark.integration


@pytest.fixture
def stale_replica_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    name = f"stale_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"'.encode())
    yield pg_cluster.url(name)
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def _app(world: World, read_url: str, window_s: float) -> Flask:
    return create_app(
        {
            "DATABASE_URL": world.database_url,
            "READ_DATABASE_URL": read_url,
            "READ_YOUR_WRITES_S": window_s,
            "TESTING": True,
        }
    )


def _close(app: Flask) -> None:
    app.extensions["fieldhub.live"].stop()
    app.extensions["fieldhub.pools"].close()


def test_a_command_just_sent_shows_at_once_despite_replica_lag(
    world: World, stale_replica_url: str
) -> None:
    app = _app(world, stale_replica_url, window_s=60)
    try:
        client = app.test_client()
        csrf = login(client, world.emails["a_member"])
        device = world.devices["a"]
        sent = client.post(
            f"/devices/{device}/commands",
            json={"name": "open-valve", "ttl_s": 600},
            headers={"X-CSRF-Token": csrf},
        )
        assert sent.status_code == 201, sent.get_data(as_text=True)[:300]
        command_id = sent.get_json()["command"]["id"]

        page = client.get(f"/devices/{device}")
        assert page.status_code == 200
        listed = client.get(f"/devices/{device}/commands.json").get_json()
        assert command_id in [c["id"] for c in listed["commands"]]
    finally:
        _close(app)


def test_without_the_write_marker_reads_come_from_the_replica(
    world: World, stale_replica_url: str
) -> None:
    # The control: with read-your-writes off, the same reads go to the stale replica, which
    # has never heard of the device, so the routing above is what made the difference.
    app = _app(world, stale_replica_url, window_s=0)
    try:
        client = app.test_client()
        login(client, world.emails["a_member"])
        assert client.get(f"/devices/{world.devices['a']}").status_code == 404
    finally:
        _close(app)


@NEEDS_PATRONI
def test_the_web_app_keeps_reading_its_writes_across_a_database_failover() -> None:
    # Both URLs name every node of a Patroni cluster: writes go to the primary, reads prefer
    # a standby. The primary is killed; the same app (same pools, no restart) must show a
    # command sent before the failover and one sent right after it.
    with patroni_database("fieldhub_ryw") as (cluster, leader, url):
        world = seed(url)
        app = create_app(
            {
                "DATABASE_URL": url,
                # Another order of the same hosts: the URLs differ, so the app has a read side.
                "READ_DATABASE_URL": cluster.url("fieldhub_ryw", reverse=True),
                "READ_YOUR_WRITES_S": 60,
                "TESTING": True,
            }
        )
        try:
            client = app.test_client()
            csrf = login(client, world.emails["a_member"])
            device = world.devices["a"]

            def send() -> str:
                sent = client.post(
                    f"/devices/{device}/commands",
                    json={"name": "open-valve", "ttl_s": 600},
                    headers={"X-CSRF-Token": csrf},
                )
                assert sent.status_code == 201, sent.get_data(as_text=True)[:300]
                return str(sent.get_json()["command"]["id"])

            def listed() -> list[str]:
                page = client.get(f"/devices/{device}/commands.json")
                assert page.status_code == 200, page.get_data(as_text=True)[:300]
                return [c["id"] for c in page.get_json()["commands"]]

            before = send()
            assert before in listed()
            cluster.kill_node(leader)
            wait_for(
                lambda: cluster.primary() not in (None, leader) and cluster.healthy_enough(),
                timeout=60,
                interval=0.5,
                what="a new primary with a synchronous standby",
            )
            # The first requests may meet connections to the dead primary: the pools replace
            # them, so at most a retry later the app answers again.
            wait_for(lambda: _answers(client, device), timeout=30, what="the app to answer")
            after = send()
            ids = listed()
            assert before in ids
            assert after in ids
        finally:
            _close(app)


def _answers(client: Any, device: str) -> bool:
    return bool(client.get(f"/devices/{device}/commands.json").status_code == 200)
