"""Browser tests: Debian's headless Chromium driven by Playwright against a real gunicorn, the
real bridge and the real broker. Screenshots of the main pages go to test-artifacts/."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from fieldhub.core import registry, users
from tests.support import BridgeProcess, DeviceClient, TestStack, unique_id, wait_for
from tests.web.helpers import PASSWORD, WebServer, World, api_token, log_in, shot

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_live_chart_and_command_round_trip(stack: TestStack, browser: Browser) -> None:
    device_id = "greenhouse-7"
    secret = stack.create_devices([device_id, "greenhouse-8"])[device_id]
    stack.conn.execute(
        "UPDATE devices SET display_name = 'Greenhouse 7', labels = '{\"site\": \"north\"}' "
        "WHERE device_id = %s",
        (device_id,),
    )
    email = "grower@test.example"
    users.create_user(stack.conn, email, org=stack.org, role="admin", password=PASSWORD)
    device = DeviceClient(stack.broker.mqtt_devices, device_id, secret)
    with BridgeProcess(stack) as bridge, WebServer(stack.database_url) as server:
        bridge.start().wait_ready()
        device.connect()
        device.subscribe(f"devices/{device_id}/commands/+")
        device.publish(
            f"devices/{device_id}/telemetry",
            json.dumps({"values": {"temperature": 21.5, "humidity": 40}}),
        )
        wait_for(
            lambda: stack.query(
                "SELECT 1 FROM latest_values JOIN devices USING (device_key) WHERE device_id = %s",
                (device_id,),
            ),
            what="the first reading stored",
        )
        # An hour of history, so the chart (and its screenshot) has something to show.
        stack.conn.execute(
            "INSERT INTO readings (time, device_key, metric, value) "
            "SELECT t, device_key, 'temperature', 21 + 3 * sin(extract(epoch FROM t) / 600) "
            "FROM devices, generate_series(now() - interval '59 minutes', "
            "now() - interval '1 minute', interval '30 seconds') AS t WHERE device_id = %s",
            (device_id,),
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        csp_violations: list[str] = []
        page.on(
            "console",
            lambda msg: (
                csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
            ),
        )
        page.goto(server.url + "/devices")
        expect(page.locator("h1")).to_contain_text("Log in")
        shot(page, "login")
        log_in(page, server.url, email)
        expect(page.locator("a.device-link", has_text=device_id)).to_be_visible()
        shot(page, "devices")

        page.click(f"a.device-link:has-text('{device_id}')")
        expect(page.locator("body[data-live=connected]")).to_have_count(1, timeout=10000)
        # A series is a metric in one unit ("metric|unit"; plain telemetry has none).
        expect(page.locator("#metric")).to_have_value("humidity|")
        page.select_option("#metric", "temperature|")
        expect(page.locator("#chart canvas")).to_have_count(1)

        # A reading published over MQTT appears on the chart and the tiles without a reload.
        device.publish(
            f"devices/{device_id}/telemetry", json.dumps({"values": {"temperature": 42.5}})
        )
        expect(page.locator("#chart")).to_have_attribute("data-last", "42.5", timeout=10000)
        expect(page.locator(".tile[data-metric=temperature] .v")).to_have_text("42.5")
        # A SenML reading keeps its unit: the tile shows it, the chart offers it as a series.
        device.publish(
            f"devices/{device_id}/telemetry/senml", json.dumps([{"n": "rh", "u": "%RH", "v": 20}])
        )
        expect(page.locator('.tile[data-metric=rh][data-unit="%RH"] .v')).to_have_text(
            "20 %RH", timeout=10000
        )
        expect(page.locator('#metric option[value="rh|%RH"]')).to_have_text("rh (%RH)")

        # A command sent from the page reaches the device; its ack shows up live.
        page.fill("#command-form input[name=name]", "open_vent")
        page.fill("#command-form input[name=params]", '{"percent": 30}')
        page.click("#command-form button[type=submit]")
        row = page.locator("#command-list tr[data-command]").first
        expect(row).to_contain_text("open_vent")

        def received() -> str | None:
            for message in device.received:
                if "/commands/" in message.topic and message.payload:
                    return str(message.topic.rsplit("/", 1)[1])
            return None

        command_id = wait_for(received, timeout=15, what="the command at the device")
        assert row.get_attribute("data-command") == command_id
        device.publish(
            f"devices/{device_id}/commands/{command_id}/ack",
            json.dumps({"status": "succeeded", "result": {"percent": 30}}),
        )
        expect(row.locator(".status")).to_have_text("succeeded", timeout=10000)
        shot(page, "device")

        # Long ranges come from rollups, custom ranges from the two time fields (in the
        # browser's zone, which is this process's: tests/web/test_browser_view.py sets others).
        page.click("button.range[data-range='30d']")
        expect(page.locator("#chart-source")).to_contain_text("Rollups (rollup_1h)")
        page.click("button.range[data-range='custom']")
        start = (datetime.now().astimezone() - timedelta(minutes=90)).strftime("%Y-%m-%dT%H:%M")
        page.fill("#custom-start", start)
        page.click("#custom-range button[type=submit]")
        expect(page.locator("#chart-source")).to_have_text("Raw readings")
        assert "range=custom" in (page.get_attribute("#export", "href") or "")

        page.goto(server.url + "/admin/devices")
        expect(page.locator("h2", has_text="New device")).to_be_visible()
        shot(page, "admin-devices")
        page.fill("input[name=device_id]", "greenhouse-9")
        page.fill("input[name=display_name]", "Greenhouse 9")
        page.click("form:has(input[name=device_id]) button[type=submit]")
        expect(page.locator("pre.secret")).to_be_visible()
        shot(page, "admin-credentials")
        page.goto(server.url + "/devices/no-such-device")
        shot(page, "not-found")
        assert csp_violations == []
        page.close()
    device.close()


def test_the_device_page_is_told_when_its_session_ends(stack: TestStack, browser: Browser) -> None:
    device_id = unique_id("leaving")
    stack.create_devices([device_id])
    email = "leaver@test.example"
    user = users.create_user(stack.conn, email, org=stack.org, role="viewer", password=PASSWORD)
    with WebServer(stack.database_url) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        log_in(page, server.url, email)
        # The account page makes a token (shown once) and lists it.
        page.click("a:has-text('Account')")
        page.fill("input[name=name]", "grafana")
        page.select_option("select[name=expires_in]", "30d")
        page.click("form:has(input[name=name]) button[type=submit]")
        expect(page.locator("pre.secret")).to_contain_text("fh_")
        page.click("a:has-text('Back to your account')")
        expect(page.locator("table.tokens tbody tr")).to_contain_text("grafana")
        shot(page, "account")
        page.goto(f"{server.url}/devices/{device_id}")
        expect(page.locator("body[data-live=connected]")).to_have_count(1, timeout=10000)
        wait_for(
            lambda: stack.query(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'fieldhub-web-live'"
            ),
            what="the live hub to listen",
        )
        # An admin disables the account while the page is open; the next event ends the stream.
        users.set_disabled(stack.conn, user["id"], True)
        # Notifications name devices by key.
        key = registry.get_device(stack.conn, device_id)["device_key"]
        stack.conn.execute("SELECT pg_notify('telemetry', %s)", (str(key),))
        expect(page.locator("body[data-live=ended]")).to_have_count(1, timeout=10000)
        note = page.locator("#live-ended")
        expect(note).to_contain_text("Your session has ended")
        expect(note.locator("a")).to_have_attribute("href", f"/login?next=%2Fdevices%2F{device_id}")
        expect(page.locator("#live-state")).not_to_have_class("live-dot on")
        shot(page, "live-ended")
        page.close()


def test_api_docs_page_renders_locally_under_the_csp(world: World, browser: Browser) -> None:
    """/api/v1/docs: Swagger UI from our static folder renders every operation, with nothing in
    the console (no CSP violation, no error), no request to another host, and its "Try it
    out" answers with the caller's token."""
    token = api_token(world.database_url, world.emails["a_admin"])
    with WebServer(world.database_url) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        console: list[str] = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
        elsewhere: list[str] = []
        page.on(
            "request",
            lambda request: (
                None
                if request.url.startswith((server.url, "data:"))
                else elsewhere.append(request.url)
            ),
        )
        page.goto(server.url + "/api/v1/docs")
        operations = page.locator(".opblock")
        expect(operations.first).to_be_visible(timeout=30_000)
        documented = server_document(server.url)
        expect(operations).to_have_count(sum(len(item) for item in documented["paths"].values()))
        page.click(".btn.authorize")
        page.fill(".auth-container input", token)
        page.click(".auth-btn-wrapper .authorize")
        page.click(".btn-done")
        page.click("#operations-devices-listDevices .opblock-summary")
        page.click("#operations-devices-listDevices .try-out__btn")
        page.click("#operations-devices-listDevices .execute")
        live = page.locator(
            "#operations-devices-listDevices .live-responses-table tbody .response-col_status"
        )
        expect(live.first).to_have_text("200", timeout=30_000)
        expect(
            page.locator("#operations-devices-listDevices .live-responses-table")
        ).to_contain_text(world.devices["a"])
        shot(page, "api-docs")
        assert console == []
        assert elsewhere == []


def server_document(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/api/v1/openapi.json", timeout=10) as response:  # noqa: S310
        document: dict[str, Any] = json.load(response)
    return document
