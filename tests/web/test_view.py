"""What a person reads, as the server renders it: times in their zone (their account's, else
their browser's), the time zone preference on the account page, booleans as true/false."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from flask import Flask
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.web.helpers import World, login

pytestmark = pytest.mark.integration

INSTANT = datetime(2026, 1, 31, 12, 0, 5, tzinfo=UTC)


def stored_zone(world: World, email: str) -> str | None:
    with psycopg.connect(world.database_url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT time_zone FROM users WHERE email = %s", (email,)).fetchone()
    assert row is not None
    zone: str | None = row["time_zone"]
    return zone


def test_the_account_page_keeps_a_time_zone_or_the_browsers(app: Flask, world: World) -> None:
    email = world.emails["a_viewer"]
    client = app.test_client()
    csrf = login(client, email)
    page = client.get("/account").get_data(as_text=True)
    assert '<option value="browser" selected>' in page
    assert '<option value="America/St_Johns" >' in page
    # A form without the session's CSRF token changes nothing.
    assert client.post("/account/time-zone", data={"time_zone": "Asia/Tokyo"}).status_code == 400
    assert stored_zone(world, email) is None
    bad = client.post("/account/time-zone", data={"time_zone": "Mars/Olympus", "csrf_token": csrf})
    assert bad.status_code == 400
    assert "There is no time zone &#39;Mars/Olympus&#39;" in bad.get_data(as_text=True)
    assert stored_zone(world, email) is None
    saved = client.post("/account/time-zone", data={"time_zone": "Asia/Tokyo", "csrf_token": csrf})
    assert saved.status_code == 302
    assert stored_zone(world, email) == "Asia/Tokyo"
    page = client.get("/account").get_data(as_text=True)
    assert '<option value="Asia/Tokyo" selected>' in page
    assert "Times are now shown in Asia/Tokyo." in page
    # Only the person's own account changes.
    assert stored_zone(world, world.emails["a_admin"]) is None
    back = client.post("/account/time-zone", data={"time_zone": "browser", "csrf_token": csrf})
    assert back.status_code == 302
    assert stored_zone(world, email) is None


def test_times_are_rendered_in_the_persons_zone(app: Flask, world: World) -> None:
    device = world.devices["a"]
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO presence_events (device_key, time, online, source)"
            " SELECT device_key, %s, true, 'status' FROM devices WHERE device_id = %s",
            (INSTANT, device),
        )
    client = app.test_client()
    csrf = login(client, world.emails["a_member"])
    machine = '<time datetime="2026-01-31T12:00:05.000Z" data-format="datetime">'

    def rendered() -> tuple[str, str]:
        html = client.get(f"/devices/{device}").get_data(as_text=True)
        start = html.index(machine) + len(machine)
        zone = html.split('data-time-zone="', 1)[1].split('"', 1)[0]
        return zone, html[start : html.index("</time>", start)]

    # The first page of a visit: the server does not know the browser's zone yet.
    assert rendered() == ("UTC", "2026-01-31 12:00:05")
    # format.js has told it since.
    client.set_cookie("fh_tz", "America/Chicago")
    assert rendered() == ("America/Chicago", "2026-01-31 06:00:05")
    client.set_cookie("fh_tz", "Mars/Olympus")
    assert rendered() == ("UTC", "2026-01-31 12:00:05")
    # A zone on the account wins over the browser's.
    client.set_cookie("fh_tz", "America/Chicago")
    client.post("/account/time-zone", data={"time_zone": "Asia/Kathmandu", "csrf_token": csrf})
    assert rendered() == ("Asia/Kathmandu", "2026-01-31 17:45:05")
    html = client.get(f"/devices/{device}").get_data(as_text=True)
    assert 'data-time-zone-source="account"' in html
    assert 'Times are in <span id="zone-name">Asia/Kathmandu</span>, as set on your account' in html


def test_booleans_read_true_and_false_in_list_page_and_history(app: Flask, world: World) -> None:
    device = world.devices["a"]
    now = datetime.now(UTC)
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO readings (time, device_key, metric, value, is_bool)"
            " SELECT t, device_key, 'door_open', v, true FROM devices,"
            " (VALUES (%s - interval '2 minutes', 0), (%s, 1)) AS r (t, v) WHERE device_id = %s",
            (now, now, device),
        )
        conn.execute(
            "INSERT INTO latest_values (device_key, metric, time, value)"
            " SELECT device_key, 'door_open', %s, %s FROM devices WHERE device_id = %s",
            (now, Jsonb(True), device),
        )
    client = app.test_client()
    login(client, world.emails["a_viewer"])
    listing = client.get("/devices").get_data(as_text=True)
    assert '<span class="k">door_open</span> true</span>' in listing
    page = client.get(f"/devices/{device}").get_data(as_text=True)
    assert '<div class="k">door_open</div><div class="v">true</div>' in page
    state = client.get(f"/devices/state.json?ids={device}").get_json()
    assert {"metric": "door_open", "unit": "", "value": True} in state["devices"][0]["latest"]
    # The chart draws a boolean as 1/0; the type tells the page to read it as true/false.
    history = client.get(f"/devices/{device}/history.json?metric=door_open&range=1h").get_json()
    assert history["type"] == "boolean"
    assert history["value"] == [0.0, 1.0]
    numbers = client.get(f"/devices/{device}/history.json?metric=temperature&range=1h").get_json()
    assert numbers["type"] == "number"
