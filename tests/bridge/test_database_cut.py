"""A link to the database cut while a batch's transaction is open (issue #13, fault 3).

The bridge's side of a cut connection ends (tcp_user_timeout), but PostgreSQL's side does not:
the server never hears of it and keeps the transaction open, holding what it wrote. In 3 of 7
runs of `fieldhub bench failover --scenario bridge-database-link` the cut fell after the
server had answered the batch's last statement and before the COMMIT arrived; the in-doubt
retry then waited on that transaction's uncommitted readings (the same identities) and was
cancelled at every commit deadline, so nothing drained after the link came back.

A relay in front of a real PostgreSQL reproduces it without namespaces: it swallows the COMMIT,
resets the bridge's side and keeps the server's side open and silent."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import orjson
import psycopg
import pytest
from psycopg import conninfo

from fieldhub.bridge.ingest import Batch, DeviceDirectory, IngestWriter, Telemetry
from fieldhub.bridge.metrics import BridgeMetrics
from fieldhub.core import db
from fieldhub.core.decode import decode_telemetry
from tests.support import TcpRelay, TestStack

pytestmark = pytest.mark.integration


class CommitCutRelay(TcpRelay):
    """A TCP relay to PostgreSQL. Once `cut_at_commit` is set, the next COMMIT a client sends
    is never delivered: the client's connection is reset (what its tcp_user_timeout does to it
    behind a cut link) and the server's is kept open and silent (the server sees nothing)."""

    def __init__(self, upstream_port: int) -> None:
        self.cut_at_commit = threading.Event()
        self.orphans: list[socket.socket] = []
        super().__init__(upstream_port)

    def pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                # The query text of a Parse or Query message ends with a NUL.
                if from_client and self.cut_at_commit.is_set() and b"COMMIT\x00" in data:
                    self.cut_at_commit.clear()
                    self.orphans.append(dst)
                    src.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    src.close()
                    return
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        super().close()
        for sock in self.orphans:
            sock.close()


@pytest.fixture
def relay(stack: TestStack) -> Iterator[CommitCutRelay]:
    port = int(conninfo.conninfo_to_dict(stack.database_url)["port"])  # type: ignore[arg-type]
    relay = CommitCutRelay(port)
    try:
        yield relay
    finally:
        relay.close()


def telemetry(device_id: str, key: int, values: range) -> Batch:
    now = time.time()
    messages = []
    for n in values:
        payload = orjson.dumps({"ts": 1_764_000_000_000 + n, "values": {"n": n}})
        topic = f"devices/{device_id}/telemetry"
        messages.append(
            Telemetry(device_id, key, decode_telemetry(payload, now), topic, payload, now)
        )
    return Batch(telemetry=messages, messages=len(messages), qos1=len(messages))


def test_a_transaction_orphaned_by_a_cut_link_does_not_block_the_retry(
    stack: TestStack, relay: CommitCutRelay, caplog: pytest.LogCaptureFixture
) -> None:
    stack.create_devices(["cut-1"])
    directory = DeviceDirectory(stack.database_url)
    with db.connect(stack.database_url, autocommit=True) as conn:
        directory.reload(conn)
    key = directory.key_of("cut-1")
    assert key is not None
    through_relay = conninfo.make_conninfo(stack.database_url, port=str(relay.port))
    deadline_s = 2.0
    writer = IngestWriter(through_relay, directory, BridgeMetrics(97), commit_deadline_s=deadline_s)
    try:
        writer.write(telemetry("cut-1", key, range(0, 5)))  # connected, committed
        relay.cut_at_commit.set()
        batch = telemetry("cut-1", key, range(5, 25))
        with pytest.raises(psycopg.OperationalError):
            writer.write(batch)
        assert batch.in_doubt
        # The server still holds the batch's uncommitted readings in the orphaned transaction.
        orphaned = stack.query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'fieldhub-bridge'"
            " AND state = 'idle in transaction'"
        )
        assert len(orphaned) == 1
        # The retry's new connection ends that server process first, so the retry commits at
        # once instead of waiting on its readings until the commit deadline cancels it, at
        # every attempt, for as long as the server keeps it (its TCP keepalive: 2 h by default).
        started = time.monotonic()
        result = writer.write(batch)
        assert time.monotonic() - started < deadline_s
        assert result.staged  # in doubt: the reading identity absorbs what had committed
        assert "ended server process" in caplog.text
    finally:
        writer.close()
    rows = stack.query(
        "SELECT value FROM readings JOIN devices USING (device_key) WHERE device_id = 'cut-1'"
        " ORDER BY value"
    )
    assert [row["value"] for row in rows] == [float(n) for n in range(25)]
    assert (
        stack.query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'fieldhub-bridge'"
            " AND state = 'idle in transaction'"
        )
        == []
    )
