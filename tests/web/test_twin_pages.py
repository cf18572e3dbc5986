"""The twin on the device page: shown to everyone of the organisation, edited by members."""

from __future__ import annotations

import html
import json
import re

import psycopg
import pytest
from flask import Flask
from playwright.sync_api import Browser, expect
from psycopg.rows import dict_row

from fieldhub.core import twins, users
from tests.support import BridgeProcess, DeviceClient, TestStack, wait_for
from tests.web.helpers import PASSWORD, WebServer, World, log_in, login, shot

pytestmark = pytest.mark.integration

ACTOR = twins.Actor("someone@a.example", "api")


def _twin(world: World, device_id: str) -> twins.Twin:
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        return twins.get_twin(conn, device_id)


def _textarea(page_html: str) -> str:
    match = re.search(r'<textarea name="desired"[^>]*>(.*?)</textarea>', page_html, re.S)
    assert match, "no desired-state editor on the page"
    return html.unescape(match.group(1))


def test_a_member_edits_the_whole_desired_document_and_the_patch_is_recorded(
    app: Flask, world: World
) -> None:
    device_id = world.devices["a"]
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        twins.update_desired(conn, device_id, {"interval": 30, "led": "red"}, actor=ACTOR)
    client = app.test_client()
    csrf = login(client, world.emails["a_member"])
    page = client.get(f"/devices/{device_id}").get_data(as_text=True)
    assert json.loads(_textarea(page)) == {"interval": 30, "led": "red"}
    assert "version 1" in page

    response = client.post(
        f"/devices/{device_id}/twin",
        data={"csrf_token": csrf, "version": "1", "desired": '{"interval": 60, "mode": "<eco>"}'},
    )
    assert response.status_code == 302
    assert response.headers["Location"].endswith("#twin")
    twin = _twin(world, device_id)
    assert (twin.desired_version, twin.desired) == (2, {"interval": 60, "mode": "<eco>"})
    page = client.get(f"/devices/{device_id}").get_data(as_text=True)
    assert "Desired state saved as version 2." in page
    assert "&lt;eco&gt;" in page  # escaped, not markup
    history = page[page.index('id="twin-history"') :]
    assert world.emails["a_member"] in history
    # The change is the merge patch from the version it was based on: led removed.
    assert '{"interval": 60, "led": null, "mode": "<eco>"}' in html.unescape(history)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "must be a JSON object, not an array"),
        ('{"k": "\\u0000"}', "NUL"),
        ('{"' + "k" * 200 + '": 1}', "keys are 1-128 characters"),
    ],
)
def test_bad_desired_text_is_refused_with_the_text_kept(
    app: Flask, world: World, text: str, problem: str
) -> None:
    device_id = world.devices["a"]
    client = app.test_client()
    csrf = login(client, world.emails["a_member"])
    response = client.post(
        f"/devices/{device_id}/twin", data={"csrf_token": csrf, "version": "0", "desired": text}
    )
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert problem in html.unescape(body)
    assert _textarea(body) == text
    assert _twin(world, device_id).desired_version == 0


def test_an_edit_based_on_an_old_version_is_refused(app: Flask, world: World) -> None:
    device_id = world.devices["a"]
    client = app.test_client()
    csrf = login(client, world.emails["a_member"])
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        twins.update_desired(conn, device_id, {"a": 1}, actor=ACTOR)
        twins.update_desired(conn, device_id, {"b": 2}, actor=ACTOR)
    response = client.post(
        f"/devices/{device_id}/twin",
        data={"csrf_token": csrf, "version": "1", "desired": '{"a": 5}'},
    )
    assert response.status_code == 422
    assert "at version 2, not 1" in response.get_data(as_text=True)
    assert _twin(world, device_id).desired == {"a": 1, "b": 2}


def test_viewers_see_the_twin_but_cannot_change_it_nor_anyone_another_orgs(
    app: Flask, world: World
) -> None:
    device_id = world.devices["a"]
    client = app.test_client()
    csrf = login(client, world.emails["a_viewer"])
    page = client.get(f"/devices/{device_id}").get_data(as_text=True)
    assert 'id="twin"' in page
    assert "<textarea" not in page
    response = client.post(
        f"/devices/{device_id}/twin", data={"csrf_token": csrf, "version": "0", "desired": "{}"}
    )
    assert response.status_code == 403

    member = app.test_client()
    csrf = login(member, world.emails["a_member"])
    other = world.devices["b"]
    response = member.post(
        f"/devices/{other}/twin", data={"csrf_token": csrf, "version": "0", "desired": '{"x": 1}'}
    )
    assert response.status_code == 404
    # Without the CSRF token nothing is changed either.
    response = member.post(
        f"/devices/{device_id}/twin", data={"version": "0", "desired": '{"x": 1}'}
    )
    assert response.status_code in (400, 403)
    assert _twin(world, device_id).desired_version == 0
    assert _twin(world, other).desired_version == 0


@pytest.mark.browser
def test_desired_state_edited_in_the_browser_reaches_the_device_and_its_report_shows(
    stack: TestStack, browser: Browser
) -> None:
    device_id = "heater-3"
    secret = stack.create_devices([device_id])[device_id]
    email = "operator-of-heaters@test.example"
    users.create_user(stack.conn, email, org=stack.org, role="member", password=PASSWORD)
    device = DeviceClient(stack.broker.mqtt_devices, device_id, secret)
    topic = f"devices/{device_id}/twin/desired"
    with BridgeProcess(stack) as bridge, WebServer(stack.database_url) as server:
        bridge.start().wait_ready()
        device.connect()
        device.subscribe(topic)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        log_in(page, server.url, email)
        page.goto(f"{server.url}/devices/{device_id}")
        expect(page.locator("#twin-delta")).to_contain_text("In sync")
        page.fill("#twin-desired", '{\n  "setpoint": 22.5,\n  "schedule": {"night": 17}\n}')
        page.click("#twin-form button[type=submit]")
        expect(page.locator(".flash-info")).to_contain_text("saved as version 1")
        expect(page.locator("#twin-delta")).to_contain_text('"setpoint": 22.5')

        desired = {"setpoint": 22.5, "schedule": {"night": 17}}
        wait_for(
            lambda: any(
                m.topic == topic and json.loads(m.payload) == {"version": 1, "state": desired}
                for m in list(device.received)
            ),
            what="the device to receive the desired state",
        )
        device.publish(
            f"devices/{device_id}/twin/reported",
            json.dumps({"version": 1, "state": {**desired, "firmware": "2.0"}}),
        )
        wait_for(
            lambda: twins.get_twin(stack.conn, device_id).reported_version == 1,
            what="the report to be stored",
        )
        page.reload()
        expect(page.locator("#twin-delta")).to_contain_text("In sync")
        expect(page.locator("#twin-reported")).to_contain_text('"firmware": "2.0"')
        shot(page, "device-twin")
        device.close()
