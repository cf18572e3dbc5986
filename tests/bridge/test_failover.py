"""The bridge across database failures that leave a commit in doubt (issue #13, HA).

A PostgreSQL of this module's own, with synchronous_commit on, stands in for a Patroni primary
in strict synchronous mode: `synchronous_standby_names` naming a standby that never connects
makes every commit wait in `SyncRep` after it has committed locally, which is exactly the
window in which a failover leaves a commit in doubt. Ending the bridge's backend there (what a
primary's death does to it) commits the batch without the bridge knowing; cancelling the wait
(the commit deadline) reports success although no standby has it. Either way the bridge must
acknowledge nothing until a commit it saw succeed, and store everything exactly once."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.core import db
from fieldhub.core.db import make_pool
from fieldhub.core.migrate import apply_migrations
from fieldhub.core.procs import as_user, free_port
from fieldhub.stack.cluster import init_replica, replica_ready
from fieldhub.stack.postgres import PG_USER, PostgresCluster, pg_bindir
from tests.bridge.publishing import DevicePublisher
from tests.bridge.test_durability import publishing_in_background
from tests.bridge.traffic import numeric_stream
from tests.support import (
    NEEDS_PATRONI,
    BridgeProcess,
    DeviceClient,
    TestStack,
    patroni_database,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sync_cluster() -> Iterator[PostgresCluster]:
    base = Path(tempfile.mkdtemp(prefix="fieldhub-test-syncpg-"))
    base.chmod(0o755)
    cluster = PostgresCluster(
        base / "cluster",
        free_port(),
        base / "password",
        fast_unsafe=True,
        # fast_unsafe turns synchronous_commit off, which would skip the standby wait.
        extra_settings={"synchronous_commit": "on"},
    )
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def standby_missing(cluster: PostgresCluster) -> Iterator[None]:
    """Commits wait for a standby that never comes, until the block ends."""
    standby_required(cluster, True)
    try:
        yield
    finally:
        standby_required(cluster, False)


@pytest.fixture
def sync_stack(sync_cluster: PostgresCluster, broker: MosquittoBroker) -> Iterator[TestStack]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    sync_cluster.create_database(name)
    url = sync_cluster.url(name)
    apply_migrations(url)
    with TestStack(url, broker) as stack:
        yield stack


def standby_required(cluster: PostgresCluster, required: bool) -> None:
    """Make every commit wait for a standby that never comes (or stop waiting)."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        if required:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'never_connects'")
        else:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        conn.execute("SELECT pg_reload_conf()")


def bridge_waiting_for_standby(stack: TestStack) -> list[int]:
    """Backend pids of the bridge's writer connection that wait in the commit's SyncRep."""
    rows = stack.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'fieldhub-bridge'"
        " AND wait_event = 'SyncRep'"
    )
    return [row["pid"] for row in rows]


def stored(stack: TestStack, device_id: str) -> list[float]:
    rows = stack.query(
        "SELECT value FROM readings JOIN devices USING (device_key) WHERE device_id = %s"
        " ORDER BY value",
        (device_id,),
    )
    return [row["value"] for row in rows]


def acknowledged(bridge: BridgeProcess) -> float:
    """Messages the bridge has acknowledged to the broker (counted right after the PUBACKs)."""
    return sum(
        value
        for key, value in bridge.metrics().items()
        if key.startswith("fieldhub_bridge_messages_total")
    )


def publish_batch(stack: TestStack, device_id: str, secret: str, count: int) -> None:
    """One message the bridge dead-letters, then `count` telemetry messages, all
    broker-acknowledged. The bridge takes the first message alone (its writer is idle)."""
    device = DeviceClient(stack.broker.mqtt_devices, device_id, secret)
    device.connect()
    try:
        device.publish(f"devices/{device_id}/telemetry", b"not json")
        for n in range(count):
            device.publish(f"devices/{device_id}/telemetry", orjson.dumps({"values": {"n": n}}))
    finally:
        device.close()


def dead_letters(stack: TestStack, device_id: str) -> int:
    rows = stack.query("SELECT count(*) AS n FROM dead_letters WHERE device_id = %s", (device_id,))
    return int(rows[0]["n"])


