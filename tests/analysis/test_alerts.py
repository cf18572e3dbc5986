"""Alerts: fire once, stay one alert, clear, and reach a local webhook receiver (real DB)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from fieldhub.analysis import alert_logic, alerts, service
from tests.analysis.conftest import Conn
from tests.support import wait_for

pytestmark = pytest.mark.integration


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that fails the first `fail_first` requests."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=1)
    yield r
    r.close()


def add_reading(db: Conn, device_id: str, value: float, seconds_ago: float = 0) -> None:
    db.execute(
        "INSERT INTO readings (time, device_id, metric, value)"
        " VALUES (now() - make_interval(secs => %s), %s, 'temp', %s)",
        (seconds_ago, device_id, value),
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
    receiver: Receiver,
) -> None:
    make_devices("boiler-1", "boiler-2", labels={"kind": "boiler"})
    make_devices("other")
    hook = service.set_webhook(db, org_id, receiver.url)
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
    assert alerts.deliver_due(db, backoff_base_s=0.2) == {"delivered": 0, "failed_attempts": 1}
    wait_for(
        lambda: alerts.deliver_due(db, backoff_base_s=0.2)["delivered"] == 1,
        timeout=10,
        what="the retried webhook delivery",
    )
    assert len(receiver.requests) == 2
    body = receiver.requests[1]["body"]
    headers = receiver.requests[1]["headers"]
    expected = hmac.new(hook["secret"].encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Fieldhub-Signature"] == f"sha256={expected}"
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
    assert len(service.list_alerts(db, org_id)) == 2
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
