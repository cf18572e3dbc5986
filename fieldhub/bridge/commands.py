"""Commands on the bridge: device acks into the database, queued commands out to the broker.

Two pieces, both used by the bridge process (fieldhub.bridge.app):

* `apply_acks` runs inside the bridge's batch transaction (fieldhub.bridge.ingest calls it)
  and moves commands along their lifecycle (fieldhub.core.command_states) from the acks
  devices publish on `devices/{device_id}/commands/{command_id}/ack`. Acks it cannot use are
  handed back for the dead letters: a malformed payload (including text PostgreSQL cannot
  store), an unknown command, or a command of another device.
* `CommandDispatcher` is a thread with its own database connection. It LISTENs on `commands`
  and also sweeps every few seconds, so a command created while the bridge was down goes out
  when it is back. A sweep expires what ran out of time, publishes every open command its
  broker does not hold yet as a retained QoS 1 message (oldest first) and records it (a
  `queued` one becomes `sent`) only after the broker's PUBACK, then clears the retained
  message of every final command. Only one dispatcher works at a
  time per broker (a PostgreSQL advisory lock), however many bridge instances run. With
  several brokers each bridge process is connected to one broker, and that broker's
  dispatcher publishes EVERY device's commands to it, not only those of the devices homed
  there: a device whose broker host dies reconnects to a standby (its credentials'
  `mqtt_urls`) and must find its pending commands there. Each dispatcher records its own
  broker's PUBACKs (command_publications, migration 0016); a command becomes `sent` at the
  first broker's PUBACK, and a final command is cleared by each broker's dispatcher on its
  broker until every broker has it cleared (`retained_cleared`).
  The same thread, under the same lock, publishes the retained twin documents
  (fieldhub.bridge.twin.TwinPublisher), and after taking over and after every reconnect to
  the broker it reconciles it (`reconcile`: clears the retained commands the database no
  longer has as live, which a broker restored from an old snapshot or down while commands
  finished still holds) and publishes the retained messages again (sent commands, twins): a
  broker restarted from its snapshot has lost what arrived since its last autosave.

The device-side contract and every restart case are written down in docs/commands.md."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from fieldhub.bridge.publishing import Publish
from fieldhub.bridge.twin import TwinPublisher, delta_topic, desired_topic
from fieldhub.core import command_requests, tombstones
from fieldhub.core.command_states import AckStatus, on_ack, parse_ack_status, published_moves
from fieldhub.core.db import Conn, Queries, connect

QUERIES = Queries(Path(__file__).with_name("commands.sql"))

# Any constant unique to the dispatcher; held for the life of the leader's connection.
DISPATCHER_LOCK_KEY = 0x6668_636F_6D6D_616E  # b"fhcomman"
# Bounds how long one sweep holds up the loop; the next sweep picks up the rest at once.
SWEEP_BATCH = 500
# Devices whose queued commands are published in parallel; each device's own commands still
# go one at a time, in order. One PUBACK at a time overall measured about 180 commands/s.
PUBLISH_WORKERS = 8
# After a reconnect (the broker may have restarted from an older snapshot), the retained
# topics of devices deleted this recently are cleared again. The loss window is the broker's
# autosave interval; two days also covers a broker restored from a day-old backup.
RECLEAR_S = 2 * 86400
# How often the marker of a deleted device is sent again while some bridge has not passed it.
MARKER_RESEND_S = 30.0
# An error text from a device longer than this is cut; the full ack is not stored elsewhere.
MAX_ERROR_CHARS = 2000
# What a broker's PUBACK does to a command (queued -> sent), applied in SQL by
# record_command_published.
_PUBLISHED_FROM, _PUBLISHED_TO = published_moves()


log = logging.getLogger(__name__)


class Ack(Protocol):
    """What apply_acks needs of an ack message (the bridge's CommandAck, or AckMessage)."""

    @property
    def device_id(self) -> str: ...  # from the topic, which the broker's ACL ties to the device

    @property
    def command_id(self) -> str: ...  # from the topic, unchecked

    @property
    def payload(self) -> bytes: ...


A = TypeVar("A", bound=Ack)


@dataclasses.dataclass(frozen=True)
class AckMessage:
    device_id: str  # from the topic, which the broker's ACL ties to the sending device
    command_id: str  # from the topic, unchecked
    payload: bytes
    received_at: float  # time.time() when the bridge received it


@dataclasses.dataclass(frozen=True)
class ParsedAck:
    status: AckStatus
    result: Any
    error: str | None


def command_topic(device_id: str, command_id: str) -> str:
    return f"devices/{device_id}/commands/{command_id}"


def parse_ack(payload: bytes) -> ParsedAck:
    """The JSON body of an ack, or ValueError saying what is wrong with it.

    A NUL (U+0000) anywhere in it is refused: `error` is stored as text and `result` as
    jsonb, and PostgreSQL accepts neither with a NUL; letting it through would fail the
    bridge's whole batch instead of this one ack."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"ack is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError(f"ack must be a JSON object, not {type(body).__name__}")
    # JSON can only carry a NUL as the escape \u0000, so a payload without one needs no walk.
    if b"\\u0000" in payload and _has_nul(body):
        raise ValueError("ack contains a NUL character (U+0000), which cannot be stored")
    status = parse_ack_status(body.get("status"))
    error = body.get("error")
    if error is not None and not isinstance(error, str):
        # Devices send error objects too; keep what they said rather than refusing the ack.
        error = orjson.dumps(error).decode()
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS] + "…"
    return ParsedAck(status=status, result=body.get("result"), error=error)


def _has_nul(value: object) -> bool:
    """Whether a NUL is in any string (or object key) of a parsed JSON value."""
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _command_uuid(command_id: str) -> uuid.UUID | None:
    # Checked here, not by a cast in SQL: a cast error would abort the caller's whole batch.
    try:
        return uuid.UUID(command_id)
    except ValueError:
        return None


def apply_acks(conn: Conn, acks: Sequence[A]) -> list[tuple[A, str, str]]:
    """Apply device acks inside the caller's open transaction.

    Returns (ack, reason, detail) for every ack to dead-letter. Duplicate, overtaken and late
    acks are not errors: they change nothing and are not returned. Acks are applied in the
    order given, so several acks of one command in one batch go through its states in turn
    and each change is recorded by the table's trigger."""
    dead: list[tuple[A, str, str]] = []
    usable: list[tuple[A, uuid.UUID, ParsedAck]] = []
    for ack in acks:
        command_uuid = _command_uuid(ack.command_id)
        if command_uuid is None:
            dead.append((ack, "unknown_command", f"command id {ack.command_id!r} is not a uuid"))
            continue
        try:
            parsed = parse_ack(ack.payload)
        except ValueError as exc:
            dead.append((ack, "invalid_ack", str(exc)))
            continue
        usable.append((ack, command_uuid, parsed))
    if not usable:
        return dead

    with conn.cursor(row_factory=dict_row) as cur:
        ids = sorted({command_uuid for _, command_uuid, _ in usable})
        rows = cur.execute(QUERIES["lock_commands"], {"ids": ids}).fetchall()
        commands: dict[uuid.UUID, dict[str, Any]] = {row["id"]: row for row in rows}
        for ack, command_uuid, parsed in usable:
            command = commands.get(command_uuid)
            if command is None:
                dead.append((ack, "unknown_command", f"no command {ack.command_id}"))
                continue
            if command["device_id"] != ack.device_id:
                # Do not tell the acking device whose command it is; operators see the topic.
                dead.append((ack, "foreign_command", "command belongs to another device"))
                continue
            outcome = on_ack(command["status"], parsed.status)
            if outcome.new_status is None:
                log.debug("ack of %s ignored: %s", ack.command_id, outcome.why)
                continue
            cur.execute(
                QUERIES["set_status_from_ack"],
                {
                    "id": command_uuid,
                    "status": outcome.new_status,
                    "result": None if parsed.result is None else Jsonb(parsed.result),
                    "error": parsed.error,
                },
            )
            command["status"] = outcome.new_status
    return dead


def command_payload(row: dict[str, Any]) -> bytes:
    """The retained message a device receives for one command (docs/commands.md)."""
    return orjson.dumps(
        {
            "id": str(row["id"]),
            "name": row["name"],
            "params": row["params"],
            "created_at": _iso(row["created_at"]),
            "expires_at": _iso(row["expires_at"]),
        }
    )


def message_expiry_s(remaining_s: float) -> int:
    """MQTT v5 Message Expiry Interval for a command with this much time left (at least 1 s)."""
    return max(1, math.ceil(remaining_s))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclasses.dataclass
class SweepResult:
    expired: int = 0
    published: int = 0
    cleared: int = 0
    twins: int = 0  # twins whose retained documents went out
    tombstones: int = 0  # deleted devices whose retained topics were cleared (marker sent)
    # False when a publish failed and the sweep stopped early; the next sweep retries.
    complete: bool = True


class CommandDispatcher:
    """The thread that publishes queued commands and clears finished ones (see module doc)."""

    def __init__(
        self,
        database_url: str,
        publish: Publish,
        *,
        sweep_interval_s: float = 2.0,
        retry_backoff_s: float = 1.0,
        batch_size: int = SWEEP_BATCH,
        publish_workers: int = PUBLISH_WORKERS,
        broker: str | None = None,
        broker_name: str = "broker-1",
        brokers: Sequence[str] = (),
        list_retained: Callable[[], list[str] | None] | None = None,
    ) -> None:
        self.database_url = database_url
        # The retained command topics the broker holds now, or None if it could not say
        # (fieldhub.bridge.app.Bridge.retained_command_topics); None: no stray clearing.
        self.list_retained = list_retained
        # Scopes the leader lock: None (one broker) is the one lock of every dispatcher.
        self.broker = broker
        # The broker this dispatcher publishes to, by name: what it records as published or
        # cleared there, and the deleted devices' tombstones it clears there (every device's
        # topics: it may have connected anywhere).
        self.broker_name = broker or broker_name
        # Every configured broker: a command is published (or cleared) everywhere once each
        # of them has recorded its PUBACK.
        self.brokers = list(brokers) or [self.broker_name]
        self.publish = publish
        self.sweep_interval_s = sweep_interval_s
        self.retry_backoff_s = retry_backoff_s
        self.batch_size = batch_size
        self.publish_workers = max(1, publish_workers)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.is_leader = False
        self.sweeps = 0  # completed sweeps, for tests and metrics
        self.last_error: str | None = None
        self._publish_failing = False
        self._markers_sent_at = 0.0
        self._reclear = False
        self.twins = TwinPublisher(
            self._publish_logged,
            broker=self.broker_name,
            brokers=self.brokers,
            batch_size=batch_size,
            workers=self.publish_workers,
        )
        # Set by the bridge on every (re)connect: the broker may have restarted without the
        # retained messages of its last seconds.
        self._reconnected = threading.Event()
        self._reconnected.set()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("dispatcher already started")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="fieldhub-command-dispatcher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def broker_reconnected(self) -> None:
        """The bridge's broker connection is new: reconcile the broker (clear the retained
        commands that are no longer live) and publish the sent commands and twins again.

        Called from the MQTT network thread, so it only sets a flag for the dispatcher's own."""
        self._reconnected.set()

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(
                    self.database_url,
                    autocommit=True,
                    application_name="fieldhub-command-dispatcher",
                ) as conn:
                    self._serve(conn)
            except psycopg.Error as exc:
                self.is_leader = False
                self.last_error = f"database: {type(exc).__name__}"
                log.warning("command dispatcher lost its database connection: %s", exc)
                self._stop.wait(self.retry_backoff_s)
            except Exception:
                self.is_leader = False
                log.exception("command dispatcher failed; restarting it")
                self._stop.wait(self.retry_backoff_s)
        self.is_leader = False

    def _serve(self, conn: Conn) -> None:
        conn.execute("LISTEN commands")
        conn.execute("LISTEN twins")
        conn.execute("LISTEN tombstones")
        self.is_leader = False
        next_sweep = 0.0
        to_republish: list[uuid.UUID] = []
        while not self._stop.is_set():
            if not self.is_leader:
                self.is_leader = self._try_lead(conn)
                if self.is_leader:
                    log.info(
                        "command dispatcher is the leader for %s", self.broker or "every broker"
                    )
                    self._reconnected.set()
            if self.is_leader and self._reconnected.is_set():
                self._reconnected.clear()
                # A broker restored from an old snapshot, or one that was down while
                # commands finished, still holds their retained messages: cleared first.
                self.reconcile(conn)
                # The broker may have lost retained messages while nobody watched (a crash
                # between snapshots, a restart); devices drop duplicates by id (commands) or
                # version (twins), so resend to be sure, every device's sent commands right
                # after the first sweep so that new commands do not wait behind them.
                to_republish = self._sent_ids(conn)
                self.twins.forget(conn)
                # Likewise the clears of deleted devices' retained topics: a broker restored
                # from an older snapshot would hand the old owner's commands to the new one.
                self._reclear = True
                next_sweep = 0.0
            now = time.monotonic()
            if self.is_leader and now >= next_sweep:
                result = self.sweep(conn)
                self.sweeps += 1
                if to_republish and result.complete and self._republish_sent(conn, to_republish):
                    to_republish = []
                if result.complete:
                    busy = (
                        result.tombstones >= self.batch_size
                        or result.published >= self.batch_size
                        or result.cleared >= self.batch_size
                        or result.twins >= self.batch_size
                    )
                    next_sweep = now if busy else now + self._wait_for_expiry(conn)
                else:
                    next_sweep = now + self.retry_backoff_s
            timeout = max(0.0, min(next_sweep - time.monotonic(), self.sweep_interval_s))
            if not self.is_leader:
                timeout = self.sweep_interval_s
            if self._wait_for_work(conn, timeout):
                next_sweep = min(next_sweep, time.monotonic())

    def _try_lead(self, conn: Conn) -> bool:
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                QUERIES["try_leader_lock"], {"key": DISPATCHER_LOCK_KEY, "broker": self.broker}
            ).fetchone()
        return bool(row and row["leader"])

    def _wait_for_expiry(self, conn: Conn) -> float:
        """Seconds until the next sweep: the interval, or sooner if a command expires first."""
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(QUERIES["next_expiry"]).fetchone()
        seconds = row["seconds"] if row else None
        if seconds is None:
            return self.sweep_interval_s
        return min(self.sweep_interval_s, max(0.0, float(seconds)))

    def _wait_for_work(self, conn: Conn, timeout: float) -> bool:
        """Wait up to `timeout` (in short slices, to notice stop()); True if there is work."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for notify in conn.notifies(timeout=min(remaining, 0.25)):
                if self._needs_sweep(notify.channel, notify.payload):
                    return True
            if self.is_leader and self._reconnected.is_set():
                return True
        return False

    @staticmethod
    def _needs_sweep(channel: str, payload: str) -> bool:
        if channel in ("twins", "tombstones"):
            return True
        # "<device_id> <command_id> <status>": sent and delivered need nothing from us.
        status = payload.rsplit(" ", 1)[-1]
        return status not in ("sent", "delivered")

    # -- one sweep -------------------------------------------------------------------------
    def sweep(self, conn: Conn) -> SweepResult:
        """Publish queued, expire, clear final. Public so tests can drive one sweep directly.

        Queued commands go first because a waiting device is what the latency is about; the
        query skips commands already past their time, and the expiry that follows lets this
        same sweep clear them. `conn` must be in autocommit mode: each `sent`/`cleared` mark
        is committed at once, right after its PUBACK, so a crash loses at most the mark of
        one message in flight."""
        result = SweepResult()
        # Deleted devices first: a re-created device's twin waits for this (twins_to_publish).
        result.tombstones, result.complete = self._clear_tombstones(conn)
        if not result.complete:
            return result
        with conn.cursor(row_factory=dict_row) as cur:
            queued = cur.execute(
                QUERIES["queued_to_publish"],
                {"limit": self.batch_size, "broker": self.broker_name},
            )
            result.published, result.complete = self._publish_queued(conn, queued.fetchall())
            result.expired = command_requests.expire_commands(conn)
            finals = cur.execute(
                QUERIES["finals_to_clear"],
                {"limit": self.batch_size, "broker": self.broker_name},
            )
            for command in finals.fetchall():
                topic = command_topic(command["device_id"], str(command["id"]))
                if not self._try_publish(topic, b"", None):
                    result.complete = False
                    return result
                cur.execute(QUERIES["record_command_cleared"], self._record_args(command["id"]))
                result.cleared += 1
        result.twins, complete = self.twins.sweep(conn)
        result.complete = result.complete and complete
        return result

    def reconcile(self, conn: Conn) -> int | None:
        """Clear the retained commands the broker holds that the database no longer has as
        live (final, deleted, or never ours); returns how many, or None when the broker
        could not list them (the next reconnect tries again).

        Runs when the dispatcher's broker connection is new (and when it takes over); the
        sent ones are published again right after (`_serve`), and the twins with them. The
        listing (`list_retained`) subscribes to the broker's retained command topics for as
        long as the broker takes to send them.

        Measured on this machine (loopback Mosquitto 2.0.11, PostgreSQL, two cores shared
        with other work), 10,000 retained commands over 100 devices: listing 0.06-0.11 s;
        when all are live, checking them against the database 0.18 s and nothing to clear;
        when all are stray, clearing them 2.0 s (8 clears in flight; 3.5 s one at a time).
        At 100,000 devices with one retained command each that is about 1 s of listing and
        2 s of checking, and at worst 20 s of clearing if every one was stray; the listing
        is bounded by the bridge's LISTING_TIMEOUT_S (60 s). Sweeps wait meanwhile."""
        if self.list_retained is None:
            return None
        started = time.monotonic()
        topics = self.list_retained()
        if topics is None:
            # Not connected yet (a dispatcher that just took over), or the connection
            # changed: the next connection sets _reconnected, which lists again.
            log.info("retained commands of %s not listed; not reconciled now", self.broker_name)
            return None
        listed = time.monotonic() - started
        held: dict[str, tuple[str, uuid.UUID | None]] = {}
        for topic in topics:
            _, device_id, _, command_id = topic.split("/")
            held[topic] = (device_id, _command_uuid(command_id))
        ids = sorted({command for _, command in held.values() if command is not None})
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(QUERIES["live_among"], {"ids": ids}).fetchall()
        live = {(row["device_id"], row["id"]) for row in rows}
        strays = [topic for topic, key in held.items() if key not in live]
        # Each clear is independent of the others (unlike a device's commands, no order to
        # keep), so as many in flight as the publish workers.
        with ThreadPoolExecutor(self.publish_workers, thread_name_prefix="reconcile") as pool:
            cleared = sum(pool.map(lambda topic: self._try_publish(topic, b"", None), strays))
        if cleared < len(strays):
            log.warning(
                "reconciling %s: %d of %d clears failed (the next reconnect tries again)",
                self.broker_name,
                len(strays) - cleared,
                len(strays),
            )
        log.info(
            "reconciled %s: %d retained commands listed in %.2f s, %d no longer live cleared"
            " in %.2f s",
            self.broker_name,
            len(held),
            listed,
            cleared,
            time.monotonic() - started - listed,
        )
        return cleared

    def _clear_tombstones(self, conn: Conn) -> tuple[int, bool]:
        """For each deleted device cut off from this broker: empty retained messages on its
        command topics and twin topics, then the marker (QoS 1, not retained) that every
        bridge session receives behind the old device's last message; then record it. A
        failed publish leaves the tombstone for the next sweep (all of it is idempotent)."""
        done = 0
        if self._reclear:
            # Runs before the twins are published again (same sweep), so a re-created
            # device's twin document is published after its id's topics are cleared.
            for row in tombstones.recently_cleared(conn, self.broker_name, RECLEAR_S):
                if not self._clear_retained(row["device_id"], row["command_ids"]):
                    return done, False
            self._reclear = False
        for row in tombstones.to_clear(conn, self.broker_name, self.batch_size):
            device_id: str = row["device_id"]
            if not self._clear_retained(device_id, row["command_ids"]):
                return done, False
            try:
                self._publish_logged(tombstones.marker_topic(row["device_key"]), b"", False, None)
            except Exception:
                return done, False
            tombstones.mark_retained_cleared(conn, self.broker_name, row["device_key"])
            log.info("cleared the retained topics of deleted device %s", device_id)
            done += 1
        now = time.monotonic()
        if now - self._markers_sent_at >= MARKER_RESEND_S:
            self._markers_sent_at = now
            for device_key in tombstones.to_remark(conn, self.broker_name, self.batch_size):
                try:
                    self._publish_logged(tombstones.marker_topic(device_key), b"", False, None)
                except Exception:
                    return done, False
        return done, True

    def _clear_retained(self, device_id: str, command_ids: Sequence[uuid.UUID]) -> bool:
        """Empty retained messages on a deleted device's command and twin topics."""
        topics = [command_topic(device_id, str(c)) for c in command_ids]
        topics += [desired_topic(device_id), delta_topic(device_id)]
        return all(self._try_publish(topic, b"", None) for topic in topics)

    def _publish_queued(self, conn: Conn, commands: list[dict[str, Any]]) -> tuple[int, bool]:
        """Publish and record this broker's PUBACK (the first broker's makes a queued command
        `sent`): devices in parallel, each device's commands in order.

        A failed publish stops only that device's remaining commands (so none of them
        overtakes it); the next sweep starts again from its oldest. Returns (published, all
        went out)."""
        by_device: dict[str, list[dict[str, Any]]] = {}
        for command in commands:
            by_device.setdefault(command["device_id"], []).append(command)
        if len(by_device) <= 1 or self.publish_workers == 1:
            outcomes = [self._publish_in_order(conn, queue) for queue in by_device.values()]
        else:
            workers = min(self.publish_workers, len(by_device))
            with ThreadPoolExecutor(workers, thread_name_prefix="command-publish") as pool:
                outcomes = list(
                    pool.map(
                        lambda queue: self._publish_in_order(conn, queue),
                        by_device.values(),
                    )
                )
        return sum(count for count, _ in outcomes), all(ok for _, ok in outcomes)

    def _publish_in_order(self, conn: Conn, commands: list[dict[str, Any]]) -> tuple[int, bool]:
        count = 0
        for command in commands:
            if not self._publish_command(command):
                return count, False
            # psycopg serialises the workers' statements on the one connection.
            conn.execute(QUERIES["record_command_published"], self._record_args(command["id"]))
            count += 1
        return count, True

    def _record_args(self, command_id: uuid.UUID) -> dict[str, Any]:
        return {
            "id": command_id,
            "broker": self.broker_name,
            "brokers": self.brokers,
            "moves_from": _PUBLISHED_FROM,
            "moves_to": _PUBLISHED_TO,
        }

    def _sent_ids(self, conn: Conn) -> list[uuid.UUID]:
        with conn.cursor(row_factory=dict_row) as cur:
            return [row["id"] for row in cur.execute(QUERIES["sent_ids"])]

    def _republish_sent(self, conn: Conn, ids: list[uuid.UUID]) -> bool:
        """Publish these commands again if still `sent` (in order per device); True if done."""
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(QUERIES["sent_to_republish"], {"ids": ids}).fetchall()
        count, complete = self._publish_queued(conn, rows)
        if count:
            log.info("republished %d sent commands to %s", count, self.broker_name)
        return complete

    def _publish_command(self, command: dict[str, Any]) -> bool:
        topic = command_topic(command["device_id"], str(command["id"]))
        expiry = message_expiry_s(float(command["remaining_s"]))
        return self._try_publish(topic, command_payload(command), expiry)

    def _try_publish(self, topic: str, payload: bytes, expiry_s: int | None) -> bool:
        try:
            self._publish_logged(topic, payload, True, expiry_s)
        except Exception:
            # Broker down or slow: the caller stops this device's commands for this sweep so
            # a later one is not published ahead of this one; the next sweep retries.
            return False
        return True

    def _publish_logged(
        self, topic: str, payload: bytes, retain: bool, expiry_s: int | None
    ) -> None:
        """`publish`, with one warning per outage rather than one per message and retry."""
        try:
            self.publish(topic, payload, retain, expiry_s)
        except Exception as exc:
            self.last_error = f"publish: {type(exc).__name__}: {exc}"
            level = logging.DEBUG if self._publish_failing else logging.WARNING
            self._publish_failing = True
            log.log(level, "publishing to %s failed (retrying every sweep): %s", topic, exc)
            raise
        if self._publish_failing:
            self._publish_failing = False
            log.info("publishing to the broker works again")


__all__ = [
    "Ack",
    "AckMessage",
    "CommandDispatcher",
    "Publish",
    "SweepResult",
    "apply_acks",
    "command_payload",
    "command_topic",
    "message_expiry_s",
    "parse_ack",
]
