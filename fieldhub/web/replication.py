"""Where the web app's reads come from and how far a replica lags, for operators.

The read connection says whether it is a replica (`pg_is_in_recovery()`); the primary lists
the replicas streaming from it. Either side may be refused to a role without the privileges
(a non-superuser sees NULLs in `pg_stat_replication`); that is shown, not raised."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import psycopg

from fieldhub.core.db import Conn
from fieldhub.web.db import QUERIES


@dataclasses.dataclass(frozen=True)
class ReadSide:
    in_recovery: bool
    host: str
    port: str
    replay_age: timedelta | None
    receive_lsn: str | None
    replay_lsn: str | None


@dataclasses.dataclass(frozen=True)
class Replica:
    application_name: str
    client_addr: str | None
    state: str | None
    write_lag: timedelta | None
    flush_lag: timedelta | None
    replay_lag: timedelta | None
    bytes_behind: int | None

    @property
    def visible(self) -> bool:
        """False when the role may not see this replica's details (all columns NULL)."""
        return self.state is not None


@dataclasses.dataclass(frozen=True)
class ReplicationState:
    read: ReadSide | None
    read_error: str | None
    replicas: list[Replica]
    primary_error: str | None

    @property
    def reads_from_replica(self) -> bool:
        return self.read is not None and self.read.in_recovery

    @property
    def summary(self) -> str:
        if self.reads_from_replica:
            return "reads come from a streaming replica"
        if self.read is None:
            return "the read connection could not report its role"
        if not self.replicas:
            return "reads come from the primary; no replica configured"
        return (
            "reads come from the primary; "
            f"{len(self.replicas)} replica(s) stream from it but the web app does not read them"
        )

    @property
    def details_hidden(self) -> bool:
        return any(not r.visible for r in self.replicas)


def _refusal(exc: psycopg.Error) -> str:
    # The server's message names the function or view refused; nothing secret is in it.
    return f"the database role may not read this: {exc.diag.message_primary or exc}"


def read_side(conn: Conn) -> tuple[ReadSide | None, str | None]:
    try:
        row: dict[str, Any] | None = conn.execute(QUERIES["read_side_replication"]).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        return None, _refusal(exc)
    assert row is not None
    return (
        ReadSide(
            in_recovery=bool(row["in_recovery"]),
            host=conn.info.host,
            port=str(conn.info.port),
            replay_age=row["replay_age"],
            receive_lsn=row["receive_lsn"],
            replay_lsn=row["replay_lsn"],
        ),
        None,
    )


def primary_replicas(conn: Conn) -> tuple[list[Replica], str | None]:
    try:
        rows: list[dict[str, Any]] = conn.execute(QUERIES["primary_replicas"]).fetchall()
    except psycopg.errors.InsufficientPrivilege as exc:
        return [], _refusal(exc)
    return [Replica(**row) for row in rows], None


def replication_state(read_conn: Conn, primary_conn: Conn) -> ReplicationState:
    read, read_error = read_side(read_conn)
    replicas, primary_error = primary_replicas(primary_conn)
    return ReplicationState(read, read_error, replicas, primary_error)
