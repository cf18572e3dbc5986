"""`fieldhub bench ingest`: MQTT -> TimescaleDB throughput and latency of the bridge.

In one invocation, on scratch servers of its own (a durable PostgreSQL+TimescaleDB cluster and
a Mosquitto broker, as `fieldhub up` runs them):

1. baseline: a multi-process load generator publishes QoS 1 telemetry (3 numbers per message,
   1,000 devices) through the `svc.loadgen` service account, and a minimal paho consumer on
   the bridge's shared subscription only receives and acknowledges it;
2. the same load through `fieldhub bridge` into TimescaleDB, timed until the bridge has
   committed every row;
3. end-to-end latency at a fixed 2,000 msg/s: publish time (the message's own `ts`) to the
   moment the commit's NOTIFY telemetry reaches a listener that then reads the new rows.

The load generator speaks MQTT 3.1.1 over raw sockets with pre-encoded packets and a window of
unacknowledged publishes: a paho publisher costs more CPU per message than the bridge itself,
and on a shared 2-core machine every cycle the generator burns is taken from the system under
test."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import select
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from fieldhub.bench.harness import Child
from fieldhub.bench.registry import Servers, scratch_servers
from fieldhub.broker.auth_sync import sync_once
from fieldhub.cli import Subparsers
from fieldhub.core import db, registry
from fieldhub.core.config import Settings
from fieldhub.core.db import Queries
from fieldhub.core.passwords import generate_secret, hash_secret
from fieldhub.core.procs import free_port, wait_until

QUERIES = Queries(Path(__file__).with_name("ingest.sql"))
BENCH_ORG = "bench"
LOADGEN = "svc.loadgen"
# The baseline consumer stands in for a bridge with the bridge's rights, under its own name
# (the services listener binds a session to its account).
BASELINE_CONSUMER = "svc.bench-consumer"


def loadgen_account(index: int) -> str:
    """Publisher process `index`'s account: one per process, or the broker (which names each
    session after its account) would have them take each other's session."""
    return f"{LOADGEN}-{index + 1}"


SHARED_TOPIC = "$share/fieldhub-bridge/devices/+/telemetry"
VALUES_PER_MESSAGE = 3
WARMUP_S = 2.0


def register(bench_subparsers: Subparsers) -> None:
    parser = bench_subparsers.add_parser(
        "ingest", help="MQTT -> TimescaleDB: bridge vs. a bare consumer, and latency"
    )
    parser.add_argument("--messages", type=int, default=300_000, help="per throughput run")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=2, help="load generator processes")
    parser.add_argument("--latency-rate", type=int, default=2000, help="msg/s of the latency run")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument(
        "--bridges", type=int, default=1, help="bridge instances sharing the subscription"
    )
    parser.add_argument(
        "--skip-baseline", action="store_true", help="only the bridge runs (for profiling)"
    )
    parser.add_argument(
        "--always-stage",
        action="store_true",
        help="run the bridge with every batch through its staging table (to compare)",
    )
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.set_defaults(handler=cmd_bench_ingest)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the load generator ----------------------------------------------------------------------


def _varint(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


def _connect(port: int, username: str, password: str, client_id: str) -> socket.socket:
    body = (
        _string("MQTT")
        + bytes([4, 0xC2])  # MQTT 3.1.1; username, password, clean session
        + struct.pack("!H", 300)
        + _string(client_id)
        + _string(username)
        + _string(password)
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"\x10" + _varint(len(body)) + body)
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        if not chunk:
            raise ConnectionError("broker closed the connection before CONNACK")
        connack += chunk
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"broker refused {username}: CONNACK {connack.hex()}")
    sock.settimeout(None)
    return sock


