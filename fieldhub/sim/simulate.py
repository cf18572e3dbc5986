"""Simulated devices that follow the device contract exactly, for the demo and for load tests.

Each simulated device is one asyncio MQTT v5 client logged in with its own credentials. It sets
a retained Last Will `offline` on `devices/{id}/status`, publishes `online` (retained) once
connected, publishes telemetry `{"ts": ms, "seq": n, "values": {...}}` at QoS 1 every interval
with values that move plausibly (a temperature random walk, humidity, a door that opens now and
then, a draining battery), and answers every command on `devices/{id}/commands/+` with
`accepted` and then `succeeded` on `.../commands/{cid}/ack`.

Many devices are spread over several processes (one asyncio loop each), since a single CPython
loop tops out at a few thousand MQTT clients; each process raises its open-file limit. With
several brokers each device connects to the broker it is homed on (devices.broker) and, when
that is lost, fails over along its broker list exactly as docs/devices.md tells firmware authors
(the rules: fieldhub/sim/broker_walk.py): it retries the broker once, walks the list with
capped, jittered backoff, and goes back home once its home has answered for a while.

For benchmarks that count what was lost, each process can keep a ledger: one line
`device_id seq ts_ms broker` per reading the broker acknowledged (PUBACK, with the name of the
broker that sent it), flushed every second and at
the end, so "published" means acknowledged, message by message. A reading whose PUBACK did not
come before its connection died is published again, with the same seq and ts, on the next
connection (whichever broker that is): that is what keeps device-side loss at 0, and the
backend's reading identity (device, metric, ts) absorbs the copy when the first one arrived."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import math
import multiprocessing
import os
import queue
import random
import signal
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeGuard

import aiomqtt
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fieldhub.core import procs, registry
from fieldhub.core.brokers import broker_preference
from fieldhub.core.config import DEFAULT_BROKER
from fieldhub.core.db import Conn, Queries
from fieldhub.core.passwords import generate_secret, hash_secrets_parallel
from fieldhub.sim.broker_walk import BrokerWalk, WalkPolicy

log = logging.getLogger("fieldhub.simulate")
QUERIES = Queries(Path(__file__).with_name("simulate.sql"))

SITES = ("north-farm", "river-lab", "depot-3", "greenhouse")
DEVICES_PER_PROCESS = 2500
STATS_EVERY_S = 5.0
LEDGER_FLUSH_S = 1.0


@dataclasses.dataclass(frozen=True)
class SimulatedDevice:
    device_id: str
    secret: str
    broker: str = DEFAULT_BROKER  # the broker it is homed on, whose listener it connects to


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the simulated devices connect: the broker's device listener."""

    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        return context


Targets = Target | Mapping[str, Target]


class SilentBroker(aiomqtt.MqttError):
    """A QoS 1 publish got no PUBACK in time: the connection is dead, though nothing said so."""


# MQTT 5 PUBACK reason codes below 0x80 are successes, but 0x10 "No matching subscribers" means
# no bridge has the reading: a broker just restarted, before the bridges subscribed again
# (Mosquitto does not restore $share subscriptions). A device keeps such a reading.
NO_MATCHING_SUBSCRIBERS = 0x10
NOT_TAKEN_PAUSE_S = 1.0


class Client(aiomqtt.Client):
    """aiomqtt's client, whose QoS 1 publish also returns the broker's PUBACK reason code
    (aiomqtt drops it). Uses aiomqtt's pending-call table as its own publish() does (pinned in
    requirements)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._puback_reasons: dict[int, int] = {}

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._puback_reasons[mid] = reason_code.value if reason_code is not None else 0
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_reason(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code (0: success)."""
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await confirmation.wait()
        return self._puback_reasons.pop(info.mid, 0)


def target_of(device: SimulatedDevice, targets: Targets) -> Target:
    """The listener `device` connects to: the one target, or its home broker's."""
    if isinstance(targets, Target):
        return targets
    try:
        return targets[device.broker]
    except KeyError:
        raise ValueError(
            f"device {device.device_id} is homed on {device.broker}, which has no URL here "
            f"(the brokers known are {', '.join(sorted(targets)) or 'none'})"
        ) from None


def targets_of(device: SimulatedDevice, targets: Targets) -> list[tuple[str, Target]]:
    """The brokers `device` may use, in the order it tries them (its credentials' mqtt_urls):
    its home first, then the others by its own scores (fieldhub.core.brokers)."""
    if isinstance(targets, Target):
        return [(device.broker, targets)]
    home = target_of(device, targets)
    order = broker_preference(device.device_id, device.broker, list(targets))
    return [(device.broker, home), *((name, targets[name]) for name in order[1:])]


