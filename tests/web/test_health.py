"""The web app's /healthz and /readyz, the not-ready gate, and its in-process metrics."""

from __future__ import annotations

import psycopg
import pytest
from flask.testing import FlaskClient

from fieldhub.core.migrate import discover
from fieldhub.web import metrics
from tests.support import wait_for
from tests.web.helpers import World, api_token, login, problem

pytestmark = pytest.mark.integration


def test_healthz_and_readyz_answer_when_all_is_well(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"alive": True}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {
        "ready": True,
        "checks": {"database": "ok", "read_pool": "ok", "migrations": "ok"},
    }
    assert ready.headers["Cache-Control"] == "no-store"


def test_a_process_ahead_of_its_migrations_refuses_with_503_until_they_are_applied(
    client: FlaskClient, world: World
) -> None:
    token = api_token(world.database_url, world.emails["a_member"])
    last = discover()[-1]
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (last.version,))
        state = wait_for(
            lambda: (r := client.get("/readyz")).status_code == 503 and r.get_json(),
            timeout=10,
            what="/readyz to notice the missing migration",
        )
        assert state["checks"]["migrations"] == (
            f"migrations not applied yet: {last.version:04d}_{last.name}"
        )
        assert state["checks"]["database"] == "ok"

        # Every request but the probes and static files: 503 with Retry-After, so nginx
        # moves on to another instance. Pages get the error page, the API a problem document.
        page = client.get("/login")
        assert page.status_code == 503
        assert page.headers["Retry-After"] == "5"
        assert "The service is busy" in page.get_data(as_text=True)
        api = client.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"})
        problem(api, 503, "unavailable")
        assert api.headers["Retry-After"] == "5"
        assert client.get("/static/app.css").status_code == 200
        assert client.get("/healthz").status_code == 200

        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (last.version, last.name, last.checksum),
        )
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=10, what="ready again")
    assert client.get("/login").status_code == 200


def _count(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_and_pool_waits_are_measured_by_route(client: FlaskClient, world: World) -> None:
    route = {"route": "/devices/<device_id>", "method": "GET", "status": "200"}
    before = _count("fieldhub_web_request_duration_seconds_count", **route)
    waits = _count("fieldhub_web_pool_wait_seconds_count", pool="read")
    login(client, world.emails["a_member"])
    assert client.get(f"/devices/{world.devices['a']}").status_code == 200
    assert client.get(f"/devices/{world.devices['a']}").status_code == 200
    assert _count("fieldhub_web_request_duration_seconds_count", **route) == before + 2
    # The URL rule, not the URL: one series however many devices there are.
    assert _count("fieldhub_web_pool_wait_seconds_count", pool="read") >= waits + 2
    assert _count("fieldhub_web_pool_connections", pool="read", state="size") >= 1
    missing = {"route": "unmatched", "method": "GET", "status": "404"}
    before_404 = _count("fieldhub_web_request_duration_seconds_count", **missing)
    assert client.get("/no/such/page").status_code == 404
    assert _count("fieldhub_web_request_duration_seconds_count", **missing) == before_404 + 1


def test_open_live_streams_are_counted_until_they_close(client: FlaskClient, world: World) -> None:
    login(client, world.emails["a_member"])
    gauge = "fieldhub_web_live_streams"
    before = _count(gauge, stream="device")
    response = client.get(f"/devices/{world.devices['a']}/live")
    chunks = response.iter_encoded()
    assert b"retry" in next(chunks)
    assert _count(gauge, stream="device") == before + 1
    response.close()
    assert _count(gauge, stream="device") == before