def publisher_process(
    port: int,
    password: str,
    index: int,
    device_ids: Sequence[str],
    count: int,
    rate: float,
    base_ms: int,
    start: Any,
    sent_counter: Synchronized[int],
) -> None:
    """Publish `count` QoS 1 messages round-robin over `device_ids`, at most `rate` msg/s
    (0 = as fast as the broker acknowledges). base_ms > 0: ts = base_ms + per-device sequence
    (unique rows for the throughput run); base_ms = 0: ts = the wall clock at publish."""
    sock = _connect(port, loadgen_account(index), password, f"bench-loadgen-{index}")
    topics = [_string(f"devices/{d}/telemetry") for d in device_ids]
    n_devices = len(device_ids)
    rng = random.Random(index)  # noqa: S311 - load values, not secrets
    values = [(rng.uniform(-20, 40), rng.randint(0, 1000), rng.uniform(0, 100)) for _ in range(97)]
    window = 4000
    chunk = 400
    inflight = 0
    sent = 0
    mid = 0
    pending_acks = b""
    start.wait()
    started = time.monotonic()
    pack_mid = struct.Struct("!H").pack
    while sent < count or inflight:
        can_send = count - sent
        if rate:
            can_send = min(can_send, int(rate * (time.monotonic() - started)) + 1 - sent)
        can_send = min(can_send, window - inflight, chunk)
        if can_send > 0:
            parts = []
            now_ms = int(time.time() * 1000)
            for i in range(sent, sent + can_send):
                device = i % n_devices
                seq = i // n_devices
                ts = base_ms + seq if base_ms else now_ms
                v = values[i % 97]
                payload = b'{"ts":%d,"seq":%d,"values":{"m0":%.3f,"m1":%d,"m2":%.2f}}' % (
                    ts,
                    seq,
                    v[0],
                    v[1],
                    v[2],
                )
                mid = mid % 65535 + 1
                topic = topics[device]
                parts.append(
                    b"\x32"
                    + _varint(len(topic) + 2 + len(payload))
                    + topic
                    + pack_mid(mid)
                    + payload
                )
            sock.sendall(b"".join(parts))
            sent += can_send
            inflight += can_send
            sent_counter.value = sent
        wait = 0.0 if (can_send > 0 and inflight < window) else 0.005
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("broker closed the load generator's connection")
            pending_acks += data
            acked = len(pending_acks) // 4
            if acked:
                if pending_acks[0] != 0x40:
                    raise ConnectionError(f"unexpected packet {pending_acks[:4].hex()}")
                inflight -= acked
                pending_acks = pending_acks[acked * 4 :]
    sock.sendall(b"\xe0\x00")
    sock.close()


class LoadGenerator:
    def __init__(self, port: int, password: str, device_ids: Sequence[str], processes: int) -> None:
        self.port = port
        self.password = password
        self.device_ids = list(device_ids)
        self.processes = processes
        self.context = multiprocessing.get_context("spawn")

    def run(self, total: int, *, rate: float = 0.0, base_ms: int = 0) -> tuple[Any, list[Any]]:
        """Start the publishers; returns (start event, processes). Set the event to begin."""
        start = self.context.Event()
        procs = []
        self.counters = []
        for index in range(self.processes):
            devices = self.device_ids[index :: self.processes]
            count = total // self.processes + (1 if index < total % self.processes else 0)
            counter = self.context.Value("q", 0, lock=False)
            self.counters.append(counter)
            proc = self.context.Process(
                target=publisher_process,
                args=(
                    self.port,
                    self.password,
                    index,
                    devices,
                    count,
                    rate / self.processes,
                    base_ms,
                    start,
                    counter,
                ),
                daemon=True,
            )
            proc.start()
            procs.append(proc)
        return start, procs

    def sent(self) -> int:
        return sum(counter.value for counter in self.counters)


# -- the baseline consumer ---------------------------------------------------------------------


