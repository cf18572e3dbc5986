"""Deleted devices' tombstones: the I/O of the steps in tombstone_steps.py.

Each process works off its own step and records it here: auth-sync (cut-off, reaping the
session, fieldhub.broker.auth_sync), the bridge's command dispatcher (retained topics and the
marker, fieldhub.bridge.commands), the bridges (passing the marker, fieldhub.bridge.app) and the
worker's purge job (fieldhub.analysis.purge). Every step is an idempotent UPDATE guarded by
`... IS NULL`, so a process that restarts half-way simply does its step again."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fieldhub.core.db import Conn, Queries
from fieldhub.core.tombstone_steps import waiting_for

QUERIES = Queries(Path(__file__).with_name("tombstones.sql"))

# The topic of the marker a dispatcher publishes after clearing a deleted device's retained
# topics; bridges subscribe to it without $share, so every bridge session receives it, in
# order after every message the old device sent to that broker (it was cut off before).
MARKER_PREFIX = "fieldhub/control/tombstone/"
MARKER_FILTER = MARKER_PREFIX + "+"
# The broker keeps a bridge's session this long (persistent_client_expiration caps the 1 day
# the bridges ask for); a bridge session not seen for longer has no queue left there.
BRIDGE_SESSION_EXPIRY_S = 86400


def marker_topic(device_key: int) -> str:
    return f"{MARKER_PREFIX}{device_key}"


def marker_key(topic: str) -> int | None:
    """The device key of a marker topic (None: not a marker)."""
    if not topic.startswith(MARKER_PREFIX):
        return None
    tail = topic.removeprefix(MARKER_PREFIX)
    return int(tail) if tail.isdigit() else None


def delete_device(conn: Conn, device_id: str, brokers: Sequence[str]) -> int | None:
    """Delete the device row and write its tombstone, for every broker in `brokers`, inside
    the caller's transaction; returns the deleted key (None: no such device)."""
    row = conn.execute(
        QUERIES["delete_device"], {"device_id": device_id, "brokers": list(brokers)}
    ).fetchone()
    return None if row is None else int(row["device_key"])


def pending(
    conn: Conn, device_id: str, *, session_expiry_s: int = BRIDGE_SESSION_EXPIRY_S
) -> list[dict[str, Any]]:
    """Every broker step an id still waits for: one row per (tombstone, broker) not done,
    with `waiting_for`, the sentence support reads out ("auth-sync of broker-1 to ...")."""
    rows = conn.execute(
        QUERIES["pending_for_id"], {"device_id": device_id, "session_expiry_s": session_expiry_s}
    ).fetchall()
    result = []
    for row in rows:
        entry = dict(row)
        entry["waiting_for"] = waiting_for(row["broker"], row, row["sessions_behind"])
        result.append(entry)
    return result


def pending_ids(conn: Conn, broker: str, session: str) -> dict[str, set[tuple[int, bool]]]:
    """Ids with a pending tombstone on `broker` -> {(deleted key, passed by `session`)}."""
    found: dict[str, set[tuple[int, bool]]] = {}
    for row in conn.execute(QUERIES["pending_ids"], {"broker": broker, "session": session}):
        found.setdefault(row["device_id"], set()).add((int(row["device_key"]), row["passed"]))
    return found


def to_cut_off(conn: Conn, broker: str) -> list[int]:
    return [int(r["device_key"]) for r in conn.execute(QUERIES["to_cut_off"], {"broker": broker})]


def with_certificates(conn: Conn, broker: str, keys: Sequence[int]) -> list[tuple[int, str]]:
    rows = conn.execute(QUERIES["with_certificates"], {"broker": broker, "keys": list(keys)})
    return [(int(r["device_key"]), r["device_id"]) for r in rows]


def mark_cut_off(conn: Conn, broker: str, keys: Sequence[int]) -> int:
    if not keys:
        return 0
    return conn.execute(QUERIES["mark_cut_off"], {"broker": broker, "keys": list(keys)}).rowcount


