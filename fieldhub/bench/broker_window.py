"""`fieldhub bench broker-window`: what Mosquitto's window costs, measured. A broker is killed
with SIGKILL under load while its bridge is connected and keeping up, restarted at once (as
systemd's Restart= would), several times, for each `--autosave` setting; the simulated devices
(fieldhub.sim.simulate, with a ledger of every PUBACK) reconnect to it and publish again what
was not acknowledged. Afterwards every acknowledged reading is looked up in the database.

Why this is the cost: Mosquitto acknowledges a QoS 1 publish once it is in memory, before any
subscriber has it and before anything is on disk (its persistence is a periodic snapshot,
`autosave_interval`). A reading acknowledged to a device and not yet handed to the bridge (and
committed by it) is gone with the process, unless the last snapshot held it; a snapshot
restored at the restart also hands the bridge again what it had already stored since (absorbed
by the reading identity, counted as `redelivered_readings`: no reading is stored twice).

A restarted broker has no `$share` subscriber until the bridges have subscribed again; what
devices publish in that gap gets PUBACK 0x10 "No matching subscribers" and is stored by no
one. The simulated devices keep such a reading and send it again (`not_taken` counts those
PUBACKs), as docs/devices.md asks of firmware: before they did, that gap cost 250-290
readings per restart at 400 msg/s, far more than the kill itself.

On loopback, with PostgreSQL and the bridge of fieldhub/bench/registry.py's scratch servers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from fieldhub.bench.harness import settled
from fieldhub.bench.hosts_lab import QUERIES as LAB_QUERIES
from fieldhub.bench.hosts_plan import parse_ledger
from fieldhub.bench.ingest import BridgeRunner, progress
from fieldhub.bench.registry import Servers, scratch_servers
from fieldhub.broker.auth_sync import sync_once
from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.cli import Subparsers
from fieldhub.core import db, registry
from fieldhub.core.config import Settings
from fieldhub.core.passwords import generate_secret
from fieldhub.core.procs import wait_until
from fieldhub.sim import simulate
from fieldhub.sim.broker_walk import WalkPolicy

ORG = "window"
PREFIX = "win"
# One broker: a device retries it until it is back (the walk wraps around a list of one).
POLICY = WalkPolicy(base_s=0.2, cap_s=1.0, connect_timeout_s=2.0, puback_timeout_s=5.0)


def register(bench_subparsers: Subparsers) -> None:
    parser = bench_subparsers.add_parser(
        "broker-window",
        help="kill -9 a broker under load: acknowledged readings lost, per autosave setting",
    )
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.5, metavar="S")
    parser.add_argument("--kills", type=int, default=3, help="kills per setting")
    parser.add_argument("--between", type=float, default=10.0, metavar="S")
    parser.add_argument(
        "--autosave",
        type=int,
        nargs="+",
        default=[MosquittoBroker.autosave_interval, 1],
        metavar="S",
        help="autosave_interval settings to compare (default: the shipped one, then 1)",
    )
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.set_defaults(handler=cmd_bench_broker_window)


@dataclasses.dataclass
class Kill:
    autosave_interval: int
    at: float  # wall clock, as the readings' ts
    lost: int = 0
    oldest_lost_s: float | None = None


class Broker:
    """The scratch broker, killed and restarted (with another autosave setting if asked)."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.broker = servers.broker
        self.proc: subprocess.Popen[bytes] | None = None  # None: the scratch servers' own
        self.log = servers.workdir / "mosquitto-restarts.log"

    def pid(self) -> int:
        return self.proc.pid if self.proc else int(self.broker.pid_file.read_text().strip())

    def kill(self) -> None:
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
            return
        # The scratch servers' broker is this process's child too: reap it, or it stays a
        # zombie that still answers signal 0.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        wait_until(lambda: not _alive(pid), timeout=30, what="the broker to die")

    def start(self, autosave_interval: int) -> None:
        self.broker = dataclasses.replace(self.broker, autosave_interval=autosave_interval)
        self.proc = self.broker.start(self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def measure(
    *, devices: int, interval_s: float, kills: int, between_s: float, settings: list[int]
) -> dict[str, Any]:
    with scratch_servers("fieldhub-bench-window-") as servers:
        bridge_password = generate_secret()
        with db.connect(servers.database_url, autocommit=True) as conn:
            registry.ensure_bridge_accounts(conn, bridge_password, 1)
            simulated = simulate.provision(conn, org=ORG, prefix=PREFIX, count=devices)
            sync_once(conn, servers.broker.auth_dir)
        servers.broker.reload()
        broker = Broker(servers)
        bridge = BridgeRunner(servers, bridge_password, instance=1)
        ledger = simulate.Ledger(servers.workdir / "simulate.ledger")
        stats = simulate.Stats()
        stop = threading.Event()
        target = simulate.Target("127.0.0.1", servers.broker.mqtt_devices)
        runner = threading.Thread(
            target=lambda: asyncio.run(
                simulate.run_devices(
                    simulated,
                    target,
                    interval_s,
                    stop.is_set,
                    stats=stats,
                    ledger=ledger,
                    policy=POLICY,
                )
            ),
            daemon=True,
        )
        done: list[Kill] = []
        try:
            bridge.wait_ready()
            runner.start()
            wait_until(
                lambda: stats.connected == devices, timeout=120, what="every device connected"
            )
            for autosave in settings:
                # A clean restart into the setting (SIGTERM saves the snapshot; nothing lost).
                progress(f"autosave_interval {autosave}: {kills} kills, {between_s:g} s apart")
                if broker.proc is None:
                    broker.kill()
                else:
                    broker.stop()
                broker.start(autosave)
                for _ in range(kills):
                    time.sleep(between_s)
                    done.append(Kill(autosave, time.time()))
                    broker.kill()
                    broker.start(autosave)
            time.sleep(between_s)
            stop.set()
            runner.join(timeout=60)
            ledger.close()
            tally = _tally(servers, ledger.path, done, bridge)
        finally:
            stop.set()
            if runner.is_alive():
                runner.join(timeout=60)
            bridge.stop()
            broker.stop()
    return {
        "devices": devices,
        "rate": round(devices / interval_s),
        "published": stats.published,
        "republished": stats.republished,
        "not_taken": stats.not_taken,
        **tally,
        "settings": [
            {
                "autosave_interval": autosave,
                "lost_per_kill": [k.lost for k in done if k.autosave_interval == autosave],
                "oldest_lost_s": max(
                    (
                        k.oldest_lost_s
                        for k in done
                        if k.autosave_interval == autosave and k.oldest_lost_s is not None
                    ),
                    default=None,
                ),
            }
            for autosave in settings
        ],
    }


def _tally(
    servers: Servers, ledger: Path, kills: list[Kill], bridge: BridgeRunner
) -> dict[str, Any]:
    """Every acknowledged reading looked up once the bridge has stored what it will: the
    missing ones are charged to the kill just after them."""
    acked = {(device, seq): ts for device, seq, ts in parse_ledger(ledger.read_text())}
    with db.connect(servers.database_url, autocommit=True) as conn:

        def stored() -> dict[tuple[str, int], int]:
            rows = conn.execute(LAB_QUERIES["stored_copies"], {"like": f"{PREFIX}-%"}).fetchall()
            return {(r["device_id"], int(r["seq"])): int(r["copies"]) for r in rows}

        # Settled: the count has not moved for 5 s (the bridge drains a restored queue first).
        settled(lambda: len(stored()), still_s=5, timeout=120)
        copies = stored()
    missing = sorted(ts for key, ts in acked.items() if key not in copies)
    redelivered = bridge.metric("fieldhub_bridge_duplicate_readings_total")
    for ts in missing:
        kill = next((k for k in kills if ts <= k.at * 1000), None)
        if kill is None:
            continue
        kill.lost += 1
        age = kill.at - ts / 1000
        kill.oldest_lost_s = round(max(age, kill.oldest_lost_s or 0.0), 2)
    return {
        "acked": len(acked),
        "stored": sum(1 for key in acked if key in copies),
        "lost": len(missing),
        "doubled": sum(count - 1 for count in copies.values() if count > 1),
        "lost_per_kill_median": statistics.median([k.lost for k in kills]) if kills else None,
        "redelivered_readings": int(redelivered) if redelivered >= 0 else None,
    }


def cmd_bench_broker_window(settings: Settings | None, args: argparse.Namespace) -> int:
    if args.devices < 1 or args.interval <= 0 or args.kills < 1 or args.between <= 0:
        raise ValueError("--devices, --interval, --kills and --between must be positive")
    result = measure(
        devices=args.devices,
        interval_s=args.interval,
        kills=args.kills,
        between_s=args.between,
        settings=list(args.autosave),
    )
    for setting in result["settings"]:
        print(
            f"autosave_interval {setting['autosave_interval']}: acknowledged readings lost per "
            f"kill -9 {setting['lost_per_kill']} (oldest {setting['oldest_lost_s']} s before it)"
        )
    with contextlib.suppress(KeyError):
        print(
            f"{result['acked']:,} acknowledged at {result['rate']} msg/s, {result['stored']:,} "
            f"stored, {result['lost']} lost, {result['doubled']} doubled"
        )
    if args.json:
        print(json.dumps(result))
    return 0