def consumer_process(
    port: int, password: str, fast: bool, ready: Any, received: Synchronized[int], last: Any
) -> None:
    """The least a QoS 1 subscriber can do: receive and acknowledge.

    fast=False: stock paho (it acknowledges when on_message returns). fast=True: the bridge's
    own receive path (fieldhub.bridge.receive.BridgeClient, batched acknowledgements) without the
    decoding and the database, i.e. the ceiling of the bridge's design in Python."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from fieldhub.bridge.receive import BridgeClient

    client_class = BridgeClient if fast else mqtt.Client
    client: Any = client_class(
        CallbackAPIVersion.VERSION2,
        client_id="bench-baseline",
        protocol=mqtt.MQTTv5,
        manual_ack=fast,
    )
    client.username_pw_set(BASELINE_CONSUMER, password)
    count = 0
    last_time = 0.0
    mids: list[int] = []

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        nonlocal count, last_time
        count += 1
        last_time = time.time()

    def on_packet(topic: bytes, payload: bytes, qos: int, mid: int) -> None:
        nonlocal count, last_time
        count += 1
        last_time = time.time()
        mids.append(mid)

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(SHARED_TOPIC, qos=1)

    client.on_message = on_message
    if fast:
        client.on_publish_packet = on_packet
    client.on_connect = on_connect
    client.on_subscribe = lambda *args: ready.set()
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = 10_000
    client.connect("127.0.0.1", port, clean_start=True, properties=properties)
    while True:
        client.loop(timeout=0.05)
        if mids:
            client.ack_many(mids)
            mids.clear()
        received.value = count
        last.value = last_time


# -- the bench ---------------------------------------------------------------------------------


def _prepare(
    servers: Servers, devices: int, publishers: int, bridges: int
) -> tuple[list[str], str, str]:
    device_ids = [f"bench-{n:04d}" for n in range(devices)]
    bridge_password = generate_secret()
    loadgen_password = generate_secret()
    with db.connect(servers.database_url, autocommit=True) as conn:
        registry.create_org(conn, BENCH_ORG)
        registry.ensure_bridge_accounts(conn, bridge_password, bridges)
        registry.ensure_service_account(
            conn, BASELINE_CONSUMER, registry.BRIDGE_ACL, bridge_password
        )
        for index in range(publishers):
            registry.ensure_service_account(
                conn, loadgen_account(index), registry.LOADGEN_ACL, loadgen_password
            )
        # The devices never log in (the load generator publishes for them), so one hash of a
        # throwaway secret serves all of them and provisioning takes seconds.
        throwaway = generate_secret()
        shared_hash = hash_secret(throwaway)
        for device_id in device_ids:
            registry.create_device(
                conn, device_id, org=BENCH_ORG, password_hash=shared_hash, secret=throwaway
            )
        sync_once(conn, servers.broker.auth_dir)
    servers.broker.reload()

    def can_publish() -> bool:
        try:
            _connect(
                servers.broker.mqtt_services, loadgen_account(0), loadgen_password, "probe"
            ).close()
        except (OSError, ConnectionError):
            return False
        return True

    wait_until(can_publish, timeout=30, what="svc.loadgen to be accepted")
    return device_ids, bridge_password, loadgen_password


def _rate_line(label: str, done: int, total: int, started: float) -> str:
    elapsed = max(time.monotonic() - started, 1e-9)
    return f"  {label}: {done:,}/{total:,} ({done / elapsed:,.0f}/s)"


def run_baseline(
    servers: Servers, loadgen: LoadGenerator, password: str, total: int, *, fast: bool
) -> float:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    received = ctx.Value("q", 0, lock=False)
    last = ctx.Value("d", 0.0, lock=False)
    consumer = ctx.Process(
        target=consumer_process,
        args=(servers.broker.mqtt_services, password, fast, ready, received, last),
        daemon=True,
    )
    consumer.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the baseline consumer did not subscribe")
        start, procs = loadgen.run(total, base_ms=int(time.time() * 1000) - 3_000_000)
        time.sleep(1.0)  # let the publishers connect before the clock starts
        started_wall = time.time()
        started = time.monotonic()
        start.set()
        next_report = started + 1
        while received.value < total:
            if time.monotonic() > started + 300:
                raise RuntimeError(f"baseline stalled at {received.value} of {total}")
            if time.monotonic() >= next_report:
                label = "fast-path baseline" if fast else "baseline"
                progress(_rate_line(f"{label} received", received.value, total, started))
                next_report += 1
            time.sleep(0.02)
        for proc in procs:
            proc.join(timeout=30)
        return total / (float(last.value) - started_wall)
    finally:
        consumer.kill()
        consumer.join()


class BridgeRunner:
    def __init__(
        self, servers: Servers, password: str, *, instance: int = 1, always_stage: bool = False
    ) -> None:
        self.metrics_port = free_port()
        self.home = servers.workdir / f"bridge-home-{instance}"
        self.home.mkdir(exist_ok=True)
        user = quote(registry.BRIDGE_ACCOUNT_BASE, safe="")
        self.child = Child(
            "bridge",
            [
                "--instance",
                str(instance),
                "--metrics-port",
                str(self.metrics_port),
                *(["--always-stage"] if always_stage else []),
            ],
            {
                "DATABASE_URL": servers.database_url,
                "MQTT_URL": f"mqtt://{user}:{quote(password, safe='')}@127.0.0.1:"
                f"{servers.broker.mqtt_services}",
                "FIELDHUB_HOME": str(self.home),
            },
            servers.workdir / f"bridge-{instance}.log",
            metrics_port=self.metrics_port,
        ).start()

    def wait_ready(self) -> None:
        self.child.wait_ready(
            lambda: self.metric("fieldhub_bridge_ready") == 1.0, timeout=60, what="bridge"
        )

    def metric(self, name: str) -> float:
        """One unlabelled metric's value; -1 while the bridge does not answer."""
        self.child.check_running()
        values = self.child.metrics()  # one scrape: each costs the bridge CPU
        return values.get(name, 0.0) if values else -1.0

    def stop(self) -> None:
        self.child.stop(timeout=60)


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


