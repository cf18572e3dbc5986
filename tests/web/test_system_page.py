"""The operators' system page: where reads come from and how far a replica lags.

Here against the single test database (no replica); the cluster test in
tests/fieldhub/test_stack.py checks the page against a real streaming replica."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.conninfo import make_conninfo

from fieldhub.web import create_app
from tests.web.helpers import World, login

pytestmark = pytest.mark.integration


def test_operator_sees_reads_come_from_the_primary(client: FlaskClient, world: World) -> None:
    login(client, world.emails["operator"])
    response = client.get("/admin/system")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "reads come from the primary; no replica configured" in page
    assert "(primary)" in page
    assert "No replica is streaming from the primary." in page
    assert 'href="/admin/system"' in client.get("/admin/jobs").get_data(as_text=True)


def test_system_page_is_for_operators_only(app: Flask, world: World) -> None:
    for role in ("a_admin", "a_member", "a_viewer"):
        other = app.test_client()
        login(other, world.emails[role])
        assert other.get("/admin/system").status_code == 403, role
        assert 'href="/admin/system"' not in other.get("/devices").get_data(as_text=True)
    assert app.test_client().get("/admin/system").status_code == 302


@pytest.fixture
def restricted_read_url(world: World) -> Iterator[str]:
    """The test database through a role that may not call one of the replication functions."""
    role = f"sysview_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'".encode())
        conn.execute(b"REVOKE EXECUTE ON FUNCTION pg_last_wal_receive_lsn() FROM PUBLIC")
    try:
        yield make_conninfo(world.database_url, user=role, password=password)
    finally:
        with psycopg.connect(world.database_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}".encode())


def test_a_role_refused_the_replication_functions_is_told_not_raised(
    world: World, restricted_read_url: str
) -> None:
    app = create_app(
        {
            "DATABASE_URL": world.database_url,
            "READ_DATABASE_URL": restricted_read_url,
            "TESTING": True,
        }
    )
    try:
        client = app.test_client()
        login(client, world.emails["operator"])
        response = client.get("/admin/system")
        assert response.status_code == 200
        page = response.get_data(as_text=True)
        assert "the read connection could not report its role" in page
        assert "may not read this: permission denied for function pg_last_wal_receive_lsn" in page
        # The primary side still answers through the write connection.
        assert "No replica is streaming from the primary." in page
    finally:
        app.extensions["fieldhub.live"].stop()
        app.extensions["fieldhub.pools"].close()
