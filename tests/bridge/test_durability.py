"""Nothing lost, nothing doubled: the bridge killed, the database stopped, two bridges sharing
the load. Real Mosquitto, real PostgreSQL; the publishers keep going throughout."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from fieldhub.stack.postgres import PostgresCluster
from tests.bridge.publishing import DevicePublisher, Message
from tests.bridge.traffic import numeric_stream
from tests.support import BridgeProcess, TestStack, wait_for

pytestmark = pytest.mark.integration


def count_rows(database_url: str) -> int:
    """A fresh connection each time: these tests restart the server under the old ones."""
    try:
        with psycopg.connect(database_url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
    except psycopg.OperationalError:
        return -1
    assert row is not None
    return int(row[0])


def per_device_counts(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT device_id, count(*) FROM readings JOIN devices USING (device_key)"
            " GROUP BY device_id"
        )
        return {device_id: count for device_id, count in rows}


@contextmanager
def publishing_in_background(publisher: DevicePublisher, messages: list[Message]) -> Iterator[None]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            publisher.publish(messages)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="publisher")
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=180)
    assert not thread.is_alive(), "the publishers did not finish"
    if errors:
        raise errors[0]


def wait_complete(stack: TestStack, expected: int, bridge: BridgeProcess, timeout: float) -> None:
    try:
        wait_for(
            lambda: count_rows(stack.database_url) >= expected,
            timeout=timeout,
            interval=0.25,
            what=f"{expected} rows",
        )
    except AssertionError:
        raise AssertionError(
            f"{count_rows(stack.database_url)} of {expected} rows\n{bridge.log()[-3000:]}"
        ) from None


def test_kill_9_mid_stream_loses_and_doubles_nothing(stack: TestStack) -> None:
    devices = [f"k9-{n:02d}" for n in range(50)]
    secrets = stack.create_devices(devices)
    messages, expected = numeric_stream(devices, per_device=1000)
    assert len(messages) == 50_000
    with DevicePublisher(stack, secrets) as publisher, BridgeProcess(stack, instance=11) as first:
        first.start().wait_ready()
        with publishing_in_background(publisher, messages):
            wait_for(
                lambda: count_rows(stack.database_url) > expected // 5,
                timeout=60,
                interval=0.1,
                what="the stream to be well under way",
            )
            first.kill(signal.SIGKILL)
            assert first.wait(timeout=10) == -signal.SIGKILL
            at_kill = count_rows(stack.database_url)
            with BridgeProcess(stack, instance=11) as second:
                second.start().wait_ready()
                wait_complete(stack, expected, second, timeout=120)
                metrics = second.metrics()
    assert at_kill < expected, "the kill came too late to test anything"
    assert count_rows(stack.database_url) == expected
    assert per_device_counts(stack.database_url) == dict.fromkeys(devices, 2 * 1000)
    # The restarted bridge resumed the killed one's session: it got the messages that were
    # queued or unacknowledged at the kill, not just what was published afterwards.
    assert metrics['fieldhub_bridge_messages_total{kind="telemetry"}'] > 0


def test_database_outage_of_30s_loses_and_doubles_nothing(
    stack: TestStack, pg_cluster: PostgresCluster
) -> None:
    devices = [f"pg-{n:02d}" for n in range(50)]
    secrets = stack.create_devices(devices)
    messages, expected = numeric_stream(devices, per_device=1000)
    with (
        DevicePublisher(stack, secrets) as publisher,
        BridgeProcess(stack, instance=12) as bridge,
    ):
        bridge.start().wait_ready()
        stopped_at = 0.0
        try:
            with publishing_in_background(publisher, messages):
                wait_for(
                    lambda: count_rows(stack.database_url) > expected // 5,
                    timeout=60,
                    interval=0.1,
                    what="the stream to be well under way",
                )
                pg_cluster.stop(mode="fast")
                stopped_at = time.monotonic()
                # The outage itself is what is under test, so this wait is the point.
                time.sleep(30)
                assert bridge.proc is not None
                assert bridge.proc.poll() is None, "the bridge died with the database"
                errors = bridge.metrics()["fieldhub_bridge_db_errors_total"]
                backlog = bridge.metrics()["fieldhub_bridge_backlog_messages"]
        finally:
            if not pg_cluster.running():
                pg_cluster.start()
        assert stopped_at
        assert errors >= 1
        assert backlog > 0, "messages should wait unacknowledged during the outage"
        wait_complete(stack, expected, bridge, timeout=120)
        assert bridge.metrics()["fieldhub_bridge_broker_dropped_messages"] == 0
    assert count_rows(stack.database_url) == expected
    assert per_device_counts(stack.database_url) == dict.fromkeys(devices, 2 * 1000)


def test_two_instances_split_the_load_and_store_each_reading_once(stack: TestStack) -> None:
    devices = [f"two-{n:02d}" for n in range(50)]
    secrets = stack.create_devices(devices)
    messages, expected = numeric_stream(devices, per_device=200)
    with (
        BridgeProcess(stack, instance=21) as one,
        BridgeProcess(stack, instance=22) as two,
        DevicePublisher(stack, secrets) as publisher,
    ):
        one.start()
        two.start()
        one.wait_ready()
        two.wait_ready()
        publisher.publish(messages)
        wait_complete(stack, expected, one, timeout=60)
        rows_one = one.metrics()["fieldhub_bridge_rows_total"]
        rows_two = two.metrics()["fieldhub_bridge_rows_total"]
        # SIGTERM: flush, commit, acknowledge, disconnect, exit 0.
        assert one.stop() == 0
        assert two.stop() == 0
    assert rows_one > 0
    assert rows_two > 0
    assert rows_one + rows_two == expected
    assert count_rows(stack.database_url) == expected
