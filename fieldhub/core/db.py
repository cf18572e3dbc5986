"""Database access shared by every process: connections, pools and named queries.

SQL lives in `.sql` files next to the code that uses it and is called by name (see
`Queries`). Connections and pools are created by the caller and passed in; nothing here is a
global, so tests hand each component the database of the test."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias

import psycopg
from psycopg import conninfo
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


Role = Literal["write", "read"]

# What libpq picks among the hosts of a multi-host URL (host=db1,db2,db3), by role: a writer
# needs the primary, whichever node Patroni promoted; a reader prefers a standby and falls back
# to the primary when none answers.
_SESSION_ATTRS: dict[Role, str] = {"write": "read-write", "read": "prefer-standby"}

# A host that dies (power, kernel panic, a cut link) sends no RST: without these a socket
# waits for the kernel's retransmission timeout, about 15 minutes, before the process notices.
# Idle connections are probed after 5 s and given up after 2 unanswered probes 2 s apart; a
# connection with unacknowledged data in flight (a COMMIT sent to a dead primary) is given up
# after 10 s (tcp_user_timeout). Patroni promotes a standby about 10-11.5 s after the primary
# dies (docs/scaling.md), so a client notices at about the same time. Measured with a cut link
# (`fieldhub bench failover --scenario bridge-database-link`): the bridge's in-flight commit
# failed, it reconnected and wrote again 0.5 s after the link came back, nothing lost.
TCP_DEFAULTS: dict[str, str] = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "2",
    "tcp_user_timeout": "10000",
}


# The same for the server's side of every connection (PostgreSQL's settings, sent as startup
# options). Behind a cut link the server otherwise never learns that a client is gone while it
# has nothing to send it, and the client's server process keeps its open transaction's locks
# and its session's advisory locks (the command dispatcher's leadership) for the kernel's
# default keepalive time, 2 h. Seen with `fieldhub bench failover --scenario
# bridge-database-link` (15 s cut): without them the bridge's dispatcher was still not the
# leader 2.5 min after the link came back.
SERVER_TCP: dict[str, str] = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "2",
    "tcp_user_timeout": "10000",
}


def connection_params(url: str, role: Role = "write") -> dict[str, Any]:
    """The URL's parameters with the project's failover defaults for what it leaves out:
    target_session_attrs by role, the TCP keepalive settings (`TCP_DEFAULTS`) and the server's
    (`SERVER_TCP`, before the URL's own `options`). What the URL says wins, so an operator can
    tune any of them per process."""
    params: dict[str, Any] = dict(conninfo.conninfo_to_dict(url))
    params.setdefault("target_session_attrs", _SESSION_ATTRS[role])
    for key, value in TCP_DEFAULTS.items():
        params.setdefault(key, value)
    server = " ".join(f"-c {key}={value}" for key, value in SERVER_TCP.items())
    # Later -c options win, so the URL's come last.
    params["options"] = f"{server} {params['options']}" if params.get("options") else server
    return params


def failover_conninfo(url: str, role: Role = "write") -> str:
    """`connection_params` as a conninfo string, for code that calls psycopg directly."""
    return conninfo.make_conninfo("", **connection_params(url, role))


# A fieldhub connection: connect() and make_pool() make every one return rows as dicts, and
# every query module reads its rows by column name.
Conn: TypeAlias = psycopg.Connection[dict[str, Any]]


def connect(url: str, *, autocommit: bool = False, role: Role = "write", **kwargs: Any) -> Conn:
    """Open one connection with the project's defaults (dict rows, short connect timeout, the
    failover defaults of `connection_params`)."""
    return psycopg.connect(
        failover_conninfo(url, role),
        autocommit=autocommit,
        row_factory=dict_row,
        connect_timeout=kwargs.pop("connect_timeout", 5),
        application_name=kwargs.pop("application_name", "fieldhub"),
        **kwargs,
    )


def make_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    name: str = "fieldhub",
    role: Role = "write",
) -> ConnectionPool[Conn]:
    """A connection pool whose connections return rows as dicts.

    After a failover the pool's connections to the old primary are broken: `check` tests a
    connection when it is handed out and replaces a broken one, so a request never gets a dead
    connection (one cheap round trip per checkout)."""
    return ConnectionPool(
        failover_conninfo(url, role),
        min_size=min_size,
        max_size=max_size,
        name=name,
        kwargs={"row_factory": dict_row, "application_name": name, "connect_timeout": 5},
        open=True,
        timeout=10,
        check=ConnectionPool.check_connection,
    )
