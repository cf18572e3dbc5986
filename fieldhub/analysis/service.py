"""The analysis features as a small API for the web app and the CLI.

Every function takes an open connection (autocommit or not: each change runs in its own
`conn.transaction()`) and, for tenant data, the caller's `org_id`: an id of another
organisation is "not found", never someone else's data. Invalid input raises
`AnalysisRequestError` (a ValueError) with a message fit for the user; `NotFound` for
unknown ids."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fieldhub.analysis import alert_logic, alerts, imports, webhook_rules, webhooks, worker
from fieldhub.core.config import IPNetwork
from fieldhub.core.db import Conn, Queries, before_params

QUERIES = Queries(Path(__file__).with_name("service.sql"))


class AnalysisRequestError(ValueError):
    pass


class NotFound(AnalysisRequestError):
    pass


# -- jobs (operators; not tenant data) -----------------------------------------------------
def list_job_runs(conn: Conn, *, job: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Recent runs of every job (or one), newest first: id, job, started_at, finished_at,
    duration_ms, outcome ('running', 'ok', 'error', 'skipped'), error, details, worker."""
    return worker.recent_runs(conn, job=job, limit=max(1, min(limit, 1000)))


# -- imports -------------------------------------------------------------------------------
def create_import(
    conn: Conn,
    *,
    org_id: int,
    content: bytes,
    filename: str,
    fmt: str | None = None,
    device_id: str | None = None,
    created_by: int | None = None,
) -> dict[str, Any]:
    """Queue an uploaded file for the worker; returns the imports row (status 'queued').
    `fmt` is csv, ndjson or senml (guessed from the file name when None)."""
    try:
        return imports.create_import(
            conn,
            org_id=org_id,
            content=content,
            filename=filename,
            fmt=fmt,
            device_id=device_id,
            created_by=created_by,
        )
    except ValueError as exc:
        raise AnalysisRequestError(str(exc)) from None


def get_import(conn: Conn, org_id: int, import_id: str | uuid.UUID) -> dict[str, Any]:
    """One import with its progress: status, total_bytes, processed_bytes (percent =
    processed/total), processed_rows, rows_imported, rows_rejected, rows_per_s, errors
    ([{line, reason}]), error."""
    try:
        parsed = uuid.UUID(str(import_id))
    except ValueError:
        raise NotFound(f"no import {import_id!r}") from None
    row = imports.get_import(conn, parsed, org_id=org_id)
    if row is None:
        raise NotFound(f"no import {import_id!r}")
    return row


