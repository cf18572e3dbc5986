"""`fieldhub token create`: API tokens for people's programs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fieldhub.core import endpoints, users
from fieldhub.core.config import Settings
from fieldhub.core.db import connect


def register(subparsers: Any) -> None:
    token = subparsers.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    token_create = token_sub.add_parser("create", help="create an API token for a user")
    token_create.add_argument("email")
    token_create.add_argument("--name", default="", help="what the token is for")
    token_create.add_argument("--json", action="store_true", help="print one JSON object")
    token_create.set_defaults(handler=cmd_token_create)


def cmd_token_create(settings: Settings, args: argparse.Namespace) -> int:
    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        token, row = users.create_api_token(conn, args.email, name=args.name)
    if args.json:
        print(json.dumps({"token": token, "id": row["id"], "email": row["email"]}))
    else:
        print(f"API token for {row['email']} (shown once; send as 'Authorization: Bearer ...'):")
        print(token)
    return 0
