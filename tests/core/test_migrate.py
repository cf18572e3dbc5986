from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.core import registry
from fieldhub.core.migrate import MigrationError, apply_migrations, discover
from fieldhub.stack.postgres import PostgresCluster

pytestmark = pytest.mark.integration


def _fresh_database(cluster: PostgresCluster, name: str) -> str:
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return cluster.url(name)


def test_migrations_apply_once_in_order(pg_cluster: PostgresCluster) -> None:
    url = _fresh_database(pg_cluster, "migrate_once")
    applied = apply_migrations(url)
    assert [m.version for m in applied] == sorted(m.version for m in discover())
    assert apply_migrations(url) == []
    with psycopg.connect(url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        hypertables = {
            r[0]
            for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
    assert versions == [m.version for m in discover()]
    assert {"readings", "dead_letters"} <= hypertables


def test_concurrent_migrations_serialise(pg_cluster: PostgresCluster) -> None:
    url = _fresh_database(pg_cluster, "migrate_concurrent")
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(len(apply_migrations(url)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Exactly one caller applied everything; the others found nothing to do.
    assert sorted(results) == [0, 0, 0, len(discover())]


def test_edited_migration_is_refused(pg_cluster: PostgresCluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = _fresh_database(pg_cluster, "migrate_edited")
    schema = tmp_path / "schema"
    schema.mkdir()
    (schema / "0001_one.sql").write_text("CREATE TABLE one (id int);")
    apply_migrations(url, schema_dir=schema)
    (schema / "0001_one.sql").write_text("CREATE TABLE one (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(url, schema_dir=schema)


def test_0006_carries_data_over_to_device_keys_and_drops_what_no_device_owns(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    url = _fresh_database(pg_cluster, "migrate_0006")
    before = tmp_path / "before"
    before.mkdir()
    # Every other migration first, as on a database that has them all but this one (up to
    # 0015, whose tables refer to device keys and so only ever come after 0006).
    for migration in discover():
        if migration.version != 6 and migration.version < 15:
            (before / f"{migration.version:04d}_{migration.name}.sql").write_text(migration.sql)
    apply_migrations(url, schema_dir=before)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO organisations (name, display_name) VALUES ('o', 'O');
            -- keep: an ordinary device. reborn: its id was deleted in another organisation
            -- and registered again 10 minutes ago (the registry deleted raw readings, never
            -- rollups, presence or dead letters). gone: deleted, never registered again.
            INSERT INTO devices (device_id, org_id, password_hash, created_at) VALUES
                ('keep', 1, 'x', now() - interval '2 days'),
                ('reborn', 1, 'x', now() - interval '10 minutes');
            INSERT INTO readings (time, device_id, metric, value, text_value, seq) VALUES
                (now() - interval '1 hour', 'keep', 'temp', 21.5, NULL, 7),
                (now() - interval '1 hour', 'keep', 'door', 1, NULL, NULL),
                (now() - interval '1 hour', 'keep', 'mode', NULL, 'eco', NULL),
                (now() - interval '3 days', 'reborn', 'temp', 5, NULL, NULL),  -- imported
                (now() - interval '1 minute', 'reborn', 'temp', 6, NULL, NULL),
                (now() - interval '1 hour', 'gone', 'temp', 1, NULL, NULL);
            INSERT INTO latest_values (device_id, metric, time, value) VALUES
                ('keep', 'temp', now(), '21.5'), ('keep', 'door', now(), 'true'),
                ('keep', 'mode', now(), '"eco"'), ('reborn', 'temp', now(), '6');
            INSERT INTO rollup_1m (bucket, device_id, metric, min, max, avg, count, last,
                                   last_time) VALUES
                (date_trunc('minute', now() - interval '1 hour'), 'keep', 'temp',
                 21.5, 21.5, 21.5, 1, 21.5, now() - interval '1 hour'),
                (date_trunc('minute', now() - interval '1 day'), 'reborn', 'secret',
                 1, 1, 1, 1, 1, now() - interval '1 day'),
                (date_trunc('minute', now() - interval '1 minute'), 'reborn', 'temp',
                 6, 6, 6, 1, 6, now() - interval '1 minute'),
                (date_trunc('minute', now() - interval '1 hour'), 'gone', 'temp',
                 1, 1, 1, 1, 1, now() - interval '1 hour');
            INSERT INTO rollup_1h (bucket, device_id, metric, min, max, avg, count, last,
                                   last_time) VALUES
                (date_trunc('hour', now() - interval '1 day'), 'reborn', 'secret',
                 1, 1, 1, 1, 1, now() - interval '1 day'),
                (date_trunc('hour', now() - interval '1 hour'), 'gone', 'temp',
                 1, 1, 1, 1, 1, now() - interval '1 hour');
            INSERT INTO device_state (device_id, online, last_seen) VALUES ('keep', true, now());
            INSERT INTO presence_events (device_id, time, online, source) VALUES
                ('keep', now() - interval '1 hour', true, 'telemetry'),
                ('reborn', now() - interval '1 day', true, 'status'),
                ('reborn', now(), true, 'status');
            INSERT INTO dead_letters (received_at, device_id, topic, reason, payload) VALUES
                (now(), 'keep', 't', 'invalid_json', ''),
                (now() - interval '1 day', 'reborn', 't', 'invalid_json', ''),
                (now(), 'ghost', 't', 'unknown_device', '');
            """
        )
    assert [m.version for m in apply_migrations(url)][:1] == [6]
    with psycopg.connect(url, row_factory=dict_row) as dict_conn:
        keys = {r["device_id"]: r["device_key"] for r in dict_conn.execute("SELECT * FROM devices")}
        assert sorted(keys) == ["keep", "reborn"]
        assert len(set(keys.values())) == 2
        by_key = {key: device for device, key in keys.items()}

        readings = dict_conn.execute(
            "SELECT device_key, metric, unit, seq, value, text_value, is_bool FROM readings"
            " ORDER BY time, metric"
        ).fetchall()
        assert [
            (by_key[r["device_key"]], r["metric"], r["unit"], r["seq"], r["value"], r["is_bool"])
            for r in readings
        ] == [
            ("reborn", "temp", "", None, 5.0, False),
            ("keep", "door", "", None, 1.0, True),  # told a boolean by latest_values
            ("keep", "mode", "", None, None, False),
            ("keep", "temp", "", 7, 21.5, False),
            ("reborn", "temp", "", None, 6.0, False),
        ]

        def rollup(table: str) -> list[tuple[str, str, int]]:
            rows = dict_conn.execute(
                f"SELECT device_key, metric, count FROM {table} ORDER BY bucket".encode()
            ).fetchall()
            return [(by_key[r["device_key"]], r["metric"], r["count"]) for r in rows]

        # The previous owner's "secret" rollups are gone; reborn's imported reading from
        # before its creation is rolled up afresh from its raw row.
        assert rollup("rollup_1m") == [
            ("reborn", "temp", 1),
            ("keep", "temp", 1),
            ("reborn", "temp", 1),
        ]
        assert rollup("rollup_1h") == [("reborn", "temp", 1)]

        latest = dict_conn.execute("SELECT device_key, metric, unit, value FROM latest_values")
        assert sorted((by_key[r["device_key"]], r["metric"], r["unit"]) for r in latest) == [
            ("keep", "door", ""),
            ("keep", "mode", ""),
            ("keep", "temp", ""),
            ("reborn", "temp", ""),
        ]
        events = dict_conn.execute("SELECT device_key, source FROM presence_events ORDER BY time")
        assert [(by_key[r["device_key"]], r["source"]) for r in events] == [
            ("keep", "telemetry"),
            ("reborn", "status"),
        ]
        letters = dict_conn.execute(
            "SELECT device_id, device_key FROM dead_letters ORDER BY received_at, device_id"
        ).fetchall()
        assert [(r["device_id"], r["device_key"]) for r in letters] == [
            ("reborn", None),  # the previous owner's
            ("ghost", None),
            ("keep", keys["keep"]),
        ]

        # The new identity is in force, and the data belongs to the key: deleting the device
        # takes its latest values and state along.
        dict_conn.execute("DELETE FROM devices WHERE device_id = 'keep'")
        assert dict_conn.execute(
            "SELECT (SELECT count(*) FROM latest_values) AS lv,"
            " (SELECT count(*) FROM device_state) AS ds"
        ).fetchone() == {"lv": 1, "ds": 0}
        index = dict_conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'readings_identity'"
        ).fetchone()
        assert index is not None
        assert '(device_key, metric, "time", unit, seq) NULLS NOT DISTINCT' in index["indexdef"]


def test_0016_gives_the_bridge_accounts_their_new_right_and_republishes_everything(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    url = _fresh_database(pg_cluster, "migrate_0016")
    before = tmp_path / "before"
    before.mkdir()
    for migration in discover():
        if migration.version < 16:
            (before / f"{migration.version:04d}_{migration.name}.sql").write_text(migration.sql)
    apply_migrations(url, schema_dir=before)
    old_bridge = [
        "write devices/+/commands/+" if "commands/+" in rule and "ack" not in rule else rule
        for rule in registry.BRIDGE_ACL
    ]
    assert "write devices/+/commands/+" in old_bridge
    custom = ["write devices/+/commands/+"]
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for name, acl in (("svc.bridge-1", old_bridge), ("svc.custom", custom)):
            conn.execute(
                "INSERT INTO service_accounts (username, password_hash, acl) VALUES (%s, 'x', %s)",
                (name, acl),
            )
        conn.execute(
            """
            INSERT INTO organisations (name, display_name) VALUES ('o', 'O');
            INSERT INTO devices (device_id, org_id, password_hash) VALUES ('d', 1, 'x');
            INSERT INTO commands (device_id, name, expires_at, status)
            VALUES ('d', 'x', now() + interval '1 hour', 'sent');
            INSERT INTO device_twins (device_id, revision, published_revision) VALUES ('d', 3, 3);
            """
        )
    apply_migrations(url)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        accounts = {
            row["username"]: row["acl"]
            for row in conn.execute("SELECT username, acl FROM service_accounts")
        }
        assert accounts == {"svc.bridge-1": list(registry.BRIDGE_ACL), "svc.custom": custom}
        # What each broker holds is not known yet: published to every broker once.
        assert conn.execute("SELECT published_everywhere FROM commands").fetchone() == {
            "published_everywhere": False
        }
        assert conn.execute("SELECT published_revision FROM device_twins").fetchone() == {
            "published_revision": -1
        }
