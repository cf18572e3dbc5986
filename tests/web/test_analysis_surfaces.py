"""The analysis surfaces of the web app against the real database: acknowledging alerts (and
the alerts page's live stream), alert rules, the webhook and its delivery log, job runs, and
bulk import of uploaded files run by the worker's own import job."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from psycopg.rows import dict_row

from fieldhub.analysis.jobs import job_named
from fieldhub.analysis.worker import run_if_due
from fieldhub.core.config import Settings
from fieldhub.web import create_app
from tests.web.helpers import World, api_token, login, problem

pytestmark = pytest.mark.integration

THREE_DAYS_AGO = int(time.time()) - 3 * 86400


def _db(world: World) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row)


def _org_id(world: World, org: str) -> int:
    with _db(world) as conn:
        row = conn.execute("SELECT id FROM organisations WHERE name = %s", (org,)).fetchone()
    assert row is not None
    return int(row["id"])


def _alert_state(world: World, alert_id: int) -> dict[str, Any]:
    with _db(world) as conn:
        row = conn.execute(
            "SELECT state, acknowledged_by FROM alerts WHERE id = %s", (alert_id,)
        ).fetchone()
    assert row is not None
    return dict(row)


def _new_active_alert(world: World, org: str) -> int:
    """Another active alert of `org`'s device (its own rule: one open alert per rule)."""
    org_id = _org_id(world, f"org-{org}")
    with _db(world) as conn:
        rule = conn.execute(
            "INSERT INTO alert_rules (org_id, name, metric, device_id, condition, threshold_low,"
            " severity, enabled) VALUES (%s, 'too cold', 'temperature', %s, 'below', 0,"
            " 'critical', true) RETURNING id",
            (org_id, world.devices[org]),
        ).fetchone()
        assert rule is not None
        alert = conn.execute(
            "INSERT INTO alerts (rule_id, org_id, device_id, state, value, started_at, message)"
            " VALUES (%s, %s, %s, 'active', -5, now(), 'temperature below 0') RETURNING id",
            (rule["id"], org_id, world.devices[org]),
        ).fetchone()
    assert alert is not None
    return int(alert["id"])


def _bearer(world: World, role: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + api_token(world.database_url, world.emails[role])}


# -- alerts ----------------------------------------------------------------------------------
def test_member_acknowledges_from_the_device_page_and_the_alerts_page(
    client: FlaskClient, world: World
) -> None:
    device, alert = world.devices["a"], world.alerts["a"]
    csrf = login(client, world.emails["a_member"])
    page = client.get(f"/devices/{device}").get_data(as_text=True)
    assert f"/alerts/{alert}/acknowledge" in page
    acked = client.post(
        f"/alerts/{alert}/acknowledge",
        data={"csrf_token": csrf, "back": f"/devices/{device}#alerts"},
    )
    assert acked.status_code == 302
    assert acked.headers["Location"].endswith(f"/devices/{device}#alerts")
    state = _alert_state(world, alert)
    assert state == {"state": "acknowledged", "acknowledged_by": world.user_ids["a_member"]}
    # Only active alerts can be acknowledged; the page says why instead of failing.
    again = client.post(f"/alerts/{alert}/acknowledge", data={"csrf_token": csrf})
    assert again.status_code == 302
    assert "not active" in client.get("/alerts").get_data(as_text=True)

    second = _new_active_alert(world, "a")
    listing = client.get("/alerts").get_data(as_text=True)
    assert f"/alerts/{second}/acknowledge" in listing
    assert f"/alerts/{alert}/acknowledge" not in listing
    assert (
        client.post(f"/alerts/{second}/acknowledge", data={"csrf_token": csrf}).status_code == 302
    )
    assert _alert_state(world, second)["state"] == "acknowledged"
    # Without the CSRF token nothing changes.
    third = _new_active_alert(world, "b")
    assert client.post(f"/alerts/{third}/acknowledge").status_code == 400


