"""The bridge's database side: batch -> COPY -> commit -> NOTIFY -> acknowledge.

The paho network thread only decodes and appends to `Pending`; one writer thread takes
everything that accumulated while it was committing the previous batch (group commit: batches
grow with load, so latency stays low at low rates and throughput rises at high ones) and
writes it in one transaction:

1. Which devices exist and are enabled comes from an in-memory `DeviceDirectory` kept fresh by
   LISTEN registry_changed; only ids it has never seen cost a query.
2. Readings go in with one binary COPY straight into the hypertable. A redelivered message
   (after a crash or an outage) collides with the unique index readings_identity; then the
   transaction is rolled back and the batch is redone through a temp table and
   INSERT ... ON CONFLICT DO NOTHING. After a collision the next few seconds of batches take
   that path directly, since redeliveries come in runs. (Measured: staging every batch
   carries less than half the throughput, docs/benchmarks.md.)
3. latest_values, device_state/presence_events and NOTIFY telemetry (delivered at commit)
   follow in one pipelined round trip; command acks, twin reports (fieldhub.bridge.twin) and
   dead letters in the same transaction.
4. Only after COMMIT are the batch's QoS 1 messages acknowledged. On a database error nothing
   is acknowledged: the batch is kept, retried with backoff, and grows with what arrives
   meanwhile (bounded by the Receive Maximum the bridge announces to the broker).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
import psycopg

from fieldhub.bridge.metrics import BridgeMetrics, RateLimitedLog
from fieldhub.bridge.presence import PresenceEvent, replay
from fieldhub.bridge.twin import TwinReport, apply_reports
from fieldhub.core import db
from fieldhub.core.db import Queries
from fieldhub.core.decode import Reading

QUERIES = Queries(Path(__file__).with_name("ingest.sql"))
log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]

# PostgreSQL's binary timestamptz is microseconds since 2000-01-01 UTC.
_PG_EPOCH_S = 946_684_800.0
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
_ROW_TIME = struct.Struct(">hiq")  # field count, then the time field (length 8, int64)
_FLOAT8 = struct.Struct(">id")
_INT8 = struct.Struct(">iq")
_LENGTH = struct.Struct(">i")
_NOTIFY_LIMIT = 7900  # bytes per NOTIFY payload (PostgreSQL's limit is 8000)
_STAGED_AFTER_CONFLICT_S = 5.0


class Telemetry(NamedTuple):
    device_id: str
    readings: list[Reading]
    topic: str
    payload: bytes
    received_at: float


class Status(NamedTuple):
    device_id: str
    online: bool
    topic: str
    payload: bytes
    received_at: float


class CommandAck(NamedTuple):
    device_id: str
    command_id: str
    topic: str
    payload: bytes
    received_at: float


class DeadLetter(NamedTuple):
    received_at: float
    device_id: str | None
    topic: str
    reason: str
    detail: str
    payload: bytes


# Any message of a batch that came from a device (each is checked against the registry).
_M = TypeVar("_M", Telemetry, Status, CommandAck, TwinReport)


@dataclasses.dataclass
class Batch:
    """Messages taken together into one transaction, with what acknowledges them."""

    telemetry: list[Telemetry] = dataclasses.field(default_factory=list)
    statuses: list[Status] = dataclasses.field(default_factory=list)
    acks: list[CommandAck] = dataclasses.field(default_factory=list)
    twin_reports: list[TwinReport] = dataclasses.field(default_factory=list)
    dead: list[DeadLetter] = dataclasses.field(default_factory=list)
    # Packet ids of the QoS 1 messages, valid only on the broker connection `generation`.
    mids: list[int] = dataclasses.field(default_factory=list)
    generation: int = 0
    messages: int = 0

    def merge(self, other: Batch) -> None:
        self.telemetry += other.telemetry
        self.statuses += other.statuses
        self.acks += other.acks
        self.twin_reports += other.twin_reports
        self.dead += other.dead
        if other.generation != self.generation:
            # Packet ids of an older connection are void: the broker redelivers those
            # messages, and idempotent ingest absorbs the second copy.
            self.mids = other.mids if other.generation > self.generation else self.mids
            self.generation = max(self.generation, other.generation)
        else:
            self.mids += other.mids
        self.messages += other.messages

    def split(self) -> list[Batch]:
        """One batch per message (without packet ids), to isolate a message the database
        refuses."""
        singles: list[Batch] = []
        for item in self.telemetry:
            singles.append(Batch(telemetry=[item], messages=1))
        for status in self.statuses:
            singles.append(Batch(statuses=[status], messages=1))
        for ack in self.acks:
            singles.append(Batch(acks=[ack], messages=1))
        for report in self.twin_reports:
            singles.append(Batch(twin_reports=[report], messages=1))
        for dead in self.dead:
            singles.append(Batch(dead=[dead], messages=1))
        return singles


class Pending:
    """What the network thread has received and the writer has not yet taken."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wakeup = threading.Event()
        self.batch = Batch()
        self.writer_idle = False

    def take(self) -> Batch | None:
        with self.lock:
            if not self.batch.messages:
                self.wakeup.clear()
                return None
            batch, self.batch = self.batch, Batch(generation=self.batch.generation)
            return batch

    def new_generation(self, generation: int) -> None:
        """The broker connection changed: pending packet ids can no longer be acknowledged."""
        with self.lock:
            self.batch.generation = generation
            self.batch.mids = []

    @property
    def size(self) -> int:
        return self.batch.messages