def to_clear(conn: Conn, broker: str, limit: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(QUERIES["to_clear"], {"broker": broker, "limit": limit})]


def recently_cleared(conn: Conn, broker: str, window_s: float) -> list[dict[str, Any]]:
    rows = conn.execute(QUERIES["recently_cleared"], {"broker": broker, "window_s": window_s})
    return [dict(r) for r in rows]


def mark_retained_cleared(conn: Conn, broker: str, device_key: int) -> None:
    conn.execute(QUERIES["mark_retained_cleared"], {"broker": broker, "device_key": device_key})


def to_remark(conn: Conn, broker: str, limit: int) -> list[int]:
    return [
        int(r["device_key"])
        for r in conn.execute(QUERIES["to_remark"], {"broker": broker, "limit": limit})
    ]


def stuck(conn: Conn, broker: str, older_than_s: float) -> list[dict[str, Any]]:
    """Rows of `broker` unchanged for `older_than_s`, each with its `waiting_for` sentence."""
    rows = conn.execute(QUERIES["stuck"], {"broker": broker, "older_than_s": older_than_s})
    return [{**row, "waiting_for": waiting_for(broker, row)} for row in rows]


def record_pass(conn: Conn, broker: str, session: str, device_key: int) -> None:
    conn.execute(
        QUERIES["record_pass"], {"broker": broker, "session": session, "device_key": device_key}
    )


def touch_bridge_session(conn: Conn, broker: str, session: str) -> None:
    conn.execute(QUERIES["touch_bridge_session"], {"broker": broker, "session": session})


def mark_drained(
    conn: Conn, broker: str, *, session_expiry_s: int = BRIDGE_SESSION_EXPIRY_S
) -> list[int]:
    rows = conn.execute(
        QUERIES["mark_drained"], {"broker": broker, "session_expiry_s": session_expiry_s}
    ).fetchall()
    return [int(r["device_key"]) for r in rows]


def to_reap(conn: Conn, broker: str) -> list[tuple[int, str]]:
    return [
        (int(r["device_key"]), r["device_id"])
        for r in conn.execute(QUERIES["to_reap"], {"broker": broker})
    ]


def mark_session_cleared(conn: Conn, broker: str, device_key: int) -> None:
    conn.execute(QUERIES["mark_session_cleared"], {"broker": broker, "device_key": device_key})


# Each table with its query, written out (tests/core/test_queries.py: no built names).
PURGE_QUERIES = (
    ("readings", "purge_readings"),
    ("rollup_1m", "purge_rollup_1m"),
    ("rollup_1h", "purge_rollup_1h"),
    ("dead_letters", "purge_dead_letters"),
)
PURGE_TABLES = tuple(table for table, _ in PURGE_QUERIES)


def purge_next(
    conn: Conn, *, batch: int, budget_s: float, clock: Callable[[], float] = time.monotonic
) -> dict[str, Any]:
    """Delete the oldest unpurged tombstone's readings, rollups and dead letters in batches of
    at most `batch` rows, each in its own transaction, until done (the tombstone is marked
    purged) or `budget_s` is spent (the next run goes on). `conn` must be in autocommit mode."""
    started = clock()
    row = conn.execute(QUERIES["to_purge"]).fetchone()
    if row is None:
        return {"device_key": None, "deleted": {}, "done": True}
    key = int(row["device_key"])
    deleted = dict.fromkeys(PURGE_TABLES, 0)
    for table, query in PURGE_QUERIES:
        while True:
            with conn.transaction():
                count = conn.execute(QUERIES[query], {"device_key": key, "limit": batch}).rowcount
            deleted[table] += count
            if count == 0:
                break
            if clock() - started > budget_s:
                with conn.transaction():
                    conn.execute(
                        QUERIES["add_purged"], {"device_key": key, "rows": sum(deleted.values())}
                    )
                return {"device_key": key, "deleted": deleted, "done": False}
    with conn.transaction():
        conn.execute(QUERIES["mark_purged"], {"device_key": key, "rows": sum(deleted.values())})
    return {"device_key": key, "deleted": deleted, "done": True}
