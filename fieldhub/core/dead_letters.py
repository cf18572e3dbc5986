"""Dead letters read back for the people they concern: the CLI, the API and the device page.

Rows come with a bounded payload head (fieldhub.core.dead_letter_text.PREVIEW_BYTES), never
the whole payload (up to 256 KiB each), and are turned into `Letter`s with the reason in
words and a safe preview."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

from fieldhub.core import dead_letter_text
from fieldhub.core.db import Conn, Queries, before_params

QUERIES = Queries(Path(__file__).with_name("dead_letters.sql"))


@dataclasses.dataclass(frozen=True)
class Letter:
    id: int
    received_at: datetime
    device_id: str | None
    topic: str
    reason: str
    explanation: str
    detail: str
    payload: dead_letter_text.Preview

    def as_json(self) -> dict[str, object]:
        """The one JSON shape of a letter, for the API and `fieldhub dead-letters --json`
        (orjson writes the time as RFC 3339)."""
        return {
            "id": self.id,
            "received_at": self.received_at,
            "device_id": self.device_id,
            "topic": self.topic,
            "reason": self.reason,
            "explanation": self.explanation,
            "detail": self.detail,
            "payload_preview": self.payload.text,
            "payload_encoding": self.payload.kind,
            "payload_bytes": self.payload.size,
            "payload_truncated": self.payload.truncated,
        }


def _letter(row: dict[str, Any]) -> Letter:
    return Letter(
        id=int(row["id"]),
        received_at=row["received_at"],
        device_id=row["device_id"],
        topic=row["topic"],
        reason=row["reason"],
        explanation=dead_letter_text.explain(row["reason"]),
        detail=row["detail"],
        payload=dead_letter_text.preview(bytes(row["payload_head"]), int(row["payload_size"])),
    )


def for_device(
    conn: Conn,
    device_key: int,
    *,
    since: datetime | None = None,
    limit: int = 50,
    before: tuple[datetime, int] | None = None,
) -> list[Letter]:
    """A device's letters, newest first, by its key (never its id)."""
    params = {
        "device_key": device_key,
        "since": since,
        "limit": limit,
        "preview_bytes": dead_letter_text.PREVIEW_BYTES,
        **before_params(before),
    }
    return [_letter(r) for r in conn.execute(QUERIES["device_dead_letters"], params)]


def recent(conn: Conn, *, since: datetime | None = None, limit: int = 50) -> list[Letter]:
    """Every device's letters (and those of unknown devices), newest first."""
    params = {"since": since, "limit": limit, "preview_bytes": dead_letter_text.PREVIEW_BYTES}
    return [_letter(r) for r in conn.execute(QUERIES["recent_dead_letters"], params)]
