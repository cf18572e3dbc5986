"""`fieldhub bench failover --scenario broker`: a broker host lost under load, on the eleven
network-namespace hosts of `fieldhub bench hosts` (fieldhub/bench/hosts_lab.py), while the
ops host sends commands through the API to devices of both brokers.

After `--before` seconds of steady load, broker-1's host dies: its link goes down first (so no
FIN or RST reaches anyone, as when a host loses power) and every process of it gets SIGKILL.
Its devices notice by a PUBACK that does not come, retry broker-1 once and move to broker-2
(the rules of docs/devices.md, fieldhub/sim/broker_walk.py); broker-2 admits them (auth-sync
renders every device on every broker) and both bridge hosts consume from it. After `--after`
seconds (and not before every device is back) broker-1's host gets its link back and its roles
are started again, as systemd would at boot, and the devices drift home once it has answered
for `--home-after` seconds.

Measured, from the simulator's ledger (every PUBACK, with the broker that sent it) and the
database: per device of broker-1 the first reading broker-2 acknowledged after the kill, and
when that reading was stored (`standby_published_s`, `standby_stored_s`: first, p95, last;
recovery_s is the last stored); when each was publishing at home again (`back_home_s`); the
commands the user sent to broker-1's devices while it was down and what became of them; and the
tally: acked, stored, doubled, and what is missing split in two. `lost_in_broker`: readings
broker-1 acknowledged to a device but had not handed to a bridge when it died; Mosquitto
keeps them only in its memory and its autosave (docs/scaling.md), so they are lost with the
host unless its persistence file brings them back at the restart. `lost`: every other
acknowledged reading not stored (must be 0)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fieldhub.bench import hosts_plan as plan
from fieldhub.bench.hosts import Options, Run
from fieldhub.bench.hosts_lab import LOAD_LIKE, FieldhubHosts, tcp_open
from fieldhub.bench.hosts_lab import QUERIES as LAB_QUERIES
from fieldhub.bench.ingest import progress
from fieldhub.bench.install import installed_venv
from fieldhub.bench.netlab import Lab, LabError
from fieldhub.core.db import Queries
from fieldhub.sim.broker_walk import WalkPolicy

QUERIES = Queries(Path(__file__).with_name("failover_broker.sql"))
LOST, STANDBY = plan.BROKERS[0], plan.BROKERS[1]
POLL_S = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home-after",
        type=float,
        default=20.0,
        metavar="S",
        help=f"broker: devices go home once it has answered this long (devices' default "
        f"{WalkPolicy.home_stable_s:g})",
    )
    parser.add_argument(
        "--recovery-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="broker: the longest wait for every device to be back (on the standby, at home)",
    )


@dataclasses.dataclass(frozen=True)
class BrokerLossOptions:
    devices: int = 1000
    interval_s: float = 0.5  # 1,000 devices, 2,000 msg/s
    steady_s: float = 10.0
    down_s: float = 30.0
    home_after_s: float = 20.0
    recovery_timeout_s: float = 120.0
    command_every_s: float = 1.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BrokerLossOptions:
        if args.devices < 1 or args.rate < 1:
            raise ValueError("--devices and --rate must be positive")
        return cls(
            devices=args.devices,
            interval_s=args.devices / args.rate,
            steady_s=args.before,
            down_s=args.after,
            home_after_s=args.home_after,
            recovery_timeout_s=args.recovery_timeout,
        )


def spread(values: list[float]) -> dict[str, float | None]:
    """first, p95, last of `values` (seconds), rounded."""
    ordered = sorted(values)
    p95 = plan.percentile(ordered, 0.95)
    return {
        "first": round(ordered[0], 1) if ordered else None,
        "p95": None if p95 is None else round(p95, 1),
        "last": round(ordered[-1], 1) if ordered else None,
    }


class BrokerLoss:
    """The scenario's steps on a running lab (`run_` brought up, its sampler started)."""

    def __init__(self, run_: Run, options: BrokerLossOptions) -> None:
        self.run_ = run_
        self.hosts: FieldhubHosts = run_.hosts
        self.ledger = run_.ledger
        self.options = options
        self._scanned = 0

    def homed_on(self, broker: str) -> list[str]:
        rows = self.hosts.sql(
            lambda conn: conn.execute(
                QUERIES["homed_on"], {"broker": broker, "like": LOAD_LIKE}
            ).fetchall()
        )
        return [row["device_id"] for row in rows]

    def _first_via(
        self, broker: str, devices: set[str], found: dict[str, tuple[int, float]]
    ) -> None:
        """Record in `found` each device's first ledger entry acknowledged by `broker` among
        those added since the last call: (seq, when it was seen in the ledger). Seen, not its
        `ts`: a reading left unacknowledged by the lost broker goes out again with its old
        `ts`. The ledger is flushed every second and read every POLL_S, so this is up to
        1.5 s late."""
        self.ledger.poll()
        entries, brokers = self.ledger.entries, self.ledger.brokers
        seen = time.time()
        for index in range(self._scanned, len(entries)):
            device, seq, _ = entries[index]
            if brokers[index] == broker and device in devices:
                found.setdefault(device, (seq, seen))
        self._scanned = len(entries)

    def _stored(self, pending: dict[str, tuple[int, float]], since: float) -> set[str]:
        devices = list(pending)
        rows = self.hosts.sql(
            lambda conn: conn.execute(
                QUERIES["stored_of"],
                {
                    "devices": devices,
                    "seqs": [pending[d][0] for d in devices],
                    "since": datetime.fromtimestamp(since - 60, UTC),
                },
            ).fetchall()
        )
        return {row["device_id"] for row in rows}

    def run(self) -> dict[str, Any]:
        hosts, options = self.hosts, self.options
        homed = self.homed_on(LOST)
        if not homed:
            raise LabError(f"no load device is homed on {LOST}")
        devices = set(homed)
        progress(f"{len(homed)} devices homed on {LOST}; its host loses its link and processes")
        t_kill = time.time()
        hosts.link(LOST, up=False)
        killed = hosts.kill(LOST)

        # Each device's first reading through the standby, and when that reading was stored.
        self.ledger.poll()
        self._scanned = len(self.ledger.entries)
        via_standby: dict[str, tuple[int, float]] = {}
        stored_at: dict[str, float] = {}
        deadline = t_kill + options.recovery_timeout_s
        while time.time() < deadline and len(stored_at) < len(devices):
            hosts.check_alive()
            self._first_via(STANDBY, devices, via_standby)
            pending = {d: v for d, v in via_standby.items() if d not in stored_at}
            if pending:
                now = time.time()
                for device in self._stored(pending, t_kill):
                    stored_at[device] = now
            time.sleep(POLL_S)
        progress(
            f"{len(stored_at)} of {len(devices)} devices stored through {STANDBY} "
            f"{time.time() - t_kill:.1f} s after the kill"
        )
        while time.time() < t_kill + options.down_s:
            hosts.check_alive()
            time.sleep(POLL_S)

        progress(f"{LOST}: link up, its roles started again (as systemd would)")
        t_restart = time.time()
        hosts.link(LOST, up=True)
        hosts.start_host(LOST)
        address = hosts.addresses[LOST]
        listening_s = hosts.wait(
            lambda: hosts.on("ops", tcp_open, address, plan.MQTTS_PORT),
            f"{LOST}'s device listener",
        )
        at_home: dict[str, tuple[int, float]] = {}
        self.ledger.poll()
        self._scanned = len(self.ledger.entries)
        deadline = time.time() + options.home_after_s + options.recovery_timeout_s
        while time.time() < deadline and len(at_home) < len(devices):
            hosts.check_alive()
            self._first_via(LOST, devices, at_home)
            time.sleep(POLL_S)
        t_end = time.time()
        progress(f"{len(at_home)} of {len(devices)} devices home {t_end - t_restart:.1f} s later")
        return {
            "host": LOST,
            "killed_processes": killed,
            "devices_on_lost_broker": len(devices),
            "recovered_devices": len(stored_at),
            "standby_published_s": spread([seen - t_kill for _, seen in via_standby.values()]),
            "standby_stored_s": spread([t - t_kill for t in stored_at.values()]),
            "recovery_s": (
                round(max(stored_at.values()) - t_kill, 1)
                if len(stored_at) == len(devices)
                else None
            ),
            "down_s": round(t_restart - t_kill, 1),
            "restart_listening_s": round(listening_s, 1),
            "devices_home_again": len(at_home),
            "back_home_s": spread([seen - t_restart for _, seen in at_home.values()]),
            "_window": (t_kill, t_restart, t_end, devices),
        }

    def commands_to(self, devices: set[str], start: float, end: float) -> dict[str, Any]:
        """The commands sent to `devices` in [start, end) and their final states."""
        events = self.run_.user_events
        sent = [e for e in events.of("command_sent", start, end) if e["device"] in devices]
        final = {e["id"]: e["status"] for e in events.of("command") if e.get("status")}
        statuses = [final.get(e["id"], "unanswered") for e in sent]
        return {
            "sent": len(sent),
            "succeeded": statuses.count("succeeded"),
            "other": sorted({s for s in statuses if s != "succeeded"}),
            "api_errors": sum(
                1 for e in events.of("command_error", start, end) if e["device"] in devices
            ),
        }

    def split_missing(self) -> dict[str, Any]:
        """Acknowledged readings not stored, by the broker that acknowledged them."""
        copies = self.hosts.sql(
            lambda conn: conn.execute(LAB_QUERIES["stored_copies"], {"like": LOAD_LIKE}).fetchall()
        )
        stored = {(row["device_id"], int(row["seq"])) for row in copies}
        self.ledger.poll()
        missing: dict[str, list[int]] = {}
        for (device, seq, ts), broker in zip(self.ledger.entries, self.ledger.brokers, strict=True):
            if (device, seq) not in stored:
                missing.setdefault(broker, []).append(ts)
        return {broker: sorted(times) for broker, times in missing.items()}


