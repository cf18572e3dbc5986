"""Live updates through a real gunicorn (gevent workers): a committed reading reaches an open
event stream within 2 s, open streams do not block other requests, and a stream ends (telling
the browser) when the session that opened it does."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest
import requests
from psycopg.rows import dict_row

from fieldhub.core import registry, users
from fieldhub.web.live import Subscription, route, stream_start
from tests.support import wait_for
from tests.web.helpers import PASSWORD, WebServer, World, csrf_from

pytestmark = pytest.mark.integration


def test_route_gives_each_stream_only_its_own_devices() -> None:
    # Telemetry and presence name device keys; commands name device ids.
    mine = Subscription(frozenset({"dev-a1"}), org_id=1, device_keys=frozenset({12}))
    assert route("telemetry", "7 12 120", mine) == "12"
    assert route("telemetry", "7 120", mine) is None
    assert route("commands", "dev-b1 6f1c... succeeded", mine) is None
    assert route("commands", "dev-a1 6f1c succeeded", mine) == "dev-a1 6f1c succeeded"
    assert route("presence", "120 online", mine) is None
    assert route("presence", "12 offline", mine) == "12 offline"
    # A device id in a telemetry notification is not a key (nothing sends that any more).
    assert route("telemetry", "dev-a1", mine) is None
    assert route("alerts", "2 17 active", mine) is None
    assert route("alerts", "1 17 active", mine) == "1 17 active"
    assert route("device_deleted", "12", mine) == "12"
    assert route("device_deleted", "120", mine) is None


def session_for(server: WebServer, email: str) -> requests.Session:
    session = requests.Session()
    page = session.get(server.url + "/login", timeout=10)
    response = session.post(
        server.url + "/login",
        data={"email": email, "password": PASSWORD, "csrf_token": csrf_from(page.text)},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, response.text[:300]
    return session


def read_events(
    response: requests.Response,
    events: queue.Queue[tuple[str, object, float]],
    ids: list[str] | None = None,
) -> None:
    """Each event as (name, data, when); ("closed", None, when) once the server ends it. Event
    ids, in order, go to `ids`."""
    event = None
    try:
        for line in response.iter_lines(decode_unicode=True):
            assert isinstance(line, str)
            if line.startswith("id: ") and ids is not None:
                ids.append(line[4:])
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                events.put((event, json.loads(line[6:]), time.monotonic()))
    except (requests.RequestException, AttributeError, ValueError):
        return
    events.put(("closed", None, time.monotonic()))


def test_reading_reaches_the_stream_within_two_seconds(world: World) -> None:
    device = world.devices["a"]
    with WebServer(world.database_url, workers=2) as server:
        session = session_for(server, world.emails["a_viewer"])
        # Other organisations' streams do not exist, live or not.
        other = session.get(f"{server.url}/devices/{world.devices['b']}/live", timeout=10)
        assert other.status_code == 404
        response = session.get(f"{server.url}/devices/{device}/live", stream=True, timeout=30)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events: queue.Queue[tuple[str, object, float]] = queue.Queue()
        threading.Thread(target=read_events, args=(response, events), daemon=True).start()
        assert events.get(timeout=10)[0] == "hello"
        # Wait until this worker's hub listens, then commit a reading the way the bridge does.
        with psycopg.connect(world.database_url, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while not conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'fieldhub-web-live'"
            ).fetchone():
                assert time.monotonic() < deadline, "the live hub never connected"
                time.sleep(0.05)
            with conn.transaction():
                keys = {
                    row[0]: row[1]
                    for row in conn.execute("SELECT device_id, device_key FROM devices")
                }
                conn.execute(
                    "INSERT INTO readings (time, device_key, metric, value)"
                    " VALUES (%s, %s, 'temperature', 77.5)",
                    (datetime.now(UTC), keys[device]),
                )
                conn.execute(
                    "SELECT pg_notify('telemetry', %s)",
                    (f"{keys[world.devices['b']]} {keys[device]}",),
                )
            committed = time.monotonic()
        name, payload, at = events.get(timeout=5)
        while name != "readings":
            name, payload, at = events.get(timeout=5)
        assert isinstance(payload, list)
        assert payload[-1]["value"] == 77.5
        assert at - committed < 2.0
        # The stream stays open; stopping the server ends it (closing it from this side would
        # wait for the reader thread's next keepalive).


def test_a_stream_starts_after_the_last_event_a_reconnecting_browser_saw() -> None:
    now = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    loaded = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
    seen = datetime(2026, 12, 2, 5, 59, 1, 123457, tzinfo=UTC)
    assert stream_start(None, str(loaded.timestamp()), now) == loaded
    assert stream_start(seen.isoformat(), str(loaded.timestamp()), now) == seen
    assert stream_start(None, None, now) == now
    assert stream_start("yesterday", None, now) == now
    assert stream_start(None, "1e300", now) == now


def test_a_reconnecting_browser_gets_only_readings_it_was_not_sent(world: World) -> None:
    """A browser reconnects on its own to the URL it first opened (whose `since` is the page's
    load time) and sends the id of the last event it got: the stream starts after that event,
    instead of sending every reading since the page loaded again."""
    device = world.devices["a"]
    with WebServer(world.database_url, workers=1) as server:
        session = session_for(server, world.emails["a_viewer"])
        url = f"{server.url}/devices/{device}/live?since={time.time()}"
        ids: list[str] = []
        first = session.get(url, stream=True, timeout=60)
        first_events: queue.Queue[tuple[str, object, float]] = queue.Queue()
        threading.Thread(target=read_events, args=(first, first_events, ids), daemon=True).start()
        assert first_events.get(timeout=10)[0] == "hello"
        with psycopg.connect(world.database_url, autocommit=True) as conn:
            wait_for(
                lambda: conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'fieldhub-web-live'"
                ).fetchone(),
                what="the live hub to listen",
            )

            def store(value: float) -> None:
                with conn.transaction():
                    row = conn.execute(
                        "INSERT INTO readings (time, device_key, metric, value)"
                        " SELECT %s, device_key, 'temperature', %s FROM devices"
                        " WHERE device_id = %s RETURNING device_key",
                        (datetime.now(UTC), value, device),
                    ).fetchone()
                    assert row is not None
                    conn.execute("SELECT pg_notify('telemetry', %s)", (str(row[0]),))

            store(31.5)
            name, payload, _ = _next_other_than(first_events, set(), timeout=5)
            assert name == "readings"
            assert isinstance(payload, list)
            assert [r["value"] for r in payload] == [31.5]
            assert len(ids) == 1
            first.close()

            again = session.get(url, headers={"Last-Event-ID": ids[-1]}, stream=True, timeout=60)
            events: queue.Queue[tuple[str, object, float]] = queue.Queue()
            threading.Thread(target=read_events, args=(again, events), daemon=True).start()
            assert events.get(timeout=10)[0] == "hello"
            store(32.5)
            name, payload, _ = _next_other_than(events, set(), timeout=5)
            assert name == "readings"
            assert isinstance(payload, list)
            assert [r["value"] for r in payload] == [32.5]


def test_open_streams_do_not_block_other_requests(world: World) -> None:
    device = world.devices["a"]
    with WebServer(world.database_url, workers=1) as server:
        session = session_for(server, world.emails["a_viewer"])
        streams = []
        for _ in range(60):
            stream = session.get(f"{server.url}/devices/{device}/live", stream=True, timeout=30)
            assert stream.status_code == 200
            streams.append(stream)
        started = time.monotonic()
        page = session.get(f"{server.url}/devices", timeout=10)
        elapsed = time.monotonic() - started
        assert page.status_code == 200
        assert device in page.text
        assert elapsed < 2.0, f"/devices took {elapsed:.2f}s with 60 open streams on one worker"
        for stream in streams:
            stream.close()


def test_psycopg_waits_cooperatively_in_a_gevent_worker() -> None:
    # gunicorn's gevent worker patches before it imports fieldhub.web.wsgi; psycopg picks its wait
    # function at import, and its C wait would block every greenlet of the worker.
    probe = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import psycopg.waiting; print(psycopg.waiting.wait.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() != "wait_c"


def _open_stream(
    session: requests.Session, url: str
) -> tuple[requests.Response, queue.Queue[tuple[str, object, float]]]:
    response = session.get(url, stream=True, timeout=60)
    assert response.status_code == 200
    events: queue.Queue[tuple[str, object, float]] = queue.Queue()
    threading.Thread(target=read_events, args=(response, events), daemon=True).start()
    assert events.get(timeout=10)[0] == "hello"
    return response, events


def _next_other_than(
    events: queue.Queue[tuple[str, object, float]],
    skip: set[str],
    timeout: float,
    skipped: list[object] | None = None,
) -> tuple[str, object, float]:
    """The next event not named in `skip` (what a stream sends when it (re)subscribes); the
    payloads passed over go to `skipped`."""
    deadline = time.monotonic() + timeout
    while True:
        name, payload, at = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if name not in skip:
            return name, payload, at
        if skipped is not None:
            skipped.append(payload)


def test_a_stream_ends_when_its_session_does(world: World) -> None:
    device = world.devices["a"]
    url_path = f"/devices/{device}/live"
    with WebServer(world.database_url, workers=1) as server:
        viewer = session_for(server, world.emails["a_viewer"])
        member = session_for(server, world.emails["a_member"])
        _, viewer_events = _open_stream(viewer, server.url + url_path)
        _, member_events = _open_stream(member, server.url + url_path)
        alerts_response = member.get(f"{server.url}/alerts/live", stream=True, timeout=60)
        alert_events: queue.Queue[tuple[str, object, float]] = queue.Queue()
        threading.Thread(
            target=read_events, args=(alerts_response, alert_events), daemon=True
        ).start()
        assert alert_events.get(timeout=10)[0] == "hello"
        with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
            wait_for(
                lambda: conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'fieldhub-web-live'"
                ).fetchone(),
                what="the live hub to listen",
            )
            # The viewer logs out in another tab: the same session, ended.
            csrf = csrf_from(viewer.get(server.url + "/devices", timeout=10).text)
            viewer.post(server.url + "/logout", data={"csrf_token": csrf}, timeout=10)
            with conn.transaction():
                row = conn.execute(
                    "INSERT INTO readings (time, device_key, metric, value)"
                    " SELECT %s, device_key, 'temperature', 12.5 FROM devices"
                    " WHERE device_id = %s RETURNING device_key",
                    (datetime.now(UTC), device),
                ).fetchone()
                assert row is not None
                conn.execute("SELECT pg_notify('telemetry', %s)", (str(row["device_key"]),))
            # The next event ends the viewer's stream, told why, instead of carrying data.
            passed_over: list[object] = []
            name, payload, _ = _next_other_than(viewer_events, {"readings"}, 5, passed_over)
            assert name == "end"
            assert "12.5" not in json.dumps(passed_over)
            assert isinstance(payload, dict)
            assert "session has ended" in payload["reason"]
            assert viewer_events.get(timeout=5)[0] == "closed"
            # Another user's stream of the same device goes on.
            name, payload, _ = _next_other_than(member_events, set(), timeout=5)
            assert name == "readings"
            assert isinstance(payload, list)
            assert payload[-1]["value"] == 12.5

            # No event at all: disabling the member ends both of its streams within 30 s.
            disabled_at = time.monotonic()
            users.set_disabled(conn, world.user_ids["a_member"], True)
            for events in (member_events, alert_events):
                name, payload, at = _next_other_than(events, {"readings", "alert"}, timeout=35)
                assert name == "end", (name, payload)
                assert at - disabled_at < 30.0
                assert events.get(timeout=5)[0] == "closed"


def test_a_deleted_devices_stream_ends_and_the_new_devices_shows_only_its_own_data(
    world: World,
) -> None:
    device = world.devices["a"]
    url_path = f"/devices/{device}/live"
    with (
        WebServer(world.database_url, workers=1) as server,
        psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn,
    ):
        viewer = session_for(server, world.emails["a_viewer"])
        _, events = _open_stream(viewer, server.url + url_path)
        wait_for(
            lambda: conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'fieldhub-web-live'"
            ).fetchone(),
            what="the live hub to listen",
        )
        old_key = conn.execute(
            "SELECT device_key FROM devices WHERE device_id = %s", (device,)
        ).fetchone()
        assert old_key is not None
        deleted_at = time.monotonic()
        registry.delete_device(conn, device)
        name, payload, at = _next_other_than(events, {"readings"}, timeout=10)
        assert name == "end"
        assert isinstance(payload, dict)
        assert "deleted" in payload["reason"]
        assert at - deleted_at < 2.0  # told at once, not at the next 30 s check
        assert events.get(timeout=5)[0] == "closed"

        # The id again, in the same organisation: its stream shows its own readings only,
        # not the old key's, which are still stored until the purge.
        org = conn.execute(
            "SELECT o.name FROM organisations o JOIN users u ON u.org_id = o.id WHERE u.email = %s",
            (world.emails["a_viewer"],),
        ).fetchone()
        assert org is not None
        registry.create_device(conn, device, org=org["name"], password_hash="x", secret="x")
        new_key = conn.execute(
            "SELECT device_key FROM devices WHERE device_id = %s", (device,)
        ).fetchone()
        assert new_key is not None
        _, events = _open_stream(viewer, f"{server.url}{url_path}?since=0")
        for key, value in ((old_key["device_key"], 66.6), (new_key["device_key"], 7.5)):
            conn.execute(
                "INSERT INTO readings (time, device_key, metric, value)"
                " VALUES (now(), %s, 'x', %s)",
                (key, value),
            )
            conn.execute("SELECT pg_notify('telemetry', %s)", (str(key),))
        name, payload, _ = _next_other_than(events, set(), timeout=10)
        assert name == "readings"
        assert isinstance(payload, list)
        assert [r["value"] for r in payload] == [7.5]
