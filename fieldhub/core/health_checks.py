"""The database checks of the readiness probes (fieldhub.core.health), on a connection of
their own.

Every query is cut off by the server after STATEMENT_TIMEOUT_MS (a lock, an overloaded
database) and every connect attempt after CONNECT_TIMEOUT_S; a server that does not answer at
all is the probe's timeout's business."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from fieldhub.core.db import Queries, failover_conninfo
from fieldhub.core.health import NotReady
from fieldhub.core.migrate import discover

QUERIES = Queries(Path(__file__).with_name("health_checks.sql"))
STATEMENT_TIMEOUT_MS = 2000
CONNECT_TIMEOUT_S = 2


class ProbeConnection:
    """A connection of the checks' own, opened on first use and again after a failure, so a
    probe every 1.5 s costs a round trip, not a login; several checks may share it."""

    def __init__(self, url: str, application_name: str) -> None:
        self.url = url
        self.application_name = application_name
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._lock = threading.Lock()

    def row(self, query: str) -> tuple[Any, ...]:
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                conn = self._conn = psycopg.connect(
                    failover_conninfo(self.url),
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    application_name=self.application_name,
                    options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                )
            try:
                row = conn.execute(QUERIES[query]).fetchone()
            except psycopg.Error:
                conn.close()
                raise
        if row is None:
            raise NotReady(f"{query} returned nothing")
        return tuple(row)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()

    # -- the checks --------------------------------------------------------------------------
    def answers(self) -> None:
        self.row("database_answers")

    def writable(self) -> None:
        """The primary, accepting writes (not a replica, not read-only)."""
        if not self.row("database_writable")[0]:
            raise NotReady("the database is read-only (a replica, or in recovery)")

    def migrations_applied(self) -> None:
        missing = missing_migrations(self.row("applied_migrations")[0] or [])
        if missing:
            raise NotReady("migrations not applied yet: " + ", ".join(missing))


def missing_migrations(applied: Iterable[int]) -> list[str]:
    """The migrations this code ships that `applied` lacks (newer ones applied by a newer
    release are fine: migrations only ever add)."""
    done = set(applied)
    return [f"{m.version:04d}_{m.name}" for m in discover() if m.version not in done]
