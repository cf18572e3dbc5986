"""One name, one meaning for the named SQL queries, and every name written out where it is used."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import fieldhub
from fieldhub.core.db import Queries

PACKAGE = Path(fieldhub.__file__).parent


def test_a_query_name_means_one_thing_across_the_sql_files() -> None:
    # Two files may share a name only with the same SQL (two benchmarks counting readings).
    texts: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.sql")):
        if "migrations" in path.parts:
            continue
        queries = Queries(path)
        for name in queries:
            texts[name].add(queries[name])
    differing = sorted(name for name, sql in texts.items() if len(sql) > 1)
    assert differing == []


def test_query_names_are_written_out_not_built() -> None:
    # A built name (QUERIES[f"buckets_{source}"]) cannot be found by searching for it.
    built = re.compile(r"""QUERIES\[\s*f["']""")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if built.search(line)
    ]
    assert offenders == []
