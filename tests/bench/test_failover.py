"""`fieldhub bench failover`, short: the same code as the benchmark.

- database-primary: the primary's host (etcd member + Patroni node) dies while 100 devices
  publish and 5 devices get commands; writes resume within 30 s, every acknowledged message is
  stored once, every command succeeds, the old primary streams again (about a minute).
- bridge-database-link: the database host's link cut under the bridge for 15 s; every
  acknowledged message stored once afterwards (about a minute and a half)."""

from __future__ import annotations

import pytest

from tests.support import NEEDS_NETNS, NEEDS_PATRONI, failover_scenarios

pytestmark = NEEDS_NETNS


@pytest.mark.timeout(600)
def test_a_cut_link_to_the_database_loses_and_doubles_nothing() -> None:
    [link] = failover_scenarios(
        "--scenario", "bridge-database-link", "--cut", "15", "--rate", "300",
        "--devices", "100", "--publishers", "1", "--before", "3", "--after", "5",
    )  # fmt: skip
    assert link["name"] == "bridge-database-link"
    assert link["acked"] == 300 * (3 + 15 + 5)
    assert link["lost"] == 0
    assert link["doubled"] == 0
    # The bridge held what arrived during the cut, and wrote again once the link was back.
    assert link["backlog_at_restore"] > 0
    assert link["recovery_s"] < 30
    # Commands queued around the cut all reached their devices and succeeded.
    assert link["commands_sent"] > 0
    assert link["commands_succeeded"] == link["commands_sent"]


@pytest.mark.timeout(600)
@NEEDS_PATRONI
def test_the_primary_host_dies_and_nothing_acknowledged_is_lost_and_commands_continue() -> None:
    [primary] = failover_scenarios(
        "--scenario", "database-primary", "--rate", "300", "--devices", "100",
        "--publishers", "1", "--before", "5", "--after", "15", "--command-devices", "5",
    )  # fmt: skip
    assert primary["name"] == "database-primary"
    assert primary["acked"] == 300 * (5 + 15)
    assert primary["lost"] == 0
    assert primary["doubled"] == 0
    assert primary["recovery_s"] < 30
    # Commands were sent through the failover, 2/s for 20 s and more but for the one send that
    # waits out the dead host (TCP timeout, then connect timeouts), and every one succeeded.
    assert primary["commands_sent"] >= 20
    assert primary["commands_succeeded"] == primary["commands_sent"]
    assert primary["command_send_stall_s"] < 30
    # The run waits for the old primary to stream as a standby; rejoin_s says it did.
    if primary["rejoin_s"] is None:
        log = "\n".join(primary["rejoin_log"])
        pytest.xfail(
            "known intermittent (issue #13): in 1 of 3 whole-suite runs the old primary did not "
            "stream again within 300 s after its restart; every other figure above held. The "
            f"end of its Patroni log:\n{log}"
        )
    assert primary["rejoin_s"] > 0
