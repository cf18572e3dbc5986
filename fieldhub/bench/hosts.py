"""`fieldhub bench hosts`: fieldhub on eleven hosts of one machine, under load, while a bridge
host and then a web host lose every process.

The hosts are network namespaces of a fieldhub/bench/netlab.py lab, laid out by
fieldhub/bench/hosts_plan.py: db (PostgreSQL + TimescaleDB, as the `postgres` user), broker-1
and broker-2 (Mosquitto with its rendered config, and that broker's auth-sync), bridge-1 and
bridge-2 (one bridge process per broker each, so each instance consumes from both brokers),
worker, web-1 and web-2 (gunicorn), nginx (TLS, in front of both web hosts), load (`fieldhub
simulate`: devices homed across both brokers, over TLS to their broker's address, answering
commands) and ops (migrations, accounts, and the user: a browser watching one device live
through nginx while a program sends commands through the API). Every fieldhub role runs from
a wheel built from this checkout and installed without extras (fieldhub/bench/install.py),
with the host's own env file and data directory.

Steps, each measured:
1. steady state;
2. every process of bridge-1's host killed (SIGKILL: the host lost power). Its two durable
   sessions stay on the brokers, and Mosquitto keeps choosing members of a shared
   subscription round-robin *including offline ones*: while bridge-1 is down about half of
   every broker's telemetry (and of the devices' command acks) is queued for it and waits;
   bridge-2 stores only its own half. Nothing is lost, but that half is late by the outage.
   After a while the host's roles are started again, as systemd would, and the queued half
   drains; recovery is measured until every message published before the restart is stored;
3. every process of web-1's host killed: nginx sends the next requests to web-2, the
   browser's EventSource reconnects, commands through the API go on; web-1 is restarted.
Then the load stops, and every message the broker acknowledged (the simulator's ledger) is
looked up in the database: `lost` and `doubled` are counted per device and message.

`--json` prints one JSON object; progress goes to stderr when it is a terminal."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from fieldhub.bench import hosts_plan as plan
from fieldhub.bench.hosts_lab import (
    LOAD_LIKE,
    QUERIES,
    START_TIMEOUT_S,
    USER_EMAIL,
    FieldhubHosts,
    LedgerReader,
    Sampler,
)
from fieldhub.bench.install import InstallError, check_starts, installed_venv
from fieldhub.bench.netlab import Lab, LabError, LabProcess
from fieldhub.cli import Subparsers
from fieldhub.core.config import Settings
from fieldhub.core.procs import tail

WINDOW = "_window"  # a step's (start, end), replaced by what the user saw in it


@dataclasses.dataclass
class Options:
    devices: int = 1000
    interval_s: float = 5.0
    steady_s: float = 30.0
    down_s: float = 30.0  # how long a killed host stays down before its roles start again
    settle_timeout_s: float = 300.0  # longest wait for a backlog to drain
    command_every_s: float = 2.0
    browser: str = "auto"
    venv: Path | None = None
    workdir: Path | None = None
    keep: bool = False


def register(bench_subparsers: Subparsers) -> None:
    parser = bench_subparsers.add_parser(
        "hosts",
        help="fieldhub on 11 network-namespace hosts; kill a bridge host, then a web host (root)",
        description="Needs root (network namespaces). Builds and installs the wheel, runs "
        "every role on its own host, and counts what the devices published against what was "
        "stored.",
    )
    defaults = Options()
    parser.add_argument("--devices", type=int, default=defaults.devices)
    parser.add_argument("--interval", type=float, default=defaults.interval_s, metavar="S")
    parser.add_argument("--steady", type=float, default=defaults.steady_s, metavar="S")
    parser.add_argument(
        "--down",
        type=float,
        default=defaults.down_s,
        metavar="S",
        help="how long a killed host stays down before its roles are started again",
    )
    parser.add_argument(
        "--command-every", type=float, default=defaults.command_every_s, metavar="S"
    )
    parser.add_argument("--browser", choices=("auto", "chromium", "sse"), default="auto")
    parser.add_argument(
        "--venv", type=Path, default=None, help="an existing install to run (default: build one)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (logs, data)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=cmd_bench_hosts)


def cmd_bench_hosts(settings: Settings, args: argparse.Namespace) -> int:
    if args.devices < 1 or args.interval <= 0 or args.steady < 0 or args.down < 0:
        raise ValueError("--devices, --interval must be positive; --steady, --down not negative")
    options = Options(
        devices=args.devices,
        interval_s=args.interval,
        steady_s=args.steady,
        down_s=args.down,
        command_every_s=args.command_every,
        browser=args.browser,
        venv=args.venv,
        workdir=args.workdir,
        keep=args.keep,
    )
    # SIGTERM unwinds like Ctrl-C, so the lab is torn down either way.
    signal.signal(signal.SIGTERM, lambda *_: _raise_interrupt())
    try:
        result = run(options, progress=terminal_progress())
    except (LabError, InstallError, TimeoutError) as exc:
        # What failed, with the log lines of the role that failed; the lab is already gone.
        print(f"fieldhub bench hosts: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(summary(result))
    return 0 if result["lost"] == 0 and result["doubled"] == 0 else 1


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


def terminal_progress() -> Callable[[str], None]:
    if not sys.stderr.isatty():
        return lambda text: None

    def show(text: str) -> None:
        print(f"[hosts {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    return show


class EventReader:
    """The user's events file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._offset = 0

    def poll(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return self.events
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        end = chunk.rfind(b"\n") + 1
        for line in chunk[:end].decode().splitlines():
            self.events.append(json.loads(line))
        self._offset += end
        return self.events

    def of(self, kind: str, start: float = 0, end: float = float("inf")) -> list[dict[str, Any]]:
        return [e for e in self.poll() if e["kind"] == kind and start <= e["t"] < end]


class Run:
    """One benchmark run: bring-up, steps, tally."""

    def __init__(self, hosts: FieldhubHosts, options: Options) -> None:
        self.hosts = hosts
        self.options = options
        self.progress = hosts.progress
        self.ledger = LedgerReader(hosts.path("load", plan.LEDGER_DIR))
        self.user_events = EventReader(hosts.root("ops") / "user-events.jsonl")
        self.sampler = Sampler(hosts, self.ledger)
        self.user: LabProcess | None = None
        chosen = plan.devices_per_broker(options.devices, per_broker=2)
        self.watched = chosen[plan.BROKERS[0]][0]
        self.command_devices = [d for devices in chosen.values() for d in devices]

    # -- bring-up --------------------------------------------------------------------------
    def bring_up(self) -> dict[str, float]:
        hosts = self.hosts
        timings: dict[str, float] = {}
        started = time.monotonic()
        self.progress("db: PostgreSQL + TimescaleDB")
        hosts.start_database()
        hosts.prepare_database()
        timings["database_s"] = time.monotonic() - started
        for broker in plan.BROKERS:
            self.progress(f"{broker}: Mosquitto and its auth-sync")
            hosts.start_broker(broker)
        for bridge in plan.BRIDGE_HOSTS:
            self.progress(f"{bridge}: a bridge process per broker")
            hosts.start_host(bridge)
        for bridge in plan.BRIDGE_HOSTS:
            hosts.wait_bridges(bridge)
        hosts.start_host("worker")
        hosts.wait_worker()
        # The user is served by web-1: web-2 starts once the live view is open, so killing
        # web-1 later cuts that stream (nginx would otherwise pick either).
        self.progress("web-1, nginx")
        hosts.start_host("web-1")
        hosts.wait_web("web-1")
        hosts.start_nginx()
        timings["tiers_s"] = time.monotonic() - started
        self.progress(f"load: {self.options.devices} simulated devices over both brokers")
        # Devices trust the brokers' CA, as their makers provision it.
        device_tls = hosts.path("load", plan.STATE_DIR) / "tls"
        device_tls.mkdir(parents=True, exist_ok=True)
        shutil.copy2(hosts.ca_dir / "ca.crt", device_tls / "ca.crt")
        hosts.start_host("load")
        hosts.wait(
            lambda: hosts.count("devices_reporting", like=LOAD_LIKE) >= self.options.devices,
            f"all {self.options.devices} devices to report",
            timeout=START_TIMEOUT_S + self.options.devices / 10,
        )
        timings["devices_reporting_s"] = time.monotonic() - started
        self.progress(f"ops: the user logs in through nginx and watches {self.watched}")
        self.start_user()
        hosts.wait(
            lambda: bool(self.user_events.of("live", 0)) and self._live_readings_since(0),
            "the live view to show readings",
        )
        self.progress("web-2")
        hosts.start_host("web-2")
        hosts.wait_web("web-2")
        timings["total_s"] = time.monotonic() - started
        return {k: round(v, 1) for k, v in timings.items()}

    def start_user(self) -> None:
        ops = self.hosts.root("ops")
        argv = [
            sys.executable,
            "-m",
            "fieldhub.bench.hosts_user",
            "--base", self.hosts.base_url,
            "--ca", str(self.hosts.ca_dir / "ca.crt"),
            "--email", USER_EMAIL,
            "--password-file", str(ops / "user.password"),
            "--token-file", str(ops / "user.token"),
            "--device", self.watched,
            "--command-devices", ",".join(self.command_devices),
            "--command-every", f"{self.options.command_every_s:g}",
            "--events", str(self.user_events.path),
            "--browser", self.options.browser,
            "--screenshot", str(ops / "live-view.png"),
        ]  # fmt: skip
        self.user = self.hosts.lab.start(
            self.hosts.lab.host("ops"),
            "user",
            argv,
            env={"HOME": str(ops), "PYTHONUNBUFFERED": "1"},
            log_path=ops / "log" / "user.log",
            cwd=Path(__file__).resolve().parents[2],
        )

    def _live_readings_since(self, t: float) -> bool:
        if self.user is not None and not self.user.alive():
            raise LabError(f"the user process exited:\n{tail(self.user.log_path)}")
        return any(e["event"] == "readings" for e in self.user_events.of("live", t))

    # -- observations over a window ----------------------------------------------------------------
    def live(self, start: float, end: float) -> dict[str, Any]:
        events = self.user_events.of("live", start, end)
        readings = [e["t"] for e in events if e["event"] == "readings"]
        return {
            "readings_events": len(readings),
            "longest_gap_s": round(plan.longest_gap(readings, start, end), 1),
            "reconnects": sum(1 for e in events if e["event"] == "open"),
        }

    def commands(self, start: float, end: float) -> dict[str, Any]:
        sent = self.user_events.of("command_sent", start, end)
        finished = {e["id"]: e for e in self.user_events.of("command") if e.get("status")}
        errors = self.user_events.of("command_error", start, end)
        done = [finished[e["id"]] for e in sent if e["id"] in finished]
        rtt = sorted(e["t"] - e["sent"] for e in done if e["status"] != "open")
        p50, p95 = plan.percentile(rtt, 0.5), plan.percentile(rtt, 0.95)
        return {
            "sent": len(sent),
            "succeeded": sum(1 for e in done if e["status"] == "succeeded"),
            "other_final": sorted({e["status"] for e in done} - {"succeeded", "open"}),
            "unfinished": len(sent) - len(done) + sum(1 for e in done if e["status"] == "open"),
            "api_errors": len(errors),
            "round_trip_p50_s": None if p50 is None else round(p50, 2),
            "round_trip_p95_s": None if p95 is None else round(p95, 2),
            "round_trip_max_s": round(rtt[-1], 2) if rtt else None,
        }

    # -- steps -------------------------------------------------------------------------------------
    def steady(self) -> dict[str, Any]:
        self.progress(f"steady state for {self.options.steady_s:g} s")
        start = time.time()
        self._hold(self.options.steady_s)
        end = time.time()
        return {
            "name": "steady",
            "what": "every host up; devices publish, the user watches and sends commands",
            "seconds": round(end - start, 1),
            **self.sampler.window(start, end),
            WINDOW: (start, end),
        }

    def kill_bridge_host(self, host: str = plan.BRIDGE_HOSTS[0]) -> dict[str, Any]:
        hosts = self.hosts
        self.progress(f"killing every process of {host}")
        t_kill = time.time()
        killed = hosts.kill(host)
        self._hold(self.options.down_s)
        t_restart = time.time()
        while_down = self.sampler.window(t_kill, t_restart)
        self.progress(f"{host}: starting its roles again (as systemd would)")
        hosts.start_host(host)
        ready_s = hosts.wait_bridges(host)
        caught_up = self._caught_up(t_restart)
        t_end = time.time()
        share = None
        if while_down.get("published"):
            share = round(while_down["stored"] / while_down["published"], 2)
        if while_down:
            # Acknowledged by the brokers, not yet stored: queued for bridge-1's sessions.
            while_down["held"] = while_down["published"] - while_down["stored"]
        return {
            "name": "bridge-host-killed",
            "host": host,
            "what": f"SIGKILL to all {killed} processes of {host}; its roles started again "
            f"after {self.options.down_s:g} s",
            "killed_processes": killed,
            "down_s": round(t_restart - t_kill, 1),
            "while_down": {**while_down, "stored_share": share},
            "restart_ready_s": round(ready_s, 1),
            "recovery_s": None if caught_up is None else round(caught_up - t_restart, 1),
            "kill_to_caught_up_s": None if caught_up is None else round(caught_up - t_kill, 1),
            WINDOW: (t_kill, t_end),
        }

    def kill_web_host(self, host: str = plan.WEB_HOSTS[0]) -> dict[str, Any]:
        hosts = self.hosts
        listeners = hosts.sql(lambda conn: conn.execute(QUERIES["live_listeners"]).fetchall())
        by_address = {address: name for name, address in hosts.addresses.items()}
        served_by = sorted(str(by_address.get(row["address"], row["address"])) for row in listeners)
        self.progress(f"killing every process of {host} (the live view is on {served_by})")
        t_kill = time.time()
        killed = hosts.kill(host)
        reopened = self._first_live_event_after(t_kill, ("hello",))
        # Readings shown on the new stream (the old one may still deliver one as it dies).
        readings = self._first_live_event_after(reopened, ("readings",)) if reopened else None
        self._hold(max(0.0, self.options.down_s - (time.time() - t_kill)))
        t_restart = time.time()
        self.progress(f"{host}: starting its roles again")
        hosts.start_host(host)
        ready_s = hosts.wait_web(host)
        t_end = time.time()
        return {
            "name": "web-host-killed",
            "host": host,
            "what": f"SIGKILL to all {killed} processes of {host}; nginx sends users to the "
            f"other web host; restarted after {self.options.down_s:g} s",
            "killed_processes": killed,
            "live_view_served_by": served_by,
            "live_reconnected_s": None if reopened is None else round(reopened - t_kill, 1),
            "live_readings_again_s": None if readings is None else round(readings - t_kill, 1),
            "down_s": round(t_restart - t_kill, 1),
            "restart_ready_s": round(ready_s, 1),
            **self.sampler.window(t_kill, t_end),
            WINDOW: (t_kill, t_end),
        }

    def drain(self) -> tuple[dict[str, Any], plan.Tally]:
        self.progress("stopping the user, then the load; waiting until all is stored")
        self.stop_user()  # while the devices still answer the last commands
        t_stop = time.time()
        self.hosts.stop_role("load", "simulate")
        acked = self.ledger.poll()
        stored_by = self._settle(
            lambda: self.hosts.count("stored_messages", like=LOAD_LIKE) >= acked
        )
        copies = self.hosts.sql(
            lambda conn: conn.execute(QUERIES["stored_copies"], {"like": LOAD_LIKE}).fetchall()
        )
        result = plan.tally(
            ((device, seq) for device, seq, _ in self.ledger.entries),
            ((row["device_id"], int(row["seq"]), int(row["copies"])) for row in copies),
        )
        return {
            "name": "drain",
            "what": "the user stopped, then the simulator; the backlog stored",
            "settled_s": None if stored_by is None else round(stored_by - t_stop, 1),
        }, result

    def stop_user(self) -> None:
        if self.user is not None:
            self.hosts.lab.stop_process(self.user, timeout=30)
            self.user = None
            self.user_events.poll()

    # -- waiting -------------------------------------------------------------------------------
    def _hold(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.hosts.check_alive()
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _settle(self, condition: Callable[[], bool]) -> float | None:
        """When `condition` first held (polled), or None within settle_timeout_s."""
        deadline = time.monotonic() + self.options.settle_timeout_s
        while time.monotonic() < deadline:
            self.hosts.check_alive()
            with contextlib.suppress(psycopg.OperationalError, LabError):
                if condition():
                    return time.time()
            time.sleep(0.5)
        return None

    def _caught_up(self, moment: float) -> float | None:
        """When every message published (by its timestamp) up to `moment` was stored."""
        until_ms = int(moment * 1000)
        until = datetime.fromtimestamp(moment, UTC)

        def done() -> bool:
            self.ledger.poll()
            # Acknowledgements up to `moment` are in the ledger once it has flushed past it.
            if self.ledger.newest_ts() < until_ms + 2000:
                return False
            acked = self.ledger.acked_until(until_ms)
            stored = self.hosts.count("stored_messages_until", like=LOAD_LIKE, until=until)
            return stored >= acked

        return self._settle(done)

    def _first_live_event_after(self, t: float, kinds: tuple[str, ...]) -> float | None:
        deadline = time.monotonic() + max(60.0, self.options.down_s)
        while time.monotonic() < deadline:
            found = [e["t"] for e in self.user_events.of("live", t) if e["event"] in kinds]
            if found:
                return float(min(found))
            self.hosts.check_alive()
            time.sleep(0.1)
        return None


def run(options: Options, progress: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """The whole benchmark; returns the result object. The lab is torn down on the way out,
    whatever happens."""
    started = time.time()
    load_before = os.getloadavg()
    if options.venv is not None:
        check_starts(options.venv)
    venv = options.venv or installed_venv(progress)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="fieldhub-hosts-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # the postgres, mosquitto and www-data users enter their directories
    progress(f"workdir {workdir}")
    try:
        with Lab(workdir / "lab") as lab:
            values = {"devices": str(options.devices), "interval": f"{options.interval_s:g}"}
            hosts = FieldhubHosts(lab, venv, workdir, plan.layout(), progress, values)
            result = _run_steps(hosts, options)
    finally:
        if not options.keep and options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 1) for x in load_before],
        "load_average_after": [round(x, 1) for x in os.getloadavg()],
    }
    result["started_at"] = datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")
    result["duration_s"] = round(time.time() - started, 1)
    return result


