"""Benchmarks behind `fieldhub bench ...` (see fieldhub/cli/bench.py and
docs/benchmarks.md). Each module registers its subcommands with register(bench_subparsers)."""