class CpuMeter:
    """CPU seconds spent by each part of the benchmark between start() and stop(), and by the
    whole machine (the others' processes included), so a result says where the cycles went."""

    def __init__(self, servers: Servers, groups: dict[str, list[int]]) -> None:
        postmaster = int(
            (servers.workdir / "pg" / "pgdata" / "postmaster.pid").read_text().split()[0]
        )
        broker = int(servers.broker.pid_file.read_text().strip())
        self.groups = {**groups, "mosquitto": [broker], "postgres": [postmaster]}
        self.postmaster = postmaster

    def _sample(self) -> dict[str, float]:
        pids = dict(self.groups)
        pids["postgres"] = [self.postmaster, *_children(self.postmaster)]
        sample = {name: sum(_cpu_seconds(pid) for pid in group) for name, group in pids.items()}
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        busy = sum(int(v) for v in cpu) - int(cpu[3]) - int(cpu[4])  # minus idle and iowait
        sample["machine"] = busy / _TICKS
        return sample

    def start(self) -> None:
        self.started = time.monotonic()
        self.before = self._sample()

    def stop(self) -> dict[str, float]:
        """Cores used by each group on average over the interval."""
        after = self._sample()
        elapsed = time.monotonic() - self.started
        return {
            name: round((after[name] - self.before.get(name, 0.0)) / elapsed, 2) for name in after
        }


class BridgeFleet:
    """One or more bridge instances sharing the subscription; metrics are summed."""

    def __init__(self, runners: list[BridgeRunner]) -> None:
        self.runners = runners
        for runner in runners:
            runner.wait_ready()

    def metric(self, name: str) -> float:
        return sum(runner.metric(name) for runner in self.runners)

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop()


