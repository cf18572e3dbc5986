"""Alerts: fire once, stay one alert, clear, and reach a local webhook receiver (real DB)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from fieldhub.analysis import alert_logic, alerts, service, webhook_rules, webhooks
from fieldhub.core.db import Conn
from tests.analysis.conftest import key_of
from tests.analysis.receivers import HTTPReceiver
from tests.support import wait_for

pytestmark = pytest.mark.integration
# The receiver runs on loopback: allowed here as an operator would allow a network.
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture
def receiver() -> Iterator[HTTPReceiver]:
    r = HTTPReceiver(fail_first=1)
    yield r
    r.close()


def add_reading(db: Conn, device_id: str, value: float, seconds_ago: float = 0) -> None:
    db.execute(
        "INSERT INTO readings (time, device_key, metric, value)"
        " VALUES (now() - make_interval(secs => %s), %s, 'temp', %s)",
        (seconds_ago, key_of(db, device_id), value),
    )


def open_alerts(db: Conn) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT id, device_id, state FROM alerts WHERE state <> 'cleared' ORDER BY id"
    ).fetchall()


def test_alert_fires_once_stays_one_clears_and_is_delivered_with_a_retry(
    db: Conn,
    database_url: str,
    org_id: int,
    make_devices: Callable[..., list[str]],
    receiver: HTTPReceiver,
) -> None:
    make_devices("boiler-1", "boiler-2", labels={"kind": "boiler"})
    make_devices("other")
    hook = service.set_webhook(db, org_id, receiver.url(), allowed_networks=LOOPBACK)
    rule = service.create_alert_rule(
        db,
        org_id,
        {
            "name": "too hot",
            "metric": "temp",
            "condition": "above",
            "threshold_high": 80,
            "severity": "critical",
            "label_key": "kind",
            "label_value": "boiler",
        },
    )
    add_reading(db, "boiler-1", 70, seconds_ago=20)
    add_reading(db, "boiler-2", 60, seconds_ago=20)
    add_reading(db, "other", 99, seconds_ago=20)  # no label: not covered by the rule
    assert alerts.evaluate(db)["fired"] == 0

    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN alerts")
        add_reading(db, "boiler-1", 85, seconds_ago=10)
        assert alerts.evaluate(db)["fired"] == 1
        notes = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    [alert] = open_alerts(db)
    assert alert["device_id"] == "boiler-1"
    assert notes == [f"{org_id} {alert['id']} active"]

    # The condition lasts: more breaching readings, more passes, still one alert.
    for seconds_ago in (8, 6, 4):
        add_reading(db, "boiler-1", 90 + seconds_ago, seconds_ago=seconds_ago)
        assert alerts.evaluate(db) == {"rules_x_devices": 2, "fired": 0, "cleared": 0}
    assert open_alerts(db) == [alert]

    # The first delivery attempt gets a 503, the retry (after the backoff) a 204.
    limits = webhooks.DeliveryLimits(backoff_base_s=0.2)
    first = webhooks.deliver_due(db, allowed_networks=LOOPBACK, limits=limits)
    assert (first["delivered"], first["failed_attempts"], first["orgs"]) == (0, 1, 1)
    wait_for(
        lambda: webhooks.deliver_due(db, allowed_networks=LOOPBACK, limits=limits)["delivered"],
        timeout=10,
        what="the retried webhook delivery",
    )
    assert len(receiver.requests) == 2
    body = receiver.requests[1].body
    headers = receiver.requests[1].headers
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    key = webhook_rules.secret_key(hook["secret"])
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    # Both attempts are one message: the same id.
    assert receiver.requests[0].headers["webhook-id"] == headers["webhook-id"]
    event = json.loads(body)
    assert event["event"] == "alert.active"
    assert event["alert"]["id"] == alert["id"]
    assert event["alert"]["severity"] == "critical"
    assert event["alert"]["rule_id"] == rule["id"]
    [log] = service.list_webhook_deliveries(db, org_id)
    assert log["status"] == "delivered"
    assert [a["status"] for a in log["attempts"]] == [503, 204]

    # Acknowledged, then back to normal: cleared, and a new breach is a new alert.
    service.acknowledge_alert(db, org_id, alert["id"], user_id=None)
    assert open_alerts(db)[0]["state"] == "acknowledged"
    add_reading(db, "boiler-1", 50, seconds_ago=1)
    assert alerts.evaluate(db)["cleared"] == 1
    assert open_alerts(db) == []
    add_reading(db, "boiler-1", 81)
    assert alerts.evaluate(db)["fired"] == 1
    assert len(open_alerts(db)) == 1
    counted = db.execute("SELECT count(*) AS n FROM alerts WHERE org_id = %s", (org_id,))
    assert counted.fetchone() == {"n": 2}
    events = [d["event"] for d in service.list_webhook_deliveries(db, org_id)]
    assert sorted(events) == sorted(
        ["alert.active", "alert.acknowledged", "alert.cleared", "alert.active"]
    )


def test_duration_must_hold_before_firing(
    db: Conn, org_id: int, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("tank")
    service.create_alert_rule(
        db,
        org_id,
        {
            "name": "level out of range",
            "metric": "temp",
            "condition": "outside",
            "threshold_low": 10,
            "threshold_high": 20,
            "for_seconds": 60,
            "device_id": "tank",
        },
    )
    add_reading(db, "tank", 15, seconds_ago=100)
    add_reading(db, "tank", 25, seconds_ago=40)  # breaching for 40 s only
    add_reading(db, "tank", 5, seconds_ago=1)
    assert alerts.evaluate(db)["fired"] == 0
    db.execute("DELETE FROM readings")
    add_reading(db, "tank", 25, seconds_ago=90)  # breaching since 90 s, on both sides
    add_reading(db, "tank", 5, seconds_ago=30)
    add_reading(db, "tank", 30, seconds_ago=1)
    assert alerts.evaluate(db)["fired"] == 1


def test_rules_are_validated_and_scoped_to_their_org(
    db: Conn, org_id: int, make_devices: Callable[..., list[str]]
) -> None:
    from fieldhub.core import registry

    other = registry.create_org(db, "someone-else")
    registry.create_device(db, "theirs", org="someone-else", password_hash="x", secret="x")
    with pytest.raises(service.AnalysisRequestError, match="unknown device"):
        service.create_alert_rule(
            db,
            org_id,
            {
                "name": "n",
                "metric": "m",
                "condition": "below",
                "threshold_low": 1,
                "device_id": "theirs",
            },
        )
    with pytest.raises(service.AnalysisRequestError, match="threshold_high"):
        service.create_alert_rule(
            db, org_id, {"name": "n", "metric": "m", "condition": "above", "device_id": "x"}
        )
    make_devices("mine")
    rule = service.create_alert_rule(
        db,
        org_id,
        {"name": "n", "metric": "m", "condition": "below", "threshold_low": 1, "device_id": "mine"},
    )
    with pytest.raises(service.NotFound):
        service.get_alert_rule(db, int(other["id"]), rule["id"])
    with pytest.raises(service.NotFound):
        service.delete_alert_rule(db, int(other["id"]), rule["id"])
    assert service.list_alert_rules(db, int(other["id"])) == []
    service.delete_alert_rule(db, org_id, rule["id"])
    assert service.list_alert_rules(db, org_id) == []


@pytest.mark.parametrize(
    ("condition", "value", "low", "high", "expected"),
    [
        ("above", 10.0, None, 10.0, False),
        ("above", 10.1, None, 10.0, True),
        ("below", 0.9, 1.0, None, True),
        ("below", 1.0, 1.0, None, False),
        ("outside", 5.0, 1.0, 9.0, False),
        ("outside", 0.0, 1.0, 9.0, True),
        ("outside", 9.5, 1.0, 9.0, True),
    ],
)
def test_breach_rule(
    condition: str, value: float, low: float | None, high: float | None, expected: bool
) -> None:
    assert alert_logic.breaches(condition, value, low, high) is expected


def test_state_machine_and_backoff() -> None:
    assert alert_logic.decide(open_alert=False, sustained=True, latest_breaches=True) == "fire"
    assert alert_logic.decide(open_alert=False, sustained=False, latest_breaches=True) == "none"
    assert alert_logic.decide(open_alert=True, sustained=True, latest_breaches=True) == "none"
    assert alert_logic.decide(open_alert=True, sustained=False, latest_breaches=False) == "clear"
    assert [alert_logic.backoff_s(n, base_s=10) for n in (1, 2, 3)] == [10, 20, 40]
    assert alert_logic.backoff_s(30, base_s=10) == 3600
