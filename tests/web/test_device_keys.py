"""A device's data belongs to its internal key: a device id deleted and registered again (in
another organisation) shows nothing of the old device, raw or rolled up; and units keep
SenML series apart in the API and on the device page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from flask import Flask
from psycopg.rows import dict_row

from fieldhub.analysis import rollups
from fieldhub.core import readings, registry
from fieldhub.core.decode import decode_senml
from tests.web.helpers import World, api_token, login

pytestmark = pytest.mark.integration


def test_a_reregistered_id_sees_none_of_the_old_devices_data(app: Flask, world: World) -> None:
    device_id = world.devices["a"]
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        old_key = registry.get_device(conn, device_id)["device_key"]
        # Besides the seeded last half hour: a month of history, rolled up as the worker does.
        conn.execute(
            "INSERT INTO readings (time, device_key, metric, value)"
            " SELECT t, %s, 'temperature', 30 FROM generate_series(now() - interval '30 days',"
            " now() - interval '2 hours', interval '10 minutes') AS t",
            (old_key,),
        )
        now = datetime.now(UTC)
        rollups.recompute_range(conn, now - timedelta(days=31), now)
        rolled = conn.execute(
            "SELECT count(*) AS n FROM rollup_1h WHERE device_key = %s", (old_key,)
        ).fetchone()
        assert rolled is not None
        assert rolled["n"] > 500

        registry.delete_device(conn, device_id)
        registry.create_device(conn, device_id, org="org-b")
        new_key = registry.get_device(conn, device_id)["device_key"]
        assert new_key != old_key
        # The old data is still stored (a purge is not what protects it): only unreachable.
        left = conn.execute(
            "SELECT (SELECT count(*) FROM readings WHERE device_key = %(k)s) AS raw,"
            " (SELECT count(*) FROM rollup_1h WHERE device_key = %(k)s) AS hours",
            {"k": old_key},
        ).fetchone()
        assert left is not None
        assert left["raw"] > 0
        assert left["hours"] > 0

    client = app.test_client()
    login(client, world.emails["b_viewer"])
    page = client.get(f"/devices/{device_id}").get_data(as_text=True)
    assert "No readings yet" in page
    for range_name in ("1h", "24h", "7d", "30d"):
        body = client.get(
            f"/devices/{device_id}/history.json?metric=temperature&range={range_name}"
        ).get_json()
        values = body["value"] if body["source"] == "raw" else body["avg"]
        assert values == [], (range_name, body["source"], values)
    export = client.get(f"/devices/{device_id}/export.csv?range=30d").get_data(as_text=True)
    assert export.strip().splitlines() == ["time,metric,unit,seq,type,value"]

    headers = {"Authorization": "Bearer " + api_token(world.database_url, world.emails["b_viewer"])}
    assert client.get(f"/api/v1/devices/{device_id}/latest", headers=headers).get_json() == {
        "device_id": device_id,
        "values": [],
    }
    start = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for bucket in ("", "&bucket=3600", "&bucket=86400", "&bucket=600"):
        body = client.get(
            f"/api/v1/devices/{device_id}/telemetry?metric=temperature&start={start}{bucket}",
            headers=headers,
        ).get_json()
        assert body["points"] == [], (bucket, body["source"])
    # The old organisation no longer has the device at all.
    other = app.test_client()
    login(other, world.emails["a_viewer"])
    assert other.get(f"/devices/{device_id}").status_code == 404


def test_senml_units_are_separate_series_in_the_api_and_on_the_page(
    app: Flask, world: World
) -> None:
    device_id = world.devices["a"]
    now = datetime.now(UTC).timestamp()
    pack = b'[{"bn": "pos", "bt": %f, "u": "lat", "v": 60.1}, {"u": "lon", "v": 24.3}]' % (now - 60)
    with psycopg.connect(world.database_url, row_factory=dict_row) as conn:
        key = registry.get_device(conn, device_id)["device_key"]
        readings.create_staging(conn)
        batch = [(key, decode_senml(pack, now))]
        with conn.transaction():
            readings.write(conn, batch)
            readings.upsert_latest(conn, readings.newest(batch))
    headers = {"Authorization": "Bearer " + api_token(world.database_url, world.emails["a_viewer"])}
    client = app.test_client()
    latest = client.get(f"/api/v1/devices/{device_id}/latest", headers=headers).get_json()
    assert sorted((v["metric"], v["unit"], v["value"]) for v in latest["values"]) == [
        ("pos", "lat", 60.1),
        ("pos", "lon", 24.3),
        ("temperature", "", 49.0),
    ]
    lat = client.get(
        f"/api/v1/devices/{device_id}/telemetry?metric=pos&unit=lat", headers=headers
    ).get_json()
    assert (lat["unit"], [p["value"] for p in lat["points"]]) == ("lat", [60.1])
    # Without a unit the series is the unitless one: none here, never a mix of lat and lon.
    plain = client.get(f"/api/v1/devices/{device_id}/telemetry?metric=pos", headers=headers)
    assert plain.get_json()["points"] == []

    login(client, world.emails["a_viewer"])
    page = client.get(f"/devices/{device_id}").get_data(as_text=True)
    assert "60.1 lat" in page
    assert '<option value="pos|lon">pos (lon)</option>' in page
    history = client.get(f"/devices/{device_id}/history.json?metric=pos&unit=lon&range=1h")
    assert history.get_json()["value"] == [24.3]


def test_the_device_page_says_what_a_reused_id_waits_for(app: Flask, world: World) -> None:
    device_id = world.devices["a"]
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        registry.delete_device(conn, device_id)
        registry.create_device(conn, device_id, org="org-b")
    client = app.test_client()
    login(client, world.emails["b_admin"])
    page = client.get(f"/devices/{device_id}").get_data(as_text=True)
    assert 'id="login-waits"' in page
    # Nothing has run yet (no auth-sync, no bridge): the first step is what it waits for.
    assert "auth-sync of broker-1 to remove the old device&#39;s login" in page
    viewer = app.test_client()
    login(viewer, world.emails["b_viewer"])
    assert 'id="login-waits"' not in viewer.get(f"/devices/{device_id}").get_data(as_text=True)
