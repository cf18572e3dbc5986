"""`fieldhub org ...`: organisations (tenants)."""

from __future__ import annotations

import argparse
import json

from fieldhub.cli import Subparsers, connect_registry, jsonable
from fieldhub.core import registry
from fieldhub.core.config import Settings


def register(subparsers: Subparsers) -> None:
    org = subparsers.add_parser("org", help="organisations (tenants)")
    org_sub = org.add_subparsers(dest="org_command", required=True, metavar="ACTION")
    create = org_sub.add_parser("create", help="create an organisation")
    create.add_argument("name", help="handle: lowercase letters, digits, '_' and '-'")
    create.add_argument("--display-name", help="name shown to people (default: the handle)")
    create.set_defaults(handler=cmd_org_create)
    listing = org_sub.add_parser("list", help="list organisations")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(handler=cmd_org_list)


def cmd_org_create(settings: Settings, args: argparse.Namespace) -> int:
    with connect_registry(settings) as conn:
        org = registry.create_org(conn, args.name, args.display_name)
    print(f"created organisation {org['name']}")
    return 0


def cmd_org_list(settings: Settings, args: argparse.Namespace) -> int:
    with connect_registry(settings) as conn:
        orgs = registry.list_orgs(conn)
    if args.json:
        print(json.dumps([jsonable(o) for o in orgs]))
        return 0
    for org in orgs:
        print(
            f"{org['name']:<24} {org['devices']:>8} devices {org['users']:>5} users  "
            f"{org['display_name']}"
        )
    return 0