def test_viewer_cannot_acknowledge(client: FlaskClient, world: World, app: Flask) -> None:
    device, alert = world.devices["a"], world.alerts["a"]
    csrf = login(client, world.emails["a_viewer"])
    assert "/acknowledge" not in client.get(f"/devices/{device}").get_data(as_text=True)
    assert "/acknowledge" not in client.get("/alerts").get_data(as_text=True)
    assert client.post(f"/alerts/{alert}/acknowledge", data={"csrf_token": csrf}).status_code == 403
    api = app.test_client()
    refused = api.post(f"/api/v1/alerts/{alert}/acknowledge", headers=_bearer(world, "a_viewer"))
    assert refused.status_code == 403
    assert _alert_state(world, alert)["state"] == "active"


def test_api_acknowledges_once_and_not_across_orgs(app: Flask, world: World) -> None:
    client = app.test_client()
    alert = world.alerts["a"]
    other = client.post(
        f"/api/v1/alerts/{world.alerts['b']}/acknowledge", headers=_bearer(world, "a_admin")
    )
    assert other.status_code == 404
    assert _alert_state(world, world.alerts["b"])["state"] == "active"
    member = _bearer(world, "a_member")
    done = client.post(f"/api/v1/alerts/{alert}/acknowledge", headers=member)
    assert done.status_code == 200, done.get_data(as_text=True)
    assert done.get_json()["state"] == "acknowledged"
    assert done.get_json()["acknowledged_at"] is not None
    twice = client.post(f"/api/v1/alerts/{alert}/acknowledge", headers=member)
    assert "not active" in problem(twice, 409, "conflict")["detail"]


def _events(response: Any) -> Iterator[tuple[str, Any]]:
    """Server-sent events of a streamed test-client response, as (event, data)."""
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1)
                for line in block.splitlines()
                if ": " in line and line[0] != ":"
            )
            if "event" in fields:
                yield fields["event"], json.loads(fields["data"])


def test_alerts_page_stream_forwards_only_the_users_org(app: Flask, world: World) -> None:
    app.config["LIVE_KEEPALIVE_S"] = 0.2
    client = app.test_client()
    login(client, world.emails["a_viewer"])
    page = client.get("/alerts").get_data(as_text=True)
    assert 'data-live-url="/alerts/live"' in page
    response = client.get("/alerts/live", buffered=False)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = _events(response)
    assert next(events)[0] == "hello"
    assert app.extensions["fieldhub.live"].listening.wait(10), "the live hub never listened"
    org_a, org_b = _org_id(world, "org-a"), _org_id(world, "org-b")
    with _db(world) as conn:
        # Sent first: if the stream forwarded other organisations' alerts, this would be seen.
        conn.execute("SELECT pg_notify('alerts', %s)", (f"{org_b} {world.alerts['b']} active",))
        conn.execute("SELECT pg_notify('alerts', %s)", (f"{org_a} {world.alerts['a']} cleared",))
    seen = []
    deadline = time.monotonic() + 10
    for name, body in events:
        assert time.monotonic() < deadline, "no alert event arrived"
        if name == "alert" and body["id"] is not None:
            seen.append(body)
            break
    response.close()
    assert seen == [{"id": world.alerts["a"], "state": "cleared"}]


# -- rules -----------------------------------------------------------------------------------
RULE_FORM = {
    "name": "Pressure high",
    "metric": "pressure",
    "target": "device",
    "condition": "above",
    "threshold_high": "7.5",
    "for_seconds": "60",
    "severity": "critical",
    "enabled": "on",
}


def _rules(world: World, org: str) -> list[dict[str, Any]]:
    with _db(world) as conn:
        return conn.execute(
            "SELECT r.* FROM alert_rules r JOIN organisations o ON o.id = r.org_id"
            " WHERE o.name = %s ORDER BY r.id",
            (org,),
        ).fetchall()


