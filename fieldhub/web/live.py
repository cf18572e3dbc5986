"""Live updates: server-sent events fed by PostgreSQL LISTEN.

Each worker process holds ONE listening connection (the hub) that fans notifications out to
the queues of the streams open in that process; a stream never holds a database connection
while it waits. Notifications only say *which* device changed; the stream then reads what is
new with the viewer's own tenant scope, so a notification can never carry another
organisation's data to anyone. `telemetry` and `presence` name devices by key: a stream
resolves its device's key (within the viewer's organisation) when it opens and matches on
that, so a later device of the same id is never mistaken for the one it shows.

A stream outlives the request that opened it, so it checks the credential it was opened with
(the session) again before every event it sends and at least every REVALIDATE_S seconds while
idle: once the session is gone (logout, a password change, a disabled user, expiry) the browser
gets an `end` event saying so and the stream closes, instead of streaming on for hours. A
device's stream likewise checks that its device key is still the device of that id in the
viewer's organisation: a deleted device's stream ends at once (the hub relays
`device_deleted`), and at the latest within REVALIDATE_S, so it never goes on to show a later
device that took the id."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from flask import Blueprint, Flask, Response, abort, current_app, request
from flask.typing import ResponseReturnValue

from fieldhub.core import command_requests
from fieldhub.core.db import Conn, failover_conninfo
from fieldhub.web import JSONProvider, data, db, metrics, serializers
from fieldhub.web.auth import credential_check, login_required, scope_org_id

log = logging.getLogger(__name__)

bp = Blueprint("live", __name__)

CHANNELS = ("telemetry", "presence", "commands", "alerts", "device_deleted")
QUEUE_SIZE = 256
# The longest an idle stream goes without checking that its session still exists.
REVALIDATE_S = 30.0
KEEPALIVE = ": keepalive\n\n"
SESSION_ENDED = "Your session has ended (logged out, password changed or account disabled)."
DEVICE_DELETED = "This device was deleted."


class Subscription:
    def __init__(
        self,
        device_ids: frozenset[str],
        org_id: int | None,
        device_keys: frozenset[int] = frozenset(),
    ) -> None:
        self.device_ids = device_ids
        # As the notifications spell them (decimal text).
        self.device_keys = frozenset(str(key) for key in device_keys)
        self.org_id = org_id
        self.events: queue.Queue[tuple[str, str]] = queue.Queue(QUEUE_SIZE)

    def offer(self, channel: str, payload: str) -> None:
        # A stalled browser must not grow memory: when its queue is full, events are dropped
        # and the next one it reads makes it re-read everything new since its cursor.
        with contextlib.suppress(queue.Full):
            self.events.put_nowait((channel, payload))


def route(channel: str, payload: str, sub: Subscription) -> str | None:
    """The part of a notification `sub` should see, or None if it is not for it."""
    if channel == "telemetry":
        mine = [key for key in payload.split() if key in sub.device_keys]
        return " ".join(mine) if mine else None
    if channel in ("presence", "device_deleted"):
        key = payload.split(" ", 1)[0]
        return payload if key in sub.device_keys else None
    if channel == "commands":
        # Commands are registry rows of the device id; the stream re-reads the command with
        # the viewer's scope anyway.
        device = payload.split(" ", 1)[0]
        return payload if device in sub.device_ids else None
    if channel == "alerts":
        org = payload.split(" ", 1)[0]
        return payload if sub.org_id is None or org == str(sub.org_id) else None
    return None


def _stream_kind(sub: Subscription) -> str:
    """A device page's stream names its device; the alerts page's stream names none."""
    return "device" if sub.device_ids else "alerts"


class Hub:
    """One LISTEN connection per process, started on the first subscription after a fork."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()
        self._pid = 0
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        self._stop = threading.Event()

    def subscribe(
        self,
        device_ids: frozenset[str],
        org_id: int | None,
        device_keys: frozenset[int] = frozenset(),
    ) -> Subscription:
        sub = Subscription(device_ids, org_id, device_keys)
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._pid = os.getpid()
                self._subs = set()
                self.listening.clear()
                self._thread = threading.Thread(target=self._run, name="live-hub", daemon=True)
                self._thread.start()
            self._subs.add(sub)
        metrics.stream_opened(_stream_kind(sub))
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            present = sub in self._subs
            self._subs.discard(sub)
        if present:
            metrics.stream_closed(_stream_kind(sub))

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def stop(self) -> None:
        self._stop.set()

    def _dispatch(self, channel: str, payload: str) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            part = route(channel, payload, sub)
            if part is not None:
                sub.offer(channel, part)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    failover_conninfo(self.database_url),
                    autocommit=True,
                    application_name="fieldhub-web-live",
                ) as conn:
                    for channel in CHANNELS:
                        conn.execute(f"LISTEN {channel}".encode())
                    self.listening.set()
                    # Whatever happened while we were not listening: every stream re-reads.
                    self._dispatch_all("resync")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._dispatch(note.channel, note.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("live updates: lost the database (%s); reconnecting", exc)
                time.sleep(1.0)

    def _dispatch_all(self, channel: str) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.offer(channel, "")


def init_app(app: Flask) -> None:
    app.extensions["fieldhub.live"] = Hub(app.config["DATABASE_URL"])
    app.register_blueprint(bp)


def hub() -> Hub:
    result: Hub = current_app.extensions["fieldhub.live"]
    return result


def sse(event: str, payload: Any, event_id: str | None = None) -> str:
    """One event; times in it as ISO 8601 (UTC), like every JSON answer of the app. An
    `event_id` is what the browser sends back as Last-Event-ID when it reconnects."""
    data = orjson.dumps(payload, default=JSONProvider.default, option=orjson.OPT_NON_STR_KEYS)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data.decode()}\n\n"


