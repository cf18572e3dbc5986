"""What the pages and the API show and do, against the real database."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from flask import Flask
from psycopg.rows import dict_row

from fieldhub.core import registry
from fieldhub.core.passwords import verify_secret
from fieldhub.web import create_app
from tests.web.helpers import PASSWORD, ROOT, World, api_token, login, problem

pytestmark = pytest.mark.integration


def test_device_list_searches_filters_and_paginates(app: Flask, world: World) -> None:
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        for i in range(60):
            registry.create_device(conn, f"pump-{i:03d}", org="org-a", labels={"kind": "pump"})
    app.config["PAGE_SIZE"] = 25
    client = app.test_client()
    login(client, world.emails["a_viewer"])
    first = client.get("/devices?label=kind%3Dpump").get_data(as_text=True)
    assert "pump-000" in first
    assert "pump-025" not in first
    assert "Page 1 of 3" in first
    assert world.devices["a"] not in first
    third = client.get("/devices?label=kind%3Dpump&page=3").get_data(as_text=True)
    assert "pump-059" in third
    assert "pump-000" not in third
    found = client.get("/devices?q=pump-04").get_data(as_text=True)
    assert re.findall(r"pump-04\d", found)
    assert "pump-050" not in found
    online = client.get("/devices?status=online").get_data(as_text=True)
    assert world.devices["a"] in online
    assert "pump-000" not in online
    bad = client.get("/devices?label=nonsense")
    assert bad.status_code == 200
    assert "key=value" in bad.get_data(as_text=True)


def test_device_list_refreshes_state_of_own_devices_only(app: Flask, world: World) -> None:
    client = app.test_client()
    login(client, world.emails["a_viewer"])
    ids = f"{world.devices['a']},{world.devices['b']},nope"
    body = client.get(f"/devices/state.json?ids={ids}").get_json()
    assert [d["device_id"] for d in body["devices"]] == [world.devices["a"]]
    assert body["devices"][0]["online"] is True
    assert body["devices"][0]["latest"] == [{"metric": "temperature", "unit": "", "value": 49.0}]


def test_history_uses_raw_readings_then_rollups(app: Flask, world: World) -> None:
    device = world.devices["a"]
    now = datetime.now(UTC)
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        for hours in range(2, 48):
            bucket = (now - timedelta(hours=hours)).replace(minute=0, second=0, microsecond=0)
            conn.execute(
                "INSERT INTO rollup_1h (bucket, device_key, metric, min, max, avg, count, last,"
                " last_time)"
                " SELECT %s, device_key, 'temperature', 1, 3, 2, 60, 3, %s"
                " FROM devices WHERE device_id = %s",
                (bucket, bucket + timedelta(minutes=59), device),
            )
    client = app.test_client()
    login(client, world.emails["a_viewer"])
    raw = client.get(f"/devices/{device}/history.json?metric=temperature&range=1h").get_json()
    assert raw["source"] == "raw"
    assert raw["value"] == [20.0 + i for i in range(30)]
    month = client.get(f"/devices/{device}/history.json?metric=temperature&range=30d").get_json()
    assert month["source"] == "rollup_1h"
    assert month["bucket_s"] == 3600
    assert set(month["avg"][:-2]) == {2.0}
    assert min(month["min"]) == 1.0
    # The newest hour is not rolled up yet: raw readings fill it in.
    assert month["max"][-1] == 49.0
    bad = client.get(f"/devices/{device}/history.json?metric=temperature&range=custom&start=x")
    assert bad.status_code == 400


def test_csv_export_streams_the_range(app: Flask, world: World) -> None:
    client = app.test_client()
    login(client, world.emails["a_viewer"])
    response = client.get(f"/devices/{world.devices['a']}/export.csv?range=1h")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 30
    assert rows[0]["metric"] == "temperature"
    assert {r["type"] for r in rows} == {"number"}
    assert [float(r["value"]) for r in rows] == [20.0 + i for i in range(30)]


def test_api_telemetry_buckets_and_aggregates(app: Flask, world: World) -> None:
    client = app.test_client()
    headers = {"Authorization": "Bearer " + api_token(world.database_url, world.emails["a_viewer"])}
    device = world.devices["a"]
    raw = client.get(
        f"/api/v1/devices/{device}/telemetry?metric=temperature", headers=headers
    ).get_json()
    assert raw["source"] == "raw"
    assert len(raw["points"]) == 30
    end = datetime.now(UTC).isoformat()
    start = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    combine: dict[str, Callable[[list[float]], float]] = {
        "count": sum,
        "min": min,
        "max": max,
        "last": lambda v: v[-1],
    }
    for agg, expected in (("count", 30), ("min", 20.0), ("max", 49.0), ("last", 49.0)):
        body = client.get(
            f"/api/v1/devices/{device}/telemetry",
            query_string={
                "metric": "temperature",
                "bucket": 600,
                "agg": agg,
                "start": start,
                "end": end,
            },
            headers=headers,
        ).get_json()
        assert body["source"] == "rollup_1m"
        values = [p["value"] for p in body["points"]]
        # 30 one-minute readings fall into 3 or 4 ten-minute buckets.
        assert 3 <= len(values) <= 4
        assert combine[agg](values) == expected, agg
    latest = client.get(f"/api/v1/devices/{device}/latest", headers=headers).get_json()
    assert latest["values"][0]["value"] == 49.0
    listing = client.get("/api/v1/devices", headers=headers).get_json()
    assert [d["device_id"] for d in listing["devices"]] == [device]
    assert listing["total"] == 1
    error = client.get(f"/api/v1/devices/{device}/telemetry?metric=t&bucket=0", headers=headers)
    assert problem(error, 400, "invalid-parameter")["errors"] == [
        {"parameter": "bucket", "detail": "must be between 1 and 31622400"}
    ]
    assert client.get("/api/v1/devices").status_code == 401
    assert (
        client.get("/api/v1/devices", headers={"Authorization": "Bearer nope"}).status_code == 401
    )


def test_api_commands_send_list_show_cancel(app: Flask, world: World) -> None:
    client = app.test_client()
    headers = {"Authorization": "Bearer " + api_token(world.database_url, world.emails["a_member"])}
    device = world.devices["a"]
    sent = client.post(
        f"/api/v1/devices/{device}/commands",
        json={"name": "set_rate", "params": {"hz": 2}, "ttl_s": 60},
        headers=headers,
    )
    assert sent.status_code == 201
    command = sent.get_json()
    assert command["status"] == "queued"
    assert command["params"] == {"hz": 2}
    listed = client.get(f"/api/v1/devices/{device}/commands", headers=headers).get_json()
    assert command["id"] in [c["id"] for c in listed["commands"]]
    cancelled = client.post(f"/api/v1/commands/{command['id']}/cancel", headers=headers)
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    shown = client.get(f"/api/v1/commands/{command['id']}", headers=headers).get_json()
    assert [e["status"] for e in shown["timeline"]] == ["queued", "cancelled"]
    again = client.post(f"/api/v1/commands/{command['id']}/cancel", headers=headers)
    problem(again, 409, "conflict")
    bad = client.post(
        f"/api/v1/devices/{device}/commands", json={"name": "no spaces"}, headers=headers
    )
    assert [e["pointer"] for e in problem(bad, 422, "invalid-body")["errors"]] == ["#/name"]


def test_admin_creates_rotates_and_disables_devices_showing_secrets_once(
    app: Flask, world: World
) -> None:
    client = app.test_client()
    csrf = login(client, world.emails["a_admin"])
    created = client.post(
        "/admin/devices",
        data={
            "csrf_token": csrf,
            "device_id": "new-one",
            "display_name": "New",
            "labels": "site=x",
        },
    )
    assert created.status_code == 200
    assert created.headers["Cache-Control"] == "no-store"
    secret = re.search(r'<pre class="secret">([^<]+)</pre>', created.get_data(as_text=True))
    assert secret
    with psycopg.connect(world.database_url) as conn:
        row = conn.execute(
            "SELECT org_id, password_hash, labels FROM devices WHERE device_id = 'new-one'"
        ).fetchone()
    assert row is not None
    assert verify_secret(secret.group(1), row[1])
    assert row[2] == {"site": "x"}
    assert secret.group(1) not in client.get("/admin/devices").get_data(as_text=True)
    rotated = client.post("/admin/devices/new-one/rotate", data={"csrf_token": csrf})
    new_secret = re.search(r'<pre class="secret">([^<]+)</pre>', rotated.get_data(as_text=True))
    assert new_secret
    assert new_secret.group(1) != secret.group(1)
    disabled = client.post(
        "/admin/devices/new-one/disable",
        data={"csrf_token": csrf, "back": "https://evil.example/"},
    )
    assert disabled.status_code == 302
    assert disabled.headers["Location"] == "/admin/devices"
    with psycopg.connect(world.database_url) as conn:
        assert conn.execute(
            "SELECT enabled FROM devices WHERE device_id = 'new-one'"
        ).fetchone() == (False,)
    taken = client.post(
        "/admin/devices",
        data={"csrf_token": csrf, "device_id": world.devices["b"]},
        follow_redirects=True,
    )
    assert "already exists" in taken.get_data(as_text=True)


def test_bulk_provisioning_upload_reports_bad_lines(app: Flask, world: World) -> None:
    client = app.test_client()
    csrf = login(client, world.emails["a_admin"])
    upload = "device_id,name,labels\nbulk-1,One,site=n;kind=pump\nBAD ID,Two,\nbulk-2,,\n"
    response = client.post(
        "/admin/devices/import",
        data={"csrf_token": csrf, "file": (io.BytesIO(upload.encode()), "devices.csv")},
        content_type="multipart/form-data",
    )
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "2 devices created" in body
    assert "Line" in body
    assert ">3<" in body
    creds = re.search(r"<textarea[^>]*>([^<]+)</textarea>", body)
    assert creds
    rows = list(csv.DictReader(io.StringIO(creds.group(1))))
    assert [r["device_id"] for r in rows] == ["bulk-1", "bulk-2"]
    with psycopg.connect(world.database_url) as conn:
        stored = conn.execute(
            "SELECT password_hash FROM devices WHERE device_id = 'bulk-1'"
        ).fetchone()
    assert stored is not None
    assert verify_secret(rows[0]["password"], stored[0])


def test_admin_creates_users_in_own_org_only(app: Flask, world: World) -> None:
    client = app.test_client()
    csrf = login(client, world.emails["a_admin"])
    made = client.post(
        "/admin/users",
        data={"csrf_token": csrf, "email": "new@a.example", "role": "member", "org": "org-b"},
    )
    assert made.status_code == 200
    assert "org-a" in made.get_data(as_text=True)
    assert (
        client.post(
            "/admin/users", data={"csrf_token": csrf, "email": "x@a.example", "role": "operator"}
        ).status_code
        == 403
    )


def test_cli_user_and_token(world: World) -> None:
    env = {"DATABASE_URL": world.database_url, "PATH": "/usr/bin:/bin"}
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "fieldhub.cli",
            "user",
            "create",
            "cli@a.example",
            "--org",
            "org-a",
            "--role",
            "viewer",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    assert "password (shown once): " in created.stdout
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "fieldhub.cli",
            "user",
            "create",
            "pipe@a.example",
            "--org",
            "org-a",
            "--role",
            "member",
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert piped.returncode == 0
    assert "shown once" not in piped.stdout
    token = subprocess.run(
        [sys.executable, "-m", "fieldhub.cli", "token", "create", "pipe@a.example", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert token.returncode == 0, token.stderr
    assert json.loads(token.stdout)["token"].startswith("fh_")
    listed = subprocess.run(
        [sys.executable, "-m", "fieldhub.cli", "user", "list", "--org", "org-a", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    emails = {row["email"] for row in json.loads(listed.stdout)}
    assert {"cli@a.example", "pipe@a.example", world.emails["a_admin"]} <= emails
    assert world.emails["b_admin"] not in emails
    assert "password" not in listed.stdout


def test_errors_are_pages_a_person_can_act_on(world: World) -> None:
    app = create_app({"DATABASE_URL": world.database_url, "TESTING": False})

    def broken() -> str:
        raise RuntimeError("secret internals")

    app.add_url_rule("/broken", view_func=broken)
    app.add_url_rule("/api/v1/broken", view_func=broken)
    client = app.test_client()
    login(client, world.emails["a_viewer"])
    page = client.get("/broken")
    body = page.get_data(as_text=True)
    assert page.status_code == 500
    assert "Something went wrong on our side" in body
    assert "Traceback" not in body
    assert "secret internals" not in body
    missing = client.get("/devices/nope").get_data(as_text=True)
    assert "Back to devices" in missing
    api = client.get("/api/v1/broken")
    assert problem(api, 500, "internal-error")["detail"] == "Internal error"
    assert "secret internals" not in api.get_data(as_text=True)
    app.extensions["fieldhub.pools"].close()