def test_admin_manages_rules_of_their_own_org_only(client: FlaskClient, world: World) -> None:
    csrf = login(client, world.emails["a_admin"])
    listing = client.get("/admin/rules").get_data(as_text=True)
    assert "too hot" in listing
    assert world.devices["b"] not in listing

    form = {**RULE_FORM, "device_id": world.devices["a"], "csrf_token": csrf}
    assert client.post("/admin/rules", data=form).status_code == 302
    created = [r for r in _rules(world, "org-a") if r["name"] == "Pressure high"]
    assert len(created) == 1
    rule = created[0]
    assert (rule["threshold_high"], rule["for_seconds"], rule["severity"]) == (7.5, 60, "critical")
    assert "Pressure high" in client.get("/admin/rules").get_data(as_text=True)

    # Bad input says what is wrong; a device of another organisation is unknown.
    missing = client.post("/admin/rules", data={**form, "threshold_high": ""})
    assert missing.status_code == 400
    assert "needs threshold_high" in missing.get_data(as_text=True)
    foreign = client.post("/admin/rules", data={**form, "device_id": world.devices["b"]})
    assert foreign.status_code == 400
    assert "Unknown device" in foreign.get_data(as_text=True)

    edit_page = client.get(f"/admin/rules/{rule['id']}").get_data(as_text=True)
    assert 'value="Pressure high"' in edit_page
    by_label = {
        **form,
        "target": "label",
        "label_key": "site",
        "label_value": "a",
        "condition": "outside",
        "threshold_low": "1",
        "threshold_high": "9",
    }
    del by_label["enabled"]
    assert client.post(f"/admin/rules/{rule['id']}", data=by_label).status_code == 302
    saved = next(r for r in _rules(world, "org-a") if r["id"] == rule["id"])
    assert (saved["device_id"], saved["label_key"], saved["label_value"]) == (None, "site", "a")
    assert (saved["threshold_low"], saved["enabled"]) == (1.0, False)

    assert (
        client.post(f"/admin/rules/{rule['id']}/delete", data={"csrf_token": csrf}).status_code
        == 302
    )
    assert all(r["id"] != rule["id"] for r in _rules(world, "org-a"))

    # Another organisation's rule does not exist for this admin; a member cannot manage rules.
    other = world.rules["b"]
    assert client.get(f"/admin/rules/{other}").status_code == 404
    assert client.post(f"/admin/rules/{other}/delete", data={"csrf_token": csrf}).status_code == 404
    assert len(_rules(world, "org-b")) == 1
    member = client.application.test_client()
    login(member, world.emails["a_member"])
    assert member.get("/admin/rules").status_code == 403


def test_operator_picks_the_org_of_rules_and_webhook(client: FlaskClient, world: World) -> None:
    login(client, world.emails["operator"])
    body = client.get("/admin/rules?org=org-b").get_data(as_text=True)
    assert f"/admin/rules/{world.rules['b']}" in body
    assert f"/admin/rules/{world.rules['a']}" not in body
    assert client.get(f"/admin/rules/{world.rules['a']}").status_code == 200
    assert client.get("/admin/rules?org=no-such-org").status_code == 404
    assert client.get("/admin/webhook?org=org-a").status_code == 200


