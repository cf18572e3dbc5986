"""The bridge's database side: batch -> COPY -> commit -> NOTIFY -> acknowledge.

The paho network thread only decodes, attributes each message to a device key and appends to
`Pending`; one writer thread takes everything that accumulated while it was committing the
previous batch (group commit: batches grow with load, so latency stays low at low rates and
throughput rises at high ones) and writes it in one transaction:

1. Which devices exist, their keys and whether they are enabled come from an in-memory
   `DeviceDirectory` kept fresh by LISTEN registry_changed. The network thread attributes a
   message to its device's key when it RECEIVES it; only ids it has never seen cost a query,
   at write time. A message whose key is gone by then (the device was deleted, perhaps
   registered again: a new key) is dead-lettered `deleted_device`, never attributed to the
   new device.
2. Readings go in through fieldhub.core.readings: one binary COPY straight into the
   hypertable. A batch that repeats a stored reading (a redelivery after a crash or an
   outage) collides with readings_identity; then the transaction is rolled back and the batch
   is redone staged (temp table + INSERT ... ON CONFLICT DO NOTHING), which also finds the
   conflicts: a message that sends a stored reading's identity with other content is
   dead-lettered `conflict` (its other readings are stored). After a collision the next few
   seconds of batches take the staged path directly, since redeliveries come in runs.
   (Measured: staging every batch carries less than half the throughput,
   docs/benchmarks.md.)
3. latest_values, device_state/presence_events and NOTIFY telemetry (delivered at commit)
   follow in one pipelined round trip; command acks, twin reports (fieldhub.bridge.twin) and
   dead letters in the same transaction. A foreign-key violation there means a device was
   deleted after the directory said it existed: the directory is reloaded and the batch
   redone, its messages dead-lettered.
4. Only after COMMIT are the batch's QoS 1 messages acknowledged. On a database error nothing
   is acknowledged: the batch is kept, retried with backoff, and grows with what arrives
   meanwhile (bounded by the Receive Maximum the bridge announces to the broker).

Failover (docs/scaling.md): a connection that breaks during a transaction leaves the batch IN
DOUBT, because a COMMIT whose reply was lost may have committed (the failover research saw it
in 14 of 43 primary kills). The batch is then retried on whatever node is primary now
(db.connect's target_session_attrs=read-write), as an in-doubt batch: readings go through the
staged path, where the reading identity absorbs what had committed; dead letters are inserted
only where the same one is not stored yet; acks and presence replays are idempotent already. A
transaction that takes longer than the commit deadline is cancelled and treated the same way:
with synchronous replication a commit waits for the standby, and a cancelled wait reports
SUCCESS with a warning although the standby may not have the commit, so a deadline hit is
never acknowledged, whatever the server answered. An in-doubt retry always takes a transaction
id, so its commit waits for the standby to have everything up to it, including the first
attempt's commit. Its new connection first ends the previous connection's server process if that
still runs: behind a cut link it can wait in the batch's transaction, holding the very readings
the retry writes again (`IngestWriter._end_orphan`)."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from fieldhub.bridge import commands, ledger, shedding
from fieldhub.bridge.metrics import BridgeMetrics, RateLimitedLog
from fieldhub.bridge.presence import PresenceEvent, replay
from fieldhub.bridge.twin import TwinReport, apply_reports
from fieldhub.core import db, logs, readings, tombstones
from fieldhub.core.db import Conn, Queries
from fieldhub.core.decode import DecodeError, Reading, decode_senml, decode_telemetry

QUERIES = Queries(Path(__file__).with_name("ingest.sql"))
log = logging.getLogger(__name__)


_NOTIFY_LIMIT = 7900  # bytes per NOTIFY payload (PostgreSQL's limit is 8000)
_STAGED_AFTER_CONFLICT_S = 5.0
# A batch is redone after a unique violation (staged) or a foreign-key violation (directory
# reloaded); more attempts than this means something else is wrong.
_WRITE_ATTEMPTS = 4
# How long one batch's transaction may take before it is cancelled and retried in doubt.
# Batches commit in well under a second here (docs/benchmarks.md); a commit that waits this
# long is waiting for a synchronous standby that is gone (Patroni strict mode with no standby
# left) or for a host that died without a RST. Longer than a measured failover (11.5 s), so a
# commit that merely waits for the new sync standby to attach is not cancelled needlessly.
COMMIT_DEADLINE_S = 20.0
# How long the cancel request itself may take (it opens a new connection to the server).
_CANCEL_TIMEOUT_S = 5.0


class CommitDeadlineExceeded(psycopg.OperationalError):
    """The batch's transaction outlived the commit deadline and was cancelled: in doubt."""