def list_imports(
    conn: Conn,
    org_id: int,
    *,
    limit: int = 50,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[dict[str, Any]]:
    """Newest first; `before` is the (created_at, id) of the last import of the previous page."""
    return imports.list_imports(conn, org_id=org_id, limit=limit, before=before)


# -- alerts --------------------------------------------------------------------------------
def acknowledge_alert(
    conn: Conn, org_id: int, alert_id: int, *, user_id: int | None
) -> dict[str, Any]:
    """active -> acknowledged (NOTIFY `alerts` and the webhook event alert.acknowledged)."""
    with conn.transaction():
        row = conn.execute(
            QUERIES["acknowledge_alert"], {"id": alert_id, "org_id": org_id, "user_id": user_id}
        ).fetchone()
        if row is None:
            current = conn.execute(
                QUERIES["alert_state"], {"id": alert_id, "org_id": org_id}
            ).fetchone()
            if current is None:
                raise NotFound(f"no alert {alert_id}")
            raise AnalysisRequestError(f"alert {alert_id} is {current['state']}, not active")
        alerts.record_change(conn, dict(row))
    return dict(row)


def list_alert_rules(
    conn: Conn, org_id: int, *, limit: int | None = None, after: int | None = None
) -> list[dict[str, Any]]:
    """Oldest first: every rule, or `limit` of them after the rule id `after`."""
    params = {"org_id": org_id, "limit": limit, "after": after}
    return [dict(r) for r in conn.execute(QUERIES["list_rules"], params)]


def get_alert_rule(conn: Conn, org_id: int, rule_id: int) -> dict[str, Any]:
    row = conn.execute(QUERIES["get_rule"], {"id": rule_id, "org_id": org_id}).fetchone()
    if row is None:
        raise NotFound(f"no alert rule {rule_id}")
    return dict(row)


def _checked_rule(conn: Conn, org_id: int, data: Mapping[str, Any]) -> dict[str, Any]:
    try:
        spec = alert_logic.parse_rule(data)
    except alert_logic.RuleError as exc:
        raise AnalysisRequestError(str(exc)) from None
    if spec.device_id is not None:
        found = conn.execute(
            QUERIES["device_in_org"], {"device_id": spec.device_id, "org_id": org_id}
        ).fetchone()
        if found is None:
            raise AnalysisRequestError(f"unknown device {spec.device_id!r}")
    return {**spec.as_params(), "org_id": org_id}


def create_alert_rule(conn: Conn, org_id: int, data: Mapping[str, Any]) -> dict[str, Any]:
    """data: name, metric, condition (above/below/outside), threshold_low/threshold_high,
    for_seconds, severity (info/warning/critical), device_id OR label_key+label_value,
    enabled."""
    params = _checked_rule(conn, org_id, data)
    with conn.transaction():
        row = conn.execute(QUERIES["insert_rule"], params).fetchone()
    assert row is not None
    return dict(row)


def update_alert_rule(
    conn: Conn, org_id: int, rule_id: int, data: Mapping[str, Any]
) -> dict[str, Any]:
    params = _checked_rule(conn, org_id, data)
    with conn.transaction():
        row = conn.execute(QUERIES["update_rule"], {**params, "id": rule_id}).fetchone()
    if row is None:
        raise NotFound(f"no alert rule {rule_id}")
    return dict(row)


def delete_alert_rule(conn: Conn, org_id: int, rule_id: int) -> None:
    """Deletes the rule and (cascade) its alerts."""
    with conn.transaction():
        if (
            conn.execute(QUERIES["delete_rule"], {"id": rule_id, "org_id": org_id}).fetchone()
            is None
        ):
            raise NotFound(f"no alert rule {rule_id}")


# -- webhooks ------------------------------------------------------------------------------
def get_webhook(conn: Conn, org_id: int) -> dict[str, Any] | None:
    """{org_id, url, enabled, legacy_signature} or None; the signing secret is never shown
    again after `set_webhook`. `legacy_signature`: a hook from before migration 0009 that
    still gets X-Fieldhub-Signature (docs/analysis.md, "Signing")."""
    row = conn.execute(QUERIES["get_webhook"], {"org_id": org_id}).fetchone()
    return dict(row) if row else None


def set_webhook(
    conn: Conn,
    org_id: int,
    url: str,
    *,
    allowed_networks: Sequence[IPNetwork],
    enabled: bool = True,
) -> dict[str, Any]:
    """Configure the org's webhook; returns the row plus `secret`, a new Standard Webhooks
    signing secret (`whsec_...`): show it to the user once.

    The URL must be http(s) and every address its host resolves to now must be a permitted
    target (`webhook_rules.refusal`; `allowed_networks` is FIELDHUB_WEBHOOK_ALLOWED_NETWORKS),
    else AnalysisRequestError says why. Each delivery checks again."""
    try:
        target = webhooks.check_url(url, allowed_networks)
    except webhook_rules.TargetError as exc:
        raise AnalysisRequestError(str(exc)) from None
    secret = webhook_rules.new_secret()
    with conn.transaction():
        row = conn.execute(
            QUERIES["put_webhook"],
            {"org_id": org_id, "url": target.url, "secret": secret, "enabled": enabled},
        ).fetchone()
    assert row is not None
    return {**dict(row), "secret": secret}


def delete_webhook(conn: Conn, org_id: int) -> None:
    with conn.transaction():
        conn.execute(QUERIES["delete_webhook"], {"org_id": org_id})


def list_webhook_deliveries(
    conn: Conn, org_id: int, *, limit: int = 100, before: tuple[datetime, int] | None = None
) -> list[dict[str, Any]]:
    """The delivery log, newest first: event, status (pending/delivered/failed),
    attempt_count, attempts ([{at, status, error, ms}]), last_error, next_attempt_at. `before`
    is the (created_at, id) of the last delivery of the previous page."""
    params = {
        "org_id": org_id,
        "limit": limit,
        **before_params(before),
    }
    return [dict(r) for r in conn.execute(QUERIES["list_deliveries"], params)]
