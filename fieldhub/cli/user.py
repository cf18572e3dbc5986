"""`fieldhub user create|list|disable|enable`: people who log in to the web app."""

from __future__ import annotations

import argparse
import json
import sys

from fieldhub.cli import Subparsers, connect_registry, jsonable
from fieldhub.core import endpoints, users
from fieldhub.core.config import Settings
from fieldhub.core.db import connect


def register(subparsers: Subparsers) -> None:
    user = subparsers.add_parser("user", help="people who log in to the web app")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    create = user_sub.add_parser(
        "create", help="create a user; prints a generated password once unless --password-stdin"
    )
    create.add_argument("email")
    create.add_argument("--org", required=True, help="organisation handle")
    create.add_argument("--role", required=True, choices=users.ROLES)
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    create.set_defaults(handler=cmd_user_create)
    listing = user_sub.add_parser("list", help="list users")
    listing.add_argument("--org", help="only this organisation")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_user_list)
    disable = user_sub.add_parser(
        "disable", help="stop a user logging in; ends their sessions and revokes their tokens"
    )
    disable.add_argument("email")
    disable.set_defaults(handler=cmd_user_disable, disabled=True)
    enable = user_sub.add_parser("enable", help="let a disabled user log in again")
    enable.add_argument("email")
    enable.set_defaults(handler=cmd_user_disable, disabled=False)


def cmd_user_create(settings: Settings, args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        generated = False
    else:
        password = users.generate_password()
        generated = True
    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        user = users.create_user(conn, args.email, org=args.org, role=args.role, password=password)
    print(f"created user {user['email']} ({user['role']} in {user['org']})")
    if generated:
        print(f"password (shown once): {password}")
    return 0


def cmd_user_list(settings: Settings, args: argparse.Namespace) -> int:
    with connect(endpoints.read_database_url(settings), autocommit=True) as conn:
        org_id = None
        if args.org:
            from fieldhub.core import registry

            org_id = int(registry.get_org(conn, args.org)["id"])
        rows = users.list_users(conn, org_id=org_id)
    if args.json:
        print(json.dumps([jsonable(row) for row in rows]))
        return 0
    for row in rows:
        last = row["last_login_at"].isoformat() if row["last_login_at"] else "never"
        state = "\tDISABLED" if row["disabled_at"] else ""
        print(f"{row['email']}\t{row['org']}\t{row['role']}\tlast login {last}{state}")
    if not rows:
        print("no users", file=sys.stderr)
    return 0


def cmd_user_disable(settings: Settings, args: argparse.Namespace) -> int:
    with connect_registry(settings) as conn:
        user = users.get_user(conn, args.email)
        users.set_disabled(conn, user["id"], args.disabled)
    if args.disabled:
        print(f"disabled {user['email']}: their sessions ended and their API tokens are revoked")
    else:
        print(f"enabled {user['email']}: they can log in again (revoked tokens stay revoked)")
    return 0