class DeviceDirectory:
    """device id -> enabled, for every registered device, refreshed on registry_changed."""

    REFRESH_S = 60.0

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.enabled: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = RateLimitedLog(log)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="device-directory", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def reload(self, conn: Conn) -> None:
        rows = conn.execute(QUERIES["all_devices"]).fetchall()
        self.enabled = {row["device_id"]: row["enabled"] for row in rows}

    def lookup(self, conn: Conn, device_ids: Iterable[str]) -> None:
        """Ask the database about ids the directory does not know (a device created a moment
        ago, before its registry_changed notification arrived)."""
        rows = conn.execute(QUERIES["lookup_devices"], {"device_ids": list(device_ids)}).fetchall()
        if rows:
            updated = dict(self.enabled)
            updated.update((row["device_id"], row["enabled"]) for row in rows)
            self.enabled = updated

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with db.connect(
                    self.database_url, autocommit=True, application_name="fieldhub-bridge-registry"
                ) as conn:
                    conn.execute("LISTEN registry_changed")
                    self.reload(conn)
                    backoff = 0.5
                    last_load = time.monotonic()
                    while not self._stop.is_set():
                        changed = False
                        for _notify in conn.notifies(timeout=1.0):
                            changed = True
                        if changed or time.monotonic() - last_load > self.REFRESH_S:
                            self.reload(conn)
                            last_load = time.monotonic()
            except psycopg.Error as exc:
                self._log.warning("registry", "device directory: database error: %s", _first(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


@dataclasses.dataclass
class WriteResult:
    rows: int = 0
    staged: bool = False
    dead: dict[str, int] = dataclasses.field(default_factory=dict)


def encode_copy(rows: Iterable[tuple[str, Sequence[Reading]]]) -> tuple[bytes, int]:
    """Binary COPY data for readings of (device_id, readings) pairs; returns (data, row count).

    Hand-built rather than through psycopg's row writer: it skips a datetime object per row,
    which is most of the cost of the fast path.
    """
    parts: list[bytes] = [_COPY_HEADER]
    append = parts.append
    device_cache: dict[str, bytes] = {}
    metric_cache: dict[str, bytes] = {}
    pack_time = _ROW_TIME.pack
    pack_float = _FLOAT8.pack
    pack_int = _INT8.pack
    pack_len = _LENGTH.pack
    null = _NULL
    count = 0
    for device_id, readings in rows:
        device = device_cache.get(device_id)
        if device is None:
            raw = device_id.encode()
            device = device_cache[device_id] = pack_len(len(raw)) + raw
        last_t = None
        head = b""
        for t, metric, value, text, _is_bool, seq in readings:
            if t != last_t:
                head = pack_time(6, 8, round((t - _PG_EPOCH_S) * 1_000_000)) + device
                last_t = t
            name = metric_cache.get(metric)
            if name is None:
                raw = metric.encode()
                name = metric_cache[metric] = pack_len(len(raw)) + raw
            if text is None:
                tail = null if seq is None else pack_int(8, seq)
                append(head + name + pack_float(8, value) + null + tail)
            else:
                raw = text.encode()
                append(
                    head
                    + name
                    + null
                    + pack_len(len(raw))
                    + raw
                    + (null if seq is None else pack_int(8, seq))
                )
            count += 1
    append(_COPY_TRAILER)
    return b"".join(parts), count


def _json_value(reading: Reading) -> str:
    if reading.text is not None:
        return orjson.dumps(reading.text).decode()
    if reading.is_bool:
        return "true" if reading.value else "false"
    return orjson.dumps(reading.value).decode()


def notify_payloads(device_ids: Iterable[str]) -> list[str]:
    """Space-separated device ids, split so that each NOTIFY payload stays under the limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for device_id in sorted(device_ids):
        if current and size + len(device_id) + 1 > _NOTIFY_LIMIT:
            payloads.append(" ".join(current))
            current, size = [], 0
        current.append(device_id)
        size += len(device_id) + 1
    if current:
        payloads.append(" ".join(current))
    return payloads


class IngestWriter:
    """Writes batches in transactions on one connection; knows nothing of MQTT."""

    def __init__(
        self,
        database_url: str,
        directory: DeviceDirectory,
        metrics: BridgeMetrics,
        apply_acks: Callable[[Conn, Sequence[Any]], list[tuple[Any, str, str]]],
        make_ack: Callable[[CommandAck], Any],
        *,
        always_stage: bool = False,
    ) -> None:
        self.database_url = database_url
        self.directory = directory
        self.metrics = metrics
        self.apply_acks = apply_acks
        self.make_ack = make_ack
        self.conn: Conn | None = None
        # always_stage: every batch through the staging table (for measuring the fast path).
        self._staged_until = float("inf") if always_stage else 0.0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def connection(self) -> Conn:
        if self.conn is None or self.conn.closed:
            conn = db.connect(self.database_url, application_name="fieldhub-bridge")
            conn.execute(QUERIES["create_staging"])
            conn.commit()
            self.conn = conn
        return self.conn

    def write(self, batch: Batch) -> WriteResult:
        conn = self.connection()
        staged = time.monotonic() < self._staged_until
        try:
            result = WriteResult(staged=staged)
            with conn.transaction():
                self._write(conn, batch, result)
            return result
        except psycopg.errors.UniqueViolation:
            # Only the fast path's COPY can collide: the batch holds a redelivered message.
            # Redo it de-duplicating (no savepoint around the COPY: one round trip less per
            # batch on the common path), and keep de-duplicating for a while.
            if staged:
                raise
            self._staged_until = time.monotonic() + _STAGED_AFTER_CONFLICT_S
        result = WriteResult(staged=True)
        with conn.transaction():
            self._write(conn, batch, result)
        return result

    def _write(self, conn: Conn, batch: Batch, result: WriteResult) -> None:
        directory = self.directory
        dead: list[DeadLetter] = list(batch.dead)
        device_ids = {m.device_id for m in batch.telemetry}
        device_ids.update(m.device_id for m in batch.statuses)
        device_ids.update(m.device_id for m in batch.acks)
        device_ids.update(m.device_id for m in batch.twin_reports)
        enabled = directory.enabled
        unknown = [d for d in device_ids if d not in enabled]
        if unknown:
            directory.lookup(conn, unknown)
            enabled = directory.enabled

        def admitted(messages: list[_M]) -> list[_M]:
            """The messages of enabled devices; the others become dead letters."""
            kept: list[_M] = []
            for message in messages:
                state = enabled.get(message.device_id)
                if state is True:
                    kept.append(message)
                else:
                    reason = "unknown_device" if state is None else "disabled_device"
                    dead.append(_dead(message, reason, ""))
            return kept

        telemetry = admitted(batch.telemetry)

        # -- readings ---------------------------------------------------------------------
        if telemetry:
            data, count = encode_copy((m.device_id, m.readings) for m in telemetry)
            result.rows = count
            with conn.cursor() as cur:
                if result.staged:
                    with cur.copy(QUERIES["copy_staging"]) as copy:
                        copy.write(data)
                    cur.execute(QUERIES["insert_from_staging"])
                else:
                    with cur.copy(QUERIES["copy_readings"]) as copy:
                        copy.write(data)

            latest: dict[tuple[str, str], Reading] = {}
            seen: dict[str, float] = {}
            for message in telemetry:
                device_id = message.device_id
                seen[device_id] = message.received_at
                for reading in message.readings:
                    key = (device_id, reading.metric)
                    previous = latest.get(key)
                    if previous is None or reading.time >= previous.time:
                        latest[key] = reading
            latest_params = {
                "devices": [key[0] for key in latest],
                "metrics": [key[1] for key in latest],
                "times": [r.time for r in latest.values()],
                "values": [_json_value(r) for r in latest.values()],
            }
        else:
            seen = {}
            latest_params = None

        statuses = admitted(batch.statuses)

        # Pipelined: the statements below go to the server together and wait for one reply,
        # which under a loaded CPU saves a scheduling round trip each.
        with conn.pipeline():
            if latest_params is not None:
                conn.execute(QUERIES["upsert_latest_values"], latest_params)
            # -- presence -----------------------------------------------------------------
            if statuses:
                self._apply_statuses(conn, statuses, seen)
                for status in statuses:
                    seen.pop(status.device_id, None)
            if seen:
                devices = sorted(seen)
                conn.execute(
                    QUERIES["mark_seen"],
                    {"devices": devices, "times": [seen[d] for d in devices]},
                )
            if telemetry:
                conn.execute(
                    QUERIES["notify_telemetry"],
                    {"payloads": notify_payloads({m.device_id for m in telemetry})},
                )

        # -- command acknowledgements -------------------------------------------------------
        acks = admitted(batch.acks)
        if acks:
            converted = [(ack, self.make_ack(ack)) for ack in acks]
            originals = {id(message): ack for ack, message in converted}
            refused = self.apply_acks(conn, [message for _ack, message in converted])
            for message, reason, detail in refused:
                original = originals.get(id(message))
                if original is not None:
                    dead.append(_dead(original, reason, detail))

        # -- twin reports: after everything else of the batch, in receive order -------------
        reports = admitted(batch.twin_reports)
        if reports:
            for report, reason, detail in apply_reports(conn, reports):
                dead.append(_dead(report, reason, detail))

        # -- dead letters -----------------------------------------------------------------
        if dead:
            with conn.cursor() as cur, cur.copy(QUERIES["copy_dead_letters"]) as copy:
                for letter in dead:
                    copy.write_row(
                        (
                            _timestamp(letter.received_at),
                            letter.device_id,
                            letter.topic,
                            letter.reason,
                            letter.detail,
                            letter.payload,
                        )
                    )
            for letter in dead:
                result.dead[letter.reason] = result.dead.get(letter.reason, 0) + 1

    def _apply_statuses(self, conn: Conn, statuses: list[Status], seen: dict[str, float]) -> None:
        """The rare path: devices with a status message in this batch, replayed in order."""
        events: dict[str, list[PresenceEvent]] = {}
        for status in statuses:
            events.setdefault(status.device_id, []).append(
                PresenceEvent(status.received_at, status.online, "status")
            )
        for device_id, device_events in events.items():
            if device_id in seen:
                device_events.append(PresenceEvent(seen[device_id], True, "telemetry"))
        devices = sorted(events)
        previous = {
            row["device_id"]: row["online"]
            for row in conn.execute(QUERIES["lock_device_state"], {"device_ids": devices})
        }
        online: list[bool] = []
        last_seen: list[float] = []
        changed: list[bool] = []
        flip_devices: list[str] = []
        flip_online: list[bool] = []
        flip_times: list[float] = []
        flip_sources: list[str] = []
        for device_id in devices:
            outcome = replay(previous.get(device_id), events[device_id])
            online.append(outcome.online)
            last_seen.append(outcome.last_seen)
            changed.append(bool(outcome.flips))
            for flip in outcome.flips:
                flip_devices.append(device_id)
                flip_online.append(flip.online)
                flip_times.append(flip.time)
                flip_sources.append(flip.source)
        conn.execute(
            QUERIES["set_presence"],
            {"devices": devices, "online": online, "times": last_seen, "changed": changed},
        )
        if flip_devices:
            conn.execute(
                QUERIES["insert_presence_events"],
                {
                    "devices": flip_devices,
                    "online": flip_online,
                    "times": flip_times,
                    "sources": flip_sources,
                },
            ).fetchall()


def _dead(
    message: Telemetry | Status | CommandAck | TwinReport, reason: str, detail: str
) -> DeadLetter:
    return DeadLetter(
        message.received_at, message.device_id, message.topic, reason, detail, message.payload
    )


def _timestamp(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = [
    "Batch",
    "CommandAck",
    "DeadLetter",
    "DeviceDirectory",
    "IngestWriter",
    "Pending",
    "Status",
    "Telemetry",
    "TwinReport",
    "encode_copy",
    "notify_payloads",
]