class Ledger:
    """Every reading a broker acknowledged, one `device_id seq ts_ms broker` line each.

    Written by one process; lines are buffered and flushed every LEDGER_FLUSH_S (and at the
    end), so a reader sees the acknowledgements of up to a second ago."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("a", encoding="ascii")
        self._last_flush = time.monotonic()

    def record(self, device_id: str, seq: int, ts_ms: int, broker: str) -> None:
        self._file.write(f"{device_id} {seq} {ts_ms} {broker}\n")

    def flush_if_due(self) -> None:
        if time.monotonic() - self._last_flush >= LEDGER_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self._file.close()


@dataclasses.dataclass
class Stats:
    connected: int = 0  # now
    connects: int = 0  # successful logins, including reconnects
    connect_failures: int = 0
    published: int = 0  # telemetry messages acknowledged by the broker (QoS 1)
    republished: int = 0  # sent again: no PUBACK before the connection died, or PUBACK 0x10
    on_standby: int = 0  # now: connected to a broker other than their home
    not_taken: int = 0  # PUBACKs saying "no matching subscribers" (or refusing): sent again
    went_home: int = 0  # moves back to the home broker after a stay on a standby
    commands_answered: int = 0
    last_error: str = ""

    def add(self, other: Stats) -> None:
        for field in dataclasses.fields(self):
            if field.name != "last_error":
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        self.last_error = other.last_error or self.last_error


# -- pure parts: values, payloads, command answers -----------------------------------------------
class DeviceModel:
    """Plausible moving readings of one environmental sensor."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.base_temperature = rng.uniform(18.0, 24.0)
        self.temperature = self.base_temperature + rng.uniform(-1.0, 1.0)
        self.humidity = rng.uniform(35.0, 60.0)
        self.door = False
        self.battery = rng.uniform(70.0, 100.0)

    def next_values(self) -> dict[str, float | bool]:
        rng = self.rng
        # A random walk pulled back towards the device's own base, so it wanders but stays put.
        self.temperature += rng.gauss(0.0, 0.15) + 0.05 * (self.base_temperature - self.temperature)
        self.humidity = min(95.0, max(10.0, self.humidity + rng.gauss(0.0, 0.4)))
        if rng.random() < (0.3 if self.door else 0.05):
            self.door = not self.door
        self.battery -= rng.uniform(0.0, 0.02)
        if self.battery < 5.0:
            self.battery = 100.0  # someone changed it
        return {
            "temperature": round(self.temperature, 2),
            "humidity": round(self.humidity, 1),
            "door": self.door,
            "battery": round(self.battery, 2),
        }


def telemetry_payload(seq: int, values: dict[str, float | bool], ts_ms: int) -> bytes:
    return orjson.dumps({"ts": ts_ms, "seq": seq, "values": values})


def command_id_from_topic(topic: str, device_id: str) -> str | None:
    prefix = f"devices/{device_id}/commands/"
    if not topic.startswith(prefix):
        return None
    command_id = topic[len(prefix) :]
    return command_id if command_id and "/" not in command_id else None


