"""`fieldhub bench NAME`: the project's benchmarks, one subcommand each.

Benchmarks need development-only packages (requests, the scratch-server machinery) that a host
installed from requirements/runtime.txt does not have, so `fieldhub --help` and every other
command must not import them. BENCHES names each benchmark, its module and its one-line help;
the module is imported only when its benchmark runs (or prints its own --help), and its
register(subparsers) then declares the real arguments. A new benchmark is a module
`fieldhub/bench/xyz.py` with a register() and its names here (a test checks that both
agree). Benchmarks start their own scratch servers and are never part of `scripts/test`."""

from __future__ import annotations

import argparse
import importlib

from fieldhub.cli import CommandError, Subparsers
from fieldhub.core.config import Settings

# name -> (module that registers it, help shown by `fieldhub bench --help`)
BENCHES: dict[str, tuple[str, str]] = {
    "ingest": (
        "fieldhub.bench.ingest",
        "MQTT -> TimescaleDB: bridge vs. a bare consumer, and latency",
    ),
    "commands": ("fieldhub.bench.commands", "command round trip with an online device (p50/p95)"),
    "web": ("fieldhub.bench.web", "device list, 30-day history and live latency"),
    "http-ingest": (
        "fieldhub.bench.http_ingest",
        "HTTP ingest through gunicorn: requests/s and readings/s",
    ),
    "import": ("fieldhub.bench.analysis", "import 1,000,000 readings from one CSV file"),
    "rollups": ("fieldhub.bench.analysis", "rollup job over one day of 1,000 devices"),
    "provision": ("fieldhub.bench.registry", "bulk-provision devices until they can log in"),
    "reconnect-storm": ("fieldhub.bench.registry", "devices reconnecting all at once"),
    "auth-mechanism": ("fieldhub.bench.registry", "files+SIGHUP vs Dynamic Security"),
    "failover": (
        "fieldhub.bench.failover",
        "lose the database primary's host, a broker host or the database link (root)",
    ),
    "broker-window": (
        "fieldhub.bench.broker_window",
        "kill -9 a broker under load: acknowledged readings lost, per autosave setting",
    ),
    "hosts": (
        "fieldhub.bench.hosts",
        "fieldhub on 11 network-namespace hosts; kill a bridge host, then a web host (root)",
    ),
}


def register(subparsers: Subparsers) -> None:
    bench = subparsers.add_parser(
        "bench", help="run a benchmark against scratch servers of its own (not a test)"
    )
    bench_subparsers = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    for name, (_module, helptext) in BENCHES.items():
        # The benchmark's own arguments (and its --help) are parsed once its module is loaded.
        sub = bench_subparsers.add_parser(name, help=helptext, add_help=False)
        sub.set_defaults(handler=cmd_bench, takes_extra_args=True)


def bench_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one benchmark, built by importing its module."""
    module_name, _helptext = BENCHES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(
            f"benchmark {name} needs the development packages ({exc.name} is missing): "
            "install requirements/dev.txt (scripts/setup does)"
        ) from None
    parser = argparse.ArgumentParser(prog="fieldhub bench")
    module.register(parser.add_subparsers(dest="bench_command", required=True, metavar="BENCH"))
    return parser


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    parsed = bench_parser(args.bench_command).parse_args(
        [args.bench_command, *args.extra_args], namespace=argparse.Namespace(verbose=args.verbose)
    )
    result: int | None = parsed.handler(settings, parsed)
    return result or 0
