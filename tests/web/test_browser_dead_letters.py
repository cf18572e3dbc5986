"""The device page's panel of refused messages, in Debian's headless Chromium against a real
gunicorn: a payload is shown as text and never runs, binary as hex."""

from __future__ import annotations

import psycopg
import pytest
from playwright.sync_api import Browser, expect

from tests.web.helpers import WebServer, World, log_in, shot
from tests.web.test_browser_view import phone, sideways_overflow

pytestmark = [pytest.mark.integration, pytest.mark.browser]

SCRIPT = b'{"v": "<script>window.pwned = 1</script>"}'
IMAGE = b'<img src=x onerror="window.pwned = 2">' + b"x" * 120
BINARY = b"\x00\x01\x1b[2J\xff"


def test_refused_payloads_are_text_and_never_run(world: World, browser: Browser) -> None:
    device = world.devices["a"]
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        for minutes, (reason, payload) in enumerate(
            [("invalid_json", IMAGE), ("ts_in_future", SCRIPT), ("invalid_utf8", BINARY)]
        ):
            conn.execute(
                "INSERT INTO dead_letters (received_at, device_id, device_key, topic, reason,"
                " detail, payload) SELECT now() - make_interval(mins => %s), device_id,"
                " device_key, 'devices/' || device_id || '/telemetry', %s, 'reading 0', %s"
                " FROM devices WHERE device_id = %s",
                (minutes, reason, payload, device),
            )
    with WebServer(world.database_url) as server:
        context = browser.new_context()
        page = context.new_page()
        log_in(page, server.url, world.emails["a_admin"])
        page.goto(f"{server.url}/devices/{device}#dead-letters")
        panel = page.locator("#dead-letters")
        expect(panel).to_contain_text("Refused messages")
        expect(panel).to_contain_text("Kept 14 days")
        expect(panel).to_contain_text("more than an hour ahead of the server's clock")
        payloads = page.locator("#dead-letters pre.payload")
        expect(payloads).to_have_count(3)
        assert payloads.nth(0).inner_text() == IMAGE.decode()
        assert payloads.nth(1).inner_text() == SCRIPT.decode()
        assert payloads.nth(2).inner_text() == BINARY.hex(" ")
        assert page.locator("#dead-letters img, #dead-letters script").count() == 0
        assert page.evaluate("window.pwned") is None
        shot(page, "device-dead-letters")
        context.close()

        # A long topic or payload wraps in its box on a phone.
        small = phone(browser)
        page = small.new_page()
        log_in(page, server.url, world.emails["a_admin"])
        page.goto(f"{server.url}/devices/{device}#dead-letters")
        expect(page.locator("#dead-letters pre.payload")).to_have_count(3)
        assert sideways_overflow(page) == 0
        shot(page, "phone-device-dead-letters")
        small.close()

        viewer = browser.new_context()
        page = viewer.new_page()
        log_in(page, server.url, world.emails["a_viewer"])
        page.goto(f"{server.url}/devices/{device}")
        expect(page.locator("h1")).to_be_visible()
        assert page.locator("#dead-letters").count() == 0
        viewer.close()