def test_rules_api_crud_is_scoped_and_admin_only(app: Flask, world: World) -> None:
    client = app.test_client()
    admin = _bearer(world, "a_admin")
    body = {
        "name": "Humid",
        "metric": "humidity",
        "condition": "above",
        "threshold_high": 80,
        "label_key": "site",
        "label_value": "a",
    }
    created = client.post("/api/v1/alert-rules", json=body, headers=admin)
    assert created.status_code == 201, created.get_data(as_text=True)
    rule = created.get_json()
    assert (rule["label_key"], rule["threshold_high"], rule["enabled"]) == ("site", 80.0, True)
    listed = client.get("/api/v1/alert-rules", headers=admin).get_json()["rules"]
    assert {r["name"] for r in listed} == {"too hot", "Humid"}

    invalid = client.post(
        "/api/v1/alert-rules", json={**body, "condition": "sideways"}, headers=admin
    )
    assert problem(invalid, 422, "invalid-body")["errors"] == [
        {"pointer": "#/condition", "detail": "must be one of above, below, outside"}
    ]

    updated = client.put(
        f"/api/v1/alert-rules/{rule['id']}",
        json={**body, "threshold_high": 90, "enabled": False},
        headers=admin,
    )
    assert updated.status_code == 200
    assert (updated.get_json()["threshold_high"], updated.get_json()["enabled"]) == (90.0, False)

    other_admin = _bearer(world, "b_admin")
    assert client.get(f"/api/v1/alert-rules/{rule['id']}", headers=other_admin).status_code == 404
    assert (
        client.delete(f"/api/v1/alert-rules/{rule['id']}", headers=other_admin).status_code == 404
    )
    member = _bearer(world, "a_member")
    assert client.get("/api/v1/alert-rules", headers=member).status_code == 403
    assert client.delete(f"/api/v1/alert-rules/{rule['id']}", headers=member).status_code == 403

    assert client.delete(f"/api/v1/alert-rules/{rule['id']}", headers=admin).status_code == 204
    assert client.get(f"/api/v1/alert-rules/{rule['id']}", headers=admin).status_code == 404


# -- webhook ---------------------------------------------------------------------------------
def test_webhook_secret_is_shown_once_and_deliveries_are_logged(
    client: FlaskClient, world: World
) -> None:
    csrf = login(client, world.emails["a_admin"])
    saved = client.post(
        "/admin/webhook",
        data={"url": "http://127.0.0.1:8765/fieldhub", "enabled": "on", "csrf_token": csrf},
    )
    assert saved.status_code == 200
    assert saved.headers["Cache-Control"] == "no-store"
    with _db(world) as conn:
        row = conn.execute(
            "SELECT url, secret, enabled FROM org_webhooks WHERE org_id = %s",
            (_org_id(world, "org-a"),),
        ).fetchone()
    assert row is not None
    assert (row["url"], row["enabled"]) == ("http://127.0.0.1:8765/fieldhub", True)
    assert row["secret"] in saved.get_data(as_text=True)
    page = client.get("/admin/webhook").get_data(as_text=True)
    assert "http://127.0.0.1:8765/fieldhub" in page
    assert row["secret"] not in page

    # Acknowledging queues a delivery to the org's webhook: it shows in the log.
    client.post(f"/alerts/{world.alerts['a']}/acknowledge", data={"csrf_token": csrf})
    log = client.get("/admin/webhook").get_data(as_text=True)
    assert "alert.acknowledged" in log
    assert "pending" in log

    refused = client.post("/admin/webhook", data={"url": "ftp://x", "csrf_token": csrf})
    assert refused.status_code == 422
    assert "must start with http" in refused.get_data(as_text=True)
    # A refused target: the page says why, keeps what was typed, and the saved hook stays.
    metadata = "http://169.254.169.254/latest/meta-data/iam"
    refused = client.post("/admin/webhook", data={"url": metadata, "csrf_token": csrf})
    assert refused.status_code == 422
    page = refused.get_data(as_text=True)
    assert str(escape("169.254.169.254 is link-local, where cloud metadata services")) in page
    assert f'value="{metadata}"' in page
    assert "http://127.0.0.1:8765/fieldhub" in page

    # The other organisation's admin sees neither the URL nor the delivery.
    other = client.application.test_client()
    login(other, world.emails["b_admin"])
    theirs = other.get("/admin/webhook").get_data(as_text=True)
    assert "8765/fieldhub" not in theirs
    assert "alert.acknowledged" not in theirs

    assert client.post("/admin/webhook/delete", data={"csrf_token": csrf}).status_code == 302
    assert "No webhook configured" in client.get("/admin/webhook").get_data(as_text=True)


