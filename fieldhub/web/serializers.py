"""Shapes shared by the pages, the API and the live stream: commands, alert rules from forms,
import progress, and the organisation an operator acts in.

The analysis service (fieldhub/analysis/service.py) acts in exactly one organisation. Users of an
organisation act in their own; an operator acts in the organisation of the object named in
the URL, or in the one they pick by name (their own when they pick none)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fieldhub.core.db import Conn
from fieldhub.web import data
from fieldhub.web.api_shapes import AlertRule, Command, Import

IMPORT_FORMATS = ("csv", "ndjson", "senml")
FINAL_IMPORT_STATES = ("done", "failed")


def command_json(command: Mapping[str, Any]) -> Command:
    """A command as the API, the device page's JSON and its live stream show it (the OpenAPI
    document's Command is generated from the same TypedDict); with its timeline when the
    row has one (a single command read by id)."""
    result: Command = {
        "id": command["id"],
        "device_id": command["device_id"],
        "name": command["name"],
        "params": command["params"],
        "status": command["status"],
        "created_at": command["created_at"],
        "updated_at": command["updated_at"],
        "expires_at": command["expires_at"],
        "result": command.get("result"),
        "error": command.get("error"),
    }
    if "timeline" in command:
        result["timeline"] = [
            {"status": e["status"], "at": e["at"], "detail": e.get("detail")}
            for e in command["timeline"]
        ]
    return result


class UnknownOrg(LookupError):
    """An operator named an organisation that does not exist."""


def acting_org(conn: Conn, user: Mapping[str, Any], chosen: str | None) -> dict[str, Any]:
    """The organisation a page or request without an object in its URL acts in: the user's
    own, or for an operator the one named `chosen` (by handle)."""
    scope = None if user["role"] == "operator" else int(user["org_id"])
    orgs = data.list_orgs(conn, scope)
    if scope is not None:
        return next(o for o in orgs if o["id"] == scope)
    wanted = (chosen or "").strip() or str(user["org"])
    for org in orgs:
        if org["name"] == wanted:
            return org
    raise UnknownOrg(wanted)


def sentence(message: object) -> str:
    """A service error as a flash message: capitalised (ids and "URL" kept) with a stop."""
    text = str(message).strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def parse_import_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def rule_from_form(form: Mapping[str, str]) -> dict[str, Any]:
    """A rule form (target: one device or a label) as the service's rule data."""
    target = form.get("target", "device")
    by_device = target == "device"
    return {
        "name": form.get("name", ""),
        "metric": form.get("metric", ""),
        "condition": form.get("condition", ""),
        "threshold_low": form.get("threshold_low", ""),
        "threshold_high": form.get("threshold_high", ""),
        "for_seconds": form.get("for_seconds", "") or 0,
        "severity": form.get("severity", ""),
        "device_id": form.get("device_id", "").strip() if by_device else None,
        "label_key": None if by_device else form.get("label_key", "").strip(),
        "label_value": None if by_device else form.get("label_value", "").strip(),
        "enabled": form.get("enabled") in ("on", "true", "1"),
    }


def rule_json(row: Mapping[str, Any]) -> AlertRule:
    """An alert rule as the API shows it (fieldhub/web/api_shapes.py's AlertRule)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "metric": row["metric"],
        "device_id": row["device_id"],
        "label_key": row["label_key"],
        "label_value": row["label_value"],
        "condition": row["condition"],
        "threshold_low": row["threshold_low"],
        "threshold_high": row["threshold_high"],
        "for_seconds": row["for_seconds"],
        "severity": row["severity"],
        "enabled": row["enabled"],
        "created_at": row["created_at"],
    }


def import_json(row: Mapping[str, Any]) -> Import:
    """An import with its progress: percent of the file read, rows per second, bad lines."""
    total = int(row.get("total_bytes") or 0)
    processed = int(row.get("processed_bytes") or 0)
    if row["status"] == "done" or total == 0:
        percent = 100.0 if row["status"] == "done" else 0.0
    else:
        percent = round(min(100.0, 100.0 * processed / total), 1)
    return {
        "id": row["id"],
        "status": row["status"],
        "filename": row["filename"],
        "format": row["format"],
        "device_id": row.get("device_id"),
        "total_bytes": total,
        "processed_bytes": processed,
        "percent": percent,
        "processed_rows": int(row.get("processed_rows") or 0),
        "rows_imported": int(row.get("rows_imported") or 0),
        "rows_rejected": int(row.get("rows_rejected") or 0),
        "rows_per_s": float(row.get("rows_per_s") or 0.0),
        "errors": [
            {"line": int(e["line"]), "reason": str(e["reason"])} for e in row.get("errors") or []
        ],
        "error": row.get("error"),
        "created_at": row["created_at"],
        "started_at": row.get("started_at"),
        "finished_at": row.get("finished_at"),
    }