def run(
    options: BrokerLossOptions,
    *,
    venv: Path | None = None,
    workdir: Path | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """The whole scenario on a lab of its own, torn down on the way out."""
    venv = venv or installed_venv(progress)
    base = workdir or Path(tempfile.mkdtemp(prefix="fieldhub-failover-broker-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # the postgres, mosquitto and www-data users enter their directories
    lab_options = Options(
        devices=options.devices,
        interval_s=options.interval_s,
        steady_s=options.steady_s,
        down_s=options.down_s,
        command_every_s=options.command_every_s,
        browser="sse",  # the live view is not what this scenario measures
    )
    values = {
        "devices": str(options.devices),
        "interval": f"{options.interval_s:g}",
        "home_after": f"{options.home_after_s:g}",
    }
    try:
        with Lab(base / "lab") as lab:
            hosts = FieldhubHosts(lab, venv, base, plan.layout(), progress, values)
            run_ = Run(hosts, lab_options)
            run_.bring_up()
            run_.sampler.start()
            try:
                run_.steady()
                loss = BrokerLoss(run_, options)
                result = loss.run()
                t_kill, t_restart, t_end, devices = result.pop("_window")
                # The rate the devices reached (acknowledged readings stamped in the steady
                # `--before` seconds), beside the nominal devices / interval: on a shared
                # machine the simulator can fall behind what was asked.
                ledger, before_ms = loss.ledger, options.steady_s * 1000
                reached = ledger.acked_until(int(t_kill * 1000)) - ledger.acked_until(
                    int(t_kill * 1000 - before_ms)
                )
                result["rate_reached"] = round(reached / options.steady_s) if before_ms else None
                _, tally = run_.drain()
                missing = loss.split_missing()
                result["commands_while_down"] = loss.commands_to(devices, t_kill, t_restart)
                result["commands_after"] = loss.commands_to(devices, t_restart, t_end)
                result["commands"] = run_.commands(0, float("inf"))
            finally:
                run_.sampler.stop()
                run_.stop_user()
    finally:
        if not keep and workdir is None:
            shutil.rmtree(base, ignore_errors=True)
        elif keep:
            print(f"broker: kept {base} (every host's logs and data)")
    in_broker = missing.get(LOST, [])
    lost_in_broker = [ts for ts in in_broker if ts <= t_kill * 1000]
    return {
        "name": "broker",
        "layout": "11 network-namespace hosts (fieldhub bench hosts)",
        **result,
        "acked": tally.published,
        "stored": tally.stored,
        "lost": tally.lost - len(lost_in_broker),
        "lost_in_broker": len(lost_in_broker),
        "lost_in_broker_oldest_s": (
            round(t_kill - min(lost_in_broker) / 1000, 2) if lost_in_broker else None
        ),
        "doubled": tally.doubled,
        "devices": options.devices,
        "rate": round(options.devices / options.interval_s),
    }


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    options = BrokerLossOptions.from_args(args)
    progress(
        f"broker: {options.devices} devices, {options.devices / options.interval_s:.0f} msg/s "
        "on the 11-host lab ..."
    )
    scenario = run(options, keep=args.keep)
    print(
        f"broker (11 namespace hosts): {scenario['devices_on_lost_broker']} devices of "
        f"{scenario['host']} stored through {STANDBY} {scenario['standby_stored_s']} s after "
        f"the kill, home again {scenario['back_home_s']} s after its restart; "
        f"{scenario['acked']:,} acknowledged, {scenario['stored']:,} stored, "
        f"{scenario['lost']} lost, {scenario['lost_in_broker']} lost in the broker, "
        f"{scenario['doubled']} doubled; commands while down: "
        f"{json.dumps(scenario['commands_while_down'])}"
    )
    return scenario