def test_a_commit_lost_with_the_server_is_retried_in_doubt_and_stored_once(
    sync_stack: TestStack, sync_cluster: PostgresCluster
) -> None:
    stack = sync_stack
    secrets = stack.create_devices(["doubt-1"])
    with BridgeProcess(stack, instance=31) as bridge:
        bridge.start().wait_ready()
        with standby_missing(sync_cluster):
            publish_batch(stack, "doubt-1", secrets["doubt-1"], 20)
            wait_for(
                lambda: bridge_waiting_for_standby(stack), timeout=30, what="the commit to wait"
            )
            # Committed locally, not acknowledged: the batch waits for the standby.
            assert acknowledged(bridge) == 0
            # The primary's death as the bridge sees it: the server goes away during the
            # COMMIT (and comes back, as a promoted standby would, with the commit in its WAL).
            sync_cluster.stop(mode="immediate")
            sync_cluster.start()
            stack.conn = psycopg.connect(stack.database_url, autocommit=True, row_factory=dict_row)
            # The first batch (the dead letter, received first) had committed although its
            # COMMIT failed: in doubt, not lost.
            assert dead_letters(stack, "doubt-1") == 1
            # The retry (a new connection) waits for the standby too, and acknowledges nothing.
            wait_for(
                lambda: bridge_waiting_for_standby(stack),
                timeout=30,
                what="the retried commit to wait",
            )
            assert acknowledged(bridge) == 0
            assert bridge.metrics()["fieldhub_bridge_db_errors_total"] >= 1
        wait_for(lambda: acknowledged(bridge) == 21, timeout=30, what="the acknowledgements")
        stack.conn.close()
    stack.conn = psycopg.connect(stack.database_url, autocommit=True, row_factory=dict_row)
    assert stored(stack, "doubt-1") == [float(n) for n in range(20)]
    assert dead_letters(stack, "doubt-1") == 1


def test_a_commit_past_the_deadline_is_cancelled_and_not_acknowledged(
    sync_stack: TestStack, sync_cluster: PostgresCluster
) -> None:
    stack = sync_stack
    secrets = stack.create_devices(["late-1"])
    with BridgeProcess(stack, instance=32, extra_args=["--commit-deadline", "1"]) as bridge:
        bridge.start().wait_ready()
        with standby_missing(sync_cluster):
            publish_batch(stack, "late-1", secrets["late-1"], 10)
            # Each attempt is cancelled after 1 s; the cancelled wait reports success, and the
            # rows are committed on this server, but no standby has them: nothing is acknowledged.
            wait_for(
                lambda: bridge.metrics().get("fieldhub_bridge_db_errors_total", 0.0) >= 2,
                timeout=30,
                what="two attempts past the deadline",
            )
            assert acknowledged(bridge) == 0
            assert len(stored(stack, "late-1")) == 10
            assert "commit deadline" in bridge.log()
        wait_for(lambda: acknowledged(bridge) == 11, timeout=30, what="the acknowledgements")
    assert stored(stack, "late-1") == [float(n) for n in range(10)]
    assert dead_letters(stack, "late-1") == 1


