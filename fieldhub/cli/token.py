"""`fieldhub token create|list|revoke`: API tokens for people's programs."""

from __future__ import annotations

import argparse
import json

from fieldhub.cli import CommandError, Subparsers, connect_registry, jsonable
from fieldhub.core import endpoints, users
from fieldhub.core.config import Settings
from fieldhub.core.db import connect


def register(subparsers: Subparsers) -> None:
    token = subparsers.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    token_create = token_sub.add_parser("create", help="create an API token for a user")
    token_create.add_argument("email")
    token_create.add_argument("--name", default="", help="what the token is for")
    token_create.add_argument(
        "--expires-in",
        metavar="DURATION",
        help="lifetime, like 12h, 30d or 2w (at most 3650d; default: until revoked)",
    )
    token_create.add_argument("--json", action="store_true", help="print one JSON object")
    token_create.set_defaults(handler=cmd_token_create)
    token_list = token_sub.add_parser("list", help="a user's API tokens (never the tokens)")
    token_list.add_argument("email")
    token_list.add_argument("--json", action="store_true", help="print a JSON array")
    token_list.set_defaults(handler=cmd_token_list)
    token_revoke = token_sub.add_parser("revoke", help="revoke an API token by its id")
    token_revoke.add_argument("id", type=int, help="the id `token list` and `create` show")
    token_revoke.set_defaults(handler=cmd_token_revoke)


def cmd_token_create(settings: Settings, args: argparse.Namespace) -> int:
    expires_in = users.parse_expires_in(args.expires_in) if args.expires_in else None
    with connect_registry(settings) as conn:
        token, row = users.create_api_token(conn, args.email, name=args.name, expires_in=expires_in)
    if args.json:
        print(json.dumps({"token": token, **jsonable(row)}))
    else:
        expiry = row["expires_at"].isoformat() if row["expires_at"] else "never (until revoked)"
        print(f"API token {row['id']} for {row['email']}, expires {expiry}")
        print("Shown once; send it as 'Authorization: Bearer ...':")
        print(token)
    return 0


def cmd_token_list(settings: Settings, args: argparse.Namespace) -> int:
    with connect(endpoints.read_database_url(settings), autocommit=True) as conn:
        user = users.get_user(conn, args.email)
        tokens = users.list_api_tokens(conn, user["id"])
    if args.json:
        print(json.dumps([jsonable(t) for t in tokens]))
        return 0
    for t in tokens:
        last = t["last_used_at"].isoformat() if t["last_used_at"] else "never used"
        expires = t["expires_at"].isoformat() if t["expires_at"] else "never"
        state = "EXPIRED" if t["expired"] else "valid"
        print(f"{t['id']}\t{t['name'] or '-'}\t{state}\texpires {expires}\tlast used {last}")
    if not tokens:
        print(f"{user['email']} has no API tokens")
    return 0


def cmd_token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    with connect_registry(settings) as conn:
        try:
            row = users.revoke_api_token(conn, args.id)
        except users.UserError as exc:
            raise CommandError(str(exc)) from None
    print(f"revoked API token {row['id']} ({row['name'] or 'unnamed'}) of {row['email']}")
    return 0
