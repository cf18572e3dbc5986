"""Database access shared by every process: connections, pools and named queries.

SQL lives in `.sql` files next to the code that uses it and is called by name (see
`Queries`). Connections and pools are created by the caller and passed in; nothing here is a
global, so tests hand each component the database of the test."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

# "-- name: some_query" starts a query; the lines up to the next marker are its SQL.
_NAME_MARKER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class Queries(Mapping[str, str]):
    """Named SQL queries parsed from a file of `-- name: xyz` sections.

    Lookups of a name that does not exist fail loudly at the call site's first use, and the
    file is parsed once at import time of the module that owns it."""

    def __init__(self, path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        parts = _NAME_MARKER.split(text)
        # split() yields [preamble, name1, body1, name2, body2, ...]
        self._queries: dict[str, str] = {}
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in self._queries:
                raise ValueError(f"{path}: query {name!r} is defined twice")
            sql = "\n".join(
                line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
            ).strip()
            self._queries[name] = sql.rstrip(";")
        self.path = path

    def __getitem__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in {self.path}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


def before_params(before: tuple[object, object] | None) -> dict[str, object]:
    """The parameters of a newest-first keyset page, `before_time` and `before_id`: the
    (time, id) of the last row of the previous page, or NULLs for the first page."""
    return {
        "before_time": before[0] if before else None,
        "before_id": before[1] if before else None,
    }


# A fieldhub connection: connect() and make_pool() make every one return rows as dicts, and
# every query module reads its rows by column name.
Conn: TypeAlias = psycopg.Connection[dict[str, Any]]


def connect(url: str, *, autocommit: bool = False, **kwargs: Any) -> Conn:
    """Open one connection with the project's defaults (dict rows, short connect timeout)."""
    return psycopg.connect(
        url,
        autocommit=autocommit,
        row_factory=dict_row,
        connect_timeout=kwargs.pop("connect_timeout", 5),
        application_name=kwargs.pop("application_name", "fieldhub"),
        **kwargs,
    )


def make_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, name: str = "fieldhub"
) -> ConnectionPool[Conn]:
    """A connection pool whose connections return rows as dicts."""
    return ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        kwargs={"row_factory": dict_row, "application_name": name, "connect_timeout": 5},
        open=True,
        timeout=10,
    )
