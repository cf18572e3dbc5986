"""What a person sees, in Debian's headless Chromium against a real gunicorn: one time zone for
tables, chart and range inputs; booleans as true/false everywhere (over the real bridge and
broker); a navigation menu and no sideways scrolling on a phone; a dark palette with readable
text. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from fieldhub.core import users
from tests.support import BridgeProcess, DeviceClient, TestStack, wait_for
from tests.web.helpers import PASSWORD, WebServer, World, log_in, shot

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CASES: dict[str, Any] = json.loads(
    (Path(__file__).with_name("display_cases.json")).read_text(encoding="utf-8")
)
# Three zones that differ all year, two of them half an hour off whole-hour zones, so a time
# shifted by a zone mix-up cannot pass by accident: the browser's, the account's, and the web
# server process's own (which must never matter).
BROWSER_ZONE = "Australia/Adelaide"
ACCOUNT_ZONE = "America/St_Johns"
SERVER_ENV = {"TZ": "Asia/Tokyo"}


def csp_guard(page: Page, violations: list[str]) -> None:
    page.on(
        "console",
        lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )


def local(instant: datetime, zone: str) -> str:
    return instant.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


def field(instant: datetime, zone: str) -> str:
    """What a datetime-local field holds for that instant in that zone."""
    return instant.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%dT%H:%M")


def test_the_browser_formats_like_the_server(world: World, browser: Browser) -> None:
    """static/format.js against the cases tests/web/test_display.py runs through display.py."""
    with WebServer(world.database_url) as server:
        zones = sorted({zone for _, zone, _ in CASES["times"] + CASES["inputs"]})
        for zone in zones:
            context = browser.new_context(timezone_id=zone)
            page = context.new_page()
            page.goto(server.url + "/login")
            values = page.evaluate(
                "cases => cases.map(([v]) => window.fieldhub.format.value(v))", CASES["values"]
            )
            assert values == [expected for _, expected in CASES["values"]]
            times = [(i, e) for i, z, e in CASES["times"] if z == zone]
            shown = page.evaluate(
                "cases => cases.map(([i]) => window.fieldhub.format.time(Date.parse(i)))", times
            )
            assert shown == [e for _, e in times], zone
            inputs = [(i, e) for i, z, e in CASES["inputs"] if z == zone]
            meant = page.evaluate(
                "cases => cases.map(([i]) =>"
                " new Date(window.fieldhub.format.fromInput(i)).toISOString())",
                inputs,
            )
            assert meant == [e for _, e in inputs], zone
            context.close()


def test_one_reading_shows_one_local_time_in_table_tooltip_and_range(
    world: World, browser: Browser
) -> None:
    device = world.devices["a"]
    email = world.emails["a_member"]
    marked = (datetime.now(UTC) - timedelta(minutes=10)).replace(second=0, microsecond=0)
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO readings (time, device_key, metric, value)"
            " SELECT %s, device_key, 'temperature', 77.25 FROM devices WHERE device_id = %s",
            (marked, device),
        )
        seen = conn.execute(
            "SELECT last_seen FROM device_state JOIN devices USING (device_key)"
            " WHERE device_id = %s",
            (device,),
        ).fetchone()
    assert seen is not None
    violations: list[str] = []
    with WebServer(world.database_url, extra_env=SERVER_ENV) as server:
        context = browser.new_context(
            timezone_id=BROWSER_ZONE, viewport={"width": 1280, "height": 900}
        )
        page = context.new_page()
        csp_guard(page, violations)
        log_in(page, server.url, email)
        device_url = f"{server.url}/devices/{device}"

        # The login page told the server the browser's zone: the HTML arrives in it, so the
        # page reads right without JavaScript and nothing is redrawn after it is shown.
        served = context.request.get(device_url).text()
        assert f'data-time-zone="{BROWSER_ZONE}"' in served
        assert f'title="{local(seen[0], BROWSER_ZONE)}"' in served

        page.goto(device_url)
        expect(page.locator("#chart canvas")).to_have_count(1)
        expect(page.locator("#zone-name")).to_have_text(BROWSER_ZONE)
        check_one_time(page, marked, BROWSER_ZONE)

        # An alert that changes while the page is open arrives as ISO 8601 over the live
        # stream and is drawn by format.js in the same zone.
        expect(page.locator("body[data-live=connected]")).to_have_count(1, timeout=10000)
        with psycopg.connect(world.database_url, autocommit=True) as conn:
            moved = conn.execute(
                "UPDATE alerts SET started_at = %s WHERE id = %s RETURNING org_id",
                (marked, world.alerts["a"]),
            ).fetchone()
            assert moved is not None
            conn.execute(
                "SELECT pg_notify('alerts', %s)", (f"{moved[0]} {world.alerts['a']} active",)
            )
        started = page.locator(f'#alert-list li[data-alert="{world.alerts["a"]}"] time')
        expect(started).to_have_attribute("title", local(marked, BROWSER_ZONE))

        # The custom range's fields start from what the chart shows, in the same zone...
        chart = page.locator("#chart")
        shown_from = datetime.fromtimestamp(float(chart.get_attribute("data-xmin") or 0), UTC)
        page.click("button.range[data-range='custom']")
        expect(page.locator("#custom-start")).to_have_value(field(shown_from, BROWSER_ZONE))
        # ... and mean that zone: the minute of the reading, as the table shows it, finds it.
        page.fill("#custom-start", field(marked, BROWSER_ZONE))
        page.fill("#custom-end", field(marked + timedelta(minutes=1), BROWSER_ZONE))
        with page.expect_request(lambda r: "history.json" in r.url) as request:
            page.click("#custom-range button[type=submit]")
        sent = parse_qs(urlsplit(request.value.url).query)
        assert sent["start"] == [marked.isoformat(timespec="milliseconds").replace("+00:00", "Z")]
        expect(page.locator("#chart-source")).to_have_text("Raw readings")
        times = page.locator("#history-table tbody tr time").all_inner_texts()
        # The seeded readings are a minute apart: the marked one and at most one other.
        assert local(marked, BROWSER_ZONE) in times
        assert {t[:16] for t in times} == {local(marked, BROWSER_ZONE)[:16]}
        export = parse_qs(urlsplit(page.get_attribute("#export", "href") or "").query)
        assert export["start"] == sent["start"]
        shot(page, "device-time-zone")

        # A zone chosen on the account page wins over the browser's, on the server and here.
        page.goto(server.url + "/account")
        expect(page.locator("#browser-zone")).to_have_text(BROWSER_ZONE)
        page.select_option("#time-zone-choice", ACCOUNT_ZONE)
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".flash-info")).to_have_text(f"Times are now shown in {ACCOUNT_ZONE}.")
        served = context.request.get(device_url).text()
        assert 'data-time-zone-source="account"' in served
        assert f'title="{local(seen[0], ACCOUNT_ZONE)}"' in served
        page.goto(device_url)
        expect(page.locator("#zone-name")).to_have_text(ACCOUNT_ZONE)
        check_one_time(page, marked, ACCOUNT_ZONE)
        context.close()
    assert violations == []


def check_one_time(page: Page, marked: datetime, zone: str) -> None:
    """The marked reading's row in the history table and the chart's tooltip over it."""
    row = page.locator("#history-table tbody tr", has_text="77.25")
    expect(row.locator("time")).to_have_text(local(marked, zone))
    chart = page.locator("#chart")
    xmin = float(chart.get_attribute("data-xmin") or 0)
    xmax = float(chart.get_attribute("data-xmax") or 0)
    box = page.locator("#chart .u-over").bounding_box()
    assert box is not None
    x = box["x"] + (marked.timestamp() - xmin) / (xmax - xmin) * box["width"]
    page.mouse.move(x, box["y"] + box["height"] / 2)
    expect(page.locator("#chart-tip .tip-time")).to_have_text(local(marked, zone))
    expect(page.locator("#chart-tip .tip-value")).to_have_text("77.25")
    page.mouse.move(0, 0)
    expect(page.locator("#chart-tip")).to_be_hidden()


def test_booleans_read_true_and_false_everywhere(stack: TestStack, browser: Browser) -> None:
    device_id = "valve-3"
    secret = stack.create_devices([device_id])[device_id]
    email = "fitter@test.example"
    users.create_user(stack.conn, email, org=stack.org, role="member", password=PASSWORD)
    device = DeviceClient(stack.broker.mqtt_devices, device_id, secret)
    violations: list[str] = []
    with BridgeProcess(stack) as bridge, WebServer(stack.database_url) as server:
        bridge.start().wait_ready()
        device.connect()
        topic = f"devices/{device_id}/telemetry"
        device.publish(topic, json.dumps({"values": {"door_open": True, "flow": 2.5}}))
        wait_for(
            lambda: stack.query(
                "SELECT 1 FROM latest_values JOIN devices USING (device_key)"
                " WHERE device_id = %s AND metric = 'door_open'",
                (device_id,),
            ),
            what="the first reading stored",
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        csp_guard(page, violations)
        log_in(page, server.url, email)
        values = page.locator(f'tr[data-device="{device_id}"] .values')
        expect(values).to_contain_text("door_open true")

        page.goto(f"{server.url}/devices/{device_id}")
        expect(page.locator("body[data-live=connected]")).to_have_count(1, timeout=10000)
        tile = page.locator(".tile[data-metric=door_open] .v")
        expect(tile).to_have_text("true")
        page.select_option("#metric", "door_open|")  # metric|unit; plain telemetry has none
        newest = page.locator("#history-table tbody tr").first
        expect(newest.locator("td.num")).to_have_text("true")

        # Live: the reading arrives over MQTT, the bridge and the event stream.
        device.publish(topic, json.dumps({"values": {"door_open": False}}))
        expect(tile).to_have_text("false", timeout=10000)
        expect(page.locator("#chart")).to_have_attribute("data-last", "false")
        expect(newest.locator("td.num")).to_have_text("false")
        expect(page.locator("#history-table tbody tr").nth(1).locator("td.num")).to_have_text(
            "true"
        )
        shot(page, "device-boolean")

        # The device list's own refresh (every 10 s while visible; a visibility change now).
        page.goto(server.url + "/devices")
        expect(values).to_contain_text("door_open false")
        device.publish(topic, json.dumps({"values": {"door_open": True}}))
        wait_for(
            lambda: stack.query(
                "SELECT 1 FROM latest_values JOIN devices USING (device_key)"
                " WHERE device_id = %s AND metric = 'door_open' AND value = 'true'::jsonb",
                (device_id,),
            ),
            what="the third reading stored",
        )
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
        expect(values).to_contain_text("door_open true")
        page.close()
    device.close()
    assert violations == []


@contextmanager
def flow_device_page(
    stack: TestStack, browser: Browser, device_id: str, email: str
) -> Iterator[tuple[Page, DeviceClient]]:
    """A device that published flow 1.5 through the bridge, and its page open for a member,
    showing it, with the live stream connected."""
    secret = stack.create_devices([device_id])[device_id]
    users.create_user(stack.conn, email, org=stack.org, role="member", password=PASSWORD)
    device = DeviceClient(stack.broker.mqtt_devices, device_id, secret)
    with BridgeProcess(stack) as bridge, WebServer(stack.database_url) as server:
        bridge.start().wait_ready()
        device.connect()
        device.publish(f"devices/{device_id}/telemetry", json.dumps({"values": {"flow": 1.5}}))
        wait_for(
            lambda: stack.query(
                "SELECT 1 FROM latest_values JOIN devices USING (device_key)"
                " WHERE device_id = %s AND metric = 'flow'",
                (device_id,),
            ),
            what="the first reading stored",
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        log_in(page, server.url, email)
        page.goto(f"{server.url}/devices/{device_id}")
        expect(page.locator("body[data-live=connected]")).to_have_count(1, timeout=10000)
        try:
            yield page, device
        finally:
            page.close()
    device.close()


def test_a_reading_that_arrives_while_the_history_loads_stays_in_the_table(
    stack: TestStack, browser: Browser
) -> None:
    """The history answer was read before the live reading was stored, and the stream sends
    each reading once: the page must add what arrived meanwhile to the answer, not lose it."""
    device_id = "flow-4"
    topic = f"devices/{device_id}/telemetry"
    with flow_device_page(stack, browser, device_id, "reader@test.example") as (page, device):
        newest = page.locator("#history-table tbody tr").first
        expect(newest.locator("td.num")).to_have_text("1.5")

        # The next history answer is read now, before the live reading is stored, and handed to
        # the page only after the live reading has been shown: the race of a slow answer.
        held: list[Route] = []

        def hold(route: Route) -> None:
            held.append(route)

        page.route("**/history.json*", hold)
        with page.expect_request("**/history.json*") as request:
            page.click("button.range[data-range='1h']")
        early = page.request.get(request.value.url, headers={"Accept": "application/json"})
        assert early.json()["value"] == [1.5]
        device.publish(topic, json.dumps({"values": {"flow": 2.75}}))
        expect(page.locator(".tile[data-metric=flow] .v")).to_have_text("2.75", timeout=10000)
        assert len(held) == 1  # the page's own request is still waiting
        held[0].fulfill(response=early)
        page.unroute("**/history.json*", hold)
        expect(newest.locator("td.num")).to_have_text("2.75")
        expect(page.locator("#history-table tbody tr").nth(1).locator("td.num")).to_have_text("1.5")


def test_a_reading_the_history_already_holds_is_not_added_again_by_its_live_event(
    stack: TestStack, browser: Browser
) -> None:
    """A history answer can be read after a reading was stored and reach the page before the
    stream's event for it: the event must not add the reading a second time. The middle
    reading is stored without a notification, so the stream sends it only with the next one."""
    device_id = "flow-5"
    topic = f"devices/{device_id}/telemetry"
    with flow_device_page(stack, browser, device_id, "watcher@test.example") as (page, device):
        rows = page.locator("#history-table tbody tr td.num")
        expect(rows).to_have_text(["1.5"])

        stack.conn.execute(
            "INSERT INTO readings (time, device_key, metric, value)"
            " SELECT now(), device_key, 'flow', 2.25 FROM devices WHERE device_id = %s",
            (device_id,),
        )
        page.click("button.range[data-range='1h']")
        expect(rows).to_have_text(["2.25", "1.5"])
        device.publish(topic, json.dumps({"values": {"flow": 3.0}}))
        expect(page.locator(".tile[data-metric=flow] .v")).to_have_text("3", timeout=10000)
        expect(rows).to_have_text(["3", "2.25", "1.5"])
        expect(page.locator("#chart")).to_have_attribute("data-points", "3")


PHONE_PAGES = [
    "/devices",
    "/devices/{device}",
    "/alerts",
    "/imports",
    "/imports/{import_id}",
    "/account",
    "/account/password",
    "/admin/devices",
    "/admin/users",
    "/admin/rules",
    "/admin/webhook",
]


def phone(browser: Browser, **options: Any) -> BrowserContext:
    return browser.new_context(
        viewport={"width": 375, "height": 740},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        **options,
    )


def sideways_overflow(page: Page) -> int:
    """How many pixels the page is wider than the screen (0: no horizontal scrolling)."""
    return int(
        page.evaluate(
            "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
            " - document.documentElement.clientWidth"
        )
    )


def test_a_phone_gets_a_menu_and_no_sideways_scrolling(world: World, browser: Browser) -> None:
    device = world.devices["a"]
    violations: list[str] = []
    with WebServer(world.database_url) as server:
        context = phone(browser)
        page = context.new_page()
        csp_guard(page, violations)
        log_in(page, server.url, world.emails["a_admin"])
        menu = page.locator("details.menu")
        bar_links = page.locator(".topbar > nav")
        expect(bar_links).to_be_hidden()
        expect(menu.locator("summary")).to_be_visible()
        alerts_link = menu.get_by_role("link", name="Alerts")
        expect(alerts_link).to_be_hidden()
        menu.locator("summary").tap()
        expect(alerts_link).to_be_visible()
        shot(page, "phone-menu")
        alerts_link.tap()
        expect(page.locator("h1")).to_contain_text("Alerts")
        expect(menu).not_to_have_attribute("open", "")
        menu.locator("summary").tap()
        menu.get_by_role("link", name="Devices").tap()
        expect(page.locator("h1")).to_contain_text("Devices")
        # The device list is one card per device, each value labelled.
        assert sideways_overflow(page) == 0
        card = page.locator(f'#device-list tr[data-device="{device}"]')
        expect(card.locator("td.values")).to_be_visible()
        expect(page.locator("#device-list thead")).to_be_hidden()
        shot(page, "phone-devices")
        for path in PHONE_PAGES:
            response = page.goto(
                server.url + path.format(device=device, import_id=world.imports["a"])
            )
            assert response is not None
            assert response.ok, path
            expect(page.locator("main")).to_be_visible()
            assert sideways_overflow(page) == 0, path
        page.goto(f"{server.url}/devices/{device}")
        expect(page.locator("#chart canvas")).to_have_count(1)
        page.locator("button.range[data-range='custom']").tap()
        expect(page.locator("#custom-start")).to_be_visible()
        assert sideways_overflow(page) == 0
        canvas = page.locator("#chart canvas").bounding_box()
        assert canvas is not None
        assert canvas["x"] >= 0
        assert canvas["x"] + canvas["width"] <= 375
        shot(page, "phone-device")
        menu.locator("summary").tap()
        menu.get_by_role("button", name="Log out").tap()
        expect(page.locator("h1")).to_contain_text("Log in")
        context.close()
    assert violations == []


# WCAG 2.x contrast of every piece of text a page renders, against the backgrounds it sits on
# (semi-transparent layers composited). Large text (24 px, or 18.66 px bold) needs 3:1.
CONTRAST = """() => {
  const parse = (c) => {
    const m = /rgba?\\(([^)]+)\\)/.exec(c);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const over = (top, under) => ({
    r: top.r * top.a + under.r * (1 - top.a),
    g: top.g * top.a + under.g * (1 - top.a),
    b: top.b * top.a + under.b * (1 - top.a),
    a: 1,
  });
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    let bg = { r: 255, g: 255, b: 255, a: 1 };
    for (let i = layers.length - 1; i >= 0; i -= 1) bg = over(layers[i], bg);
    return bg;
  };
  const found = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    const text = walk.currentNode.textContent.trim();
    const el = walk.currentNode.parentElement;
    if (!text || el.closest("script, style, option") || !el.getClientRects().length) continue;
    const cs = getComputedStyle(el);
    if (cs.visibility !== "visible") continue;
    const bg = background(el);
    const fg = over(parse(cs.color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const size = parseFloat(cs.fontSize);
    const large = size >= 24 || (Number(cs.fontWeight) >= 700 && size >= 18.66);
    found.push({ text: text.slice(0, 40), tag: el.tagName + "." + el.className,
                 ratio: (hi + 0.05) / (lo + 0.05), need: large ? 3 : 4.5 });
  }
  return found;
}"""

# The chart draws on a canvas: its colours are checked as the stylesheet's custom properties.
# Axis labels are text (4.5:1); the line is a graphic (3:1, WCAG 1.4.11).
CHART_PAIRS = [("--chart-axis", "--card", 4.5), ("--chart-line", "--card", 3.0)]
VAR_RGB = """(name) => {
  const probe = document.createElement("div");
  probe.style.color = `var(${name})`;
  document.body.append(probe);
  const rgb = getComputedStyle(probe).color.match(/\\d+/g).slice(0, 3).map(Number);
  probe.remove();
  return rgb;
}"""
# How many canvas pixels have (nearly) a colour.
PIXELS_OF = """([r, g, b]) => {
  const canvas = document.querySelector("#chart canvas");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 12
        && data[i + 3] > 200) n += 1;
  }
  return n;
}"""


def contrast(first: list[int], second: list[int]) -> float:
    """WCAG 2.x contrast ratio of two sRGB colours."""

    def luminance(rgb: list[int]) -> float:
        linear = [
            v / 255 / 12.92 if v / 255 <= 0.04045 else ((v / 255 + 0.055) / 1.055) ** 2.4
            for v in rgb
        ]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def line_pixels(page: Page) -> int:
    return int(page.evaluate(PIXELS_OF, page.evaluate(VAR_RGB, "--chart-line")))


CONTRAST_PAGES = ["/devices", "/devices/{device}", "/alerts", "/imports", "/account"]


def test_dark_mode_follows_the_system_with_readable_text(world: World, browser: Browser) -> None:
    device = world.devices["a"]
    worst: dict[str, float] = {}
    measured = 0
    failures: list[str] = []
    with WebServer(world.database_url) as server:
        for scheme in ("light", "dark"):
            context = browser.new_context(
                color_scheme=scheme, viewport={"width": 1280, "height": 900}
            )
            page = context.new_page()
            page.goto(server.url + "/login")
            texts = page.evaluate(CONTRAST)
            log_in(page, server.url, world.emails["a_admin"])
            for path in CONTRAST_PAGES:
                page.goto(server.url + path.format(device=device))
                if "{device}" in path:
                    expect(page.locator("#chart canvas")).to_have_count(1)
                    # The tooltip is text too.
                    box = page.locator("#chart .u-over").bounding_box()
                    assert box is not None
                    page.mouse.move(box["x"] + box["width"] - 5, box["y"] + 50)
                    expect(page.locator("#chart-tip")).to_be_visible()
                texts += page.evaluate(CONTRAST)
            for fg, bg, need in CHART_PAIRS:
                ratio = contrast(page.evaluate(VAR_RGB, fg), page.evaluate(VAR_RGB, bg))
                texts.append(
                    {"text": f"{fg} on {bg}", "tag": "chart", "need": need, "ratio": ratio}
                )
            worst[scheme] = min(t["ratio"] for t in texts)
            measured += len(texts)
            failures += [
                f"{scheme}: {t['ratio']:.2f} < {t['need']} for {t['tag']} {t['text']!r}"
                for t in texts
                if t["ratio"] < t["need"]
            ]
            if scheme == "dark":
                background = page.evaluate("getComputedStyle(document.body).backgroundColor")
                assert background == "rgb(15, 20, 27)"
                # The chart takes its colours from the stylesheet, and follows a switch.
                page.goto(f"{server.url}/devices/{device}")
                expect(page.locator("#chart canvas")).to_have_count(1)
                shot(page, "device-dark")
                assert line_pixels(page) > 50
                page.emulate_media(color_scheme="light")

                def light_chart(p: Page = page) -> bool:
                    return bool(
                        line_pixels(p) > 50
                        and p.evaluate("getComputedStyle(document.body).backgroundColor")
                        == "rgb(246, 247, 249)"
                    )

                wait_for(
                    light_chart,
                    what="the chart redrawn in the light palette",
                )
            context.close()
    print(
        f"{measured} texts measured; lowest contrast: light {worst['light']:.2f},"
        f" dark {worst['dark']:.2f}"
    )
    assert failures == []
