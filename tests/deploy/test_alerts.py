"""The database cluster's alerts (deploy/prometheus/fieldhub-alerts.yml).

promtool's rule tests feed each rule series of the situations it is for, and of the healthy
cluster it must stay quiet in, and check when it fires and with which labels and text. Then
Debian's Prometheus scrapes a real three-node Patroni cluster with the rules loaded: healthy,
no expression names anything (so the metric names and labels are Patroni's own); a standby
killed, the host-down expression names it and the cluster finds a synchronous standby again."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs installed; only safe_load is used

from tests.deploy.prometheus import (
    ALERT_RULES,
    NEEDS_PROMETHEUS,
    PROMTOOL,
    api,
    running_prometheus,
)
from tests.support import NEEDS_PATRONI, patroni_database, wait_for

pytestmark = [pytest.mark.integration, NEEDS_PROMETHEUS]

RULES: dict[str, dict[str, Any]] = {
    rule["alert"]: rule
    for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]
    for rule in group["rules"]
}
MB = 1 << 20


def series(name: str, instance: str, values: str) -> dict[str, str]:
    return {
        "series": f'{name}{{job="patroni", instance="{instance}", scope="fieldhub"}}',
        "values": values,
    }


def node(instance: str, *, primary: bool, sync: bool, replayed: str) -> list[dict[str, str]]:
    """One database host's scrapes for 15 minutes; `replayed` in promtool's expanding notation
    (a primary's is 0, as Patroni reports it)."""
    return [
        series("up", instance, "1x60"),
        series("patroni_primary", instance, f"{int(primary)}x60"),
        series("patroni_sync_standby", instance, f"{int(sync)}x60"),
        # A primary's own position grows 1 MB a step; a standby's replayed position is given.
        series("patroni_xlog_location", instance, f"{1000 * MB}+{MB}x60" if primary else "0x60"),
        series("patroni_xlog_replayed_location", instance, "0x60" if primary else replayed),
    ]


FOLLOWING = f"{1000 * MB - 4096}+{MB}x60"  # a standby a few kB behind, moving along


def expected(alert: str, **labels: str) -> dict[str, Any]:
    """The alert as it fires: the rule's labels and its annotations with these labels in."""
    rule = RULES[alert]
    annotations = {
        key: text.replace("{{ $labels.instance }}", labels.get("instance", ""))
        for key, text in rule["annotations"].items()
    }
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}


def none_of(*alerts: str, at: str = "14m") -> list[dict[str, Any]]:
    return [{"eval_time": at, "alertname": alert, "exp_alerts": []} for alert in alerts]


ALL = tuple(RULES)
SCENARIOS: dict[str, dict[str, Any]] = {
    "healthy": {
        "input_series": [
            *node("db1:8008", primary=True, sync=False, replayed=""),
            *node("db2:8008", primary=False, sync=True, replayed=FOLLOWING),
            *node("db3:8008", primary=False, sync=False, replayed=FOLLOWING),
        ],
        "alert_rule_test": none_of(*ALL),
    },
    # The old primary came back but replays nothing: quiet for 5 minutes (a rejoin can take
    # that long), then the alert names it.
    "an old primary that did not rejoin": {
        "input_series": [
            *node("db1:8008", primary=False, sync=False, replayed="500000000x60"),
            *node("db2:8008", primary=True, sync=False, replayed=""),
            *node("db3:8008", primary=False, sync=True, replayed=FOLLOWING),
        ],
        "alert_rule_test": [
            {
                "eval_time": "4m",
                "alertname": "FieldhubDatabaseStandbyNotFollowing",
                "exp_alerts": [],
            },
            {
                "eval_time": "6m",
                "alertname": "FieldhubDatabaseStandbyNotFollowing",
                "exp_alerts": [
                    expected(
                        "FieldhubDatabaseStandbyNotFollowing",
                        instance="db1:8008",
                        job="patroni",
                        scope="fieldhub",
                    )
                ],
            },
            *none_of(
                "FieldhubDatabaseNoPrimary",
                "FieldhubDatabaseNoSynchronousStandby",
                "FieldhubDatabaseHostDown",
            ),
        ],
    },
    # A host gone: Prometheus has only its `up` 0 (no scrape, no Patroni series).
    "a host down": {
        "input_series": [
            series("up", "db3:8008", "0x60"),
            *node("db1:8008", primary=True, sync=False, replayed=""),
            *node("db2:8008", primary=False, sync=True, replayed=FOLLOWING),
        ],
        "alert_rule_test": [
            {
                "eval_time": "2m",
                "alertname": "FieldhubDatabaseHostDown",
                "exp_alerts": [
                    expected(
                        "FieldhubDatabaseHostDown",
                        instance="db3:8008",
                        job="patroni",
                        scope="fieldhub",
                    )
                ],
            },
            *none_of(
                "FieldhubDatabaseNoPrimary",
                "FieldhubDatabaseNoSynchronousStandby",
                "FieldhubDatabaseStandbyNotFollowing",
            ),
        ],
    },
    # Two hosts gone: the primary alone, and in strict mode its commits wait.
    "no synchronous standby": {
        "input_series": [*node("db1:8008", primary=True, sync=False, replayed="")],
        "alert_rule_test": [
            {
                "eval_time": "2m",
                "alertname": "FieldhubDatabaseNoSynchronousStandby",
                "exp_alerts": [expected("FieldhubDatabaseNoSynchronousStandby")],
            },
            *none_of("FieldhubDatabaseNoPrimary", "FieldhubDatabaseStandbyNotFollowing"),
        ],
    },
    # No primary at all (only that is said; "no synchronous standby" would be noise then).
    "no primary": {
        "input_series": [
            *node("db1:8008", primary=False, sync=False, replayed="1000x60"),
            *node("db2:8008", primary=False, sync=False, replayed="1000x60"),
        ],
        "alert_rule_test": [
            {"eval_time": "30s", "alertname": "FieldhubDatabaseNoPrimary", "exp_alerts": []},
            {
                "eval_time": "2m",
                "alertname": "FieldhubDatabaseNoPrimary",
                "exp_alerts": [expected("FieldhubDatabaseNoPrimary")],
            },
            *none_of("FieldhubDatabaseNoSynchronousStandby", "FieldhubDatabaseHostDown"),
        ],
    },
}


