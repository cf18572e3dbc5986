"""Web subcommands: `fieldhub web` (gunicorn), `fieldhub user create|list`, `fieldhub token`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from fieldhub.cli import CommandError
from fieldhub.core import endpoints, users
from fieldhub.core.config import Settings
from fieldhub.core.db import connect

# gevent: one greenlet per connection, so hundreds of open live streams cost memory, not
# threads, and never block other requests (psycopg >= 3.1.14 cooperates with gevent's
# monkey-patching when it is imported after the patch, which gunicorn's gevent worker does
# before it imports fieldhub.web.wsgi).
WORKER_CLASS = "gevent"
WORKER_CONNECTIONS = 1000


def register(subparsers: Any) -> None:
    web = subparsers.add_parser("web", help="serve the web app and API with gunicorn")
    web.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    web.add_argument("--bind", help="HOST:PORT (default FIELDHUB_WEB_HOST:FIELDHUB_WEB_PORT)")
    web.set_defaults(handler=cmd_web)

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

    token = subparsers.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    token_create = token_sub.add_parser("create", help="create an API token for a user")
    token_create.add_argument("email")
    token_create.add_argument("--name", default="", help="what the token is for")
    token_create.add_argument("--json", action="store_true", help="print one JSON object")
    token_create.set_defaults(handler=cmd_token_create)


def gunicorn_argv(settings: Settings, workers: int, bind: str | None) -> list[str]:
    if workers < 1:
        raise CommandError("--workers must be at least 1")
    address = bind or f"{settings.web_host}:{settings.ports.web}"
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        WORKER_CLASS,
        "--worker-connections",
        str(WORKER_CONNECTIONS),
        "--workers",
        str(workers),
        "--bind",
        address,
        # Live streams stay open for hours; on shutdown they are cut after this grace.
        "--graceful-timeout",
        "5",
        "--log-level",
        settings.log_level.lower(),
        "--access-logfile",
        "-",
        "fieldhub.web.wsgi:app",
    ]


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    endpoints.database_url(settings)  # fail here, clearly, rather than in every worker
    argv = gunicorn_argv(settings, args.workers, args.bind)
    # Replace this process: gunicorn's master handles SIGTERM (graceful stop) itself, and the
    # workers import psycopg fresh, after gevent's patching.
    os.execv(argv[0], argv)  # noqa: S606 (our own interpreter and argument list)
    return 0  # pragma: no cover


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
        print(json.dumps(rows, default=str))
        return 0
    for row in rows:
        last = row["last_login_at"].isoformat() if row["last_login_at"] else "never"
        print(f"{row['email']}\t{row['org']}\t{row['role']}\tlast login {last}")
    if not rows:
        print("no users", file=sys.stderr)
    return 0


def cmd_token_create(settings: Settings, args: argparse.Namespace) -> int:
    with connect(endpoints.database_url(settings), autocommit=True) as conn:
        token, row = users.create_api_token(conn, args.email, name=args.name)
    if args.json:
        print(json.dumps({"token": token, "id": row["id"], "email": row["email"]}))
    else:
        print(f"API token for {row['email']} (shown once; send as 'Authorization: Bearer ...'):")
        print(token)
    return 0