@pytest.fixture
def primary_and_standby() -> Iterator[tuple[PostgresCluster, PostgresCluster]]:
    """A primary and a synchronous streaming standby, as Patroni would leave them."""
    base = Path(tempfile.mkdtemp(prefix="fieldhub-test-failover-"))
    base.chmod(0o755)
    password = base / "password"
    primary = PostgresCluster(
        base / "primary",
        free_port(),
        password,
        fast_unsafe=True,
        extra_settings={"synchronous_commit": "on"},
    )
    standby = PostgresCluster(base / "standby", free_port(), password)
    primary.init()
    primary.start()
    try:
        primary.create_database("fieldhub_failover")
        apply_migrations(primary.url("fieldhub_failover"))
        init_replica(primary, standby)
        standby.start()
        wait_for(replica_ready(standby), timeout=60, what="the standby")
        with psycopg.connect(primary.url("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")
            wait_for(
                lambda: conn.execute(
                    "SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'"
                ).fetchone(),
                timeout=30,
                what="the standby to be synchronous",
            )
        yield primary, standby
    finally:
        primary.stop(mode="immediate")
        standby.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


def test_a_failover_to_the_standby_loses_and_doubles_nothing_without_a_restart(
    primary_and_standby: tuple[PostgresCluster, PostgresCluster], broker: MosquittoBroker
) -> None:
    primary, standby = primary_and_standby
    user, secret = primary.superuser, quote(primary.password, safe="")
    # Both hosts in one URL, the way every fieldhub process is configured with Patroni.
    url = (
        f"postgresql://{user}:{secret}@127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
        "/fieldhub_failover"
    )
    devices = [f"fo-{n:02d}" for n in range(20)]
    messages, expected = numeric_stream(devices, per_device=300)
    pool = make_pool(url, min_size=2, max_size=2, name="fieldhub-test-failover")
    with TestStack(url, broker) as stack:
        secrets = stack.create_devices([*devices, "fo-late"])
        late = DeviceClient(stack.broker.mqtt_devices, "fo-late", secrets.pop("fo-late"))
        with (
            DevicePublisher(stack, secrets) as publisher,
            BridgeProcess(stack, instance=33) as bridge,
        ):
            bridge.start().wait_ready()
            with publishing_in_background(publisher, messages):
                wait_for(
                    lambda: rows_on_primary(primary.url("fieldhub_failover")) > expected // 5,
                    timeout=60,
                    interval=0.1,
                    what="the stream to be well under way",
                )
                # The primary dies with everything on it; the standby is promoted (Patroni's
                # part). Nothing fieldhub runs is restarted or told.
                primary.stop(mode="immediate")
                # One message surely after the stop (the stream may be in the broker already),
                # so the bridge has something to write while no primary exists.
                late.connect()
                late.publish("devices/fo-late/telemetry", orjson.dumps({"values": {"n": 1}}))
                late.close()
                # Until Patroni promotes it, the standby is the only server answering: the
                # bridge must wait for a primary, not write (or dead-letter) into a standby.
                wait_for(
                    lambda: bridge.metrics().get("fieldhub_bridge_db_errors_total", 0) >= 3,
                    timeout=30,
                    what="the bridge to retry without a primary",
                )
                promote(standby)
            wait_for(
                lambda: rows_on_primary(standby.url("fieldhub_failover")) >= expected + 1,
                timeout=120,
                interval=0.25,
                what=f"{expected + 1} rows on the promoted standby",
            )
            metrics = bridge.metrics()
            assert bridge.proc is not None
            assert bridge.proc.poll() is None, "the bridge died with the primary"
            assert metrics["fieldhub_bridge_db_errors_total"] >= 1
        # Every acknowledged reading is on the new primary, once (the identity is unique).
        assert rows_on_primary(standby.url("fieldhub_failover")) == expected + 1
        # A pool made before the failover hands out working connections to the new primary.
        with pool.connection() as conn:
            row = conn.execute("SELECT pg_is_in_recovery() AS standby").fetchone()
            assert row == {"standby": False}
    pool.close()


def promote(cluster: PostgresCluster) -> None:
    subprocess.run(
        as_user(PG_USER, [str(pg_bindir() / "pg_ctl"), "-D", str(cluster.pgdata), "-w", "promote"]),
        check=True,
        capture_output=True,
    )


@NEEDS_PATRONI
def test_patroni_fails_over_under_the_bridge_and_the_old_primary_rejoins(
    broker: MosquittoBroker,
) -> None:
    with patroni_database("fieldhub_ha") as (cluster, leader, url):
        devices = [f"pat-{n:02d}" for n in range(20)]
        messages, expected = numeric_stream(devices, per_device=300)
        with TestStack(url, broker) as stack:
            secrets = stack.create_devices([*devices, "pat-late"])
            late = DeviceClient(stack.broker.mqtt_devices, "pat-late", secrets.pop("pat-late"))
            with (
                DevicePublisher(stack, secrets) as publisher,
                BridgeProcess(stack, instance=34) as bridge,
            ):
                bridge.start().wait_ready()
                with publishing_in_background(publisher, messages):
                    wait_for(
                        lambda: rows_on_primary(url) > expected // 5,
                        timeout=60,
                        interval=0.1,
                        what="the stream to be well under way",
                    )
                    killed_at = cluster.kill_node(leader)
                    # Writes resume: a reading published after the kill is stored on the
                    # promoted node. (The stream alone may be stored before the kill: under load
                    # the bridge outran this test's polling.)
                    late.connect()
                    late.publish("devices/pat-late/telemetry", orjson.dumps({"values": {"n": 1}}))
                    late.close()
                    wait_for(
                        lambda: rows_on_primary(url, "pat-late") == 1,
                        timeout=60,
                        interval=0.1,
                        what="writes on a new primary",
                    )
                    recovery_s = time.time() - killed_at
                wait_for(
                    lambda: rows_on_primary(url) >= expected + 1,
                    timeout=120,
                    interval=0.25,
                    what=f"{expected + 1} rows",
                )
                assert bridge.proc is not None
                assert bridge.proc.poll() is None, "the bridge died with the primary"
            # 0 lost, 0 doubled: every acknowledged reading, once.
            assert rows_on_primary(url) == expected + 1
            new_leader = cluster.primary()
            assert new_leader is not None
            assert new_leader is not leader
            # The old primary comes back as a standby by itself (pg_rewind), no data surgery.
            restarted_at = time.monotonic()
            cluster.start_node(leader)
            wait_for(
                lambda: cluster.streaming(leader),
                timeout=180,
                interval=0.5,
                what="the old primary to stream as a standby",
            )
            rejoin_s = time.monotonic() - restarted_at
            stack.conn.close()
        print(f"patroni failover: recovery {recovery_s:.1f} s, rejoin {rejoin_s:.1f} s")
        assert recovery_s < 30


def rows_on_primary(url: str, device_id: str | None = None) -> int:
    """Readings on the primary (of one device), -1 while there is none."""
    try:
        with db.connect(url, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM readings WHERE %(device)s::text IS NULL"
                " OR device_key = (SELECT device_key FROM devices WHERE device_id = %(device)s)",
                {"device": device_id},
            ).fetchone()
    except psycopg.OperationalError:
        return -1
    assert row is not None
    return int(row["n"])