def _run_steps(hosts: FieldhubHosts, options: Options) -> dict[str, Any]:
    run_ = Run(hosts, options)
    bring_up = run_.bring_up()
    run_.sampler.start()
    try:
        steps = [run_.steady(), run_.kill_bridge_host(), run_.kill_web_host()]
        drain, tally = run_.drain()
        steps.append(drain)
    finally:
        run_.sampler.stop()
        run_.stop_user()
    # What the user saw in each step, counted once every command had its final answer.
    for step in steps:
        if WINDOW in step:
            start, end = step.pop(WINDOW)
            step["live"] = run_.live(start, end)
            step["commands"] = run_.commands(start, end)
    user_errors = run_.user_events.of("user_error")
    return {
        "hosts": [
            {
                "name": name,
                "address": hosts.addresses[name],
                "roles": [str(role) for role in host_plan.roles],
            }
            for name, host_plan in hosts.plans.items()
        ],
        "devices": options.devices,
        "interval_s": options.interval_s,
        "published": tally.published,
        "stored": tally.stored,
        "lost": tally.lost,
        "doubled": tally.doubled,
        "stored_unacknowledged": tally.stored_unacknowledged,
        "devices_with_losses": tally.devices_with_losses,
        "watched_device": run_.watched,
        "bring_up": bring_up,
        "steps": steps,
        "commands": run_.commands(0, float("inf")),
        "user_errors": [e["error"] for e in user_errors],
    }


def summary(result: dict[str, Any]) -> str:
    lines = [
        f"{len(result['hosts'])} hosts, {result['devices']} devices: published "
        f"{result['published']}, stored {result['stored']}, lost {result['lost']}, doubled "
        f"{result['doubled']}"
    ]
    for step in result["steps"]:
        detail = {k: v for k, v in step.items() if k not in ("name", "what")}
        lines.append(f"- {step['name']}: {step['what']}")
        lines.append(f"  {json.dumps(detail)}")
    return "\n".join(lines)
