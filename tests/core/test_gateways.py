"""Attaching devices to gateways in the registry: the rules, against the real database."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.core import registry
from fieldhub.core.db import Conn

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        registry.create_org(connection, "acme")
        registry.create_org(connection, "other")
        for device_id in ("gw-1", "gw-2", "child-1", "child-2"):
            registry.create_device(connection, device_id, org="acme", broker="broker-1")
        registry.create_device(connection, "far-1", org="acme", broker="broker-2")
        registry.create_device(connection, "foreign-1", org="other", broker="broker-1")
        yield connection


def test_attach_detach_and_move(conn: Conn) -> None:
    row = registry.attach_gateway(conn, "child-1", "gw-1")
    assert row["gateway_id"] == "gw-1"
    assert registry.attach_gateway(conn, "child-1", "gw-1")["gateway_id"] == "gw-1"  # no-op
    registry.attach_gateway(conn, "child-2", "gw-1")
    assert [c["device_id"] for c in registry.gateway_children(conn, "gw-1")] == [
        "child-1",
        "child-2",
    ]
    # Attaching to another gateway moves it.
    registry.attach_gateway(conn, "child-2", "gw-2")
    assert [c["device_id"] for c in registry.gateway_children(conn, "gw-1")] == ["child-1"]
    assert registry.detach_gateway(conn, "child-2") == "gw-2"
    assert registry.detach_gateway(conn, "child-2") is None
    # Deleting a gateway detaches its children.
    registry.delete_device(conn, "gw-1")
    assert registry.get_device(conn, "child-1")["gateway_id"] is None


@pytest.mark.parametrize(
    ("child", "gateway", "problem"),
    [
        ("child-1", "child-1", "cannot be its own gateway"),
        ("foreign-1", "gw-1", "a gateway acts only for devices of its own organisation"),
        ("child-1", "nope", "no device 'nope'"),
        ("nope", "gw-1", "no device 'nope'"),
    ],
)
def test_attach_refuses_what_would_not_work(
    conn: Conn, child: str, gateway: str, problem: str
) -> None:
    with pytest.raises(registry.RegistryError, match=problem):
        registry.attach_gateway(conn, child, gateway)
    assert registry.gateway_children(conn, gateway) == []


def test_a_child_may_be_homed_on_another_broker(conn: Conn) -> None:
    """Every device's commands and twin are retained on every broker, so a gateway finds a
    child's wherever either of them is homed."""
    registry.attach_gateway(conn, "far-1", "gw-1")
    assert [c["device_id"] for c in registry.gateway_children(conn, "gw-1")] == ["far-1"]


def test_gateways_do_not_nest(conn: Conn) -> None:
    registry.attach_gateway(conn, "child-1", "gw-1")
    with pytest.raises(registry.RegistryError, match="is itself attached to gateway 'gw-1'"):
        registry.attach_gateway(conn, "child-2", "child-1")
    with pytest.raises(registry.RegistryError, match="'gw-1' is the gateway of other devices"):
        registry.attach_gateway(conn, "gw-1", "gw-2")


def test_an_organisation_sees_only_its_own_devices(conn: Conn) -> None:
    other_org = registry.get_org(conn, "other")["id"]
    with pytest.raises(registry.NotFound):
        registry.attach_gateway(conn, "child-1", "gw-1", org_id=other_org)
    with pytest.raises(registry.NotFound):
        registry.detach_gateway(conn, "child-1", org_id=other_org)
    acme = registry.get_org(conn, "acme")["id"]
    assert registry.attach_gateway(conn, "child-1", "gw-1", org_id=acme)["gateway_id"] == "gw-1"


def test_the_number_of_children_is_capped(conn: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "MAX_CHILDREN_PER_GATEWAY", 1)
    registry.attach_gateway(conn, "child-1", "gw-1")
    with pytest.raises(registry.RegistryError, match="already has 1 devices attached"):
        registry.attach_gateway(conn, "child-2", "gw-1")


def test_crossing_attaches_cannot_build_a_chain(database_url: str, conn: Conn) -> None:
    """A to B and B to C at the same time: one of them wins, never both (that would nest)."""
    errors: list[str] = []
    barrier = threading.Barrier(2)

    def attach(child: str, gateway: str) -> None:
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as own:
            barrier.wait()
            try:
                registry.attach_gateway(own, child, gateway)
            except registry.RegistryError as exc:
                errors.append(str(exc))

    for _ in range(10):
        registry.detach_gateway(conn, "child-1")
        registry.detach_gateway(conn, "gw-1")
        errors.clear()
        threads = [
            threading.Thread(target=attach, args=("child-1", "gw-1")),
            threading.Thread(target=attach, args=("gw-1", "gw-2")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(errors) == 1, errors
        chained = conn.execute(
            "SELECT count(*) AS n FROM devices c JOIN devices g ON g.device_id = c.gateway_id "
            "WHERE g.gateway_id IS NOT NULL"
        ).fetchone()
        assert chained is not None
        assert chained["n"] == 0
