from __future__ import annotations

import threading

import psycopg
import pytest

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
