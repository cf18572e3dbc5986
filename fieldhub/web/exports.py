"""Streaming exports of a device's readings, bounded per user and per process.

An export streams through one server-side cursor on one connection for its whole length
(fieldhub.core.readings.export_rows; the format is fieldhub.core.reading_files), so a slow
download holds that connection as long as it lasts. Two bounds keep that from hurting anyone
else:

* Exports take their connection from a pool of their own (`EXPORT_POOL_SIZE` per process,
  fieldhub.web.db.Pools), never from the pool pages and the API use: however many exports
  run, the rest of the app is served. When that pool is busy for `EXPORT_WAIT_S`, the export
  is refused.
* Each user may run at most `EXPORTS_PER_USER` exports at once, counted in PostgreSQL
  (transaction-level advisory locks on the export's own connection, see queries.sql
  `try_export_slot`), so the bound holds across gunicorn workers and hosts, and one user
  cannot take every export connection.

A refused export is a 429 with Retry-After, decided before any connection is kept."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Final

from flask import current_app
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import TooManyRequests

from fieldhub.core import reading_files, readings
from fieldhub.core.config import MAX_EXPORTS_PER_USER
from fieldhub.core.db import Conn
from fieldhub.web import db

DEFAULT_EXPORTS_PER_USER: Final = 2
DEFAULT_EXPORT_WAIT_S: Final = 2.0
# A refused export is asked to come back after this long: about the time a month of one
# device's readings takes to download.
RETRY_AFTER_S: Final = 30
LOCK_NAMESPACE: Final = 0x45585054  # "EXPT"
# Advisory lock keys are int4: a user's slots are user_id * MAX_SLOTS + slot, folded into the
# int4 range (two users sharing a key at ~134 million users would share their slots).
MAX_SLOTS: Final = MAX_EXPORTS_PER_USER
_INT4: Final = 2**31 - 1


def slot_key(user_id: int, slot: int) -> int:
    return (user_id * MAX_SLOTS + slot) % _INT4


def stream(
    user_id: int,
    device_key: int,
    fmt: reading_files.Format,
    *,
    start: datetime | None,
    end: datetime | None,
    metric: str | None,
    unit: str | None,
) -> tuple[Iterator[str], contextlib.ExitStack]:
    """The chunks of an export and what closes it (its connection and slot).

    Raises TooManyRequests when the user already runs as many exports as allowed, or the
    export connections stay busy; by then any connection taken went back to its pool."""
    config = current_app.config
    limit = min(int(config.get("EXPORTS_PER_USER", DEFAULT_EXPORTS_PER_USER)), MAX_SLOTS)
    wait = float(config.get("EXPORT_WAIT_S", DEFAULT_EXPORT_WAIT_S))
    resources = contextlib.ExitStack()
    try:
        try:
            conn = resources.enter_context(db.pools().get("export").connection(timeout=wait))
        except PoolTimeout:
            raise TooManyRequests(
                "The server is running as many exports as it can; try again shortly.",
                retry_after=RETRY_AFTER_S,
            ) from None
        resources.enter_context(conn.transaction())
        if not any(_take_slot(conn, user_id, slot) for slot in range(limit)):
            raise TooManyRequests(
                f"You are already running {limit} exports; wait for one to finish.",
                retry_after=RETRY_AFTER_S,
            )
    except BaseException:
        resources.close()
        raise
    rows = readings.export_rows(conn, device_key, start=start, end=end, metric=metric, unit=unit)
    return reading_files.chunks(rows, fmt), resources


def _take_slot(conn: Conn, user_id: int, slot: int) -> bool:
    params = {"namespace": LOCK_NAMESPACE, "key": slot_key(user_id, slot)}
    row = conn.execute(db.QUERIES["try_export_slot"], params).fetchone()
    return bool(row and row["locked"])
