"""Streaming exports of a device's readings, bounded per user.

An export streams through one server-side cursor on one pooled connection for its whole
length (fieldhub.core.readings.export_rows; the format is fieldhub.core.reading_files). A
slow download holds that connection as long as it lasts, so each user may run at most
`EXPORTS_PER_USER` at once, counted in PostgreSQL (advisory locks, see queries.sql
`try_export_slot`) so the bound holds across gunicorn workers and hosts. Beyond it the
request is refused with 429 and Retry-After before any connection is kept, and the pool
(DB_POOL_SIZE per worker, larger than the bound) goes on serving everyone else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Final

from flask import current_app
from werkzeug.exceptions import TooManyRequests

from fieldhub.core import reading_files, readings
from fieldhub.web import db

DEFAULT_EXPORTS_PER_USER: Final = 2
# A refused export is asked to come back after this long: about the time a month of one
# device's readings takes to download.
RETRY_AFTER_S: Final = 30
LOCK_NAMESPACE: Final = 0x45585054  # "EXPT"
# Advisory lock keys are int4: a user's slots are user_id * MAX_SLOTS + slot, folded into the
# int4 range (two users sharing a key at ~134 million users would share their slots).
MAX_SLOTS: Final = 16
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

    Raises TooManyRequests when the user already runs as many exports as allowed; by then
    the connection went back to the pool."""
    configured = current_app.config.get("EXPORTS_PER_USER", DEFAULT_EXPORTS_PER_USER)
    limit = min(int(configured), MAX_SLOTS)
    resources = contextlib.ExitStack()
    try:
        conn = resources.enter_context(db.pools().get("read").connection())
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


def _take_slot(conn: db.Conn, user_id: int, slot: int) -> bool:
    params = {"namespace": LOCK_NAMESPACE, "key": slot_key(user_id, slot)}
    row = conn.execute(db.QUERIES["try_export_slot"], params).fetchone()
    return bool(row and row["locked"])
