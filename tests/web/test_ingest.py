"""HTTP ingest (/api/v1/ingest/*) against the real database: the MQTT contract over HTTP, device
credentials, Idempotency-Key, and the limits that keep one device from slowing others."""

from __future__ import annotations

import base64
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.rows import dict_row

from fieldhub.core import certificates, device_ca, registry
from fieldhub.core.decode import MAX_PAYLOAD_BYTES
from fieldhub.web import create_app
from tests.web.helpers import World, api_token, problem

TELEMETRY = "/api/v1/ingest/telemetry"
SENML = "/api/v1/ingest/senml"


def _app(world: World, **config: Any) -> Flask:
    return create_app({"DATABASE_URL": world.database_url, "TESTING": True, **config})


@pytest.fixture
def ingest_app(world: World) -> Iterator[Flask]:
    app = _app(world, INGEST_RATE_PER_S=1000)
    yield app
    app.extensions["fieldhub.live"].stop()
    app.extensions["fieldhub.pools"].close()


@pytest.fixture
def device(world: World) -> registry.DeviceCredentials:
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        return registry.create_device(conn, "http-1", org="org-a")


@pytest.fixture
def other(world: World) -> registry.DeviceCredentials:
    """A second device of the same organisation."""
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        return registry.create_device(conn, "http-2", org="org-a")