def test_the_rules_are_valid() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERT_RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert set(RULES) == {
        "FieldhubDatabaseNoPrimary",
        "FieldhubDatabaseNoSynchronousStandby",
        "FieldhubDatabaseHostDown",
        "FieldhubDatabaseStandbyNotFollowing",
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_alert_fires_in_its_situation_and_only_there(scenario: str, tmp_path: Path) -> None:
    assert PROMTOOL is not None
    case = {"interval": "15s", "name": scenario, **SCENARIOS[scenario]}
    tests = tmp_path / "tests.yml"
    tests.write_text(json.dumps({"rule_files": [str(ALERT_RULES)], "tests": [case]}))
    run = subprocess.run(
        [PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def firing_expressions(prometheus: str) -> dict[str, list[dict[str, str]]]:
    """Each rule's expression evaluated now (without its `for`): who it names."""
    return {
        alert: [
            r["metric"]
            for r in api(prometheus, "query", query=rule["expr"], time=str(time.time()))["result"]
        ]
        for alert, rule in RULES.items()
    }


@NEEDS_PATRONI
def test_the_expressions_read_a_real_patroni_cluster() -> None:
    with patroni_database("fieldhub_alerts") as (cluster, leader, _url):
        targets = {f"127.0.0.1:{n.rest_port}": n for n in cluster.nodes}
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERT_RULES)],
            "scrape_configs": [
                {"job_name": "patroni", "static_configs": [{"targets": sorted(targets)}]}
            ],
        }
        with running_prometheus(config) as prometheus:
            wait_for(
                lambda: (
                    len(api(prometheus, "query", query='up{job="patroni"} == 1')["result"]) == 3
                ),
                timeout=30,
                what="Prometheus to scrape the three nodes",
            )
            # Healthy: one primary, one synchronous standby, two standbys replaying; every
            # expression empty, and the rules loaded as they are.
            count = 'count(patroni_primary{job="patroni"} == 1) + count(patroni_sync_standby == 1)'
            assert api(prometheus, "query", query=count)["result"][0]["value"][1] == "2"
            assert firing_expressions(prometheus) == {alert: [] for alert in RULES}
            assert len(api(prometheus, "rules")["groups"][0]["rules"]) == len(RULES)

            standby = next(n for n in cluster.nodes if n is not leader)
            cluster.kill_node(standby)
            down = f"127.0.0.1:{standby.rest_port}"
            wait_for(
                lambda: (
                    [
                        m["instance"]
                        for m in firing_expressions(prometheus)["FieldhubDatabaseHostDown"]
                    ]
                    == [down]
                ),
                timeout=30,
                what="the killed node named down",
            )
            # The other standby becomes (or stays) synchronous: that alert stays quiet.
            wait_for(
                lambda: not firing_expressions(prometheus)["FieldhubDatabaseNoSynchronousStandby"],
                timeout=60,
                what="a synchronous standby again",
            )
            assert firing_expressions(prometheus)["FieldhubDatabaseNoPrimary"] == []
            assert firing_expressions(prometheus)["FieldhubDatabaseStandbyNotFollowing"] == []
