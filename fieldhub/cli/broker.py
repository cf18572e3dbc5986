"""`fieldhub broker-config`: Mosquitto's configuration for a broker host.

Renders the same template the local stack uses (fieldhub/broker/mosquitto.conf.template)
into FIELDHUB_MOSQUITTO_DIR (mosquitto.conf, empty auth files for auth-sync to fill, the
persistence folder), with the ports of the host's env file and the addresses given here.
Debian's mosquitto.service then starts with it through deploy/systemd/mosquitto.service.d.
Run as root: the files are handed to the mosquitto user, as Mosquitto re-reads them on
SIGHUP after dropping its privileges."""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.cli import CommandError, Subparsers
from fieldhub.core.config import Settings
from fieldhub.core.device_ca import has_device_ca


def register(subparsers: Subparsers) -> None:
    config = subparsers.add_parser(
        "broker-config",
        help="write Mosquitto's config and empty auth files for this broker host",
    )
    config.add_argument(
        "--services-bind",
        required=True,
        metavar="ADDRESS",
        help="this host's private address: the bridges' listener (FIELDHUB_MQTT_SERVICE_PORT)",
    )
    config.add_argument(
        "--tls-bind",
        default="0.0.0.0",  # noqa: S104 - devices in the field reach the TLS listener
        metavar="ADDRESS",
        help="the devices' TLS listener (FIELDHUB_MQTTS_PORT; default all addresses)",
    )
    config.add_argument(
        "--devices-bind",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the devices' plain listener (FIELDHUB_MQTT_PORT; default loopback only)",
    )
    config.add_argument(
        "--tls-dir",
        type=Path,
        required=True,
        help="folder with ca.crt, server.crt and server.key (`fieldhub tls ensure --dir`)",
    )
    config.set_defaults(handler=cmd_broker_config)


def cmd_broker_config(settings: Settings, args: argparse.Namespace) -> int:
    missing = [
        n for n in ("ca.crt", "server.crt", "server.key") if not (args.tls_dir / n).is_file()
    ]
    if missing:
        raise CommandError(f"{args.tls_dir} lacks {', '.join(missing)}: see `fieldhub tls ensure`")
    broker = MosquittoBroker(
        settings.mosquitto_dir,
        args.tls_dir,
        settings.ports.mqtt_devices,
        settings.ports.mqtt_devices_tls,
        settings.ports.mqtt_services,
        bind=args.devices_bind,
        tls_bind=args.tls_bind,
        services_bind=args.services_bind,
        # A broker host gets the certificate listener once the device CA (certificate and
        # key: its auth sync signs the CRL) is copied to it; it never makes a CA of its own.
        mqtt_devices_cert=(settings.ports.mqtt_devices_cert if has_device_ca(args.tls_dir) else 0),
    )
    broker.render()
    print(f"wrote {broker.conf_file} (pid file {broker.pid_file}, auth files in {broker.auth_dir})")
    return 0
