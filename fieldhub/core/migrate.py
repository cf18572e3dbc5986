"""Schema migrations: `migrations/NNNN_name.sql` beside this module, applied in order, each
exactly once.

Every run takes a session-level advisory lock first, so concurrent `fieldhub migrate` calls
(several hosts starting at once) serialise: the first applies, the others find nothing left to
do. A lock timeout keeps a stuck migration from wedging every later start-up silently."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path

import psycopg

from fieldhub.core.db import failover_conninfo

# Package data: installed with the module, so a deployed host migrates without a checkout.
SCHEMA_DIR = Path(__file__).with_name("migrations")
# Any constant unique to fieldhub; two tools sharing a database must not pick the same one.
MIGRATION_LOCK_KEY = 0x6669_656C_6468_7562  # b"fieldhub"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

log = logging.getLogger(__name__)


class MigrationError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(schema_dir: Path = SCHEMA_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(schema_dir.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def apply_migrations(
    database_url: str, *, schema_dir: Path = SCHEMA_DIR, lock_timeout_s: float = 60.0
) -> list[Migration]:
    """Apply what is missing; return the migrations this call applied."""
    migrations = discover(schema_dir)
    applied_now: list[Migration] = []
    with psycopg.connect(
        failover_conninfo(database_url), autocommit=True, application_name="fieldhub-migrate"
    ) as conn:
        conn.execute(f"SET lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            done = {
                row[0]: row[1]
                for row in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        # An applied migration was edited: the database no longer matches the
                        # files, and silently moving on would hide it.
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} changed after "
                            "it was applied; add a new migration instead"
                        )
                    continue
                log.info("applying migration %04d_%s", migration.version, migration.name)
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now
