"""Alert evaluation, and queueing each change for the organisation's webhook.

Evaluation is stateless between passes: the rule, the latest reading, the reading that was
current `for_seconds` ago and the readings since then decide everything (analysis.alert_logic),
so a restarted or second worker reaches the same conclusion. Every state change NOTIFYs
`alerts` (`<org_id> <alert_id> <state>`) and, if the org configured a webhook, queues a
delivery in the same transaction: an alert is never visible without its delivery queued.
The `webhooks` job (fieldhub.analysis.webhooks) sends them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from fieldhub.analysis import alert_logic
from fieldhub.analysis.worker import JobContext
from fieldhub.core.db import Conn, Queries

QUERIES = Queries(Path(__file__).with_name("alerts.sql"))


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def record_change(conn: Conn, alert: dict[str, Any]) -> None:
    """NOTIFY and queue the webhook for an alert that just changed state (in the caller's
    transaction, so both happen exactly when the change commits)."""
    conn.execute(
        QUERIES["notify_alert"],
        {"org_id": alert["org_id"], "id": alert["id"], "state": alert["state"]},
    )
    event = conn.execute(QUERIES["alert_event"], {"id": alert["id"]}).fetchone()
    if event is None:
        return
    payload = orjson.loads(
        orjson.dumps(
            {"event": f"alert.{alert['state']}", "alert": dict(event)}, default=_json_default
        )
    )
    conn.execute(
        QUERIES["enqueue_delivery"],
        {
            "org_id": alert["org_id"],
            "alert_id": alert["id"],
            "event": f"alert.{alert['state']}",
            "payload": Jsonb(payload),
        },
    )


def evaluate(conn: Conn) -> dict[str, int]:
    """One evaluation pass over every enabled rule; returns counts of what changed."""
    fired = cleared = 0
    with conn.transaction():
        for alert in conn.execute(QUERIES["clear_untargeted"]).fetchall():
            record_change(conn, dict(alert))
            cleared += 1
    targets = conn.execute(QUERIES["rule_targets"]).fetchall()
    for target in targets:
        low, high, condition = (
            target["threshold_low"],
            target["threshold_high"],
            target["condition"],
        )
        latest_breaches = alert_logic.breaches(condition, target["latest_value"], low, high)
        sustained = (
            target["anchor_time"] is not None
            and alert_logic.breaches(condition, target["anchor_value"], low, high)
            and bool(target["all_breach_since_anchor"])
        )
        action = alert_logic.decide(
            open_alert=target["open_alert_id"] is not None,
            sustained=sustained,
            latest_breaches=latest_breaches,
        )
        if action == "none":
            continue
        with conn.transaction():
            if action == "fire":
                row = conn.execute(
                    QUERIES["fire_alert"],
                    {
                        "rule_id": target["rule_id"],
                        "org_id": target["org_id"],
                        "device_id": target["device_id"],
                        "value": target["latest_value"],
                        "message": f"{target['name']}: {target['device_id']} "
                        + alert_logic.describe(
                            condition, target["metric"], target["latest_value"], low, high
                        ),
                    },
                ).fetchone()
                if row is not None:
                    fired += 1
            else:
                row = conn.execute(
                    QUERIES["clear_alert"],
                    {"id": target["open_alert_id"], "value": target["latest_value"]},
                ).fetchone()
                if row is not None:
                    cleared += 1
            if row is not None:
                record_change(conn, dict(row))
    return {"rules_x_devices": len(targets), "fired": fired, "cleared": cleared}


def run_evaluation(context: JobContext) -> dict[str, Any]:
    return dict(evaluate(context.conn))
