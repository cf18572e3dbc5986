"""The shared twin API: the only way desired state is changed and twins are read.

The web app, the JSON API and the command line all call these functions, so validation, the
version check and the record of who changed what hold wherever a change comes from. They only
write to the database; the bridge's dispatcher (fieldhub.bridge.twin) notices the change and
publishes the retained documents. Device reports come in through the bridge, never here.

With `org_id` given, everything is scoped to that organisation: a device of another
organisation is reported exactly like one that does not exist. The rules themselves (merge
patches, delta, limits) are in fieldhub.core.twin_documents."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import orjson
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from fieldhub.core.db import Conn, Queries
from fieldhub.core.twin_documents import (
    Document,
    TwinDocumentError,
    check_document,
    check_patch,
    delta,
    json_equal,
    merge_patch,
)

QUERIES = Queries(Path(__file__).with_name("twins.sql"))

Source = Literal["web", "api", "cli"]
MAX_HISTORY: Final = 1000


class TwinRequestError(ValueError):
    """A twin request that cannot be carried out; the message is for the person."""


class NotFound(TwinRequestError):
    """An unknown device (or one of another organisation)."""


class VersionMismatch(TwinRequestError):
    """The desired document is not at the version the caller based its change on."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"the desired document is at version {current}, not {expected}; read it again "
            "and base your change on the current version"
        )
        self.expected = expected
        self.current = current


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who changes desired state: recorded with the change."""

    name: str  # an e-mail address, or "command line (user@host)"
    source: Source
    user_id: int | None = None


@dataclasses.dataclass(frozen=True)
class Twin:
    device_id: str
    desired: Document
    desired_version: int
    desired_updated_at: datetime | None
    reported: Document
    reported_version: int
    reported_seq: int | None
    reported_at: datetime | None

    @property
    def delta(self) -> Document:
        return delta(self.desired, self.reported)

    @property
    def in_sync(self) -> bool:
        return not self.delta

    def as_json(self) -> dict[str, Any]:
        """The one JSON shape of a twin (API, CLI --json)."""
        return {
            "device_id": self.device_id,
            "desired": {
                "version": self.desired_version,
                "state": self.desired,
                "updated_at": self.desired_updated_at,
            },
            "reported": {
                "version": self.reported_version,
                "seq": self.reported_seq,
                "state": self.reported,
                "updated_at": self.reported_at,
            },
            "delta": {"version": self.desired_version, "state": self.delta},
        }


def get_twin(conn: Conn, device_id: str, *, org_id: int | None = None) -> Twin:
    """The device's twin; an empty one at version 0 if nothing was ever set or reported."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            QUERIES["get_twin"], {"device_id": device_id, "org_id": org_id}
        ).fetchone()
    if row is None:
        raise NotFound(f"unknown device {device_id!r}")
    return Twin(
        device_id=row["device_id"],
        desired=row["desired"] or {},
        desired_version=row["desired_version"] or 0,
        desired_updated_at=row["desired_updated_at"],
        reported=row["reported"] or {},
        reported_version=row["reported_version"] or 0,
        reported_seq=row["reported_seq"],
        reported_at=row["reported_at"],
    )


def parse_patch(text: str) -> Document:
    """A desired patch given as JSON text (command line, the web form)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise TwinRequestError(f"the desired patch is not valid JSON: {exc}") from None
    return check_desired_patch(value)


def check_desired_patch(patch: object) -> Document:
    try:
        return check_patch(patch, "desired")
    except TwinDocumentError as exc:
        raise TwinRequestError(str(exc)) from None


def update_desired(
    conn: Conn,
    device_id: str,
    patch: Mapping[str, Any],
    *,
    actor: Actor,
    if_version: int | None = None,
    org_id: int | None = None,
) -> Twin:
    """Merge `patch` (RFC 7396) into the desired document and return the twin.

    A patch that changes nothing makes no new version and records nothing. With `if_version`
    the change is made only if the desired document is still at that version
    (VersionMismatch otherwise), so two people editing at once cannot overwrite each other
    unseen."""
    checked = check_desired_patch(patch)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        params = {"device_id": device_id, "org_id": org_id}
        cur.execute(QUERIES["ensure_twin"], params)
        current = cur.execute(QUERIES["lock_twin"], params).fetchone()
        if current is None:
            raise NotFound(f"unknown device {device_id!r}")
        if if_version is not None and if_version != current["desired_version"]:
            raise VersionMismatch(if_version, current["desired_version"])
        merged = merge_patch(current["desired"], checked)
        try:
            check_document(merged, "desired")
        except TwinDocumentError as exc:
            raise TwinRequestError(str(exc)) from None
        if not json_equal(merged, current["desired"]):
            row = cur.execute(
                QUERIES["set_desired"], {"device_id": device_id, "desired": Jsonb(merged)}
            ).fetchone()
            assert row is not None
            cur.execute(
                QUERIES["insert_desired_change"],
                {
                    "device_id": device_id,
                    "version": row["desired_version"],
                    "patch": Jsonb(checked),
                    "changed_by": actor.user_id,
                    "actor": actor.name,
                    "source": actor.source,
                },
            )
    return get_twin(conn, device_id, org_id=org_id)


def desired_history(
    conn: Conn, device_id: str, *, org_id: int | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Who changed desired state and when, newest first: version, patch, actor, source, time."""
    if not 1 <= limit <= MAX_HISTORY:
        raise TwinRequestError(f"limit must be between 1 and {MAX_HISTORY}, not {limit}")
    get_twin(conn, device_id, org_id=org_id)  # scope check: NotFound for a foreign device
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            QUERIES["desired_history"], {"device_id": device_id, "limit": limit}
        ).fetchall()
    return [dict(row) for row in rows]


__all__ = [
    "Actor",
    "NotFound",
    "Twin",
    "TwinRequestError",
    "VersionMismatch",
    "check_desired_patch",
    "desired_history",
    "get_twin",
    "parse_patch",
    "update_desired",
]