def run_bridge_throughput(
    servers: Servers, bridge: BridgeFleet, loadgen: LoadGenerator, total: int
) -> tuple[float, dict[str, float]]:
    expected_rows = total * VALUES_PER_MESSAGE
    start, procs = loadgen.run(total, base_ms=int(time.time() * 1000) - 2_000_000)
    time.sleep(1.0)
    meter = CpuMeter(
        servers,
        {
            "bridge": [runner.child.pid for runner in bridge.runners],
            "load generator": [proc.pid for proc in procs],
        },
    )
    meter.start()
    started = time.monotonic()
    start.set()
    next_report = started + 1
    while True:
        rows = bridge.metric("fieldhub_bridge_rows_total")
        if rows >= expected_rows:
            break
        now = time.monotonic()
        if now > started + 600:
            raise RuntimeError(f"the bridge stalled at {rows:,.0f} of {expected_rows:,} rows")
        if now >= next_report:
            progress(
                _rate_line("bridge committed msgs", int(rows) // 3, total, started)
                + f", published {loadgen.sent():,}"
            )
            next_report += 1
        # A scrape costs the bridge several milliseconds of CPU (py-spy: 7% of its samples at
        # 10 scrapes a second), so poll twice a second until the end is near, then closely.
        time.sleep(0.05 if rows >= expected_rows * 0.8 else 0.5)
    elapsed = time.monotonic() - started
    cores = meter.stop()
    for proc in procs:
        proc.join(timeout=30)
    with db.connect(servers.database_url) as conn:
        row = conn.execute(QUERIES["count_readings"]).fetchone()
    stored = row["n"] if row else 0
    if stored != expected_rows:
        raise RuntimeError(f"{stored:,} rows stored, expected {expected_rows:,}")
    return total / elapsed, cores


class LatencyProbe(threading.Thread):
    """LISTEN telemetry; on each commit read the new rows of the devices it names and record
    now - ts for each (ts is the publish time the load generator put into the message)."""

    def __init__(self, database_url: str, since: float) -> None:
        super().__init__(name="latency-probe", daemon=True)
        self.database_url = database_url
        self.since = since
        self.latencies_ms: list[float] = []
        self.seen_at: list[float] = []
        self.stop = threading.Event()
        self.listening = threading.Event()

    def run(self) -> None:
        last_seen: dict[int, float] = {}
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("LISTEN telemetry")
            self.listening.set()
            while not self.stop.is_set():
                keys: set[int] = set()
                for notify in conn.notifies(timeout=0.2, stop_after=1):
                    keys.update(map(int, notify.payload.split()))
                if not keys:
                    continue
                seen_at = time.time()
                # Whatever else has arrived meanwhile is read in the same query, so the probe
                # cannot fall behind the bridge and inflate what it measures.
                for notify in conn.notifies(timeout=0.0):
                    keys.update(map(int, notify.payload.split()))
                ordered = sorted(keys)
                rows = conn.execute(
                    QUERIES["new_rows_since"],
                    {"keys": ordered, "since": [last_seen.get(k, self.since) for k in ordered]},
                ).fetchall()
                for key, t in rows:
                    self.latencies_ms.append((seen_at - t) * 1000)
                    self.seen_at.append(seen_at)
                    if t > last_seen.get(key, 0.0):
                        last_seen[key] = t


def run_latency(
    servers: Servers, bridge: BridgeFleet, loadgen: LoadGenerator, rate: int, seconds: float
) -> tuple[float, float, float, int]:
    probe = LatencyProbe(servers.database_url, since=time.time())
    probe.start()
    probe.listening.wait(10)
    total = int(rate * seconds)
    start, procs = loadgen.run(total, rate=rate)
    time.sleep(1.0)
    batches_before = bridge.metric("fieldhub_bridge_batch_messages_count")
    commit_s_before = bridge.metric("fieldhub_bridge_commit_seconds_sum")
    started = time.monotonic()
    started_wall = time.time()
    start.set()
    for proc in procs:
        while proc.is_alive():
            proc.join(timeout=1)
            progress(
                _rate_line(
                    f"latency run at {rate:,} msg/s, published", loadgen.sent(), total, started
                )
                + f", bridge backlog {bridge.metric('fieldhub_bridge_backlog_messages'):,.0f}"
            )
    wait_until(lambda: len(probe.latencies_ms) >= total, timeout=30, what="the last commits")
    batches = bridge.metric("fieldhub_bridge_batch_messages_count") - batches_before
    commit_s = bridge.metric("fieldhub_bridge_commit_seconds_sum") - commit_s_before
    if batches > 0:
        progress(
            f"  bridge: {batches:,.0f} commits, {total / batches:,.0f} messages and "
            f"{commit_s / batches * 1000:.1f} ms each on average"
        )
    probe.stop.set()
    probe.join(timeout=5)
    by_second: dict[int, list[float]] = {}
    for at, latency in zip(probe.seen_at, probe.latencies_ms, strict=True):
        by_second.setdefault(int(at - started_wall), []).append(latency)
    progress(
        "  latency by second (max ms): "
        + " ".join(f"{int(max(v))}" for _, v in sorted(by_second.items()))
    )
    # Steady state: messages published in the first WARMUP_S seconds are left out (the first
    # commits of a run pay for cold caches and the publishers' ramp-up); all_p99 keeps them.
    steady = sorted(
        latency
        for at, latency in zip(probe.seen_at, probe.latencies_ms, strict=True)
        if at - latency / 1000 >= started_wall + WARMUP_S
    )
    everything = sorted(probe.latencies_ms)
    return (
        statistics.median(steady),
        _percentile(steady, 0.99),
        _percentile(everything, 0.99),
        len(steady),
    )


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def cmd_bench_ingest(settings: Settings | None, args: argparse.Namespace) -> int:
    if args.messages < 1000 or args.devices < 1 or args.publishers < 1:
        raise ValueError("--messages >= 1000, --devices >= 1 and --publishers >= 1")
    progress("starting scratch PostgreSQL+TimescaleDB and Mosquitto ...")
    with scratch_servers("fieldhub-bench-ingest-") as servers:
        device_ids, bridge_password, loadgen_password = _prepare(
            servers, args.devices, args.publishers, args.bridges
        )
        loadgen = LoadGenerator(
            servers.broker.mqtt_services, loadgen_password, device_ids, args.publishers
        )
        baseline = fast_baseline = float("nan")
        if not args.skip_baseline:
            progress(f"baseline: {args.messages:,} messages -> a paho consumer that only acks")
            baseline = run_baseline(servers, loadgen, bridge_password, args.messages, fast=False)
            progress(f"  baseline: {baseline:,.0f} msg/s")
            progress(f"fast-path baseline: {args.messages:,} messages -> BridgeClient, acks only")
            fast_baseline = run_baseline(
                servers, loadgen, bridge_password, args.messages, fast=True
            )
            progress(f"  fast-path baseline: {fast_baseline:,.0f} msg/s")
        progress(
            f"bridge: {args.messages:,} messages -> {args.bridges} x fieldhub bridge -> TimescaleDB"
        )
        bridge = BridgeFleet(
            [
                BridgeRunner(servers, bridge_password, instance=n, always_stage=args.always_stage)
                for n in range(1, args.bridges + 1)
            ]
        )
        try:
            throughput, cores = run_bridge_throughput(servers, bridge, loadgen, args.messages)
            progress(f"  bridge: {throughput:,.0f} msg/s ({throughput * 3:,.0f} rows/s)")
            progress(
                "  CPU cores used meanwhile: "
                + ", ".join(f"{name} {value:.2f}" for name, value in cores.items())
            )
            progress(f"latency: {args.latency_rate:,} msg/s for {args.latency_seconds:.0f} s")
            p50, p99, all_p99, samples = run_latency(
                servers, bridge, loadgen, args.latency_rate, args.latency_seconds
            )
        finally:
            bridge.stop()
    result = {
        "msgs_per_s": round(throughput),
        "rows_per_s": round(throughput * VALUES_PER_MESSAGE),
        "baseline_msgs_per_s": round(baseline) if baseline == baseline else None,
        "ratio": round(throughput / baseline, 3) if baseline == baseline else None,
        "fast_baseline_msgs_per_s": round(fast_baseline)
        if fast_baseline == fast_baseline
        else None,
        "ratio_to_fast_baseline": (
            round(throughput / fast_baseline, 3) if fast_baseline == fast_baseline else None
        ),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "p99_all_ms": round(all_p99, 1),
        "latency_rate": args.latency_rate,
        "latency_warmup_s": WARMUP_S,
        "latency_samples": samples,
        "messages": args.messages,
        "devices": args.devices,
        "publishers": args.publishers,
        "always_stage": args.always_stage,
        "bridges": args.bridges,
        "cores_during_throughput": cores,
    }
    print(f"baseline (paho, receive + ack):      {baseline:>9,.0f} msg/s")
    print(f"baseline (BridgeClient, receive+ack): {fast_baseline:>9,.0f} msg/s")
    print(
        f"bridge -> TimescaleDB:                {throughput:>9,.0f} msg/s "
        f"({throughput * VALUES_PER_MESSAGE:,.0f} rows/s), ratio {throughput / baseline:.2f} "
        f"(to the fast-path baseline {throughput / fast_baseline:.2f})"
    )
    print(
        f"latency at {args.latency_rate:,} msg/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"(after a {WARMUP_S:.0f} s warm-up; p99 including it {all_p99:.1f} ms)"
    )
    if args.json:
        print(json.dumps(result))
    return 0