def test_webhook_api_returns_the_secret_once_and_logs_deliveries(app: Flask, world: World) -> None:
    client = app.test_client()
    admin = _bearer(world, "a_admin")
    saved = client.put("/api/v1/webhook", json={"url": "http://127.0.0.1:8765/api"}, headers=admin)
    assert saved.status_code == 200, saved.get_data(as_text=True)
    secret = saved.get_json()["secret"]
    with _db(world) as conn:
        row = conn.execute(
            "SELECT secret FROM org_webhooks WHERE org_id = %s", (_org_id(world, "org-a"),)
        ).fetchone()
    assert row is not None
    assert row["secret"] == secret
    assert secret.startswith("whsec_")
    shown = client.get("/api/v1/webhook", headers=admin)
    assert shown.get_json() == {
        "webhook": {"url": "http://127.0.0.1:8765/api", "enabled": True, "legacy_signature": False}
    }
    assert secret not in shown.get_data(as_text=True)
    bad = client.put("/api/v1/webhook", json={"url": "gopher://x"}, headers=admin)
    problem(bad, 422, "refused")
    for url, says in (
        ("http://10.0.0.5/hook", "10.0.0.5 is private (RFC 1918)"),
        ("http://[::ffff:a9fe:a9fe]/", "::ffff:a9fe:a9fe (169.254.169.254) is link-local"),
        ("http://[::1]:8765/", "::1 is loopback"),
        ("http://100.64.1.1/", "carrier-grade NAT"),
    ):
        refused = client.put("/api/v1/webhook", json={"url": url}, headers=admin)
        message = problem(refused, 422, "refused")["detail"]
        assert says in message, message
        assert "FIELDHUB_WEBHOOK_ALLOWED_NETWORKS" in message
    assert client.get("/api/v1/webhook", headers=admin).get_json()["webhook"]["url"] == (
        "http://127.0.0.1:8765/api"
    )

    ack = client.post(
        f"/api/v1/alerts/{world.alerts['a']}/acknowledge", headers=_bearer(world, "a_member")
    )
    assert ack.status_code == 200
    deliveries = client.get("/api/v1/webhook/deliveries", headers=admin).get_json()["deliveries"]
    assert [(d["event"], d["alert_id"], d["status"]) for d in deliveries] == [
        ("alert.acknowledged", world.alerts["a"], "pending")
    ]

    other = _bearer(world, "b_admin")
    assert client.get("/api/v1/webhook", headers=other).get_json() == {"webhook": None}
    assert client.get("/api/v1/webhook/deliveries", headers=other).get_json() == {
        "deliveries": [],
        "next": None,
    }
    assert client.get("/api/v1/webhook", headers=_bearer(world, "a_member")).status_code == 403
    assert client.delete("/api/v1/webhook", headers=admin).status_code == 204
    assert client.get("/api/v1/webhook", headers=admin).get_json() == {"webhook": None}


def test_loopback_webhooks_need_the_operators_allowance(world: World) -> None:
    """The app as deployed without FIELDHUB_WEBHOOK_ALLOWED_NETWORKS."""
    app = create_app({"DATABASE_URL": world.database_url, "TESTING": True})
    try:
        client = app.test_client()
        refused = client.put(
            "/api/v1/webhook",
            json={"url": "http://127.0.0.1:8765/api"},
            headers=_bearer(world, "a_admin"),
        )
        assert "127.0.0.1 is loopback" in problem(refused, 422, "refused")["detail"]
    finally:
        app.extensions["fieldhub.live"].stop()
        app.extensions["fieldhub.pools"].close()


