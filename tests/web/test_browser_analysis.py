"""Browser test of the analysis surfaces (headless Chromium, real gunicorn): a new alert
appears on the open alerts page without reloading and is acknowledged from it; an uploaded
file's page follows the worker's import to its result. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import time
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, expect
from psycopg.rows import dict_row

from fieldhub.analysis.jobs import job_named
from fieldhub.analysis.worker import run_if_due
from fieldhub.core.config import Settings
from tests.web.helpers import PASSWORD, WebServer, World, shot

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_live_alert_ack_and_import_progress(world: World, browser: Browser, tmp_path: Path) -> None:
    device = world.devices["a"]
    with (
        WebServer(world.database_url) as server,
        psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn,
    ):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        csp_violations: list[str] = []
        page.on(
            "console",
            lambda msg: (
                csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
            ),
        )
        page.goto(server.url + "/login")
        page.fill("input[name=email]", world.emails["a_member"])
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_contain_text("Devices")

        page.goto(server.url + "/alerts")
        expect(page.locator("body")).to_have_attribute("data-live", "connected")
        # What the worker does when a rule fires: the alert row, then NOTIFY alerts.
        org = conn.execute("SELECT org_id FROM devices WHERE device_id = %s", (device,)).fetchone()
        assert org is not None
        with conn.transaction():
            rule = conn.execute(
                "INSERT INTO alert_rules (org_id, name, metric, device_id, condition,"
                " threshold_low, severity, enabled) VALUES (%s, 'Frost', 'temperature', %s,"
                " 'below', 0, 'critical', true) RETURNING id",
                (org["org_id"], device),
            ).fetchone()
            assert rule is not None
            alert = conn.execute(
                "INSERT INTO alerts (rule_id, org_id, device_id, state, value, started_at,"
                " message) VALUES (%s, %s, %s, 'active', -3, now(), 'temperature below 0')"
                " RETURNING id",
                (rule["id"], org["org_id"], device),
            ).fetchone()
            assert alert is not None
            conn.execute(
                "SELECT pg_notify('alerts', %s)", (f"{org['org_id']} {alert['id']} active",)
            )
        row = page.locator(f'tr[data-alert="{alert["id"]}"]')
        expect(row).to_contain_text("Frost", timeout=5000)
        expect(row.locator(".alert-state")).to_have_text("active")
        shot(page, "alerts-live")
        row.get_by_role("button", name="Acknowledge").click()
        expect(page.locator(".flash-info")).to_contain_text(f"Alert {alert['id']} acknowledged")
        expect(page.locator(f'tr[data-alert="{alert["id"]}"] .alert-state')).to_have_text(
            "acknowledged"
        )

        upload = tmp_path / "backlog.csv"
        base = int(time.time()) - 3 * 86400
        lines = ["time,metric,value"] + [f"{base + i * 10},humidity,{40 + i}" for i in range(50)]
        lines[7] = "yesterday,humidity,1"
        upload.write_text("\n".join(lines) + "\n")
        page.goto(server.url + "/imports")
        page.set_input_files("input[type=file]", str(upload))
        page.fill("input[name=device_id]", device)
        page.get_by_role("button", name="Upload and import").click()
        expect(page.locator("#import-status")).to_have_text("queued")
        shot(page, "import-queued")
        result = run_if_due(
            conn, job_named("imports"), Settings.from_env({}), worker="browser", force=True
        )
        assert result is not None
        assert result.outcome == "ok", result.error
        # The page polls every second and shows the result without the user reloading.
        expect(page.locator("#import-status")).to_have_text("done", timeout=10000)
        expect(page.locator("#import-imported")).to_have_text("49")
        expect(page.locator("#bad-lines")).to_contain_text(re.compile(r"8\s*\S"))
        shot(page, "import-done")

        admin = browser.new_page(viewport={"width": 1280, "height": 900})
        admin.on(
            "console",
            lambda msg: (
                csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
            ),
        )
        admin.goto(server.url + "/login")
        admin.fill("input[name=email]", world.emails["a_admin"])
        admin.fill("input[name=password]", PASSWORD)
        admin.click("button[type=submit]")
        admin.goto(server.url + "/admin/rules")
        admin.fill("input[name=name]", "Dry air")
        admin.fill("input[name=metric]", "humidity")
        admin.select_option("select[name=target]", "label")
        admin.fill("input[name=label_key]", "site")
        admin.fill("input[name=label_value]", "a")
        admin.select_option("select[name=condition]", "below")
        admin.fill("input[name=threshold_low]", "30")
        admin.get_by_role("button", name="Create rule").click()
        expect(admin.locator(".flash-info")).to_contain_text("Rule Dry air created")
        expect(admin.locator("#rule-list")).to_contain_text("site=a")
        shot(admin, "alert-rules")
        admin.goto(server.url + "/admin/webhook")
        admin.fill("input[name=url]", "http://127.0.0.1:8765/in")
        admin.get_by_role("button", name="Save and generate a new signing secret").click()
        expect(admin.locator("#webhook-secret")).not_to_be_empty()
        admin.goto(server.url + "/admin/webhook")
        expect(admin.locator("#webhook-url")).to_have_text("http://127.0.0.1:8765/in")
        shot(admin, "webhook")
        assert csp_violations == []
