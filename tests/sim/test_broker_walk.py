"""The device's failover rules along its broker list (fieldhub/sim/broker_walk.py): pure."""

from __future__ import annotations

import random
import statistics

import pytest

from fieldhub.core.brokers import broker_preference, home_broker
from fieldhub.sim.broker_walk import BrokerWalk, WalkPolicy

THREE = ["broker-1", "broker-2", "broker-3"]


def _walk(brokers: list[str] = THREE, seed: int = 1, **policy: float) -> BrokerWalk:
    return BrokerWalk(brokers, WalkPolicy(**policy), random.Random(seed))


def test_a_lost_connection_is_retried_on_the_same_broker_first() -> None:
    walk = _walk()
    assert walk.first() == "broker-1"
    walk.connected()
    broker, pause = walk.lost()
    assert broker == "broker-1"
    assert 0 <= pause <= 1.0


def test_a_silent_connection_goes_on_to_the_next_broker() -> None:
    walk = _walk()
    walk.connected()
    broker, pause = walk.lost(silent=True)
    assert broker == "broker-2"
    assert 0 <= pause <= 2.0
    assert walk.failed()[0] == "broker-3"


def test_failed_attempts_walk_the_list_in_order_and_wrap() -> None:
    walk = _walk()
    walk.lost()
    assert [walk.failed()[0] for _ in range(5)] == [
        "broker-2",
        "broker-3",
        "broker-1",
        "broker-2",
        "broker-3",
    ]


def test_the_pause_grows_exponentially_up_to_the_cap() -> None:
    walk = _walk(base_s=1.0, cap_s=8.0)
    ceilings = [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    for ceiling in ceilings:
        assert 0 <= walk.failed()[1] <= ceiling
    # Over many devices the pauses fill their window (full jitter), not just its end.
    pauses = [_walk(seed=s, base_s=1.0, cap_s=8.0) for s in range(500)]
    for w in pauses:
        for _ in range(5):
            w.failed()
    spread = [w.failed()[1] for w in pauses]
    assert max(spread) > 7.0
    assert min(spread) < 1.0
    assert 3.0 < statistics.mean(spread) < 5.0


def test_a_fleet_does_not_reconnect_in_lockstep() -> None:
    """500 devices of a lost broker: their first attempts on the standby are spread over the
    first backoff window, no more than a few in any 10 ms."""
    firsts = []
    for seed in range(500):
        walk = _walk(seed=seed)
        walk.connected()
        walk.lost()
        firsts.append(walk.failed()[1])
    buckets: dict[int, int] = {}
    for pause in firsts:
        buckets[int(pause * 100)] = buckets.get(int(pause * 100), 0) + 1
    assert max(buckets.values()) <= 10
    assert max(firsts) - min(firsts) > 1.5


def test_a_good_connection_resets_the_backoff() -> None:
    walk = _walk(base_s=1.0, cap_s=30.0)
    for _ in range(6):
        walk.failed()
    walk.connected()
    assert walk.failed()[1] <= 2.0


def test_going_home_needs_the_home_to_answer_for_the_whole_stable_time() -> None:
    walk = _walk(home_stable_s=60.0)
    walk.failed()
    walk.connected()
    assert walk.on_standby
    assert walk.current == "broker-2"
    walk.home_answered(100.0)
    assert not walk.should_go_home(159.0)
    walk.home_answered(130.0)  # a later answer does not restart the clock
    assert walk.should_go_home(160.0)
    # One silent check starts it over.
    walk.home_silent()
    walk.home_answered(170.0)
    assert not walk.should_go_home(200.0)
    assert walk.should_go_home(230.0)
    walk.went_home()
    assert walk.current == "broker-1"
    assert not walk.on_standby
    assert not walk.should_go_home(1000.0)


def test_a_device_at_home_never_goes_home() -> None:
    walk = _walk(home_stable_s=1.0)
    walk.home_answered(0.0)
    assert not walk.should_go_home(100.0)


def test_home_checks_are_jittered_around_the_probe_interval() -> None:
    checks = [_walk(seed=s, home_probe_s=10.0).next_home_check() for s in range(200)]
    assert all(5.0 <= c <= 15.0 for c in checks)
    assert max(checks) - min(checks) > 5.0


def test_the_devices_of_a_lost_broker_spread_over_the_standbys() -> None:
    """The list is the credentials' order: the devices of broker-1 fail over to broker-2 and
    broker-3 in about equal shares."""
    ids = [f"dev-{n}" for n in range(3000)]
    firsts = []
    for device_id in ids:
        home = home_broker(device_id, THREE)
        if home != "broker-1":
            continue
        walk = BrokerWalk(broker_preference(device_id, home, THREE), WalkPolicy())
        firsts.append(walk.failed()[0])
    share = firsts.count("broker-2") / len(firsts)
    assert 0.45 < share < 0.55
    assert set(firsts) == {"broker-2", "broker-3"}


@pytest.mark.parametrize(
    ("brokers", "policy", "problem"),
    [
        ([], {}, "at least one broker"),
        (["broker-1", "broker-1"], {}, "listed twice"),
        (["broker-1"], {"base_s": 0}, "base_s must be > 0"),
        (["broker-1"], {"base_s": 5, "cap_s": 1}, "cap_s must be >= base_s"),
    ],
)
def test_bad_input_is_named(brokers: list[str], policy: dict[str, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        BrokerWalk(brokers, WalkPolicy(**policy))