# -- imports ---------------------------------------------------------------------------------
def _csv_with_bad_lines(device: str, *, device_column: bool) -> bytes:
    """20 `pressure` readings of `device`, of which lines 5 and 10 are bad (the header is
    line 1): a time that is no time, and a device of another organisation (with a device
    column) or a value that is no finite number (without)."""
    who = f"{device}," if device_column else ""
    lines = ["time,device_id,metric,value" if device_column else "time,metric,value"]
    lines += [f"{THREE_DAYS_AGO + i * 10},{who}pressure,{i / 2}" for i in range(20)]
    lines[4] = f"not a time,{who}pressure,1"
    lines[9] = (
        f"{THREE_DAYS_AGO},dev-b1,pressure,1" if device_column else f"{THREE_DAYS_AGO},pressure,NaN"
    )
    return ("\n".join(lines) + "\n").encode()


def _run_imports(world: World) -> dict[str, Any]:
    with _db(world) as conn:
        result = run_if_due(
            conn, job_named("imports"), Settings.from_env({}), worker="test", force=True
        )
    assert result is not None
    assert result.outcome == "ok", result.error
    return result.details


def test_uploaded_file_is_imported_by_the_worker_with_bad_lines_reported(
    client: FlaskClient, world: World
) -> None:
    device = world.devices["a"]
    csrf = login(client, world.emails["a_member"])
    uploaded = client.post(
        "/imports",
        data={
            "csrf_token": csrf,
            "device_id": device,
            "format": "",
            "file": (io.BytesIO(_csv_with_bad_lines(device, device_column=False)), "backlog.csv"),
        },
        content_type="multipart/form-data",
    )
    assert uploaded.status_code == 302, uploaded.get_data(as_text=True)[:500]
    location = uploaded.headers["Location"]
    import_id = location.rsplit("/", 1)[1]
    queued = client.get(location).get_data(as_text=True)
    assert "queued" in queued
    assert f"/imports/{import_id}/progress.json" in queued
    assert client.get(f"{location}/progress.json").get_json()["status"] == "queued"

    details = _run_imports(world)
    assert import_id in {d["id"] for d in details["imports"]}

    progress = client.get(f"{location}/progress.json").get_json()
    assert progress["status"] == "done"
    assert progress["percent"] == 100.0
    assert (progress["rows_imported"], progress["rows_rejected"]) == (18, 2)
    assert [e["line"] for e in progress["errors"]] == [5, 10]
    page = client.get(location).get_data(as_text=True)
    table = page[page.index('id="bad-lines"') :]
    assert re.search(r"<td>5</td><td>[^<]+</td>", table)
    assert re.search(r"<td>10</td><td>[^<]+</td>", table)
    assert str(escape(progress["errors"][0]["reason"])) in page
    assert "18 new readings" in page
    with _db(world) as conn:
        stored = conn.execute(
            "SELECT count(*) AS n FROM readings WHERE device_key = "
            "(SELECT device_key FROM devices WHERE device_id = %s) AND metric = 'pressure'",
            (device,),
        ).fetchone()
    assert stored is not None
    assert stored["n"] == 18
    assert "backlog.csv" in client.get("/imports").get_data(as_text=True)

    # Another organisation's member gets 404 for this import, page and progress alike.
    other = client.application.test_client()
    login(other, world.emails["b_member"])
    assert other.get(location).status_code == 404
    assert other.get(f"{location}/progress.json").status_code == 404
    assert "backlog.csv" not in other.get("/imports").get_data(as_text=True)


