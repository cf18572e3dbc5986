"""Simulated devices fail over along their broker list and come back home (issue #13), on two
real loopback brokers with their own bridges and the real database: every reading a broker
acknowledged is stored, except what the killed broker had acknowledged and not yet handed to
its bridge (Mosquitto cannot replicate that; counted, and bounded here)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldhub.bench.hosts_plan import parse_ledger_brokers
from fieldhub.core import registry
from fieldhub.core.brokers import home_broker
from fieldhub.sim.broker_walk import WalkPolicy
from fieldhub.sim.simulate import Ledger, SimulatedDevice, Stats, Target, run_devices
from tests.support import BridgeProcess, SecondBroker, TestStack, unique_id, wait_for

pytestmark = pytest.mark.integration

# Short enough for a test; the product's defaults are in broker_walk.WalkPolicy.
QUICK = WalkPolicy(
    base_s=0.5,
    cap_s=2.0,
    connect_timeout_s=2.0,
    puback_timeout_s=3.0,
    home_probe_s=0.5,
    home_stable_s=3.0,
)


@pytest.fixture
def second(stack: TestStack) -> Iterator[SecondBroker]:
    broker = SecondBroker(stack)
    yield broker
    broker.close()


def test_devices_of_a_killed_broker_publish_via_the_standby_and_go_home(
    stack: TestStack, second: SecondBroker, tmp_path: Path
) -> None:
    brokers = ["broker-1", "broker-2"]
    prefix = unique_id("fo")
    far = [d for n in range(100) if home_broker(d := f"{prefix}-{n}", brokers) == "broker-2"][:6]
    devices = [
        SimulatedDevice(
            d,
            registry.create_device(stack.conn, d, org=stack.org, broker="broker-2").password,
            "broker-2",
        )
        for d in far
    ]
    stack.sync()
    second.sync()
    targets = {
        "broker-1": Target("127.0.0.1", stack.broker.mqtt_devices),
        "broker-2": Target("127.0.0.1", second.broker.mqtt_devices),
    }
    ledger = Ledger(tmp_path / "simulate-0.ledger")
    stats = Stats()
    stop = threading.Event()
    env = second.bridges_env()
    bridges = [
        BridgeProcess(stack, extra_env=env, extra_args=["--broker", name])
        for name in ("broker-1", "broker-2")
    ]
    for bridge in bridges:
        bridge.start()
    for bridge in bridges:
        bridge.wait_ready()
    try:
        runner = threading.Thread(
            target=lambda: asyncio.run(
                run_devices(
                    devices, targets, 0.1, stop.is_set, stats=stats, ledger=ledger, policy=QUICK
                )
            ),
            daemon=True,
        )
        runner.start()
        try:
            wait_for(
                lambda: stats.connected == len(devices) and stats.published >= 60,
                timeout=30,
                what="every device publishing at home",
            )
            assert stats.on_standby == 0
            killed_at = time.time()
            second.kill()
            wait_for(
                lambda: stats.on_standby == len(devices),
                timeout=30,
                what="every device on the standby",
            )
            failed_over_s = time.time() - killed_at
            at_standby = stats.published
            wait_for(lambda: stats.published >= at_standby + 60, what="readings via the standby")

            # broker-2 comes back (as systemd would restart it), and its devices go home.
            second.start()
            wait_for(
                lambda: stats.went_home >= len(devices) and stats.on_standby == 0,
                timeout=60,
                what="every device back home",
            )
            at_home = stats.published
            wait_for(lambda: stats.published >= at_home + 60, what="readings at home again")
        finally:
            stop.set()
            runner.join(timeout=30)
        ledger.close()

        acked = parse_ledger_brokers(ledger.path.read_text())
        assert len(acked) == stats.published
        assert {b for *_, b in acked} == {"broker-1", "broker-2"}

        def stored() -> set[tuple[str, int]]:
            rows = stack.query(
                "SELECT DISTINCT device_id, seq FROM readings JOIN devices USING (device_key)"
                " WHERE device_id = ANY(%s)",
                (far,),
            )
            return {(r["device_id"], int(r["seq"])) for r in rows}

        wanted = {(d, s) for d, s, _, _ in acked}
        wait_for(lambda: len(wanted - stored()) <= 5, timeout=30, what="the readings stored")
    finally:
        for bridge in bridges:
            bridge.stop()
    missing = [(d, s, ts, b) for d, s, ts, b in acked if (d, s) not in stored()]
    # Only broker-2's acknowledgements from just before its kill may be missing: the Mosquitto
    # window (acknowledged to the device, not yet handed to the bridge). Everything else is
    # stored: the readings in flight at the kill were published again on broker-1.
    window = [(b, killed_at - ts / 1000) for *_, ts, b in missing]
    assert all(b == "broker-2" and 0 <= before <= 2 for b, before in window), missing
    assert failed_over_s < 15
    for device in far:
        seqs = sorted(s for d, s, _, _ in acked if d == device)
        assert seqs == list(range(1, len(seqs) + 1))  # every reading acknowledged, none skipped


def test_a_reading_no_bridge_took_is_kept_until_one_does(
    stack: TestStack, second: SecondBroker, tmp_path: Path
) -> None:
    """A broker with no bridge subscribed acknowledges with 0x10 "No matching subscribers"
    (as after a restart, before the bridges subscribe again): the device keeps the reading and
    sends it again, and the ledger counts it only once a bridge took it."""
    device_id = unique_id("nosub")
    secret = registry.create_device(stack.conn, device_id, org=stack.org, broker="broker-2")
    second.sync()
    device = SimulatedDevice(device_id, secret.password, "broker-2")
    target = {"broker-2": Target("127.0.0.1", second.broker.mqtt_devices)}
    ledger = Ledger(tmp_path / "simulate-0.ledger")
    stats = Stats()
    stop = threading.Event()
    runner = threading.Thread(
        target=lambda: asyncio.run(
            run_devices([device], target, 0.2, stop.is_set, stats=stats, ledger=ledger)
        ),
        daemon=True,
    )
    runner.start()
    bridge = BridgeProcess(
        stack, extra_env=second.bridges_env(), extra_args=["--broker", "broker-2"]
    )
    try:
        wait_for(lambda: stats.not_taken >= 2, what="PUBACKs without a subscriber")
        assert stats.published == 0
        bridge.start().wait_ready()
        wait_for(lambda: stats.published >= 5, what="readings taken by the bridge")
    finally:
        stop.set()
        runner.join(timeout=30)
        ledger.close()
        bridge.stop()
    seqs = [seq for _, seq, _, _ in parse_ledger_brokers(ledger.path.read_text())]
    assert seqs == list(range(1, len(seqs) + 1))  # the kept reading first: no gap

    def stored() -> set[int]:
        rows = stack.query(
            "SELECT DISTINCT seq FROM readings JOIN devices USING (device_key)"
            " WHERE device_id = %s",
            (device_id,),
        )
        return {int(r["seq"]) for r in rows}

    wait_for(lambda: stored() >= set(seqs), what="every acknowledged reading stored")