class Telemetry(NamedTuple):
    device_id: str
    # The device's key when the message was received; None: the id was unknown then (looked
    # up at write time).
    device_key: int | None
    readings: list[Reading]
    topic: str
    payload: bytes
    received_at: float
    # QoS 1 messages whose readings took receive stamps (no ts, SenML relative times): the
    # packet id (the ingest ledger records them, fieldhub.bridge.ledger); 0 for the others.
    mid: int = 0
    dup: bool = False  # the broker sent this packet id before


class Status(NamedTuple):
    device_id: str
    device_key: int | None
    online: bool
    topic: str
    payload: bytes
    received_at: float


class CommandAck(NamedTuple):
    device_id: str
    device_key: int | None
    command_id: str
    topic: str
    payload: bytes
    received_at: float


class DeadLetter(NamedTuple):
    received_at: float
    device_id: str | None
    device_key: int | None  # None: unknown device, or deleted when it arrived
    topic: str
    reason: str
    detail: str
    payload: bytes


class Marker(NamedTuple):
    """A deleted device's tombstone marker (fieldhub.core.tombstones.marker_topic)."""

    device_key: int


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
    # Keys of deleted devices whose marker this batch passes (recorded in its transaction).
    markers: list[int] = dataclasses.field(default_factory=list)
    # Packet ids of the QoS 1 messages, valid only on the broker connection `generation`.
    mids: list[int] = dataclasses.field(default_factory=list)
    generation: int = 0
    messages: int = 0
    # Payload bytes of the messages (what QoS 0 shedding bounds besides their number).
    payload_bytes: int = 0
    # QoS 1 messages (of any connection), and how many of them the ingest ledger records.
    qos1: int = 0
    ledger: int = 0
    # A write of (part of) this batch failed in a way that may have committed it.
    in_doubt: bool = False

    def merge(self, other: Batch) -> None:
        self.telemetry += other.telemetry
        self.statuses += other.statuses
        self.acks += other.acks
        self.twin_reports += other.twin_reports
        self.dead += other.dead
        self.in_doubt = self.in_doubt or other.in_doubt
        self.markers += other.markers
        if other.generation != self.generation:
            # Packet ids of an older connection are void: the broker redelivers those
            # messages, and idempotent ingest absorbs the second copy.
            self.mids = other.mids if other.generation > self.generation else self.mids
            self.generation = max(self.generation, other.generation)
        else:
            self.mids += other.mids
        self.messages += other.messages
        self.payload_bytes += other.payload_bytes
        self.qos1 += other.qos1
        self.ledger += other.ledger

    def split(self) -> list[Batch]:
        """One batch per message (without packet ids), to isolate a message the database
        refuses."""
        doubt = self.in_doubt
        singles: list[Batch] = []
        for item in self.telemetry:
            # Counted as QoS 1 whatever they were: an overcount only ages ledger rows sooner.
            singles.append(
                Batch(
                    telemetry=[item],
                    messages=1,
                    qos1=1,
                    ledger=int(bool(item.mid)),
                    in_doubt=doubt,
                )
            )
        for status in self.statuses:
            singles.append(Batch(statuses=[status], messages=1, in_doubt=doubt))
        for ack in self.acks:
            singles.append(Batch(acks=[ack], messages=1, in_doubt=doubt))
        for report in self.twin_reports:
            singles.append(Batch(twin_reports=[report], messages=1, in_doubt=doubt))
        for dead in self.dead:
            singles.append(Batch(dead=[dead], messages=1, in_doubt=doubt))
        if self.markers:
            singles.append(
                Batch(markers=list(self.markers), messages=len(self.markers), in_doubt=doubt)
            )
        return singles


