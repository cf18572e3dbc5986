"""Twins on the bridge: device reports into the database, retained documents out to the broker.

Two pieces, both used by the bridge process (fieldhub.bridge.app):

* `apply_reports` runs inside the bridge's batch transaction and merges the reports devices
  publish on `devices/{id}/twin/reported` into their reported documents, in receive order,
  refusing stale ones (fieldhub.core.twin_documents.judge_report) for the dead letters.
* `TwinPublisher` is driven by the command dispatcher's thread (fieldhub.bridge.commands),
  under the same leader lock (one per broker): a sweep publishes, for every twin whose
  `revision` is ahead of what this broker was last given (every device's twin, whichever
  broker it is homed on: a device that fails over finds its twin there), the whole desired
  document on `devices/{id}/twin/desired` and the delta on `devices/{id}/twin/delta`, both
  retained at QoS 1, and records what this broker now holds only after its PUBACK
  (twin_publications, migration 0016). `forget` makes every twin go out to this broker
  again: after a dispatcher takeover and after every reconnect to the broker, since a broker
  that restarted may have lost up to its last autosave interval of retained messages (the
  broker research's question 7, docs/security.md) and the database is the source of truth.

The device contract is in docs/devices.md, "Twin"."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from fieldhub.core.db import Conn, Queries
from fieldhub.core.twin_documents import (
    INVALID,
    STALE,
    Document,
    Report,
    TwinDocumentError,
    Versions,
    check_document,
    delta,
    json_equal,
    judge_report,
    merge_patch,
    message,
    seq_after,
)

if TYPE_CHECKING:
    from fieldhub.bridge.publishing import Publish

QUERIES = Queries(Path(__file__).with_name("twin.sql"))

# Bounds one sweep; a full batch makes the dispatcher sweep again at once.
SWEEP_BATCH = 500

log = logging.getLogger(__name__)


def desired_topic(device_id: str) -> str:
    return f"devices/{device_id}/twin/desired"


def delta_topic(device_id: str) -> str:
    return f"devices/{device_id}/twin/delta"


class TwinReport(NamedTuple):
    """A decoded report as the bridge received it (the raw payload is kept for dead letters)."""

    device_id: str
    # The device's key when the bridge received the report (None: unknown then), as for every
    # message of the bridge (fieldhub.bridge.ingest).
    device_key: int | None
    report: Report
    topic: str
    payload: bytes
    received_at: float


class _Stored:
    """One locked twin row while a batch's reports are applied to it."""

    __slots__ = ("bump", "changed", "desired_version", "reported", "seq", "time", "version")

    def __init__(self, row: dict[str, Any]) -> None:
        self.desired_version: int = row["desired_version"]
        self.reported: Document = row["reported"]
        self.version: int = row["reported_version"]
        self.seq: int | None = row["reported_seq"]
        self.time = 0.0
        self.changed = False
        self.bump = 0

    @property
    def versions(self) -> Versions:
        return Versions(self.desired_version, self.version, self.seq)


def apply_reports(conn: Conn, reports: Sequence[TwinReport]) -> list[tuple[TwinReport, str, str]]:
    """Apply device reports inside the caller's open transaction, in the order given.

    Returns (report, reason, detail) for every report to dead-letter: `twin_stale` (judged
    against what is stored, including the reports before it in this batch) or `twin_invalid`
    (the merged document would break a limit), and `unknown_device` for a device deleted
    meanwhile. Nothing of a refused report is applied."""
    dead: list[tuple[TwinReport, str, str]] = []
    devices = sorted({report.device_id for report in reports})
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(QUERIES["ensure_twins"], {"devices": devices})
        stored = {
            row["device_id"]: _Stored(row)
            for row in cur.execute(QUERIES["lock_twins"], {"devices": devices}).fetchall()
        }
        for item in reports:
            twin = stored.get(item.device_id)
            if twin is None:
                dead.append((item, "unknown_device", "the device was deleted"))
                continue
            report = item.report
            why = judge_report(twin.versions, report)
            if why is not None:
                dead.append((item, STALE, why))
                continue
            merged = merge_patch(twin.reported, report.state)
            try:
                check_document(merged, "reported")
            except TwinDocumentError as exc:
                dead.append((item, INVALID, str(exc)))
                continue
            if report.version != twin.version or not json_equal(merged, twin.reported):
                twin.bump = 1
            twin.seq = seq_after(twin.versions, report)
            twin.reported = merged
            twin.version = report.version
            twin.time = item.received_at
            twin.changed = True
        changed = [(device_id, twin) for device_id, twin in stored.items() if twin.changed]
        if changed:
            cur.execute(
                QUERIES["set_reported"],
                {
                    "devices": [device_id for device_id, _ in changed],
                    "reported": [Jsonb(twin.reported) for _, twin in changed],
                    "versions": [twin.version for _, twin in changed],
                    "seqs": [twin.seq for _, twin in changed],
                    "times": [twin.time for _, twin in changed],
                    "bumps": [twin.bump for _, twin in changed],
                },
            )
    return dead


