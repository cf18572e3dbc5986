"""`fieldhub service-account ...`: broker accounts of the backend and of operators'
integrations. A new secret is printed once; only its hash is stored."""

from __future__ import annotations

import argparse
import json

from fieldhub.cli import CommandError, Subparsers, connect_registry, jsonable
from fieldhub.core import endpoints, registry
from fieldhub.core.config import Settings
from fieldhub.core.passwords import generate_secret


def register(subparsers: Subparsers) -> None:
    account = subparsers.add_parser(
        "service-account", help="broker accounts of the backend and of operators' integrations"
    )
    acc_sub = account.add_subparsers(dest="account_command", required=True, metavar="ACTION")
    acc_set = acc_sub.add_parser(
        "set", help="create an account or replace its rules and secret; prints the secret once"
    )
    acc_set.add_argument("username", metavar="svc.NAME")
    acc_set.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="'ACCESS TOPIC'",
        help="e.g. 'read devices/+/status' (repeatable; or grant rights in an acl.d/ file)",
    )
    acc_set.add_argument("--json", action="store_true")
    acc_set.set_defaults(handler=cmd_account_set)
    bridges = acc_sub.add_parser(
        "bridges",
        help="create or refresh the bridge instances' accounts svc.bridge-1 .. -N, with the "
        "password of MQTT_URL (or the local stack's secret)",
    )
    bridges.add_argument(
        "--instances", type=int, required=True, metavar="N", help="how many bridge instances run"
    )
    bridges.add_argument("--json", action="store_true")
    bridges.set_defaults(handler=cmd_account_bridges)
    acc_list = acc_sub.add_parser("list", help="list service accounts and their rules")
    acc_list.add_argument("--json", action="store_true")
    acc_list.set_defaults(handler=cmd_account_list)


def cmd_account_set(settings: Settings, args: argparse.Namespace) -> int:
    password = generate_secret()
    with connect_registry(settings) as conn:
        registry.ensure_service_account(conn, args.username, args.rule, password)
    if args.json:
        print(json.dumps({"username": args.username, "password": password, "rules": args.rule}))
        return 0
    print(f"service account {args.username} set with {len(args.rule)} rules")
    print(f"  password: {password}")
    print("The password is shown only this once; only its hash is stored.")
    return 0


def cmd_account_bridges(settings: Settings, args: argparse.Namespace) -> int:
    if args.instances < 1:
        raise CommandError("--instances must be 1 or more")
    base, password = endpoints.bridge_credentials(settings)
    if not password:
        raise CommandError("MQTT_URL has no password for the bridge accounts")
    with connect_registry(settings) as conn:
        names = registry.ensure_bridge_accounts(conn, password, args.instances, base=base)
    if args.json:
        print(json.dumps({"usernames": names}))
        return 0
    print(f"bridge accounts: {', '.join(names)} (password from MQTT_URL or the local secret)")
    return 0


def cmd_account_list(settings: Settings, args: argparse.Namespace) -> int:
    with connect_registry(settings) as conn:
        accounts = registry.list_service_accounts(conn)
    if args.json:
        print(json.dumps([jsonable(a) for a in accounts]))
        return 0
    for account in accounts:
        print(f"{account['username']:<24} {'; '.join(account['acl']) or '(rules from acl.d only)'}")
    return 0