def answer_command(payload: bytes) -> tuple[bytes, bytes, float | None] | None:
    """The two acks (accepted, final) for a command payload, and a new interval if asked for.

    None for an empty payload: that is the backend clearing a finished command's retained
    message, not a command."""
    if not payload:
        return None
    accepted = orjson.dumps({"status": "accepted"})
    try:
        command = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return accepted, orjson.dumps({"status": "rejected", "error": "payload is not JSON"}), None
    if not isinstance(command, dict):
        return accepted, orjson.dumps({"status": "rejected", "error": "not a JSON object"}), None
    name = command.get("name")
    raw_params = command.get("params")
    params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
    new_interval = None
    if name == "set_interval":
        seconds = params.get("seconds", params.get("interval_s"))
        if not _is_number(seconds) or not 0.1 <= seconds <= 86400:
            failed = {"status": "failed", "error": "params.seconds must be 0.1..86400"}
            return accepted, orjson.dumps(failed), None
        new_interval = float(seconds)
    final: dict[str, Any] = {
        "status": "succeeded",
        "result": {"handled_by": "fieldhub simulator", "name": name},
    }
    return accepted, orjson.dumps(final), new_interval


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def device_ids(prefix: str, count: int) -> list[str]:
    width = max(2, len(str(count)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]


# -- one device ---------------------------------------------------------------------------------
class SimulatedClient:
    def __init__(
        self,
        device: SimulatedDevice,
        targets: Target | Sequence[tuple[str, Target]],
        interval_s: float,
        stats: Stats,
        rng: random.Random,
        ledger: Ledger | None = None,
        policy: WalkPolicy | None = None,
    ) -> None:
        self.device = device
        order = [(device.broker, targets)] if isinstance(targets, Target) else list(targets)
        self.targets = dict(order)
        self.policy = policy if policy is not None else WalkPolicy()
        self.walk = BrokerWalk([name for name, _ in order], self.policy, rng)
        self.interval_s = interval_s
        self.stats = stats
        self.rng = rng
        self.ledger = ledger
        self.model = DeviceModel(rng)
        self.seq = 0
        # The reading published but not acknowledged yet (seq, ts_ms, payload): sent again,
        # unchanged, on the next connection if this one dies first.
        self.unacked: tuple[int, int, bytes] | None = None
        self.answered: deque[str] = deque(maxlen=256)
        self.status_topic = f"devices/{device.device_id}/status"
        self._sleeping = False
        self._leaving = False  # going home: the publisher stops after its reading in flight
        self._session_up = False

    @property
    def target(self) -> Target:
        """The listener of the broker it is on (or trying next)."""
        return self.targets[self.walk.current]

    async def run(self, stop: asyncio.Event, start_delay: float = 0.0) -> None:
        """Stay connected until `stop`, failing over along the broker list (broker_walk)."""
        if start_delay and await _wait(stop, start_delay):
            return
        while not stop.is_set():
            try:
                if await self._session(stop):
                    self.walk.went_home()
                    self.stats.went_home += 1
            except aiomqtt.MqttError as exc:
                was_up, self._session_up = self._session_up, False
                silent = isinstance(exc, SilentBroker)
                _, pause = self.walk.lost(silent=silent) if was_up else self.walk.failed()
                if not was_up:
                    self.stats.connect_failures += 1
                self.stats.last_error = f"{self.device.device_id}: {exc}"
                log.debug(
                    "%s: %s; trying %s in %.1f s",
                    self.device.device_id,
                    exc,
                    self.walk.current,
                    pause,
                )
                if await _wait(stop, pause):
                    return

    async def _session(self, stop: asyncio.Event) -> bool:
        """One connection to the current broker, until `stop` (False) or, on a standby, until
        its home has answered long enough (True: go home). Raises MqttError when it ends
        otherwise."""
        device_id = self.device.device_id
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = 0
        async with Client(
            self.target.host,
            self.target.port,
            username=device_id,
            password=self.device.secret,
            identifier=device_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            keepalive=60,
            tls_context=self.target.ssl_context(),
            properties=connect_props,
            timeout=self.policy.connect_timeout_s,
        ) as client:
            self._session_up = True
            self.walk.connected()
            on_standby = self.walk.on_standby
            self.stats.connects += 1
            self.stats.connected += 1
            self.stats.on_standby += on_standby
            try:
                await client.subscribe(
                    f"devices/{device_id}/commands/+", qos=1, timeout=self.policy.puback_timeout_s
                )
                await client.publish(
                    self.status_topic,
                    b"online",
                    qos=1,
                    retain=True,
                    timeout=self.policy.puback_timeout_s,
                )
                going_home = await self._serve(client, stop)
                self._session_up = False
                if not going_home:
                    # A clean stop is not a lost device: say so instead of leaving "online".
                    await client.publish(self.status_topic, b"offline", qos=1, retain=True)
                return going_home
            finally:
                self.stats.connected -= 1
                self.stats.on_standby -= on_standby

    async def _serve(self, client: Client, stop: asyncio.Event) -> bool:
        """Publish and answer commands until `stop` (False), the home broker is back for good
        while on a standby (True), or a broken connection (raise).

        One wait on `stop` per session, and plain sleeps between readings: thousands of
        clients each waiting on the event with a timeout per reading would cost O(clients)
        per wake-up, since every timed-out waiter is removed from the event's list."""
        self._leaving = False
        stop_waiter = asyncio.create_task(stop.wait())
        home_back = asyncio.create_task(self._watch_home(stop))
        publisher = asyncio.create_task(self._publish_loop(client, stop))
        commands = asyncio.create_task(self._answer_commands(client))
        tasks = (stop_waiter, home_back, publisher, commands)
        try:
            done, _ = await asyncio.wait(
                {stop_waiter, home_back, publisher, commands}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                error = None if task in (stop_waiter, home_back) else task.exception()
                if error is not None:
                    raise error
            # Stopping or leaving: a reading being published is finished (so the count is
            # exact and nothing is left unacknowledged), a sleeping publisher is woken.
            self._leaving = home_back in done
            if self._sleeping:
                publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            return not stop.is_set() and home_back in done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_home(self, stop: asyncio.Event) -> None:
        """On a standby: check the home broker now and then; return once it has answered
        every check for the policy's stable time. At home: wait forever."""
        if not self.walk.on_standby:
            await asyncio.Event().wait()
        home = self.targets[self.walk.home]
        while not self.walk.should_go_home(time.monotonic()):
            await asyncio.sleep(self.walk.next_home_check())
            if await _reachable(home, self.policy.connect_timeout_s):
                self.walk.home_answered(time.monotonic())
            else:
                self.walk.home_silent()

    async def _publish_loop(self, client: Client, stop: asyncio.Event) -> None:
        topic = f"devices/{self.device.device_id}/telemetry"
        # Spread the devices over the interval so the broker sees a steady stream, not bursts;
        # a reading left unacknowledged by the last connection goes first.
        delay = 0.0 if self.unacked else self.rng.uniform(0.0, self.interval_s)
        while True:
            self._sleeping = True
            try:
                await asyncio.sleep(delay)
            finally:
                self._sleeping = False
            started = time.monotonic()
            if self.unacked is None:
                self.seq += 1
                ts_ms = int(time.time() * 1000)
                payload = telemetry_payload(self.seq, self.model.next_values(), ts_ms)
                self.unacked = (self.seq, ts_ms, payload)
            else:
                self.stats.republished += 1
            seq, ts_ms, payload = self.unacked
            # No PUBACK in time means the connection is dead (a host gone with its link sends
            # no reset): the error ends the session and the reading goes out on the next one.
            try:
                reason = await asyncio.wait_for(
                    client.publish_reason(topic, payload), self.policy.puback_timeout_s
                )
            except TimeoutError:
                # Leaving the client waits for its DISCONNECT to go out; on a dead link that
                # would be the client's whole timeout again.
                client.timeout = 0.5
                raise SilentBroker(
                    f"no PUBACK within {self.policy.puback_timeout_s:g} s from {self.walk.current}"
                ) from None
            if reason == NO_MATCHING_SUBSCRIBERS or reason >= 0x80:
                # Acknowledged, but not taken: kept, and sent again shortly.
                self.stats.not_taken += 1
                delay = NOT_TAKEN_PAUSE_S
                continue
            self.unacked = None
            self.stats.published += 1
            if self.ledger is not None:
                self.ledger.record(self.device.device_id, seq, ts_ms, self.walk.current)
            if stop.is_set() or self._leaving:
                return
            delay = max(0.0, self.interval_s - (time.monotonic() - started))

    async def _answer_commands(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            command_id = command_id_from_topic(message.topic.value, self.device.device_id)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if command_id is None or command_id in self.answered:
                continue
            answer = answer_command(payload)
            if answer is None:
                continue
            self.answered.append(command_id)
            accepted, final, new_interval = answer
            ack_topic = f"devices/{self.device.device_id}/commands/{command_id}/ack"
            await client.publish(ack_topic, accepted, qos=1)
            if new_interval is not None:
                self.interval_s = new_interval
            await client.publish(ack_topic, final, qos=1)
            self.stats.commands_answered += 1


def _ignore_closed_sockets(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # paho asks the loop (thread-safely, so later) to watch its socket for writing; when the
    # connection closes first, that late registration fails with EBADF. Nothing is lost: the
    # client is gone and reconnects (or we are stopping).
    error = context.get("exception")
    if isinstance(error, OSError) and error.errno == errno.EBADF:
        log.debug("ignored a late socket registration: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


async def _reachable(target: Target, timeout: float) -> bool:
    """Whether `target`'s listener takes a connection (and its TLS handshake) now. Not an MQTT
    login: a fleet's checks would load the broker's auth, and paho's blocking connect runs in
    the event loop's small thread pool, where checks of a silent host queue behind each other
    and behind the devices' real connection attempts."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port, ssl=target.ssl_context()), timeout
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _answers(target: Target, device: SimulatedDevice, timeout: float) -> bool:
    """Whether `target` takes `device`'s login now (no will, no session left behind)."""
    try:
        async with aiomqtt.Client(
            target.host,
            target.port,
            username=device.device_id,
            password=device.secret,
            identifier=device.device_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=target.ssl_context(),
            timeout=timeout,
        ):
            return True
    except aiomqtt.MqttError:
        return False


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def run_devices(
    devices: Sequence[SimulatedDevice],
    target: Targets,
    interval_s: float,
    should_stop: Callable[[], bool],
    *,
    stats: Stats | None = None,
    connect_rate: float = 500.0,
    report: Callable[[Stats], None] | None = None,
    seed: int | None = None,
    ledger: Ledger | None = None,
    policy: WalkPolicy | None = None,
) -> Stats:
    """Run `devices` in this event loop until `should_stop()` (polled) turns true; each
    connects to `target`, or with one target per broker to its home broker's and fails over
    to the others by `policy` (docs/devices.md)."""
    stats = stats if stats is not None else Stats()
    stop = asyncio.Event()
    asyncio.get_running_loop().set_exception_handler(_ignore_closed_sockets)
    rng = random.Random(seed)  # noqa: S311 - simulated readings, not secrets
    clients = [
        SimulatedClient(
            device,
            targets_of(device, target),
            interval_s,
            stats,
            random.Random(rng.random()),  # noqa: S311
            ledger,
            policy,
        )
        for device in devices
    ]
    tasks = [
        asyncio.create_task(client.run(stop, start_delay=index / connect_rate))
        for index, client in enumerate(clients)
    ]
    last_report = time.monotonic()
    while not should_stop():
        await asyncio.sleep(0.1)
        if ledger is not None:
            ledger.flush_if_due()
        if report is not None and time.monotonic() - last_report >= STATS_EVERY_S:
            report(stats)
            last_report = time.monotonic()
    stop.set()
    await asyncio.wait(tasks, timeout=15)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if ledger is not None:
        ledger.flush()
    if report is not None:
        report(stats)
    return stats


# -- several processes --------------------------------------------------------------------------
def _worker(
    index: int,
    devices: Sequence[SimulatedDevice],
    target: Targets,
    interval_s: float,
    stop: Any,
    reports: Any,
    connect_rate: float,
    ledger_dir: Path | None,
    policy: WalkPolicy | None,
) -> None:
    # The parent handles Ctrl-C and tells the workers through `stop`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    procs.raise_open_file_limit(len(devices) + 64)

    def report(stats: Stats) -> None:
        with contextlib.suppress(Exception):
            reports.put((index, dataclasses.asdict(stats)))

    ledger = Ledger(ledger_dir / f"simulate-{index}.ledger") if ledger_dir else None
    try:
        asyncio.run(
            run_devices(
                devices,
                target,
                interval_s,
                stop.is_set,
                connect_rate=connect_rate,
                report=report,
                ledger=ledger,
                policy=policy,
            )
        )
    finally:
        if ledger is not None:
            ledger.close()


def default_processes(count: int) -> int:
    return max(1, min(2 * (os.cpu_count() or 1), math.ceil(count / DEVICES_PER_PROCESS)))


def run_simulation(
    devices: Sequence[SimulatedDevice],
    target: Targets,
    interval_s: float,
    *,
    processes: int,
    should_stop: Callable[[], bool],
    connect_rate: float = 500.0,
    log_every_s: float = 10.0,
    ledger_dir: Path | None = None,
    policy: WalkPolicy | None = None,
) -> Stats:
    """Run the devices in `processes` worker processes; log totals every `log_every_s`.
    With `ledger_dir`, worker N keeps its ledger in simulate-N.ledger there (appended)."""
    for device in devices:
        target_of(device, target)  # an unknown broker fails here, not in a worker
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    reports: Any = context.Queue()
    shares = [devices[i::processes] for i in range(processes)]
    workers = [
        context.Process(
            target=_worker,
            args=(
                i,
                share,
                target,
                interval_s,
                stop,
                reports,
                connect_rate / processes,
                ledger_dir,
                policy,
            ),
            name=f"simulate-{i}",
            daemon=True,
        )
        for i, share in enumerate(shares)
        if share
    ]
    for worker in workers:
        worker.start()
    latest: dict[int, Stats] = {}
    last_log = time.monotonic()
    last_published = 0

    def drain(timeout: float) -> int:
        received = 0
        try:
            index, values = reports.get(timeout=timeout)
            latest[index] = Stats(**values)
            received += 1
            while True:
                index, values = reports.get_nowait()
                latest[index] = Stats(**values)
                received += 1
        except queue.Empty:
            pass
        return received

    def total() -> Stats:
        result = Stats()
        for stats in latest.values():
            result.add(stats)
        return result

    try:
        while not should_stop() and any(w.is_alive() for w in workers):
            drain(0.2)
            if time.monotonic() - last_log >= log_every_s:
                now = total()
                rate = (now.published - last_published) / (time.monotonic() - last_log)
                log.info(
                    "%d/%d devices connected (%d on a standby broker), %d messages published "
                    "(%.1f msg/s), %d commands answered, %d failed connection attempts%s",
                    now.connected,
                    len(devices),
                    now.on_standby,
                    now.published,
                    rate,
                    now.commands_answered,
                    now.connect_failures,
                    f" (last: {now.last_error})" if now.connect_failures else "",
                )
                last_log, last_published = time.monotonic(), now.published
    finally:
        stop.set()
        # Every device says "offline" and disconnects; thousands take a while on a busy host.
        deadline = time.monotonic() + 60 + 0.01 * len(devices)
        for worker in workers:
            while worker.is_alive() and time.monotonic() < deadline:
                drain(0.1)
                worker.join(timeout=0.1)
            if worker.is_alive():
                worker.kill()  # its SIGTERM handler only asks it to stop
                worker.join(5)
        # A worker's last report may still be in the pipe after it has exited.
        while drain(0.2):
            pass
    return total()


# -- credentials --------------------------------------------------------------------------------
def provision(
    conn: Conn,
    *,
    org: str,
    prefix: str,
    count: int,
) -> list[SimulatedDevice]:
    """Create the simulator's devices (or give those that exist new secrets) and return their
    credentials and home brokers. The registry keeps only hashes, so a new secret is the only
    way to learn one again. Hashing runs on every core; creation is one COPY and rotation one
    UPDATE, so the broker reloads once however many devices there are."""
    ids = device_ids(prefix, count)
    for device_id in ids:
        registry.check_device_id(device_id)
    try:
        org_row = registry.get_org(conn, org)
    except registry.NotFound:
        log.info("creating organisation %r for the simulated devices", org)
        registry.create_org(conn, org)
        org_row = registry.get_org(conn, org)
    secrets = [generate_secret() for _ in ids]
    hashes = hash_secrets_parallel(secrets)
    with conn.transaction():
        rotated = {
            row["device_id"]
            for row in conn.execute(
                QUERIES["set_device_secrets"],
                {"device_ids": ids, "password_hashes": hashes, "org_id": org_row["id"]},
            ).fetchall()
        }
        to_create = [
            (
                registry.DeviceSpec(
                    device_id,
                    f"Simulated sensor {device_id}",
                    {"site": SITES[index % len(SITES)], "simulated": "true"},
                ),
                password_hash,
            )
            for index, (device_id, password_hash) in enumerate(zip(ids, hashes, strict=True))
            if device_id not in rotated
        ]
        created = registry.provision_devices(conn, org, to_create) if to_create else set()
        taken = [spec.device_id for spec, _ in to_create if spec.device_id not in created]
        if taken:
            raise registry.RegistryError(
                f"device {taken[0]!r} already exists in another organisation; "
                "choose another --prefix"
            )
        homes = {
            row["device_id"]: row["broker"]
            for row in conn.execute(
                QUERIES["device_brokers"], {"device_ids": ids, "org_id": org_row["id"]}
            ).fetchall()
        }
    log.info(
        "%d simulated devices ready in organisation %r (%d created, %d secrets rotated)",
        count,
        org,
        len(created),
        len(rotated),
    )
    return [SimulatedDevice(d, secret, homes[d]) for d, secret in zip(ids, secrets, strict=True)]


def can_login(target: Target, device: SimulatedDevice, timeout: float = 10.0) -> bool:
    return asyncio.run(_answers(target, device, timeout))


def wait_until_accepted(
    target: Target,
    device: SimulatedDevice,
    *,
    timeout: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until the broker knows the new secrets (the registry sync runs separately)."""
    deadline = time.monotonic() + timeout
    next_hint = time.monotonic() + 10
    delay = 0.1
    while not should_stop():
        if can_login(target, device):
            return True
        if time.monotonic() > deadline:
            return False
        if time.monotonic() > next_hint:
            log.info(
                "waiting for the broker to accept %s (is `fieldhub auth-sync` running?)",
                device.device_id,
            )
            next_hint = time.monotonic() + 10
        time.sleep(delay)
        delay = min(2.0, delay * 2)
    return False
