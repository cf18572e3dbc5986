"""The API's conventions for integrators, against the real database: every list pages by
cursor, every error is an RFC 9457 problem whose type documents itself, one command TTL."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from werkzeug.exceptions import TooManyRequests

from fieldhub.analysis import service as analysis
from fieldhub.core import command_requests, registry
from fieldhub.web.api import API
from tests.web.helpers import World, api_token, problem

pytestmark = pytest.mark.integration
N = 7  # objects of each kind beyond the seeded ones; pages of 3 end mid-page


def _bearer(world: World, role: str = "a_admin") -> dict[str, str]:
    return {"Authorization": "Bearer " + api_token(world.database_url, world.emails[role])}


def _walk(client: FlaskClient, url: str, key: str, headers: dict[str, str]) -> list[Any]:
    """Every item of a list, following `next` as given; checks each page's size."""
    items: list[Any] = []
    pages = 0
    while url:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert len(body[key]) <= 3
        if body["next"]:
            assert len(body[key]) == 3, "a page before the last is full"
            assert body["next"].startswith("http://localhost/api/v1/")
        items.extend(body[key])
        url = body["next"] or ""
        pages += 1
        assert pages < 50, "next never ends"
    return items


@pytest.fixture
def crowded(world: World) -> World:
    """Organisation a with N more devices, commands, alerts, rules, deliveries, imports and
    readings, several of them created at the same instant (ties the sort key must break)."""
    same = datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        org_id = registry.get_org(conn, "org-a")["id"]
        for i in range(N):
            registry.create_device(conn, f"page-{i}", org="org-a")
            command_requests.send_command(
                conn, device_id="dev-a1", name=f"c{i}", params={}, ttl_s=None
            )
            rule = conn.execute(
                "INSERT INTO alert_rules (org_id, name, metric, device_id, condition,"
                " threshold_high, severity)"
                " VALUES (%s, %s, 'temperature', 'dev-a1', 'above', 1, 'info') RETURNING id",
                (org_id, f"rule {i}"),
            ).fetchone()
            conn.execute(
                "INSERT INTO alerts (rule_id, org_id, device_id, state, started_at, message)"
                " VALUES (%s, %s, 'dev-a1', 'cleared', %s, 'x')",
                (rule["id"], org_id, same),  # type: ignore[index]
            )
            conn.execute(
                "INSERT INTO webhook_deliveries (org_id, event, payload, created_at)"
                " VALUES (%s, 'alert.raised', %s, %s)",
                (org_id, Jsonb({}), same),
            )
            analysis.create_import(
                conn,
                org_id=org_id,
                content=b"time,metric,value\n",
                filename=f"{i}.csv",
                device_id="dev-a1",
            )
            conn.execute(
                "INSERT INTO dead_letters (received_at, device_id, device_key, topic, reason,"
                " payload) SELECT %s, device_id, device_key, 'devices/dev-a1/telemetry',"
                " 'invalid_json', '{' FROM devices WHERE device_id = 'dev-a1'",
                (same,),
            )
        conn.execute("UPDATE imports SET created_at = %s", (same,))
    return world


@pytest.mark.parametrize(
    ("url", "key", "expected"),
    [
        ("/api/v1/devices?limit=3", "devices", 1 + N),
        ("/api/v1/devices/dev-a1/commands?limit=3", "commands", 1 + N),
        ("/api/v1/alerts?limit=3", "alerts", 1 + N),
        ("/api/v1/alert-rules?limit=3", "rules", 1 + N),
        ("/api/v1/webhook/deliveries?limit=3", "deliveries", N),
        ("/api/v1/imports?limit=3", "imports", 1 + N),
        ("/api/v1/devices/dev-a1/dead-letters?limit=3", "dead_letters", N),
    ],
)
def test_every_list_pages_by_cursor_to_the_end(
    app: Flask, crowded: World, url: str, key: str, expected: int
) -> None:
    client = app.test_client()
    headers = _bearer(crowded)
    everything = client.get(url.replace("limit=3", "limit=100"), headers=headers).get_json()
    assert everything["next"] is None
    walked = _walk(client, url, key, headers)
    ids = [item.get("id", item.get("device_id")) for item in walked]
    assert len(ids) == expected
    # Every item once, in the order of the unpaged list.
    assert ids == [item.get("id", item.get("device_id")) for item in everything[key]]


