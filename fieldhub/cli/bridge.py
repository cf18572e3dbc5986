"""`fieldhub bridge`: the telemetry bridge process."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from fieldhub.cli import Subparsers
from fieldhub.core import endpoints
from fieldhub.core.config import Settings, bridge_metrics_port, split_bridge_name

log = logging.getLogger(__name__)


def register(subparsers: Subparsers) -> None:
    bridge = subparsers.add_parser(
        "bridge", help="run the MQTT -> TimescaleDB telemetry bridge (until SIGTERM)"
    )
    bridge.add_argument(
        "--instance",
        type=int,
        default=1,
        help="instance number (default 1): instance N logs in as svc.bridge-N (MQTT_URL's user "
        "plus -N), whose durable broker session is its own; never run two with the same N",
    )
    bridge.add_argument(
        "--broker",
        default=None,
        help="with several brokers: the one to connect to (one process per broker and instance)",
    )
    bridge.add_argument(
        "--name",
        metavar="BROKER-N",
        help="the broker and instance in one, e.g. broker-1-2 (what fieldhub-bridge@.service "
        "passes); instead of --broker and --instance",
    )
    bridge.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of /metrics, /healthz and /readyz (0 = off; default "
        "FIELDHUB_BRIDGE_METRICS_PORT + 10 x broker index + instance - 1)",
    )
    bridge.add_argument(
        "--commit-deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cancel a batch's transaction that takes longer and retry it as in doubt, "
        "acknowledging nothing meanwhile (default 20; docs/scaling.md, database failover)",
    )
    bridge.add_argument(
        "--always-stage",
        action="store_true",
        help=argparse.SUPPRESS,  # benchmarking only: every batch through the staging table
    )
    bridge.set_defaults(handler=cmd_bridge)


def cmd_bridge(settings: Settings, args: argparse.Namespace) -> int:
    from fieldhub.bridge.app import Bridge
    from fieldhub.bridge.ingest import COMMIT_DEADLINE_S

    broker, instance = args.broker, args.instance
    if args.name:
        if broker is not None:
            raise ValueError("give --name or --broker/--instance, not both")
        broker, instance = split_bridge_name(args.name)
    if instance < 1:
        raise ValueError("--instance must be 1 or more")
    broker = endpoints.check_broker(settings, broker)
    port = args.metrics_port
    if port is None:
        port = bridge_metrics_port(settings, broker, instance)
    several = len(settings.broker_names) > 1
    bridge = Bridge(
        database_url=endpoints.database_url(settings),
        mqtt_endpoint=endpoints.bridge_mqtt(settings, broker, instance),
        instance=instance,
        metrics_port=port,
        metrics_host=settings.metrics_host,
        always_stage=args.always_stage,
        commit_deadline_s=args.commit_deadline or COMMIT_DEADLINE_S,
        # One broker: its dispatcher serves every device, whatever their broker column says.
        broker=broker if several else None,
        broker_label=broker,
        brokers=settings.broker_names,
    )

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s: flushing and stopping", signal.Signals(signum).name)
        bridge.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return bridge.run()