class Pending:
    """What the network thread has received and the writer has not yet taken."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wakeup = threading.Event()
        self.batch = Batch()
        self.writer_idle = False
        # Messages (and their payload bytes) the writer took and has not yet committed: with
        # `batch`, what the bridge holds in memory (read without the lock by the network
        # thread to decide QoS 0 shedding).
        self.held = 0
        self.held_bytes = 0

    def take(self) -> Batch | None:
        with self.lock:
            if not self.batch.messages:
                self.wakeup.clear()
                return None
            batch, self.batch = self.batch, Batch(generation=self.batch.generation)
            # Counted as held until the writer's hold() says exactly, so that the network
            # thread never sees the backlog smaller than it is.
            self.held += batch.messages
            self.held_bytes += batch.payload_bytes
            return batch

    def new_generation(self, generation: int) -> None:
        """The broker connection changed: pending packet ids can no longer be acknowledged."""
        with self.lock:
            self.batch.generation = generation
            self.batch.mids = []

    @property
    def size(self) -> int:
        return self.batch.messages

    def hold(self, batch: Batch | None) -> None:
        """The writer holds `batch` (None: nothing) uncommitted."""
        self.held = batch.messages if batch is not None else 0
        self.held_bytes = batch.payload_bytes if batch is not None else 0

    def over_bound(self) -> bool:
        """Whether the bridge holds so much uncommitted that it sheds further QoS 0."""
        return shedding.over_bound(
            self.held + self.batch.messages, self.held_bytes + self.batch.payload_bytes
        )


class DeviceEntry(NamedTuple):
    key: int
    enabled: bool


class DeviceDirectory:
    """device id -> (device key, enabled) for every registered device, refreshed on
    registry_changed; and the ids of deleted devices whose marker this bridge session has not
    passed yet (`is_deleted`).

    `devices` and `tombstoned` are replaced whole, never changed in place, so the network
    thread can read them without a lock while the writer or the directory thread reloads them.

    A deleted device's id stays "deleted" for this session until the session passes the
    tombstone's marker in its message stream (design in fieldhub.core.tombstone_steps): every
    message of that id received before the marker was sent by the old device (it was cut off
    before the marker went out), even when a new device with the same id exists by then."""

    REFRESH_S = 60.0

    def __init__(self, database_url: str, broker: str = "broker-1", session: str = "") -> None:
        self.database_url = database_url
        # The broker this bridge is connected to and its session there (its account): whose
        # tombstones it follows and which session it registers in bridge_sessions.
        self.broker = broker
        self.session = session
        self.devices: dict[str, DeviceEntry] = {}
        self.tombstoned: dict[str, frozenset[int]] = {}
        self.passed: frozenset[int] = frozenset()
        self._passed_lock = threading.Lock()
        self.loaded = threading.Event()
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

    def key_of(self, device_id: str) -> int | None:
        """The key the id belongs to now (None: unknown to the directory)."""
        entry = self.devices.get(device_id)
        return None if entry is None else entry.key

    def is_deleted(self, device_id: str) -> bool:
        """Whether a message of this id received now was sent by a deleted device."""
        keys = self.tombstoned.get(device_id)
        return keys is not None and not keys <= self.passed

    def pass_marker(self, device_key: int) -> None:
        """The network thread passed a tombstone's marker: later messages of the id are the
        new device's."""
        with self._passed_lock:
            self.passed = self.passed | {device_key}

    def reload(self, conn: Conn) -> None:
        rows = conn.execute(QUERIES["all_devices"]).fetchall()
        self.devices = {
            row["device_id"]: DeviceEntry(row["device_key"], row["enabled"]) for row in rows
        }
        self._load_tombstones(conn)

    def _load_tombstones(self, conn: Conn) -> None:
        pending = tombstones.pending_ids(conn, self.broker, self.session)
        with self._passed_lock:
            self.passed = self.passed | {
                key for keys in pending.values() for key, done in keys if done
            }
        self.tombstoned = {
            device_id: frozenset(key for key, _done in keys) for device_id, keys in pending.items()
        }
        if self.session:
            tombstones.touch_bridge_session(conn, self.broker, self.session)
        self.loaded.set()

    def lookup(self, conn: Conn, device_ids: Iterable[str]) -> None:
        """Ask the database about ids the directory does not know (a device created a moment
        ago, before its registry_changed notification arrived)."""
        rows = conn.execute(QUERIES["lookup_devices"], {"device_ids": list(device_ids)}).fetchall()
        if rows:
            updated = dict(self.devices)
            updated.update(
                (row["device_id"], DeviceEntry(row["device_key"], row["enabled"])) for row in rows
            )
            self.devices = updated

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
                self._log.warning(
                    "registry", "device directory: database error: %s", logs.first_line(exc)
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


@dataclasses.dataclass
class WriteResult:
    rows: int = 0
    staged: bool = False
    duplicates: int = 0
    conflicts: int = 0
    ledger_reused: int = 0
    dead: dict[str, int] = dataclasses.field(default_factory=dict)


def notify_payloads(device_keys: Iterable[int]) -> list[str]:
    """Space-separated device keys, split so that each NOTIFY payload stays under the limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for key in sorted(device_keys):
        text = str(key)
        if current and size + len(text) + 1 > _NOTIFY_LIMIT:
            payloads.append(" ".join(current))
            current, size = [], 0
        current.append(text)
        size += len(text) + 1
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
        *,
        always_stage: bool = False,
        session: str | None = None,
        receive_maximum: int = 10_000,
        commit_deadline_s: float = COMMIT_DEADLINE_S,
    ) -> None:
        self.database_url = database_url
        self.directory = directory
        self.metrics = metrics
        self.commit_deadline_s = commit_deadline_s
        self.conn: Conn | None = None
        # The broker session whose packet ids the ingest ledger keys on (None: no ledger, for
        # writers fed without MQTT), and whether it has ledger rows (then every batch counts
        # its QoS 1 messages; a fleet that always sends ts never pays for that).
        self.session = session
        self.receive_maximum = receive_maximum
        self._has_ledger = False
        # (pid, start) of the server process of this writer's connection, and of the previous
        # connection's if that one ended in the middle of a transaction (`end_orphaned_backend`).
        self._backend: tuple[int, datetime.datetime] | None = None
        self._orphan: tuple[int, datetime.datetime] | None = None
        # always_stage: every batch through the staging table (for measuring the fast path).
        self._staged_until = float("inf") if always_stage else 0.0

    def close(self) -> None:
        if self.conn is not None:
            if self.conn.broken or self.conn.info.transaction_status != TransactionStatus.IDLE:
                # Behind a cut link the server may never learn that this connection is gone:
                # its process can wait on in the batch's transaction.
                self._orphan = self._backend
            self.conn.close()
            self.conn = None

    def connection(self) -> Conn:
        if self.conn is None or self.conn.closed:
            conn = db.connect(self.database_url, application_name="fieldhub-bridge")
            try:
                self._set_up(conn)
            except BaseException:
                conn.close()
                raise
            self.conn = conn
        return self.conn

    def _set_up(self, conn: Conn) -> None:
        if self._orphan is not None:
            self._end_orphan(conn, *self._orphan)
        own = conn.execute(QUERIES["own_backend"]).fetchone()
        self._backend = None if own is None else (own["pid"], own["backend_start"])
        # A temp table is this connection's alone: its commit need not wait for a
        # synchronous standby (which may be the very thing being waited out).
        conn.execute(QUERIES["commit_locally"])
        readings.create_staging(conn)
        if self.session is not None:
            row = conn.execute(QUERIES["session_has_ledger"], {"session": self.session})
            self._has_ledger = bool(row.fetchone()["has"])  # type: ignore[index]
        conn.commit()

    def _end_orphan(self, conn: Conn, pid: int, started: datetime.datetime) -> None:
        """End the previous connection's server process if it still runs. Seen with a link
        cut in the middle of a batch: otherwise the in-doubt retry waits on its locks at every
        attempt until the server notices that the client is gone (about 10 s with
        db.SERVER_TCP, 2 h with the kernel's defaults, never through a proxy that stays up)."""
        try:
            found = conn.execute(
                QUERIES["end_orphaned_backend"], {"pid": pid, "started": started}
            ).fetchone()
            conn.commit()
        except psycopg.errors.InsufficientPrivilege as exc:
            # Another role's process (a DATABASE_URL changed meanwhile): left to the server's
            # keepalives (db.SERVER_TCP).
            conn.rollback()
            found = None
            log.warning("could not end the previous connection's server process: %s", exc)
        self._orphan = None
        if found is not None:
            log.warning(
                "ended server process %d of the previous connection, which was still in its "
                "transaction (%s)",
                pid,
                "gone now" if found["ended"] else "it did not exit within 5 s",
            )

    def write(self, batch: Batch) -> WriteResult:
        """Write the batch in one transaction; raise psycopg.OperationalError (or
        InterfaceError) if it may not have committed, after marking the batch in doubt."""
        try:
            conn = self.connection()
            return self._attempts(conn, batch)
        except CommitDeadlineExceeded:
            batch.in_doubt = True
            # A cancelled wait leaves the connection usable; a fresh one would cost a backend
            # that, with a temp table to drop at exit, itself waits for the standby.
            if self.conn is not None and (
                self.conn.broken or self.conn.info.transaction_status != TransactionStatus.IDLE
            ):
                self.close()
            raise
        except (psycopg.OperationalError, psycopg.InterfaceError):
            batch.in_doubt = True
            self.close()
            raise

    def _attempts(self, conn: Conn, batch: Batch) -> WriteResult:
        attempt = 0
        while True:
            attempt += 1
            staged = batch.in_doubt or time.monotonic() < self._staged_until
            try:
                result = WriteResult(staged=staged)
                with _Deadline(conn, self.commit_deadline_s) as deadline, conn.transaction():
                    if batch.in_doubt:
                        # A transaction id makes this commit wait for the synchronous standby
                        # (even if everything else turns out to be a duplicate), and so also
                        # for the earlier attempt's commit, whose WAL comes before it.
                        conn.execute(QUERIES["take_transaction_id"])
                    self._write(conn, batch, result)
                deadline.check()
                return result
            except psycopg.errors.UniqueViolation:
                # Only the fast path's COPY can collide: the batch repeats a stored reading.
                # Redo it staged (no savepoint around the COPY: one round trip less per batch
                # on the common path), and keep staging for a while.
                if staged or attempt >= _WRITE_ATTEMPTS:
                    raise
                self._staged_until = time.monotonic() + _STAGED_AFTER_CONFLICT_S
            except psycopg.errors.ForeignKeyViolation:
                # A device of the batch was deleted after the directory said it existed: with
                # the directory reloaded, its messages are dead-lettered on the next attempt.
                if attempt >= _WRITE_ATTEMPTS:
                    raise
                self.directory.reload(conn)
                conn.commit()

    def _write(self, conn: Conn, batch: Batch, result: WriteResult) -> None:
        directory = self.directory
        device_ids = {m.device_id for m in batch.telemetry}
        device_ids.update(m.device_id for m in batch.statuses)
        device_ids.update(m.device_id for m in batch.acks)
        device_ids.update(m.device_id for m in batch.twin_reports)
        unattributed = [d.device_id for d in batch.dead if d.device_key is None and d.device_id]
        device_ids.update(unattributed)
        devices = directory.devices
        unknown = [d for d in device_ids if d not in devices]
        if unknown:
            directory.lookup(conn, unknown)
            devices = directory.devices
        dead: list[DeadLetter] = list(batch.dead)
        if unattributed:
            # Refused at receipt before the directory knew the device (created a moment ago,
            # or the bridge just started): attributed now, as its telemetry would be, so that
            # its owners see the letter (they are found by device key).
            # Never a letter refused as a deleted device's: the id's device now may be a new
            # one, which must not see what the old one sent.
            dead = [
                letter._replace(device_key=devices[letter.device_id].key)
                if letter.device_key is None
                and letter.device_id in devices
                and letter.reason != "deleted_device"
                else letter
                for letter in dead
            ]

        def admitted(messages: list[_M]) -> list[tuple[int, _M]]:
            """(key, message) for the messages of enabled devices; the others become dead
            letters."""
            kept: list[tuple[int, _M]] = []
            for message in messages:
                entry = devices.get(message.device_id)
                received_key = message.device_key
                if entry is None or (received_key is not None and received_key != entry.key):
                    # Attributed at receipt to a key that is gone: never to another device.
                    reason = "unknown_device" if received_key is None else "deleted_device"
                    dead.append(_dead(message, reason, "", None))
                elif not entry.enabled:
                    dead.append(_dead(message, "disabled_device", "", entry.key))
                elif received_key is None:
                    kept.append((entry.key, message._replace(device_key=entry.key)))
                else:
                    kept.append((received_key, message))
            return kept

        telemetry = admitted(batch.telemetry)
        # The ingest ledger's statement, sent in the pipeline below (fieldhub.bridge.ledger).
        ledger_query: tuple[str, dict[str, object]] | None = None
        if self.session is not None and (batch.ledger or self._has_ledger):
            counted = {"session": self.session, "count": batch.qos1}
            if batch.ledger:
                telemetry, ledger_query = self._apply_ledger(conn, telemetry, counted, result)
                self._has_ledger = True
            else:
                ledger_query = ("count_committed", counted)

        # -- readings ---------------------------------------------------------------------
        seen: dict[int, float] = {}
        latest: dict[tuple[int, str, str], Reading] = {}
        if telemetry:
            messages = [(key, m.readings) for key, m in telemetry]
            written = readings.write(conn, messages, staged=result.staged, savepoint=False)
            result.rows = written.rows
            result.duplicates = written.duplicates
            result.conflicts = len(written.conflicts)
            if written.conflicts:
                by_message: dict[int, list[readings.Conflict]] = {}
                for conflict in written.conflicts:
                    by_message.setdefault(conflict.ordinal, []).append(conflict)
                for ordinal, found in by_message.items():
                    key, message = telemetry[ordinal]
                    dead.append(_dead(message, "conflict", readings.conflict_detail(found), key))
            latest = readings.newest(messages, skip=written.conflicts)
            for key, message in telemetry:
                seen[key] = message.received_at

        statuses = admitted(batch.statuses)

        # Pipelined: the statements below go to the server together and wait for one reply,
        # which under a loaded CPU saves a scheduling round trip each.
        with conn.pipeline():
            readings.upsert_latest(conn, latest)
            if ledger_query is not None:
                conn.execute(QUERIES[ledger_query[0]], ledger_query[1])
            # -- presence -----------------------------------------------------------------
            if statuses:
                self._apply_statuses(conn, statuses, seen)
                for key, _status in statuses:
                    seen.pop(key, None)
            if seen:
                keys = sorted(seen)
                conn.execute(
                    readings.QUERIES["mark_seen"], {"keys": keys, "times": [seen[k] for k in keys]}
                )
            if telemetry:
                conn.execute(
                    readings.QUERIES["notify_telemetry"],
                    {"payloads": notify_payloads({key for key, _m in telemetry})},
                )

        # -- command acknowledgements -------------------------------------------------------
        acks = [ack for _key, ack in admitted(batch.acks)]
        if acks:
            for ack, reason, detail in commands.apply_acks(conn, acks):
                dead.append(_dead(ack, reason, detail, ack.device_key))

        # -- twin reports: after everything else of the batch, in receive order -------------
        reports = [report for _key, report in admitted(batch.twin_reports)]
        if reports:
            for report, reason, detail in apply_reports(conn, reports):
                dead.append(_dead(report, reason, detail, report.device_key))

        # -- dead letters -----------------------------------------------------------------
        if dead and batch.in_doubt:
            conn.execute(
                QUERIES["insert_dead_letters_once"],
                {
                    "received_at": [_timestamp(letter.received_at) for letter in dead],
                    "device_ids": [letter.device_id for letter in dead],
                    "device_keys": [letter.device_key for letter in dead],
                    "topics": [letter.topic for letter in dead],
                    "reasons": [letter.reason for letter in dead],
                    "details": [letter.detail for letter in dead],
                    "payloads": [letter.payload for letter in dead],
                },
            )
        elif dead:
            with conn.cursor() as cur, cur.copy(QUERIES["copy_dead_letters"]) as copy:
                for letter in dead:
                    copy.write_row(
                        (
                            _timestamp(letter.received_at),
                            letter.device_id,
                            letter.device_key,
                            letter.topic,
                            letter.reason,
                            letter.detail,
                            letter.payload,
                        )
                    )
        for letter in dead:
            result.dead[letter.reason] = result.dead.get(letter.reason, 0) + 1

        # -- deleted devices' markers: everything before them in the stream is in this
        # transaction or an earlier one, so "passed" is true once this commits.
        for device_key in batch.markers:
            tombstones.record_pass(conn, directory.broker, directory.session, device_key)

    def _apply_ledger(
        self,
        conn: Conn,
        telemetry: list[tuple[int, Telemetry]],
        counted: dict[str, object],
        result: WriteResult,
    ) -> tuple[list[tuple[int, Telemetry]], tuple[str, dict[str, object]]]:
        """Give DUP=1 copies of committed messages without ts their first receive stamp back;
        returns the messages and the statement that records this batch's messages without ts
        (fieldhub.bridge.ledger)."""
        digest_of = ledger.payload_hash
        max_age = ledger.max_age(self.receive_maximum)
        if not any(m.dup for _key, m in telemetry if m.mid):
            # The common case: nothing to look up, only to record, in the pipeline.
            entries = {
                m.mid: (digest_of(m.topic, m.payload), round(m.received_at * 1_000_000))
                for _key, m in telemetry
                if m.mid
            }
            packet_ids, hashes, stamps = ledger.pack(entries)
            return telemetry, (
                "record_ledger",
                {
                    **counted,
                    "max_age": max_age,
                    "packet_ids": packet_ids,
                    "hashes": hashes,
                    "stamps": stamps,
                },
            )
        row = conn.execute(QUERIES["count_committed"], counted).fetchone()
        assert row is not None
        committed: int = row["before"]
        rows = conn.execute(
            QUERIES["ledger_batches"], {"session": self.session, "since": committed - max_age}
        )
        stored = ledger.unpack(
            (r["committed"], bytes(r["packet_ids"]), bytes(r["hashes"]), bytes(r["stamps"]))
            for r in rows
        )
        out = list(telemetry)
        # packet id -> (digest, stamp), in receive order (a later use of a packet id wins).
        entries = {}
        for index, (key, message) in enumerate(telemetry):
            if not message.mid:
                continue
            digest = digest_of(message.topic, message.payload)
            stamp = ledger.stamp_us(message.received_at)
            if message.dup:
                # A copy can arrive (on a new connection) while the first is still
                # uncommitted in this batch.
                earlier = entries.get(message.mid)
                entry = stored.get(message.mid)
                reuse: int | None = None
                if earlier is not None and earlier[0] == digest:
                    reuse = earlier[1]
                elif entry is not None and ledger.reusable(
                    entry, digest, committed, self.receive_maximum
                ):
                    reuse = entry.received_us
                if reuse is not None and reuse != stamp:
                    restamped = _restamped(message, ledger.stamp_of(reuse))
                    if restamped is not None:
                        out[index] = (key, restamped)
                        stamp = reuse
                        result.ledger_reused += 1
            entries[message.mid] = (digest, stamp)
        packet_ids, hashes, stamps = ledger.pack(entries)
        return out, (
            "record_ledger_at",
            {
                "session": self.session,
                "committed": committed,
                "since": committed - max_age,
                "packet_ids": packet_ids,
                "hashes": hashes,
                "stamps": stamps,
            },
        )

    def _apply_statuses(
        self, conn: Conn, statuses: list[tuple[int, Status]], seen: dict[int, float]
    ) -> None:
        """The rare path: devices with a status message in this batch, replayed in order."""
        events: dict[int, list[PresenceEvent]] = {}
        for key, status in statuses:
            events.setdefault(key, []).append(
                PresenceEvent(status.received_at, status.online, "status")
            )
        for key, device_events in events.items():
            if key in seen:
                device_events.append(PresenceEvent(seen[key], True, "telemetry"))
        keys = sorted(events)
        previous = {
            row["device_key"]: row["online"]
            for row in conn.execute(QUERIES["lock_device_state"], {"keys": keys})
        }
        online: list[bool] = []
        last_seen: list[float] = []
        changed: list[bool] = []
        flip_keys: list[int] = []
        flip_online: list[bool] = []
        flip_times: list[float] = []
        flip_sources: list[str] = []
        for key in keys:
            outcome = replay(previous.get(key), events[key])
            online.append(outcome.online)
            last_seen.append(outcome.last_seen)
            changed.append(bool(outcome.flips))
            for flip in outcome.flips:
                flip_keys.append(key)
                flip_online.append(flip.online)
                flip_times.append(flip.time)
                flip_sources.append(flip.source)
        conn.execute(
            QUERIES["set_presence"],
            {"keys": keys, "online": online, "times": last_seen, "changed": changed},
        )
        if flip_keys:
            conn.execute(
                QUERIES["insert_presence_events"],
                {
                    "keys": flip_keys,
                    "online": flip_online,
                    "times": flip_times,
                    "sources": flip_sources,
                },
            ).fetchall()


def _restamped(message: Telemetry, stamp: float) -> Telemetry | None:
    """The message decoded again with its first receive stamp (None: it no longer decodes,
    which a stamp that is only older cannot cause; then it keeps its own)."""
    try:
        if message.topic.endswith("/senml"):
            found = decode_senml(message.payload, stamp)
        else:
            found = decode_telemetry(message.payload, stamp)
    except DecodeError:
        return None
    return message._replace(readings=found, received_at=stamp)


class _Deadline:
    """Cancels the connection's running statement (or commit) once `seconds` have passed.

    `check()` after the transaction raises CommitDeadlineExceeded if the cancel was sent,
    whatever the transaction's outcome looked like: a commit whose synchronous-replication
    wait was cancelled reports success although the standby may not have it."""

    def __init__(self, conn: Conn, seconds: float) -> None:
        self.conn = conn
        self.seconds = seconds
        self.fired = threading.Event()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired.set()
        try:
            self.conn.cancel_safe(timeout=_CANCEL_TIMEOUT_S)
        except psycopg.Error as exc:
            # The server is unreachable: the socket's keepalives/tcp_user_timeout end the
            # statement instead (db.TCP_DEFAULTS).
            log.warning(
                "could not cancel a transaction past its deadline: %s", logs.first_line(exc)
            )

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._timer.cancel()
        if exc is not None:
            self.check()

    def check(self) -> None:
        if self.fired.is_set():
            raise CommitDeadlineExceeded(
                f"the transaction took longer than the commit deadline ({self.seconds:g} s); "
                "it may or may not have committed"
            )


def _dead(
    message: Telemetry | Status | CommandAck | TwinReport,
    reason: str,
    detail: str,
    device_key: int | None,
) -> DeadLetter:
    return DeadLetter(
        message.received_at,
        message.device_id,
        device_key,
        message.topic,
        reason,
        detail,
        message.payload,
    )


def _timestamp(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)


__all__ = [
    "COMMIT_DEADLINE_S",
    "Batch",
    "CommandAck",
    "CommitDeadlineExceeded",
    "DeadLetter",
    "DeviceDirectory",
    "DeviceEntry",
    "IngestWriter",
    "Pending",
    "Status",
    "Telemetry",
    "TwinReport",
    "WriteResult",
    "notify_payloads",
]