def test_a_page_is_stable_while_items_are_added(app: Flask, crowded: World) -> None:
    client = app.test_client()
    headers = _bearer(crowded)
    first = client.get("/api/v1/devices?limit=3&q=page", headers=headers).get_json()
    with psycopg.connect(crowded.database_url, autocommit=True, row_factory=dict_row) as conn:
        # Sorts before everything already listed: OFFSET would repeat an item; keyset does not.
        registry.create_device(conn, "page-", org="org-a")
    rest = _walk(client, first["next"], "devices", headers)
    ids = [d["device_id"] for d in first["devices"] + rest]
    assert ids == [f"page-{i}" for i in range(N)]
    assert set(parse_qs(urlsplit(first["next"]).query)) == {"limit", "q", "cursor"}


def test_raw_telemetry_pages_beyond_a_page_keeping_the_range(app: Flask, world: World) -> None:
    client = app.test_client()
    headers = _bearer(world)
    url = "/api/v1/devices/dev-a1/telemetry?metric=temperature&limit=7"
    first = client.get(url, headers=headers).get_json()
    assert first["truncated"] is True
    query = parse_qs(urlsplit(first["next"]).query)
    # "The last hour" of the first page, written out, so later pages read the same range.
    assert datetime.fromisoformat(query["end"][0]) == datetime.fromisoformat(first["end"])
    values = [p["value"] for p in first["points"]]
    url = first["next"]
    while url:
        body = client.get(url, headers=headers).get_json()
        values += [p["value"] for p in body["points"]]
        url = body["next"]
        assert body["truncated"] is (url is not None)
    assert values == [20.0 + i for i in range(30)]
    bucketed = client.get(
        "/api/v1/devices/dev-a1/telemetry?metric=temperature&bucket=3600", headers=headers
    ).get_json()
    assert bucketed["next"] is None


def test_raw_telemetry_pages_through_readings_that_share_a_time(app: Flask, world: World) -> None:
    # (time, seq) is a reading's identity within a series: three readings at one instant,
    # paged one at a time, each come once; the series in another unit is not mixed in.
    at = datetime.now(UTC) - timedelta(minutes=5)
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO readings (time, device_key, metric, unit, seq, value)"
            " SELECT %s, device_key, 'burst', u, s, v FROM devices,"
            " (VALUES ('', NULL, 1.0), ('', 0, 2.0), ('', 7, 3.0), ('Cel', NULL, 9.0))"
            " AS r(u, s, v) WHERE device_id = 'dev-a1'",
            (at,),
        )
    client = app.test_client()
    headers = _bearer(world)
    url: str | None = "/api/v1/devices/dev-a1/telemetry?metric=burst&limit=1"
    values = []
    while url:
        body = client.get(url, headers=headers).get_json()
        values += [p["value"] for p in body["points"]]
        url = body["next"]
    assert values == [1.0, 2.0, 3.0]
    celsius = client.get(
        "/api/v1/devices/dev-a1/telemetry?metric=burst&unit=Cel", headers=headers
    ).get_json()
    assert (celsius["unit"], [p["value"] for p in celsius["points"]]) == ("Cel", [9.0])


def test_bad_cursors_and_offset_are_400_problems(app: Flask, crowded: World) -> None:
    client = app.test_client()
    headers = _bearer(crowded)
    devices_next = client.get("/api/v1/devices?limit=3", headers=headers).get_json()["next"]
    cursor = parse_qs(urlsplit(devices_next).query)["cursor"][0]
    for bad in ("nonsense", cursor[:-4], cursor + "x"):
        body = problem(
            client.get(f"/api/v1/devices?cursor={bad}", headers=headers), 400, "invalid-cursor"
        )
        assert body["errors"][0]["parameter"] == "cursor"
    # Longer than any cursor: the parameter's documented bound.
    too_long = client.get(f"/api/v1/devices?cursor={'x' * 600}", headers=headers)
    assert problem(too_long, 400, "invalid-parameter")["errors"][0]["parameter"] == "cursor"
    # A cursor of one list is refused by another.
    problem(client.get(f"/api/v1/alerts?cursor={cursor}", headers=headers), 400, "invalid-cursor")
    # `offset` is gone: refused rather than ignored, or an old client would loop on page one.
    gone = problem(
        client.get("/api/v1/devices?offset=100", headers=headers), 400, "invalid-parameter"
    )
    assert gone["errors"] == [
        {"parameter": "offset", "detail": "is no longer supported: follow `next` (a cursor)"}
    ]


