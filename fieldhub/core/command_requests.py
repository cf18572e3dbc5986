"""The shared command API: the only way commands are created, cancelled and read.

The web app and the command line both call these functions, so the validation and the tenant
scoping hold wherever a command comes from. They only write to the database; the bridge's
dispatcher (fieldhub.bridge.commands) notices new rows and publishes them.

With `org_id` given, everything is scoped to that organisation: a device or command of another
organisation is reported exactly like one that does not exist."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from fieldhub.core.command_states import TransitionRefused, on_cancel, parse_status
from fieldhub.core.db import Conn, Queries, before_params

QUERIES = Queries(Path(__file__).with_name("command_requests.sql"))

# Same pattern as the CHECK constraint on commands.name (migrations/0003_commands.sql).
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_PARAMS_BYTES: Final = 8 * 1024
MIN_TTL_S: Final = 10
MAX_TTL_S: Final = 30 * 24 * 3600
DEFAULT_TTL_S: Final = 3600
# Open (queued, sent or delivered) commands one device may have; beyond that a device that
# never comes back would collect an unbounded backlog and flood itself when it does.
MAX_PENDING_PER_DEVICE: Final = 100
MAX_LIST_LIMIT: Final = 1000


class CommandRequestError(ValueError):
    """A command request that cannot be carried out; the message is for the person."""


class NotFound(CommandRequestError):
    """An unknown device or command (or one of another organisation)."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise CommandRequestError(
            f"command name {name!r} must be 1-64 characters of letters, digits, '_', '.' and "
            "'-', starting with a letter or digit"
        )
    return name


def check_params(params: object) -> dict[str, Any]:
    """A JSON object of at most MAX_PARAMS_BYTES once serialised."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise CommandRequestError(
            f"command params must be a JSON object, not {type(params).__name__}"
        )
    try:
        size = len(orjson.dumps(dict(params)))
    except TypeError as exc:
        raise CommandRequestError(f"command params are not plain JSON: {exc}") from None
    if size > MAX_PARAMS_BYTES:
        raise CommandRequestError(
            f"command params are {size} bytes as JSON; the limit is {MAX_PARAMS_BYTES}"
        )
    # orjson writes NaN and infinities as null; refuse them rather than change the request.
    if _has_non_finite(params):
        raise CommandRequestError("command params must not contain NaN or infinite numbers")
    return dict(params)


def parse_params(text: str) -> dict[str, Any]:
    """Params given as JSON text (command line, form field)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CommandRequestError(f"command params are not valid JSON: {exc}") from None
    return check_params(value)


def check_ttl(ttl_s: object) -> int:
    if ttl_s is None:
        return DEFAULT_TTL_S
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
        raise CommandRequestError(f"time to live must be a number of seconds, not {ttl_s!r}")
    if not math.isfinite(ttl_s) or ttl_s != int(ttl_s):
        raise CommandRequestError(f"time to live must be a whole number of seconds, not {ttl_s}")
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise CommandRequestError(
            f"time to live {int(ttl_s)} s is out of bounds; "
            f"use {MIN_TTL_S} s to {MAX_TTL_S} s ({MAX_TTL_S // 86400} days)"
        )
    return int(ttl_s)


def send_command(
    conn: Conn,
    *,
    device_id: str,
    name: str,
    params: Mapping[str, Any] | None,
    ttl_s: float | None,  # check_ttl accepts only whole seconds
    created_by: int | None = None,
    org_id: int | None = None,
) -> dict[str, Any]:
    """Queue a command for a device; returns the stored command (status `queued`)."""
    name = check_name(name)
    checked_params = check_params(params)
    ttl = check_ttl(ttl_s)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        device = cur.execute(
            QUERIES["lock_device"], {"device_id": device_id, "org_id": org_id}
        ).fetchone()
        if device is None:
            raise NotFound(f"unknown device {device_id!r}")
        if not device["enabled"]:
            raise CommandRequestError(
                f"device {device_id!r} is disabled; enable it before sending commands"
            )
        open_row = cur.execute(QUERIES["count_open"], {"device_id": device_id}).fetchone()
        open_count = int(open_row["open"]) if open_row else 0
        if open_count >= MAX_PENDING_PER_DEVICE:
            raise CommandRequestError(
                f"device {device_id!r} already has {open_count} pending commands (the limit is "
                f"{MAX_PENDING_PER_DEVICE}); wait for them to finish or expire, or cancel some"
            )
        row = cur.execute(
            QUERIES["insert_command"],
            {
                "device_id": device_id,
                "name": name,
                "params": Jsonb(checked_params),
                "ttl_s": ttl,
                "created_by": created_by,
            },
        ).fetchone()
    assert row is not None
    return _command(row)


def cancel_command(conn: Conn, command_id: str, *, org_id: int | None = None) -> dict[str, Any]:
    """Cancel an open command; refused with a clear error once it is final."""
    command_uuid = _parse_command_id(command_id)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        current = cur.execute(
            QUERIES["lock_command"], {"id": command_uuid, "org_id": org_id}
        ).fetchone()
        if current is None:
            raise NotFound(f"unknown command {command_id!r}")
        try:
            on_cancel(current["status"])
        except TransitionRefused as exc:
            raise CommandRequestError(f"cannot cancel command {command_id}: {exc}") from None
        row = cur.execute(QUERIES["set_cancelled"], {"id": command_uuid}).fetchone()
    assert row is not None
    return _command(row)


def get_command(conn: Conn, command_id: str, *, org_id: int | None = None) -> dict[str, Any]:
    """The command with its timeline: every status it went through, with the time."""
    command_uuid = _parse_command_id(command_id)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(QUERIES["get_command"], {"id": command_uuid, "org_id": org_id}).fetchone()
        if row is None:
            raise NotFound(f"unknown command {command_id!r}")
        timeline = cur.execute(QUERIES["command_timeline"], {"id": command_uuid}).fetchall()
    command = _command(row)
    command["timeline"] = [dict(event) for event in timeline]
    return command


def list_commands(
    conn: Conn,
    *,
    device_id: str | None = None,
    status: str | None = None,
    org_id: int | None = None,
    limit: int = 100,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[dict[str, Any]]:
    """Commands, newest first, optionally of one device and/or in one status; `before` is the
    (created_at, id) of the last command of the previous page."""
    if status is not None:
        try:
            parse_status(status)
        except TransitionRefused as exc:
            raise CommandRequestError(str(exc)) from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise CommandRequestError(f"limit must be between 1 and {MAX_LIST_LIMIT}, not {limit}")
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            QUERIES["list_commands"],
            {
                "device_id": device_id,
                "status": status,
                "org_id": org_id,
                "limit": limit,
                **before_params(before),
            },
        ).fetchall()
    return [_command(row) for row in rows]


def expire_commands(conn: Conn) -> int:
    """Mark every open command whose time to live has run out `expired`; how many it marked.

    The bridge's dispatcher calls it on every sweep and the worker's command_expiry job every
    10 s, so commands expire while either one is down."""
    row = conn.execute(QUERIES["expire_commands"]).fetchone()
    return int(row["expired"]) if row else 0


def _parse_command_id(command_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(command_id))
    except ValueError:
        raise NotFound(f"unknown command {command_id!r} (command ids are UUIDs)") from None


def _command(row: Mapping[str, Any]) -> dict[str, Any]:
    command = dict(row)
    command["id"] = str(command["id"])
    return command


def _has_non_finite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(item) for item in value)
    return False
