"""`fieldhub simulate`: run simulated devices against the broker (demo data and load tests)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from fieldhub.cli import CommandError, Subparsers
from fieldhub.core import endpoints
from fieldhub.core.config import Settings
from fieldhub.core.db import connect
from fieldhub.sim import simulate
from fieldhub.sim.broker_walk import WalkPolicy

log = logging.getLogger("fieldhub.simulate")


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run simulated devices that publish telemetry and answer commands",
        description="Creates devices PREFIX-01..PREFIX-N in ORG (or rotates the secrets of "
        "those that exist: only hashes are stored), waits until the broker accepts them, then "
        "keeps them connected until Ctrl-C/SIGTERM.",
    )
    parser.add_argument("--devices", type=int, default=10, metavar="N", help="how many (10)")
    parser.add_argument(
        "--interval", type=float, default=10.0, metavar="S", help="seconds between readings (10)"
    )
    parser.add_argument("--org", default="simulated", help="organisation (created if missing)")
    parser.add_argument("--prefix", default="sim", help="device id prefix (sim -> sim-01, ...)")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="P",
        help=f"worker processes (default: one per {simulate.DEVICES_PER_PROCESS} devices)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="device listener every device connects to (default: each device its home "
        "broker's URL from FIELDHUB_BROKERS, MQTT_DEVICE_URL or the local stack); mqtts:// uses "
        "the CA in $FIELDHUB_HOME/tls unless it is a public certificate",
    )
    parser.add_argument(
        "--connect-rate",
        type=float,
        default=500.0,
        metavar="PER_S",
        help="new connections per second while starting (500), to spare the broker a storm",
    )
    parser.add_argument(
        "--accept-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="how long to wait for the broker to accept the devices' secrets (300)",
    )
    parser.add_argument(
        "--ledger",
        type=Path,
        default=None,
        metavar="DIR",
        help="append a line 'device seq ts_ms broker' per acknowledged reading to "
        "DIR/simulate-N.ledger (benchmarks count losses with it)",
    )
    parser.add_argument(
        "--home-after",
        type=float,
        default=WalkPolicy.home_stable_s,
        metavar="S",
        help="a device on a standby broker goes back home once its home broker has answered "
        f"for this long ({WalkPolicy.home_stable_s:.0f}; docs/devices.md)",
    )
    parser.set_defaults(handler=cmd_simulate)


def target_from_url(url: str, settings: Settings) -> simulate.Target:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise CommandError(f"--url must start with mqtt:// or mqtts://, not {url!r}")
    tls = parts.scheme == "mqtts"
    ca_file = settings.tls_dir / "ca.crt"
    return simulate.Target(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8883 if tls else 1883),
        tls=tls,
        ca_file=ca_file if tls and ca_file.exists() else None,
    )


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    if not 1 <= args.devices <= 1_000_000:
        raise CommandError("--devices must be between 1 and 1000000")
    if not 0.1 <= args.interval <= 86400:
        raise CommandError("--interval must be between 0.1 and 86400 seconds")
    if args.processes is not None and not 1 <= args.processes <= 256:
        raise CommandError("--processes must be between 1 and 256")
    if not 1 <= args.home_after <= 86400:
        raise CommandError("--home-after must be between 1 and 86400 seconds")
    policy = WalkPolicy(home_stable_s=args.home_after, home_probe_s=min(15.0, args.home_after / 2))
    targets: simulate.Targets
    if args.url:
        targets = target_from_url(args.url, settings)
    else:
        targets = {
            broker: target_from_url(endpoints.device_mqtt_url(settings, broker), settings)
            for broker in settings.broker_names
        }

    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        devices = simulate.provision(conn, org=args.org, prefix=args.prefix, count=args.devices)
    # The last device of each broker: once it logs in, that broker's auth sync has them all.
    last_of_broker = {device.broker: device for device in devices}
    for device in last_of_broker.values():
        simulate.target_of(device, targets)  # a broker without a URL fails before any wait

    # Only now: the hashing pool's workers are forked during provisioning and must keep the
    # default SIGTERM, or the pool can never terminate them.
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for device in last_of_broker.values():
        target = simulate.target_of(device, targets)
        if not simulate.wait_until_accepted(
            target, device, timeout=args.accept_timeout, should_stop=stop.is_set
        ):
            if stop.is_set():
                return 0
            raise CommandError(
                f"the broker at {target.host}:{target.port} did not accept {device.device_id} "
                f"within {args.accept_timeout:.0f} s; is `fieldhub auth-sync` running?"
            )
    processes = args.processes or simulate.default_processes(len(devices))
    where = ", ".join(
        f"{sum(d.broker == broker for d in devices)} on {broker} "
        f"({(t := simulate.target_of(device, targets)).host}:{t.port})"
        for broker, device in sorted(last_of_broker.items())
    )
    log.info(
        "simulating %d devices (%s), a reading every %.1f s, in %d process(es)",
        len(devices),
        where,
        args.interval,
        processes,
    )
    totals = simulate.run_simulation(
        devices,
        targets,
        args.interval,
        processes=processes,
        should_stop=stop.is_set,
        connect_rate=args.connect_rate,
        ledger_dir=args.ledger,
        policy=policy,
    )
    log.info(
        "stopped: %d messages published, %d commands answered",
        totals.published,
        totals.commands_answered,
    )
    return 0