def test_every_error_is_a_problem_whose_type_is_documented(app: Flask, world: World) -> None:
    def teapot() -> Any:
        raise TooManyRequests(retry_after=30)

    app.add_url_rule("/api/v1/slow-down", view_func=teapot)
    client = app.test_client()
    headers = _bearer(world)
    answers = {
        "unauthorized": client.get("/api/v1/devices"),
        "not-found": client.get("/api/v1/no-such-thing", headers=headers),
        "method-not-allowed": client.patch("/api/v1/devices", headers=headers),
        "unsupported-media-type": client.post(
            "/api/v1/devices/dev-a1/commands", data="name=reboot", headers=headers
        ),
        "malformed-body": client.post(
            "/api/v1/devices/dev-a1/commands",
            data="{",
            content_type="application/json",
            headers=headers,
        ),
        "invalid-body": client.post(
            "/api/v1/devices/dev-a1/commands", json={"ttl_s": 5}, headers=headers
        ),
        "too-many-requests": client.get("/api/v1/slow-down", headers=headers),
    }
    statuses = {
        "unauthorized": 401,
        "not-found": 404,
        "method-not-allowed": 405,
        "unsupported-media-type": 415,
        "malformed-body": 400,
        "invalid-body": 422,
        "too-many-requests": 429,
    }
    for slug, response in answers.items():
        body = problem(response, statuses[slug], slug)
        page = client.get(body["type"])
        assert page.status_code == 200, body["type"]
        assert page.mimetype == "text/html"
        assert body["title"] in page.get_data(as_text=True)
    assert "GET" in answers["method-not-allowed"].headers["Allow"]
    assert answers["too-many-requests"].headers["Retry-After"] == "30"
    assert answers["unauthorized"].headers["WWW-Authenticate"].startswith("Bearer")
    assert {(e["pointer"], e["detail"]) for e in answers["invalid-body"].get_json()["errors"]} == {
        ("#/name", "is required"),
        ("#/ttl_s", "must be between 10 and 2592000"),
    }
    index = client.get("/api/v1/problems").get_data(as_text=True)
    for kind in ("/api/v1/problems/invalid-cursor", "/api/v1/problems/refused"):
        assert kind in index
    # The pages keep their pages.
    html = client.get("/no-such-page")
    assert html.status_code == 404
    assert html.mimetype == "text/html"


def test_an_upload_that_is_not_a_form_is_415(app: Flask, world: World) -> None:
    client = app.test_client()
    member = _bearer(world, "a_member")
    problem(
        client.post("/api/v1/imports", json={"file": "x"}, headers=member),
        415,
        "unsupported-media-type",
    )
    missing = client.post(
        "/api/v1/imports",
        data={"device_id": "dev-a1", "other": (io.BytesIO(b"x"), "x.csv")},
        headers=member,
        content_type="multipart/form-data",
    )
    assert problem(missing, 422, "invalid-body")["errors"] == [
        {"pointer": "#/file", "detail": "is required"}
    ]


def test_one_default_time_to_live_everywhere(app: Flask, world: World) -> None:
    client = app.test_client()
    sent = client.post(
        "/api/v1/devices/dev-a1/commands", json={"name": "reboot"}, headers=_bearer(world)
    ).get_json()
    lives = datetime.fromisoformat(sent["expires_at"]) - datetime.fromisoformat(sent["created_at"])
    assert lives == timedelta(seconds=command_requests.DEFAULT_TTL_S)
    document = client.get("/api/v1/openapi.json").get_json()
    ttl = document["components"]["schemas"]["NewCommand"]["properties"]["ttl_s"]
    assert (ttl["minimum"], ttl["default"]) == (command_requests.MIN_TTL_S, 3600)
    # Every operation of the document is one the API routes, and the other way round.
    routed = {(op.path, op.method.lower()) for op in API.operations}
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routed == documented


def test_the_docs_page_is_served_locally(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/static/vendor/swagger-ui-bundle.js" in html
    assert "<script>" not in html  # no inline script: the CSP forbids it
    assert "http" not in page.headers["Content-Security-Policy"]
    assert client.get("/static/vendor/swagger-ui-bundle.js").status_code == 200
