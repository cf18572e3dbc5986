"""Attaching a device to a gateway from the device page (admins only)."""

from __future__ import annotations

import re

import psycopg
import pytest
from flask import Flask
from psycopg.rows import dict_row

from fieldhub.core import registry
from tests.web.helpers import World, login

pytestmark = pytest.mark.integration


def _gateway_of(world: World, device_id: str) -> str | None:
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        gateway: str | None = registry.get_device(conn, device_id)["gateway_id"]
        return gateway


def test_an_admin_attaches_and_detaches_on_the_device_page(app: Flask, world: World) -> None:
    child = world.devices["a"]
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        registry.create_device(conn, "gw-a", org="org-a")
    client = app.test_client()
    csrf = login(client, world.emails["a_admin"])
    page = client.get(f"/devices/{child}").get_data(as_text=True)
    assert 'id="attach-form"' in page
    back = f"/devices/{child}"
    response = client.post(
        f"/admin/devices/{child}/attach",
        data={"csrf_token": csrf, "gateway_id": "gw-a", "back": back},
    )
    assert response.status_code == 302
    assert response.headers["Location"].endswith(back)
    assert _gateway_of(world, child) == "gw-a"
    page = client.get(back).get_data(as_text=True)
    assert "is attached to gateway gw-a" in page
    assert "Speaks through gateway" in page
    gateway_page = client.get("/devices/gw-a").get_data(as_text=True)
    assert f'Gateway of <a href="/devices/{child}">{child}</a>' in gateway_page
    assert "via gateway" in client.get("/admin/devices").get_data(as_text=True)

    client.post(f"/admin/devices/{child}/detach", data={"csrf_token": csrf, "back": back})
    assert _gateway_of(world, child) is None


def test_a_gateway_of_another_organisation_is_unknown(app: Flask, world: World) -> None:
    client = app.test_client()
    csrf = login(client, world.emails["a_admin"])
    child, foreign = world.devices["a"], world.devices["b"]
    client.post(
        f"/admin/devices/{child}/attach",
        data={"csrf_token": csrf, "gateway_id": foreign},
    )
    assert _gateway_of(world, child) is None
    page = client.get("/admin/devices").get_data(as_text=True)
    assert f"There is no device &#39;{foreign}&#39; in this organisation." in page


def test_members_cannot_attach(app: Flask, world: World) -> None:
    client = app.test_client()
    csrf = login(client, world.emails["a_member"])
    child = world.devices["a"]
    assert 'id="attach-form"' not in client.get(f"/devices/{child}").get_data(as_text=True)
    response = client.post(
        f"/admin/devices/{child}/attach", data={"csrf_token": csrf, "gateway_id": child}
    )
    assert response.status_code == 403


def test_the_credentials_page_lists_every_broker_url_home_first(app: Flask, world: World) -> None:
    app.config["DEVICE_MQTT_URLS"] = {
        "broker-1": "mqtts://one.example:8883",
        "broker-2": "mqtts://two.example:8883",
    }
    client = app.test_client()
    csrf = login(client, world.emails["a_admin"])
    page = client.post(
        "/admin/devices", data={"csrf_token": csrf, "device_id": "new-dev", "org": "org-a"}
    ).get_data(as_text=True)
    urls = re.findall(r"<li><code>(mqtts://[^<]+)</code>", page)
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        home = registry.get_device(conn, "new-dev")["broker"]
    assert urls[0] == app.config["DEVICE_MQTT_URLS"][home]
    assert sorted(urls) == sorted(app.config["DEVICE_MQTT_URLS"].values())
