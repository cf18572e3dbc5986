"""Alert evaluation and webhook delivery.

Evaluation is stateless between passes: the rule, the latest reading, the reading that was
current `for_seconds` ago and the readings since then decide everything (analysis.alert_logic),
so a restarted or second worker reaches the same conclusion. Every state change NOTIFYs
`alerts` (`<org_id> <alert_id> <state>`) and, if the org configured a webhook, queues a
delivery in the same transaction: an alert is never visible without its delivery queued.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from fieldhub.analysis import alert_logic
from fieldhub.analysis.worker import Conn, JobContext
from fieldhub.core.db import Queries

QUERIES = Queries(Path(__file__).with_name("alerts.sql"))
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_MAX_ATTEMPTS = 8
WEBHOOK_BACKOFF_BASE_S = 10.0
SIGNATURE_HEADER = "X-Fieldhub-Signature"

log = logging.getLogger(__name__)


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


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_webhook(url: str, secret: str, delivery_id: int, event: str, body: bytes) -> int:
    """POST one delivery; returns the HTTP status (raises OSError on network failure)."""
    request = urllib.request.Request(  # noqa: S310 - the org's own configured http(s) URL
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "fieldhub-webhooks/1",
            "X-Fieldhub-Event": event,
            "X-Fieldhub-Delivery": str(delivery_id),
            SIGNATURE_HEADER: sign(secret, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def deliver_due(
    conn: Conn,
    *,
    backoff_base_s: float = WEBHOOK_BACKOFF_BASE_S,
    max_attempts: int = WEBHOOK_MAX_ATTEMPTS,
    limit: int = 50,
) -> dict[str, int]:
    """Attempt every delivery that is due; failures are retried later with backoff."""
    delivered = failed = 0
    for delivery in conn.execute(QUERIES["due_deliveries"], {"limit": limit}).fetchall():
        body = orjson.dumps(delivery["payload"])
        started = time.monotonic()
        error: str | None = None
        status: int | None = None
        try:
            status = post_webhook(
                delivery["url"], delivery["secret"], delivery["id"], delivery["event"], body
            )
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        attempt = {
            "at": dt.datetime.now(dt.UTC).isoformat(),
            "status": status,
            "error": error,
            "ms": round((time.monotonic() - started) * 1000),
        }
        with conn.transaction():
            if error is None:
                conn.execute(
                    QUERIES["delivery_succeeded"],
                    {"id": delivery["id"], "attempt": Jsonb([attempt])},
                )
                delivered += 1
            else:
                retry_in = alert_logic.backoff_s(
                    delivery["attempt_count"] + 1, base_s=backoff_base_s
                )
                conn.execute(
                    QUERIES["delivery_failed"],
                    {
                        "id": delivery["id"],
                        "attempt": Jsonb([attempt]),
                        "error": error,
                        "retry_in_s": retry_in,
                        "max_attempts": max_attempts,
                    },
                )
                failed += 1
                log.warning(
                    "webhook delivery %s to org %s failed (%s); retry in %.0f s",
                    delivery["id"],
                    delivery["org_id"],
                    error,
                    retry_in,
                )
    return {"delivered": delivered, "failed_attempts": failed}


def run_delivery(context: JobContext) -> dict[str, Any]:
    return dict(deliver_due(context.conn))