def _basic(device_id: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{device_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _auth(creds: registry.DeviceCredentials) -> dict[str, str]:
    return _basic(creds.device_id, creds.password)


def _rows(world: World, query: str, **params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(world.database_url, row_factory=dict_row) as conn:
        return conn.execute(query, params).fetchall()


def _readings(world: World, device_id: str) -> list[dict[str, Any]]:
    return _rows(
        world,
        "SELECT r.time, r.metric, r.unit, r.value, r.seq FROM readings r "
        "JOIN devices d USING (device_key) WHERE d.device_id = %(d)s ORDER BY r.time, r.metric",
        d=device_id,
    )


def _dead_letters(world: World, device_id: str) -> list[dict[str, Any]]:
    return _rows(
        world,
        "SELECT reason, topic, detail, payload, device_key FROM dead_letters "
        "WHERE device_id = %(d)s ORDER BY received_at",
        d=device_id,
    )


def test_telemetry_is_stored_like_an_mqtt_message(
    ingest_app: Flask, world: World, device: registry.DeviceCredentials
) -> None:
    client = ingest_app.test_client()
    body = b'{"ts": 1764237600123, "seq": 7, "values": {"temp": 21.5, "door": true}}'
    response = client.post(TELEMETRY, data=body, headers=_auth(device))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"stored": 2, "duplicates": 0}
    rows = _readings(world, device.device_id)
    assert [(r["metric"], r["value"], r["seq"]) for r in rows] == [
        ("door", 1.0, 7),
        ("temp", 21.5, 7),
    ]
    latest = _rows(
        world,
        "SELECT lv.metric FROM latest_values lv JOIN devices d USING (device_key) "
        "WHERE d.device_id = %(d)s ORDER BY 1",
        d=device.device_id,
    )
    assert [r["metric"] for r in latest] == ["door", "temp"]
    state = _rows(
        world,
        "SELECT s.online FROM device_state s JOIN devices d USING (device_key) "
        "WHERE d.device_id = %(d)s",
        d=device.device_id,
    )
    assert state == [{"online": True}]
    # The same request again is a redelivery: stored once.
    again = client.post(TELEMETRY, data=body, headers=_auth(device))
    assert again.get_json() == {"stored": 0, "duplicates": 2}
    assert len(_readings(world, device.device_id)) == 2


def test_senml_keeps_units(
    ingest_app: Flask, world: World, device: registry.DeviceCredentials
) -> None:
    body = b'[{"bn": "room.", "bt": 1764237600, "n": "temp", "u": "Cel", "v": 21.5}]'
    response = ingest_app.test_client().post(SENML, data=body, headers=_auth(device))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [(r["metric"], r["unit"]) for r in _readings(world, device.device_id)] == [
        ("room.temp", "Cel")
    ]


def test_a_payload_the_bridge_would_dead_letter_is_dead_lettered_with_its_reason(
    ingest_app: Flask, world: World, device: registry.DeviceCredentials
) -> None:
    body = b'{"values": {"temp": "x' + b"y" * 300 + b'"}}'
    response = ingest_app.test_client().post(TELEMETRY, data=body, headers=_auth(device))
    doc = problem(response, 422, "dead-letter")
    assert doc["reason"] == "string_too_long"
    assert _readings(world, device.device_id) == []
    [letter] = _dead_letters(world, device.device_id)
    assert letter["reason"] == "string_too_long"
    assert letter["topic"] == "http:/api/v1/ingest/telemetry"
    assert bytes(letter["payload"]) == body
    assert letter["device_key"] is not None


def test_a_conflicting_reading_is_refused_and_the_rest_stored(
    ingest_app: Flask, world: World, device: registry.DeviceCredentials
) -> None:
    client = ingest_app.test_client()
    first = b'{"ts": 1764237600, "values": {"temp": 21.5}}'
    assert client.post(TELEMETRY, data=first, headers=_auth(device)).status_code == 200
    changed = b'{"ts": 1764237600, "values": {"temp": 22.0, "hum": 40}}'
    response = client.post(TELEMETRY, data=changed, headers=_auth(device))
    doc = problem(response, 409, "reading-conflict")
    assert (doc["reason"], doc["stored"], doc["conflicts"]) == ("conflict", 1, 1)
    values = {r["metric"]: r["value"] for r in _readings(world, device.device_id)}
    assert values == {"temp": 21.5, "hum": 40.0}
    assert [d["reason"] for d in _dead_letters(world, device.device_id)] == ["conflict"]


def test_wrong_missing_or_foreign_credentials_are_refused(
    ingest_app: Flask, world: World, device: registry.DeviceCredentials
) -> None:
    client = ingest_app.test_client()
    body = b'{"values": {"temp": 1}}'
    token = api_token(world.database_url, world.emails["a_admin"])
    for headers in (
        {},
        _basic(device.device_id, device.password + "x"),
        _basic("no-such-device", device.password),
        {"Authorization": f"Bearer {token}"},
        {"Authorization": "Basic !!!"},
    ):
        response = client.post(TELEMETRY, data=body, headers=headers)
        problem(response, 401, "device-unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert _readings(world, device.device_id) == []


def test_failed_logins_are_throttled_per_device_and_address(
    ingest_app: Flask,
    world: World,
    device: registry.DeviceCredentials,
    other: registry.DeviceCredentials,
) -> None:
    client = ingest_app.test_client()
    body = b'{"values": {"temp": 1}}'
    for _ in range(10):
        bad = client.post(TELEMETRY, data=body, headers=_basic(device.device_id, "guess"))
        assert bad.status_code == 401
    # Now even the right secret waits: the guesser cannot tell when it found it.
    throttled = client.post(TELEMETRY, data=body, headers=_auth(device))
    problem(throttled, 429, "too-many-requests")
    assert int(throttled.headers["Retry-After"]) >= 1
    # Another device from the same address (a fleet behind one NAT) is not affected.
    assert client.post(TELEMETRY, data=body, headers=_auth(other)).status_code == 200


def test_disabled_and_deleted_devices_are_refused(
    ingest_app: Flask, world: World, device: registry.DeviceCredentials
) -> None:
    client = ingest_app.test_client()
    body = b'{"values": {"temp": 1}}'
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        registry.set_enabled(conn, device.device_id, False)
        problem(client.post(TELEMETRY, data=body, headers=_auth(device)), 403, "device-disabled")
        registry.set_enabled(conn, device.device_id, True)
        assert client.post(TELEMETRY, data=body, headers=_auth(device)).status_code == 200
        registry.delete_device(conn, device.device_id)
        problem(
            client.post(TELEMETRY, data=body, headers=_auth(device)), 401, "device-unauthorized"
        )
        # Registered again under the same id: the old secret is void.
        registry.create_device(conn, device.device_id, org="org-a")
    problem(client.post(TELEMETRY, data=body, headers=_auth(device)), 401, "device-unauthorized")


def test_a_retry_with_the_same_idempotency_key_stores_once_without_new_stamps(
    ingest_app: Flask, world: World, device: registry.DeviceCredentials
) -> None:
    client = ingest_app.test_client()
    # Without ts: every attempt would get new receive stamps, so only the key can tell.
    body = b'[{"values": {"temp": 1}}, {"values": {"temp": 2}}]'
    headers = {**_auth(device), "Idempotency-Key": "batch-0001"}
    first = client.post(TELEMETRY, data=body, headers=headers)
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    stored = _readings(world, device.device_id)
    assert len(stored) == 2
    retry = client.post(TELEMETRY, data=body, headers=headers)
    assert retry.status_code == 200
    assert retry.get_json() == first.get_json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert _readings(world, device.device_id) == stored
    # The same key with another body is a client bug, not a retry.
    other = client.post(TELEMETRY, data=b'{"values": {"temp": 3}}', headers=headers)
    problem(other, 422, "idempotency-key-reused")
    # ... and the same key at the other endpoint is another body too.
    problem(client.post(SENML, data=body, headers=headers), 422, "idempotency-key-reused")
    # Without a key the same body is new data (new stamps).
    assert client.post(TELEMETRY, data=body, headers=_auth(device)).get_json()["stored"] == 2
    assert len(_readings(world, device.device_id)) == 4


def test_keys_are_per_device_and_a_dead_letter_is_replayed_not_repeated(
    ingest_app: Flask,
    world: World,
    device: registry.DeviceCredentials,
    other: registry.DeviceCredentials,
) -> None:
    client = ingest_app.test_client()
    bad = b'{"values": '
    for _ in range(2):
        response = client.post(
            TELEMETRY, data=bad, headers={**_auth(device), "Idempotency-Key": "k1"}
        )
        assert problem(response, 422, "dead-letter")["reason"] == "invalid_json"
    assert len(_dead_letters(world, device.device_id)) == 1
    good = client.post(
        TELEMETRY, data=b'{"values": {"t": 1}}', headers={**_auth(other), "Idempotency-Key": "k1"}
    )
    assert good.status_code == 200
    response = client.post(TELEMETRY, data=b"{}", headers={**_auth(device), "Idempotency-Key": " "})
    problem(response, 400, "invalid-parameter")


def test_concurrent_retries_with_one_key_store_once(
    ingest_app: Flask, world: World, device: registry.DeviceCredentials
) -> None:
    body = b'{"values": {"temp": 1}}'
    headers = {**_auth(device), "Idempotency-Key": "same"}
    statuses: list[int] = []

    def send() -> None:
        statuses.append(
            ingest_app.test_client().post(TELEMETRY, data=body, headers=headers).status_code
        )

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 4
    assert len(_readings(world, device.device_id)) == 1


def test_a_device_over_its_budget_waits_and_others_do_not(
    world: World, device: registry.DeviceCredentials, other: registry.DeviceCredentials
) -> None:
    app = _app(world, INGEST_RATE_PER_S=3)
    try:
        client = app.test_client()
        body = b'{"values": {"temp": 1}}'
        answers = [client.post(TELEMETRY, data=body, headers=_auth(device)) for _ in range(12)]
        refused = [a for a in answers if a.status_code == 429]
        # Twelve requests cannot all fit into the windows they span (at most 3 each).
        assert refused, [a.status_code for a in answers]
        assert {a.status_code for a in answers} <= {200, 429}
        assert refused[0].headers["Retry-After"] == "1"
        problem(refused[0], 429, "too-many-requests")
        assert client.post(TELEMETRY, data=body, headers=_auth(other)).status_code == 200
    finally:
        app.extensions["fieldhub.live"].stop()
        app.extensions["fieldhub.pools"].close()


def test_a_body_over_the_mqtt_payload_limit_is_refused_unread(
    ingest_app: Flask, world: World, device: registry.DeviceCredentials
) -> None:
    body = b"[" + b" " * MAX_PAYLOAD_BYTES + b"]"
    response = ingest_app.test_client().post(TELEMETRY, data=body, headers=_auth(device))
    problem(response, 413, "too-large")
    assert _dead_letters(world, device.device_id) == []


def _cert_client(app: Flask, peer: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = peer
    return client


def test_a_client_certificate_counts_only_through_a_trusted_proxy(
    world: World, device: registry.DeviceCredentials, tmp_path: Path
) -> None:
    app = _app(
        world, INGEST_RATE_PER_S=1000, TRUSTED_PROXIES=(ipaddress.ip_network("127.0.0.1/32"),)
    )
    device_ca.ensure_device_ca(tmp_path)
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        old = device_ca.issue(tmp_path, device.device_id)
        certificates.record(conn, device.device_id, old)
        issued = device_ca.issue(tmp_path, device.device_id)
        certificates.record(conn, device.device_id, issued)
    try:
        body = b'{"values": {"temp": 1}}'
        verified = {
            "X-SSL-Client-Verify": "SUCCESS",
            "X-SSL-Client-DN": f"CN={device.device_id},O=fieldhub devices",
            # As nginx's $ssl_client_serial writes it: upper case, whole bytes.
            "X-SSL-Client-Serial": ("0" + issued.serial.upper())[-32:],
        }
        nginx = _cert_client(app, "127.0.0.1")
        assert nginx.post(TELEMETRY, data=body, headers=verified).status_code == 200
        # The same headers from anyone else are nobody's.
        stranger = _cert_client(app, "192.0.2.7")
        problem(stranger.post(TELEMETRY, data=body, headers=verified), 401, "device-unauthorized")
        failed = {**verified, "X-SSL-Client-Verify": "FAILED:certificate revoked"}
        problem(nginx.post(TELEMETRY, data=body, headers=failed), 401, "device-unauthorized")
        unknown = {**verified, "X-SSL-Client-DN": "CN=not-registered"}
        problem(nginx.post(TELEMETRY, data=body, headers=unknown), 401, "device-unauthorized")
        # The certificate it replaced is refused at once, whatever CRL nginx has loaded.
        rotated = {**verified, "X-SSL-Client-Serial": old.serial.upper()}
        problem(nginx.post(TELEMETRY, data=body, headers=rotated), 401, "device-unauthorized")
        assert len(_readings(world, device.device_id)) == 1
    finally:
        app.extensions["fieldhub.live"].stop()
        app.extensions["fieldhub.pools"].close()