def test_api_import_with_a_device_column(app: Flask, world: World) -> None:
    client = app.test_client()
    member = _bearer(world, "a_member")
    sent = client.post(
        "/api/v1/imports",
        data={
            "file": (
                io.BytesIO(_csv_with_bad_lines(world.devices["a"], device_column=True)),
                "export.csv",
            )
        },
        headers=member,
        content_type="multipart/form-data",
    )
    assert sent.status_code == 202, sent.get_data(as_text=True)
    created = sent.get_json()
    assert created["status"] == "queued"
    assert sent.headers["Location"].endswith(f"/api/v1/imports/{created['id']}")
    _run_imports(world)
    done = client.get(f"/api/v1/imports/{created['id']}", headers=member).get_json()
    assert done["status"] == "done"
    # Line 10 names a device of another organisation: refused like a malformed line.
    assert (done["rows_imported"], done["rows_rejected"]) == (18, 2)
    assert [e["line"] for e in done["errors"]] == [5, 10]
    listed = client.get("/api/v1/imports", headers=member).get_json()["imports"]
    assert created["id"] in {i["id"] for i in listed}
    assert (
        client.get(
            f"/api/v1/imports/{created['id']}", headers=_bearer(world, "b_admin")
        ).status_code
        == 404
    )

    viewer = client.post(
        "/api/v1/imports",
        data={"file": (io.BytesIO(b"x"), "x.csv")},
        headers=_bearer(world, "a_viewer"),
        content_type="multipart/form-data",
    )
    assert viewer.status_code == 403
    foreign = client.post(
        "/api/v1/imports",
        data={"file": (io.BytesIO(b"x"), "x.csv"), "device_id": world.devices["b"]},
        headers=member,
        content_type="multipart/form-data",
    )
    assert world.devices["b"] in problem(foreign, 422, "refused")["detail"]


def test_viewer_cannot_upload(client: FlaskClient, world: World) -> None:
    csrf = login(client, world.emails["a_viewer"])
    page = client.get("/imports").get_data(as_text=True)
    assert 'type="file"' not in page
    refused = client.post(
        "/imports",
        data={"csrf_token": csrf, "file": (io.BytesIO(b"time,metric,value\n"), "a.csv")},
        content_type="multipart/form-data",
    )
    assert refused.status_code == 403


def test_upload_over_the_limit_is_a_friendly_413(world: World) -> None:
    app = create_app(
        {"DATABASE_URL": world.database_url, "TESTING": True, "IMPORT_MAX_BYTES": 4096}
    )
    try:
        client = app.test_client()
        csrf = login(client, world.emails["a_member"])
        big = b"time,metric,value\n" + b"1700000000,t,1\n" * 1000
        page = client.post(
            "/imports",
            data={"csrf_token": csrf, "file": (io.BytesIO(big), "big.csv")},
            content_type="multipart/form-data",
        )
        assert page.status_code == 413
        text = page.get_data(as_text=True)
        assert "That file is too large" in text
        assert "limited to 4096 bytes" in text
        api = client.post(
            "/api/v1/imports",
            data={"file": (io.BytesIO(big), "big.csv")},
            headers=_bearer(world, "a_member"),
            content_type="multipart/form-data",
        )
        assert "4096 bytes" in problem(api, 413, "too-large")["detail"]
        # The limit is for imports: a small upload still goes through.
        small = client.post(
            "/imports",
            data={
                "csrf_token": csrf,
                "file": (io.BytesIO(b"time,metric,value\n"), "s.csv"),
                "device_id": world.devices["a"],
            },
            content_type="multipart/form-data",
        )
        assert small.status_code == 302
    finally:
        app.extensions["fieldhub.live"].stop()
        app.extensions["fieldhub.pools"].close()


# -- job runs --------------------------------------------------------------------------------
def test_job_runs_page_is_for_operators_only(client: FlaskClient, world: World, app: Flask) -> None:
    _run_imports(world)
    login(client, world.emails["operator"])
    page = client.get("/admin/jobs").get_data(as_text=True)
    runs = page[page.index('id="job-runs"') :]
    assert "<code>imports</code>" in runs
    assert "outcome-ok" in runs
    assert " ms</td>" in runs
    assert (
        client.get("/admin/jobs?job=rollups").get_data(as_text=True).count("<code>imports</code>")
        == 0
    )
    for role in ("a_admin", "a_member", "a_viewer"):
        other = app.test_client()
        login(other, world.emails[role])
        assert other.get("/admin/jobs").status_code == 403, role