class TwinPublisher:
    """Publishes retained twin documents for the dispatcher (see the module docstring)."""

    def __init__(
        self,
        publish: Publish,
        *,
        broker: str = "broker-1",
        brokers: Sequence[str] = (),
        batch_size: int = SWEEP_BATCH,
        workers: int = 8,
    ) -> None:
        self.publish = publish
        # The broker `publish` reaches, which this publisher records; every device's twin goes
        # to it. A twin is held everywhere once every broker of `brokers` holds it.
        self.broker = broker
        self.brokers = list(brokers) or [broker]
        self.batch_size = batch_size
        self.workers = max(1, workers)
        self.last_error: str | None = None

    def forget(self, conn: Conn) -> None:
        """Publish every twin again, from the next sweep on."""
        conn.execute(QUERIES["forget_published"], {"broker": self.broker})

    def sweep(self, conn: Conn) -> tuple[int, bool]:
        """Publish what changed; returns (twins published, all went out).

        `conn` must be in autocommit mode: each mark is committed right after its PUBACKs.
        A twin whose publish fails keeps its old mark and is retried by the next sweep."""
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                QUERIES["twins_to_publish"], {"broker": self.broker, "limit": self.batch_size}
            ).fetchall()
        if not rows:
            return 0, True
        if len(rows) == 1 or self.workers == 1:
            outcomes = [self._publish_twin(conn, row) for row in rows]
        else:
            with ThreadPoolExecutor(
                min(self.workers, len(rows)), thread_name_prefix="twin-publish"
            ) as pool:
                outcomes = list(pool.map(lambda row: self._publish_twin(conn, row), rows))
        published = sum(outcomes)
        return published, published == len(rows)

    def _publish_twin(self, conn: Conn, row: dict[str, Any]) -> bool:
        device_id: str = row["device_id"]
        version: int = row["desired_version"]
        delta_state = delta(row["desired"], row["reported"])
        delta_message: Document = {"version": version, "state": delta_state}
        try:
            # Desired first: a device reacting to the delta finds the document it belongs to.
            if row["published_desired_version"] != version:
                self.publish(desired_topic(device_id), message(version, row["desired"]), True, None)
            if row["published_delta"] is None or not json_equal(
                row["published_delta"], delta_message
            ):
                self.publish(
                    delta_topic(device_id),
                    message(version, delta_state),
                    True,
                    None,
                )
        except Exception as exc:
            # Broker down or slow: `publish` logs it once per outage; the next sweep retries.
            self.last_error = f"publish: {type(exc).__name__}: {exc}"
            log.debug("publishing the twin of %s failed: %s", device_id, exc)
            return False
        # psycopg serialises the workers' statements on the one connection.
        conn.execute(
            QUERIES["record_twin_published"],
            {
                "device_id": device_id,
                "broker": self.broker,
                "brokers": self.brokers,
                "revision": row["revision"],
                "desired_version": version,
                "delta": Jsonb(delta_message),
            },
        )
        return True


__all__ = [
    "TwinPublisher",
    "TwinReport",
    "apply_reports",
    "delta_topic",
    "desired_topic",
]
