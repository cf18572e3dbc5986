"""`fieldhub auth-sync`: keep the broker's password and ACL files in step with the registry."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from fieldhub.broker.auth_sync import run_forever
from fieldhub.cli import CommandError, Subparsers
from fieldhub.core import endpoints
from fieldhub.core.config import Settings

log = logging.getLogger("fieldhub.auth_sync")


def register(subparsers: Subparsers) -> None:
    sync = subparsers.add_parser(
        "auth-sync",
        help="render the registry into the broker's auth files and reload it on every change",
    )
    sync.add_argument(
        "--broker", default="broker-1", help="which broker's devices to render (default broker-1)"
    )
    sync.add_argument(
        "--sweep",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="re-render at least this often, e.g. to pick up edited acl.d files",
    )
    sync.set_defaults(handler=cmd_auth_sync)


def cmd_auth_sync(settings: Settings, args: argparse.Namespace) -> int:
    auth_dir = settings.mosquitto_dir / "auth"
    if not auth_dir.is_dir():
        raise CommandError(f"{auth_dir} does not exist; start the broker first (`fieldhub up`)")
    if args.sweep <= 0:
        raise CommandError("--sweep must be a positive number of seconds")
    database_url = endpoints.database_url(settings)
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()
        # Interrupt the wait for notifications at once instead of at the next sweep.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    log.info(
        "auth sync for %s: writing %s, reloading via %s",
        args.broker,
        auth_dir,
        settings.mosquitto_pid_file,
    )
    try:
        run_forever(
            database_url,
            auth_dir,
            settings.mosquitto_pid_file,
            broker=args.broker,
            operator_dir=settings.acl_dir,
            tls_dir=settings.tls_dir,
            sweep_s=args.sweep,
            stop=stop,
        )
    except SystemExit:
        if not stop.is_set():
            raise
    log.info("auth sync stopped")
    return 0
