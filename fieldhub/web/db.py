"""Database connections of a request: one from the read pool, one from the write pool.

Read-your-writes: reads may be served by a streaming replica that lags the primary. After a
browser's request that wrote, the primary's WAL position is kept in the browser's signed
cookie, and that browser's reads go to the primary until the replica has replayed past it (or
READ_YOUR_WRITES_S has passed, so a replica that stopped cannot pin anyone to the primary for
ever). A command a user just sent therefore shows at once, whatever the replica's lag.

Pools are created on first use in each process, never before gunicorn forks (a pool's
sockets and threads must not be shared between workers). Connections are in autocommit
mode; writes group their statements with `conn.transaction()`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g, request, session
from psycopg_pool import ConnectionPool

from fieldhub.core.db import Conn, Queries, make_pool
from fieldhub.web import metrics

QUERIES = Queries(Path(__file__).with_name("queries.sql"))


class Pools:
    """The pools of one process: `write` (the primary), `read` (the replica, or the primary),
    and `export`, the read database's connections that streaming exports hold for as long as
    a download lasts. Exports have a pool of their own so that they can never take the
    connections pages and the API need (fieldhub.web.exports)."""

    def __init__(self, write_url: str, read_url: str, max_size: int, export_size: int = 4) -> None:
        self.write_url = write_url
        self.read_url = read_url
        self.max_size = max_size
        self.export_size = export_size
        self._lock = threading.Lock()
        self._pid = 0
        self._pools: dict[str, ConnectionPool[Conn]] = {}

    def get(self, kind: str) -> ConnectionPool[Conn]:
        url = self.read_url if kind in ("read", "export") else self.write_url
        # read and write share one pool when they are one database; export never shares.
        key = f"export {url}" if kind == "export" else url
        size = self.export_size if kind == "export" else self.max_size
        with self._lock:
            if self._pid != os.getpid():
                # A forked child must not touch its parent's pools.
                self._pools = {}
                self._pid = os.getpid()
            pool = self._pools.get(key)
            if pool is None:
                pool = make_pool(
                    url,
                    min_size=1,
                    max_size=size,
                    name="fieldhub-web",
                    # A standby only for a read side of its own: when reads and writes share
                    # one URL (and one pool) that pool must find the primary.
                    role="read" if url != self.write_url else "write",
                )
                self._pools[key] = pool
            return pool

    @contextmanager
    def connection(self, kind: str) -> Iterator[Conn]:
        """A connection of the `kind` pool, outside any request (live streams)."""
        pool = self.get(kind)
        with metrics.waited_for(kind, pool):
            conn = pool.getconn()
        try:
            conn.autocommit = True
            yield conn
        finally:
            pool.putconn(conn)
            metrics.pool_state(kind, pool)

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools = {}


def init_app(app: Flask) -> None:
    app.extensions["fieldhub.pools"] = Pools(
        app.config["DATABASE_URL"],
        app.config["READ_DATABASE_URL"],
        int(app.config.get("DB_POOL_SIZE", 10)),
        int(app.config.get("EXPORT_POOL_SIZE", 4)),
    )
    app.config.setdefault("READ_YOUR_WRITES_S", 30.0)
    app.after_request(_remember_write)
    app.teardown_appcontext(_release)


def pools() -> Pools:
    result: Pools = current_app.extensions["fieldhub.pools"]
    return result


def _get(kind: str) -> Conn:
    key = f"db_{kind}"
    conn: Conn | None = g.get(key)
    if conn is None:
        pool = pools().get(kind)
        with metrics.waited_for(kind, pool):
            conn = pool.getconn()
        conn.autocommit = True
        setattr(g, key, conn)
        g.setdefault("db_held", []).append((kind, pool, conn))
    return conn


def read() -> Conn:
    """For queries that may be answered by a replica (or by the primary, right after this
    browser wrote something the replica may not have yet)."""
    if _reads_need_primary():
        return _get("write")
    return _get("read")


_WRITE_MARKER = "rw"  # key in Flask's signed cookie: [primary WAL position, valid until]
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _reads_need_primary() -> bool:
    decided: bool | None = g.get("db_reads_need_primary")
    if decided is not None:
        return decided
    need = False
    marker = session.get(_WRITE_MARKER) if _has_replica() else None
    if marker:
        lsn, valid_until = marker
        if time.time() < valid_until:
            row = _get("read").execute(QUERIES["replica_replayed"], {"lsn": lsn}).fetchone()
            need = not (row and row["replayed"])
        if not need:
            session.pop(_WRITE_MARKER, None)
    g.db_reads_need_primary = need
    return need


def _has_replica() -> bool:
    return pools().read_url != pools().write_url


def _remember_write(response: Any) -> Any:
    """After a browser's state-changing request that used the primary, note how far the
    primary's WAL has got (API clients, which send no cookies, are left alone)."""
    write_conn: Conn | None = g.get("db_write")
    window = float(current_app.config["READ_YOUR_WRITES_S"])
    if (
        write_conn is not None
        and request.method not in _SAFE_METHODS
        and "Authorization" not in request.headers
        and request.blueprint != "ingest"  # devices (a certificate sends no Authorization)
        and window > 0
        and _has_replica()
    ):
        row = write_conn.execute(QUERIES["primary_wal_position"]).fetchone()
        if row:
            session[_WRITE_MARKER] = [row["lsn"], time.time() + window]
    return response


def read_side() -> Conn:
    """The read pool's connection itself, even right after this browser wrote: for pages that
    report on the replica (operators' replication status)."""
    return _get("read")


def write() -> Conn:
    return _get("write")


@contextmanager
def connection(kind: str = "read") -> Iterator[Conn]:
    """A connection outside the request context (streams, the live hub)."""
    with pools().connection(kind) as conn:
        yield conn


def _release(exc: BaseException | None) -> None:
    for kind, pool, conn in g.pop("db_held", []):
        pool.putconn(conn)
        metrics.pool_state(kind, pool)
    g.pop("db_read", None)
    g.pop("db_write", None)