def stream_start(last_event_id: str | None, since_arg: str | None, now: datetime) -> datetime:
    """Where a device stream's readings start. A browser that reconnects on its own asks for
    the URL it first opened, whose `since` is the page's load time, so it would get every reading
    since then again; its Last-Event-ID (the last reading it was sent) wins over that. Anything
    unreadable starts now."""
    try:
        if last_event_id:
            moment = datetime.fromisoformat(last_event_id)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        if since_arg:
            return datetime.fromtimestamp(float(since_arg), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return now


Event = tuple[str, str, Conn]


def guarded_events(
    sub: Subscription,
    pools: db.Pools,
    still_valid: Callable[[Conn], bool],
    keepalive_s: float,
    device_exists: Callable[[Conn], bool] | None = None,
) -> Iterator[Event | str]:
    """The subscription's events, each with a primary connection (a notification is sent at
    commit there; a replica may not have replayed it yet), each after `still_valid` found the
    stream's credential alive (and `device_exists` its device); a keepalive comment when idle,
    after the same checks. Once either is gone: an `end` event saying which, and the
    iteration stops (the stream closes)."""
    wait_s = min(keepalive_s, REVALIDATE_S)
    while True:
        try:
            event: tuple[str, str] | None = sub.events.get(timeout=wait_s)
        except queue.Empty:
            event = None
        with pools.connection("write") as conn:
            if not still_valid(conn):
                yield sse("end", {"reason": SESSION_ENDED})
                return
            if device_exists is not None and not device_exists(conn):
                yield sse("end", {"reason": DEVICE_DELETED})
                return
            if event is not None:
                yield (*event, conn)
        if event is None:
            yield KEEPALIVE


@bp.route("/devices/<device_id>/live")
@login_required
def device_stream(device_id: str) -> ResponseReturnValue:
    org_id = scope_org_id()
    try:
        key: int = data.get_device(db.read(), org_id, device_id)["device_key"]
    except data.NotFound:
        abort(404)
    since = stream_start(
        request.headers.get("Last-Event-ID"), request.args.get("since"), datetime.now(UTC)
    )
    pools = db.pools()
    keepalive = float(current_app.config["LIVE_KEEPALIVE_S"])
    still_valid = credential_check()
    the_hub = hub()
    sub = the_hub.subscribe(frozenset([device_id]), org_id, frozenset([key]))

    def same_device(conn: Conn) -> bool:
        # The id may belong to a new device by now (another key, perhaps another org).
        try:
            return bool(data.get_device(conn, org_id, device_id)["device_key"] == key)
        except data.NotFound:
            return False

    def stream() -> Iterator[str]:
        cursor = since
        try:
            yield "retry: 2000\n\n"
            yield sse("hello", {"device_id": device_id})
            for item in guarded_events(sub, pools, still_valid, keepalive, same_device):
                if isinstance(item, str):
                    yield item
                    continue
                channel, payload, conn = item
                if channel in ("telemetry", "resync"):
                    rows = data.readings_since(conn, key, cursor)
                    if rows:
                        cursor = rows[-1]["time"]
                        yield sse(
                            "readings",
                            [
                                {
                                    "t": r["time"].timestamp(),
                                    "metric": r["metric"],
                                    "unit": r["unit"],
                                    "value": data.reading_value(r),
                                    "text": r["text_value"],
                                }
                                for r in rows
                            ],
                            event_id=cursor.isoformat(),
                        )
                if channel == "presence":
                    yield sse("presence", {"online": payload.split()[-1] == "online"})
                if channel == "commands":
                    command_id = payload.split()[1]
                    try:
                        command = command_requests.get_command(conn, command_id, org_id=org_id)
                    except command_requests.NotFound:
                        continue
                    yield sse("command", serializers.command_json(command))
                if channel == "alerts":
                    alerts = data.device_alerts(conn, org_id, device_id, limit=20)
                    yield sse("alerts", alerts)
        finally:
            the_hub.unsubscribe(sub)

    return Response(
        stream(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@bp.route("/alerts/live")
@login_required
def alerts_stream() -> ResponseReturnValue:
    """Which alert of the viewer's organisation changed and how; the page then re-reads its
    list with the viewer's own scope. The hub forwards only the viewer's organisation's
    notifications (all of them to an operator)."""
    org_id = scope_org_id()
    pools = db.pools()
    keepalive = float(current_app.config["LIVE_KEEPALIVE_S"])
    still_valid = credential_check()
    the_hub = hub()
    sub = the_hub.subscribe(frozenset(), org_id)

    def stream() -> Iterator[str]:
        try:
            yield "retry: 2000\n\n"
            yield sse("hello", {"org_id": org_id})
            for item in guarded_events(sub, pools, still_valid, keepalive):
                if isinstance(item, str):
                    yield item
                    continue
                channel, payload, _conn = item
                parts = payload.split()
                if channel == "alerts" and len(parts) == 3 and parts[1].isdigit():
                    yield sse("alert", {"id": int(parts[1]), "state": parts[2]})
                elif channel == "resync":
                    yield sse("alert", {"id": None, "state": None})
        finally:
            the_hub.unsubscribe(sub)

    return Response(
        stream(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
