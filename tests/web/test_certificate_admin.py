"""Admin -> Devices -> Issue certificate: shown once, never cached, recorded in the registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from psycopg.rows import dict_row

from fieldhub.core import device_ca
from fieldhub.web import create_app
from tests.web.helpers import World, login


@pytest.fixture
def ca_app(world: World, tmp_path: Path) -> Iterator[Flask]:
    device_ca.ensure_device_ca(tmp_path)
    app = create_app(
        {"DATABASE_URL": world.database_url, "TESTING": True, "DEVICE_CA_DIR": tmp_path}
    )
    yield app
    app.extensions["fieldhub.live"].stop()
    app.extensions["fieldhub.pools"].close()


def _states(world: World, device_id: str) -> list[str]:
    with psycopg.connect(world.database_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT state FROM device_certificates WHERE device_id = %s ORDER BY issued_at",
            (device_id,),
        ).fetchall()
    return [r["state"] for r in rows]


def test_an_admin_issues_a_certificate_shown_once(ca_app: Flask, world: World) -> None:
    device_id = world.devices["a"]
    client = ca_app.test_client()
    csrf = login(client, world.emails["a_admin"])
    url = f"/admin/devices/{device_id}/certificate"
    assert client.post(url).status_code == 400  # no CSRF token
    response = client.post(url, data={"csrf_token": csrf})
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "BEGIN CERTIFICATE" in body
    assert "BEGIN PRIVATE KEY" in body
    assert "no-store" in response.headers["Cache-Control"]
    assert _states(world, device_id) == ["active"]
    client.post(url, data={"csrf_token": csrf})
    assert _states(world, device_id) == ["revoked", "active"]


def test_members_may_not_and_a_host_without_the_ca_does_not_make_one(
    ca_app: Flask, world: World, tmp_path: Path
) -> None:
    device_id = world.devices["a"]
    member = ca_app.test_client()
    csrf = login(member, world.emails["a_member"])
    url = f"/admin/devices/{device_id}/certificate"
    assert member.post(url, data={"csrf_token": csrf}).status_code == 403
    admin = ca_app.test_client()
    csrf = login(admin, world.emails["a_admin"])
    ca_app.config["DEVICE_CA_DIR"] = tmp_path / "elsewhere"
    response = admin.post(url, data={"csrf_token": csrf})
    assert response.status_code == 302
    assert not (tmp_path / "elsewhere").exists()
    assert _states(world, device_id) == []
