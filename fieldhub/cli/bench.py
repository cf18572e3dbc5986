"""`fieldhub bench NAME`: the project's benchmarks, one subcommand each.

Each module in BENCH_MODULES adds its benchmarks with register(bench_subparsers); a team adds
its own `fieldhub/bench/xyz.py` by appending it here. Benchmarks start their own scratch
servers and are never part of `scripts/test`.
"""

from __future__ import annotations

import importlib
from typing import Any

BENCH_MODULES = (
    "fieldhub.bench.ingest",
    "fieldhub.bench.commands",
    "fieldhub.bench.web",
    "fieldhub.bench.analysis",
    "fieldhub.bench.registry",
)


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench", help="run a benchmark against scratch servers of its own (not a test)"
    )
    bench_subparsers = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    for name in BENCH_MODULES:
        importlib.import_module(name).register(bench_subparsers)
