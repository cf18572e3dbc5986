"""`fieldhub device ...`: devices and their broker credentials.

A device's secret is printed exactly once, by `create`, `rotate` or `import` (into a 0600
credentials file); nothing else can show it again because only its hash is stored."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fieldhub.cli import CommandError, Subparsers, connect_registry, jsonable
from fieldhub.core import certificates, endpoints, registry, tombstones
from fieldhub.core.brokers import home_broker
from fieldhub.core.cert_rules import CertificateRequestError
from fieldhub.core.config import ConfigError, Settings
from fieldhub.core.device_ca import IssuedCertificate, ensure_device_ca, issue, sign_csr
from fieldhub.core.passwords import generate_secret, hash_secrets_parallel

CREDENTIAL_COLUMNS = (
    "device_id",
    "username",
    "password",
    "mqtt_url",
    "broker",
    "org",
    "mqtt_urls",
)


def register(subparsers: Subparsers) -> None:
    device = subparsers.add_parser("device", help="devices and their broker credentials")
    dev_sub = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")

    create = dev_sub.add_parser("create", help="register a device; prints its secret once")
    create.add_argument("device_id", metavar="ID")
    create.add_argument("--org", required=True)
    create.add_argument("--name", default="", help="display name")
    create.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    create.add_argument(
        "--broker", help="home it on this broker (default: chosen by its id, docs/scaling.md)"
    )
    _certificate_arguments(create)
    create.add_argument("--json", action="store_true", help="print one JSON object")
    create.set_defaults(handler=cmd_device_create)

    listing = dev_sub.add_parser("list", help="list devices")
    listing.add_argument("--org")
    listing.add_argument("--limit", type=int, default=1000)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(handler=cmd_device_list)

    show = dev_sub.add_parser("show", help="one device's details (never its secret)")
    show.add_argument("device_id", metavar="ID")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_device_show)

    for action, helptext in (
        ("disable", "refuse the device at the broker (a connected one is disconnected)"),
        ("enable", "allow a disabled device again"),
        ("delete", "delete the device; its stored data becomes unreachable at once"),
    ):
        sub = dev_sub.add_parser(action, help=helptext)
        sub.add_argument("device_id", metavar="ID")
        sub.set_defaults(handler=cmd_device_change, action=action)

    attach = dev_sub.add_parser(
        "attach", help="let a gateway device act for this device through its own connection"
    )
    attach.add_argument("device_id", metavar="CHILD")
    attach.add_argument("--gateway", required=True, metavar="GW", help="the gateway's device id")
    attach.set_defaults(handler=cmd_device_attach)

    detach = dev_sub.add_parser("detach", help="take the device away from its gateway")
    detach.add_argument("device_id", metavar="CHILD")
    detach.set_defaults(handler=cmd_device_detach)

    rotate = dev_sub.add_parser(
        "rotate", help="issue a new secret (or certificate); prints it once"
    )
    rotate.add_argument("device_id", metavar="ID")
    _certificate_arguments(rotate)
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(handler=cmd_device_rotate)

    imp = dev_sub.add_parser("import", help="bulk-provision devices from a CSV file")
    imp.add_argument(
        "file", type=Path, metavar="FILE.csv", help="columns: device_id[,name[,k=v;k=v]]"
    )
    imp.add_argument("--org", required=True)
    imp.add_argument(
        "--out",
        type=Path,
        metavar="CREDENTIALS.csv",
        help="where to write the new secrets (default: FILE-credentials.csv; never overwritten)",
    )
    imp.add_argument(
        "--broker", help="home them all on this broker (default: each chosen by its id)"
    )
    imp.set_defaults(handler=cmd_device_import)


def _certificate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cert",
        action="store_true",
        help="a client certificate from fieldhub's device CA instead of a secret (key shown once)",
    )
    parser.add_argument(
        "--csr",
        type=Path,
        metavar="FILE",
        help="sign the device's own certificate request (PEM; its CN must be the id); implies "
        "--cert",
    )


def _certificate(settings: Settings, args: argparse.Namespace) -> IssuedCertificate | None:
    """The certificate the command issues (None: a secret, as before), signed before anything
    is written, so a refused request changes nothing."""
    if not (args.cert or args.csr):
        return None
    registry.check_device_id(args.device_id)
    ensure_device_ca(settings.tls_dir)
    try:
        if args.csr:
            try:
                csr = args.csr.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"cannot read {args.csr}: {exc}") from None
            return sign_csr(settings.tls_dir, args.device_id, csr)
        return issue(settings.tls_dir, args.device_id)
    except CertificateRequestError as exc:
        raise CommandError(f"{args.csr}: {exc}") from None


def _print_certificate(
    settings: Settings,
    device: dict[str, Any],
    issued: IssuedCertificate,
    *,
    as_json: bool,
    verb: str,
) -> None:
    try:
        urls = endpoints.device_cert_mqtt_urls(settings, device["device_id"], device["broker"])
    except ConfigError:
        urls = []  # a broker this host does not know: shown without a URL, as secrets are
    data = {
        "device_id": device["device_id"],
        "org": device["org"],
        "broker": device["broker"],
        # The certificate listener(s), home first (docs/devices.md, "Certificate devices").
        "mqtt_url": urls[0] if urls else None,
        "mqtt_urls": urls,
        "certificate": issued.certificate,
        "private_key": issued.private_key,
        "ca": issued.ca,
        "serial": issued.serial,
        "fingerprint_sha256": issued.fingerprint,
        "not_after": issued.not_after.isoformat(),
        "key": issued.key,
    }
    if as_json:
        print(json.dumps(data))
        return
    print(f"{verb} device {device['device_id']} (organisation {device['org']})")
    print(f"  certificate serial {issued.serial}, {issued.key}, valid until {data['not_after']}")
    print(f"  broker: {', '.join(urls) or '(URL not configured here)'}")
    print(issued.certificate, end="")
    if issued.private_key:
        print(issued.private_key, end="")
        print("The private key is shown only this once; fieldhub does not keep it.")
    print("CA (trust it for nothing else):")
    print(issued.ca, end="")


def _credentials(
    settings: Settings, creds: registry.DeviceCredentials, org: str
) -> dict[str, str | list[str] | None]:
    try:
        mqtt_url: str | None = endpoints.device_mqtt_url(settings, creds.broker)
    except ConfigError:
        # A broker this host's FIELDHUB_BROKERS does not list: the secret is already stored,
        # so it must still be shown; the URL is left out rather than guessed.
        mqtt_url = None
    return {
        "device_id": creds.device_id,
        "username": creds.username,
        "password": creds.password,
        "mqtt_url": mqtt_url,
        # Home first, then the standbys: devices fall back along this list (docs/devices.md).
        "mqtt_urls": endpoints.device_mqtt_urls(settings, creds.device_id, creds.broker),
        "broker": creds.broker,
        "org": org,
    }


def cmd_device_create(settings: Settings, args: argparse.Namespace) -> int:
    labels = registry.parse_labels(args.label)
    if args.broker:
        endpoints.check_broker(settings, args.broker)
    issued = _certificate(settings, args)
    with connect_registry(settings) as conn, conn.transaction():
        creds = registry.create_device(
            conn,
            args.device_id,
            org=args.org,
            display_name=args.name,
            labels=labels,
            broker=args.broker,
        )
        if issued is not None:
            # The device's secret stays unknown to everyone: it logs in with its certificate.
            certificates.record(conn, args.device_id, issued)
    if issued is not None:
        with connect_registry(settings) as conn:
            device = registry.get_device(conn, args.device_id)
        _print_certificate(settings, device, issued, as_json=args.json, verb="created")
        return 0
    _print_secret(settings, creds, args.org, as_json=args.json, verb="created")
    return 0


def _print_secret(
    settings: Settings,
    creds: registry.DeviceCredentials,
    org: str,
    *,
    as_json: bool,
    verb: str,
) -> None:
    data = _credentials(settings, creds, org)
    if as_json:
        print(json.dumps(data))
        return
    print(f"{verb} device {creds.device_id} (organisation {org})")
    print(f"  username: {data['username']}")
    print(f"  password: {data['password']}")
    print(f"  broker:   {data['mqtt_url'] or '(URL not configured here)'} ({creds.broker})")
    standbys = [url for url in data["mqtt_urls"] or [] if url != data["mqtt_url"]]
    if standbys:
        print(f"  standby:  {', '.join(standbys)}")
    print("The password is shown only this once; only its hash is stored.")


def cmd_device_list(settings: Settings, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    with connect_registry(settings) as conn:
        if args.org:
            registry.get_org(conn, args.org)  # an unknown org is an error, not an empty list
        devices = registry.list_devices(conn, org=args.org, limit=args.limit)
    if args.json:
        print(json.dumps([jsonable(d) for d in devices]))
        return 0
    for d in devices:
        state = "enabled " if d["enabled"] else "DISABLED"
        online = "online " if d["online"] else "offline"
        print(f"{d['device_id']:<40} {d['org']:<20} {state} {online} {d['display_name']}")
    return 0


def cmd_device_show(settings: Settings, args: argparse.Namespace) -> int:
    with connect_registry(settings) as conn:
        device = registry.get_device(conn, args.device_id)
        device["children"] = [
            c["device_id"] for c in registry.gateway_children(conn, args.device_id)
        ]
        # A device that took the id of a deleted one cannot log in until every broker has
        # worked off the old one; say what it waits for (support: "my new device can't log in").
        device["waiting_for"] = [
            row["waiting_for"] for row in tombstones.pending(conn, args.device_id)
        ]
    if args.json:
        print(json.dumps(jsonable(device)))
        return 0
    waiting = device.pop("waiting_for")
    for key, value in device.items():
        print(f"{key + ':':<19} {value}")
    if waiting:
        print("can log in:         not yet; this id belonged to a deleted device, waiting for")
        for reason in waiting:
            print(f"  - {reason}")
    return 0


def cmd_device_change(settings: Settings, args: argparse.Namespace) -> int:
    with connect_registry(settings) as conn:
        if args.action == "delete":
            registry.delete_device(conn, args.device_id)
        else:
            registry.set_enabled(conn, args.device_id, args.action == "enable")
    print(f"{args.action}d device {args.device_id}")
    if args.action == "delete":
        print(
            "Its data is unreachable now and purged in the background. A new device with this "
            "id can be created at once but logs in only after every broker has cleared the old "
            f"one (seconds; `fieldhub device show {args.device_id}` says what it waits for)."
        )
    return 0


def cmd_device_attach(settings: Settings, args: argparse.Namespace) -> int:
    with connect_registry(settings) as conn:
        registry.attach_gateway(conn, args.device_id, args.gateway)
    print(
        f"attached {args.device_id} to gateway {args.gateway}; the broker lets the gateway act "
        "for it once auth-sync has reloaded it (well under a second)"
    )
    return 0


def cmd_device_detach(settings: Settings, args: argparse.Namespace) -> int:
    with connect_registry(settings) as conn:
        gateway = registry.detach_gateway(conn, args.device_id)
    if gateway is None:
        print(f"{args.device_id} has no gateway; nothing changed")
    else:
        print(f"detached {args.device_id} from gateway {gateway}")
    return 0


def cmd_device_rotate(settings: Settings, args: argparse.Namespace) -> int:
    issued = _certificate(settings, args)
    if issued is not None:
        with connect_registry(settings) as conn:
            try:
                certificates.record(conn, args.device_id, issued)
            except certificates.UnknownDevice as exc:
                raise CommandError(str(exc)) from None
            device = registry.get_device(conn, args.device_id)
        _print_certificate(settings, device, issued, as_json=args.json, verb="new certificate for")
        return 0
    with connect_registry(settings) as conn:
        creds = registry.rotate_secret(conn, args.device_id)
        org = registry.get_device(conn, args.device_id)["org"]
    _print_secret(settings, creds, org, as_json=args.json, verb="new secret for")
    return 0


def cmd_device_import(settings: Settings, args: argparse.Namespace) -> int:
    source: Path = args.file
    out: Path = args.out or source.with_name(f"{source.stem}-credentials.csv")
    if out.exists():
        raise CommandError(f"{out} already exists; it may hold secrets, so it is never overwritten")
    try:
        with source.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CommandError(f"cannot read {source}: {exc}") from None
    good, errors = registry.parse_device_rows(rows)

    # The credentials file is created (0600, never overwriting) before anything is committed:
    # if it cannot be written, no device must be created whose secret nobody will ever see.
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise CommandError(f"cannot create {out}: {exc.strerror}") from None
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
        try:
            inserted, secrets = _provision(settings, args, good)
        except BaseException:
            out.unlink()
            raise
        writer = csv.writer(handle)
        writer.writerow(CREDENTIAL_COLUMNS)
        for (_, spec), secret in zip(good, secrets, strict=True):
            if spec.device_id in inserted:
                # The same choice provision_devices made for it.
                broker = args.broker or home_broker(spec.device_id, settings.broker_names)
                mqtt_url = endpoints.device_mqtt_url(settings, broker)
                urls = endpoints.device_mqtt_urls(settings, spec.device_id, broker)
                writer.writerow(
                    (
                        spec.device_id,
                        spec.device_id,
                        secret,
                        mqtt_url,
                        broker,
                        args.org,
                        " ".join(urls),
                    )
                )
    for line, spec in good:
        if spec.device_id not in inserted:
            errors.append(registry.RowError(line, f"device {spec.device_id!r} already exists"))
    written = len(inserted)
    for error in sorted(errors, key=lambda e: e.line):
        print(f"{source}:{error.line}: {error.reason}", file=sys.stderr)
    print(
        f"provisioned {written} devices in organisation {args.org}; "
        f"{len(errors)} rows refused; credentials written to {out} (mode 0600)"
    )
    return 1 if errors else 0


def _provision(
    settings: Settings,
    args: argparse.Namespace,
    good: list[tuple[int, registry.DeviceSpec]],
) -> tuple[set[str], list[str]]:
    if args.broker:
        endpoints.check_broker(settings, args.broker)
    with connect_registry(settings) as conn:
        registry.get_org(conn, args.org)  # fail before any hashing work
        secrets = [generate_secret() for _ in good]
        with tqdm(
            total=len(good), desc="hashing secrets", unit="dev", file=sys.stderr, leave=False
        ) as bar:
            hashes = hash_secrets_parallel(secrets, progress=bar.update)
        inserted = registry.provision_devices(
            conn,
            args.org,
            [(spec, password_hash) for (_, spec), password_hash in zip(good, hashes, strict=True)],
            broker=args.broker,
        )
    return inserted, secrets
