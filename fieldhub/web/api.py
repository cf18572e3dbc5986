"""The JSON API, /api/v1: bearer tokens, tenant scope, one error format.

Every error is `{"error": {"code": ..., "message": ...}}` with the HTTP status; the OpenAPI
document (fieldhub/web/openapi.py) describes exactly these routes and is checked against them by
schemathesis in the tests.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from flask import Blueprint, Flask, abort, current_app, g, jsonify, request

from fieldhub.analysis import service as analysis
from fieldhub.core import command_requests, registry, twins, users
from fieldhub.core.command_states import STATUSES
from fieldhub.core.decode import MAX_UNIT_LENGTH
from fieldhub.web import data, db, history, serializers
from fieldhub.web.auth import ROLE_RANK
from fieldhub.web.errors import api_error
from fieldhub.web.openapi import document

bp = Blueprint("api", __name__, url_prefix="/api/v1")

RAW_LIMIT = 10000
COMMAND_STATUSES = STATUSES


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest) -> Any:
    return api_error(exc.status, exc.message)


@bp.errorhandler(psycopg.DataError)
def _data_error(exc: psycopg.DataError) -> Any:
    # Values PostgreSQL cannot represent (timestamps out of range, ...): the caller's input.
    return api_error(400, "a parameter is out of the range the database accepts")


@bp.before_request
def _authenticate() -> Any:
    if request.endpoint == "api.openapi":
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        response = api_error(401, "send an API token as 'Authorization: Bearer <token>'")
        response.headers["WWW-Authenticate"] = 'Bearer realm="fieldhub"'
        return response
    try:
        user = users.api_token_user(db.write(), token.strip())
    except users.TokenExpired as exc:
        return _invalid_token(f"{exc}; create a new one")
    if user is None:
        return _invalid_token("that API token is not valid (revoked or mistyped)")
    g.api_user = user
    return None


def _invalid_token(message: str) -> Any:
    response = api_error(401, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="fieldhub", error="invalid_token"'
    return response


def _org_id() -> int | None:
    user = g.api_user
    return None if user["role"] == "operator" else int(user["org_id"])


def _require(minimum: str) -> None:
    if ROLE_RANK[g.api_user["role"]] < ROLE_RANK[minimum]:
        raise BadRequest(f"your role ({g.api_user['role']}) cannot do this", 403)


def _text_arg(name: str, *, max_len: int = 256) -> str | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if "\x00" in value or len(value) > max_len:
        raise BadRequest(f"{name} must be at most {max_len} characters, without NUL")
    return value


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def _device(device_id: str) -> dict[str, Any]:
    if not registry.DEVICE_ID_PATTERN.fullmatch(device_id):
        abort(404)
    try:
        return data.get_device(db.read(), _org_id(), device_id)
    except data.NotFound:
        abort(404)


def _device_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "device_id": row["device_id"],
        "org": row["org"],
        "display_name": row["display_name"],
        "labels": row["labels"],
        "enabled": row["enabled"],
        "online": bool(row["online"]),
        "last_seen": row["last_seen"],
        "created_at": row["created_at"],
        "gateway_id": row.get("gateway_id"),
    }


def _latest_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # `unit` is "" unless the device sent one (SenML): one entry per metric and unit.
    return [
        {"metric": r["metric"], "unit": r["unit"], "time": r["time"], "value": r["value"]}
        for r in rows
    ]


def _command_json(command: dict[str, Any]) -> dict[str, Any]:
    result = {
        key: command.get(key)
        for key in (
            "id",
            "device_id",
            "name",
            "params",
            "status",
            "created_at",
            "updated_at",
            "expires_at",
            "result",
            "error",
        )
    }
    if "timeline" in command:
        result["timeline"] = [
            {"status": e["status"], "at": e["at"], "detail": e.get("detail")}
            for e in command["timeline"]
        ]
    return result


# -- routes ---------------------------------------------------------------------------------
@bp.route("/openapi.json")
def openapi() -> Any:
    return jsonify(document(request.host_url.rstrip("/") + "/api/v1"))


@bp.route("/devices")
def list_devices() -> Any:
    status = _text_arg("status")
    if status not in (None, "online", "offline"):
        raise BadRequest("status must be online or offline")
    try:
        labels = data.parse_label_filter(_text_arg("label", max_len=4096))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    limit = _int_arg("limit", 100, 1, 1000)
    offset = _int_arg("offset", 0, 0, 10_000_000)
    conn = db.read()
    rows, total = data.list_devices(
        conn,
        _org_id(),
        data.DeviceFilter(
            _text_arg("q"), labels, {"online": True, "offline": False}.get(status or "")
        ),
        limit=limit,
        offset=offset,
    )
    return jsonify(
        {
            "devices": [_device_json(r) for r in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }
    )


@bp.route("/devices/<device_id>")
def get_device(device_id: str) -> Any:
    row = _device(device_id)
    key = row["device_key"]
    latest = data.latest_values(db.read(), [key]).get(key, [])
    return jsonify({**_device_json(row), "latest": _latest_json(latest)})


@bp.route("/devices/<device_id>/latest")
def latest(device_id: str) -> Any:
    key = _device(device_id)["device_key"]
    rows = data.latest_values(db.read(), [key]).get(key, [])
    return jsonify({"device_id": device_id, "values": _latest_json(rows)})


def _time_arg(name: str) -> datetime | None:
    raw = _text_arg(name, max_len=64)
    if raw is None:
        return None
    try:
        value = history.parse_time(raw, name)
    except history.RangeError as exc:
        raise BadRequest(str(exc)) from None
    if not 1970 <= value.astimezone(UTC).year <= 9000:
        raise BadRequest(f"{name} must be between the years 1970 and 9000")
    return value


@bp.route("/devices/<device_id>/telemetry")
def telemetry(device_id: str) -> Any:
    key = _device(device_id)["device_key"]
    metric = _text_arg("metric")
    if metric is None:
        raise BadRequest("metric is required")
    # One series per unit: SenML readings of one metric in different units are not mixed.
    unit = _text_arg("unit", max_len=MAX_UNIT_LENGTH) or ""
    now = datetime.now(UTC)
    end = _time_arg("end") or now
    start = _time_arg("start") or end - timedelta(hours=1)
    if end <= start:
        raise BadRequest("end must be after start")
    if end - start > history.MAX_CUSTOM_SPAN:
        raise BadRequest(f"a range spans at most {history.MAX_CUSTOM_SPAN.days} days")
    span = history.TimeRange(start, end)
    aggregate = _text_arg("agg") or "avg"
    if aggregate not in history.AGGREGATES:
        raise BadRequest(f"agg must be one of {', '.join(history.AGGREGATES)}")
    bucket_s = _int_arg("bucket", 0, 1, 366 * 86400) if request.args.get("bucket") else 0
    conn = db.read()
    if bucket_s == 0:
        points = conn.execute(
            db.QUERIES["readings_raw"],
            {
                "device_key": key,
                "metric": metric,
                "unit": unit,
                "start": start,
                "end": end,
                "limit": RAW_LIMIT + 1,
            },
        ).fetchall()
        truncated = len(points) > RAW_LIMIT
        return jsonify(
            {
                "device_id": device_id,
                "metric": metric,
                "unit": unit,
                "start": start,
                "end": end,
                "bucket": None,
                "aggregate": None,
                "source": "raw",
                "truncated": truncated,
                "points": [{"time": p["time"], "value": p["value"]} for p in points[:RAW_LIMIT]],
            }
        )
    try:
        history.check_bucket_count(span.span, bucket_s)
        resolution = history.bucket_resolution(bucket_s)
    except history.RangeError as exc:
        raise BadRequest(str(exc)) from None
    source, rows = data.buckets(conn, key, metric, unit, span, resolution)
    return jsonify(
        {
            "device_id": device_id,
            "metric": metric,
            "unit": unit,
            "start": start,
            "end": end,
            "bucket": bucket_s,
            "aggregate": aggregate,
            "source": source,
            "truncated": False,
            "points": [{"time": r["bucket"], "value": _number(r[aggregate])} for r in rows],
        }
    )


def _number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    number = float(value)
    return number if math.isfinite(number) else None


@bp.route("/devices/<device_id>/commands", methods=["GET"])
def device_commands(device_id: str) -> Any:
    _device(device_id)
    status = _text_arg("status")
    if status is not None and status not in COMMAND_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(COMMAND_STATUSES)}")
    limit = _int_arg("limit", 50, 1, 500)
    try:
        commands = command_requests.list_commands(
            db.read(), device_id=device_id, status=status, org_id=_org_id(), limit=limit
        )
    except command_requests.CommandRequestError as exc:
        raise BadRequest(str(exc)) from None
    return jsonify({"commands": [_command_json(c) for c in commands]})


@bp.route("/devices/<device_id>/commands", methods=["POST"])
def send_command(device_id: str) -> Any:
    _device(device_id)
    _require("member")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object like {"name": "reboot", "params": {}}')
    name = body.get("name")
    if not isinstance(name, str):
        raise BadRequest("name must be a string", 422)
    params = body.get("params", {})
    ttl = body.get("ttl_s", 300)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise BadRequest("ttl_s must be a number of seconds", 422)
    try:
        command = command_requests.send_command(
            db.write(),
            device_id=device_id,
            name=name,
            params=params,
            ttl_s=ttl,
            created_by=g.api_user["id"],
            org_id=_org_id(),
        )
    except command_requests.NotFound:
        abort(404)
    except command_requests.CommandRequestError as exc:
        raise BadRequest(str(exc), 422) from None
    return jsonify(_command_json(command)), 201


# -- twin -------------------------------------------------------------------------------------
def _twin_response(twin: twins.Twin) -> Any:
    response = jsonify(twin.as_json())
    # The desired version is what If-Match names: `PATCH ... If-Match: "3"`.
    response.headers["ETag"] = f'"{twin.desired_version}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _if_match() -> int | None:
    """The desired version of an If-Match header: `"3"` (or W/"3", or 3); None without one."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    tag = raw.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or len(tag) > 18:
        raise BadRequest('If-Match must name a desired version, like If-Match: "3"')
    return int(tag)


@bp.route("/devices/<device_id>/twin", methods=["GET"])
def get_twin(device_id: str) -> Any:
    _device(device_id)
    try:
        return _twin_response(twins.get_twin(db.read(), device_id, org_id=_org_id()))
    except twins.NotFound:
        abort(404)


@bp.route("/devices/<device_id>/twin", methods=["PATCH"])
def patch_twin(device_id: str) -> Any:
    _device(device_id)
    _require("member")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or set(body) != {"desired"}:
        raise BadRequest(
            'send a JSON object like {"desired": {"interval": 30, "led": null}} '
            "(a JSON merge patch of the desired state)"
        )
    user = g.api_user
    try:
        twin = twins.update_desired(
            db.write(),
            device_id,
            body["desired"],
            actor=twins.Actor(str(user["email"]), "api", int(user["id"])),
            if_version=_if_match(),
            org_id=_org_id(),
        )
    except twins.NotFound:
        abort(404)
    except twins.VersionMismatch as exc:
        return api_error(412, str(exc), current_version=exc.current)
    except twins.TwinRequestError as exc:
        raise BadRequest(str(exc), 422) from None
    return _twin_response(twin)


@bp.route("/devices/<device_id>/twin/history")
def twin_history(device_id: str) -> Any:
    _device(device_id)
    limit = _int_arg("limit", 50, 1, twins.MAX_HISTORY)
    changes = twins.desired_history(db.read(), device_id, org_id=_org_id(), limit=limit)
    return jsonify({"changes": changes})


# -- gateways (admins of the organisation) ----------------------------------------------------
@bp.route("/devices/<device_id>/gateway", methods=["PUT"])
def attach_gateway(device_id: str) -> Any:
    _device(device_id)
    _require("admin")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("gateway_id"), str):
        raise BadRequest('send a JSON object like {"gateway_id": "gateway-7"}')
    try:
        registry.attach_gateway(db.write(), device_id, body["gateway_id"], org_id=_org_id())
    except registry.NotFound:
        raise BadRequest(f"there is no device {body['gateway_id']!r}", 422) from None
    except registry.RegistryError as exc:
        raise BadRequest(str(exc), 422) from None
    return jsonify(_device_json(data.get_device(db.write(), _org_id(), device_id)))


@bp.route("/devices/<device_id>/gateway", methods=["DELETE"])
def detach_gateway(device_id: str) -> Any:
    _device(device_id)
    _require("admin")
    registry.detach_gateway(db.write(), device_id, org_id=_org_id())
    return "", 204


@bp.route("/commands/<command_id>")
def get_command(command_id: str) -> Any:
    if "\x00" in command_id:
        abort(404)
    try:
        command = command_requests.get_command(db.read(), command_id, org_id=_org_id())
    except command_requests.NotFound:
        abort(404)
    return jsonify(_command_json(command))


@bp.route("/commands/<command_id>/cancel", methods=["POST"])
def cancel_command(command_id: str) -> Any:
    if "\x00" in command_id:
        abort(404)
    try:
        command_requests.get_command(db.read(), command_id, org_id=_org_id())
    except command_requests.NotFound:
        abort(404)
    _require("member")
    try:
        command = command_requests.cancel_command(db.write(), command_id, org_id=_org_id())
    except command_requests.NotFound:
        abort(404)
    except command_requests.CommandRequestError as exc:
        raise BadRequest(str(exc), 409) from None
    return jsonify(_command_json(command))


@bp.route("/alerts")
def alerts() -> Any:
    state = _text_arg("state")
    if state not in (None, "active", "acknowledged", "cleared"):
        raise BadRequest("state must be active, acknowledged or cleared")
    device_id = _text_arg("device_id")
    if device_id is not None:
        _device(device_id)
    limit = _int_arg("limit", 100, 1, 1000)
    rows = data.list_alerts(db.read(), _org_id(), state=state, device_id=device_id, limit=limit)
    return jsonify({"alerts": rows})


@bp.route("/alerts/<int:alert_id>")
def get_alert(alert_id: int) -> Any:
    try:
        return jsonify(data.get_alert(db.read(), _org_id(), alert_id))
    except data.NotFound:
        abort(404)


@bp.route("/alerts/<int:alert_id>/acknowledge", methods=["POST"])
def acknowledge_alert(alert_id: int) -> Any:
    conn = db.write()
    try:
        org_id = data.owner_org(conn, "alert", alert_id, _org_id())
    except data.NotFound:
        abort(404)
    _require("member")
    try:
        analysis.acknowledge_alert(conn, org_id, alert_id, user_id=g.api_user["id"])
    except analysis.NotFound:
        abort(404)
    except analysis.AnalysisRequestError as exc:
        raise BadRequest(str(exc), 409) from None
    return jsonify(data.get_alert(conn, org_id, alert_id))


# -- alert rules (admins of their organisation; operators name another with `org`) ------------
def _acting_org(chosen: str | None) -> int:
    try:
        return int(serializers.acting_org(db.write(), g.api_user, chosen)["id"])
    except serializers.UnknownOrg as exc:
        raise BadRequest(f"there is no organisation {exc}", 404) from None


def _rule_org(rule_id: int) -> int:
    try:
        return data.owner_org(db.write(), "rule", rule_id, _org_id())
    except data.NotFound:
        abort(404)


def _rule_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest(
            'send a JSON object like {"name": "Too hot", "metric": "temperature", '
            '"condition": "above", "threshold_high": 40, "device_id": "pump-1"}'
        )
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise BadRequest("enabled must be true or false", 422)
    for key in ("name", "metric", "device_id", "label_key", "label_value", "condition"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise BadRequest(f"{key} must be a string", 422)
    return body


@bp.route("/alert-rules", methods=["GET"])
def list_alert_rules() -> Any:
    _require("admin")
    org_id = _acting_org(_text_arg("org"))
    rules = analysis.list_alert_rules(db.write(), org_id)
    return jsonify({"rules": [serializers.rule_json(r) for r in rules]})


@bp.route("/alert-rules", methods=["POST"])
def create_alert_rule() -> Any:
    _require("admin")
    body = _rule_body()
    chosen = body.get("org")
    org_id = _acting_org(chosen if isinstance(chosen, str) else None)
    try:
        rule = analysis.create_alert_rule(db.write(), org_id, body)
    except analysis.AnalysisRequestError as exc:
        raise BadRequest(str(exc), 422) from None
    return jsonify(serializers.rule_json(rule)), 201


@bp.route("/alert-rules/<int:rule_id>", methods=["GET"])
def get_alert_rule(rule_id: int) -> Any:
    org_id = _rule_org(rule_id)
    _require("admin")
    try:
        rule = analysis.get_alert_rule(db.write(), org_id, rule_id)
    except analysis.NotFound:
        abort(404)
    return jsonify(serializers.rule_json(rule))


@bp.route("/alert-rules/<int:rule_id>", methods=["PUT"])
def update_alert_rule(rule_id: int) -> Any:
    org_id = _rule_org(rule_id)
    _require("admin")
    body = _rule_body()
    try:
        rule = analysis.update_alert_rule(db.write(), org_id, rule_id, body)
    except analysis.NotFound:
        abort(404)
    except analysis.AnalysisRequestError as exc:
        raise BadRequest(str(exc), 422) from None
    return jsonify(serializers.rule_json(rule))


@bp.route("/alert-rules/<int:rule_id>", methods=["DELETE"])
def delete_alert_rule(rule_id: int) -> Any:
    org_id = _rule_org(rule_id)
    _require("admin")
    try:
        analysis.delete_alert_rule(db.write(), org_id, rule_id)
    except analysis.NotFound:
        abort(404)
    return "", 204


# -- the organisation's webhook (admins; operators name another organisation with `org`) ------
def _delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "alert_id",
        "event",
        "status",
        "attempt_count",
        "attempts",
        "last_error",
        "next_attempt_at",
        "created_at",
        "delivered_at",
    )
    return {key: row.get(key) for key in keys}


@bp.route("/webhook", methods=["GET"])
def get_webhook() -> Any:
    _require("admin")
    hook = analysis.get_webhook(db.write(), _acting_org(_text_arg("org")))
    if hook is None:
        return jsonify({"webhook": None})
    keys = ("url", "enabled", "legacy_signature")
    return jsonify({"webhook": {key: hook[key] for key in keys}})


@bp.route("/webhook", methods=["PUT"])
def put_webhook() -> Any:
    _require("admin")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("url"), str):
        raise BadRequest('send a JSON object like {"url": "https://example.com/hook"}')
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise BadRequest("enabled must be true or false", 422)
    chosen = body.get("org")
    org_id = _acting_org(chosen if isinstance(chosen, str) else None)
    try:
        saved = analysis.set_webhook(
            db.write(),
            org_id,
            body["url"],
            allowed_networks=current_app.config["WEBHOOK_ALLOWED_NETWORKS"],
            enabled=enabled,
        )
    except analysis.AnalysisRequestError as exc:
        raise BadRequest(str(exc), 422) from None
    # The signing secret is in this answer only; fieldhub never shows it again.
    response = jsonify(
        {"url": saved["url"], "enabled": saved["enabled"], "secret": saved["secret"]}
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/webhook", methods=["DELETE"])
def delete_webhook() -> Any:
    _require("admin")
    analysis.delete_webhook(db.write(), _acting_org(_text_arg("org")))
    return "", 204


@bp.route("/webhook/deliveries")
def webhook_deliveries() -> Any:
    _require("admin")
    org_id = _acting_org(_text_arg("org"))
    limit = _int_arg("limit", 100, 1, 1000)
    rows = analysis.list_webhook_deliveries(db.write(), org_id, limit=limit)
    return jsonify({"deliveries": [_delivery_json(r) for r in rows]})


# -- imports ----------------------------------------------------------------------------------
@bp.route("/imports", methods=["GET"])
def list_imports() -> Any:
    org_id = _acting_org(_text_arg("org"))
    limit = _int_arg("limit", 50, 1, 500)
    rows = analysis.list_imports(db.read(), org_id, limit=limit)
    return jsonify({"imports": [serializers.import_json(r) for r in rows]})


@bp.route("/imports", methods=["POST"])
def create_import() -> Any:
    _require("member")
    upload = request.files.get("file")
    if upload is None:
        raise BadRequest("send the data as a multipart/form-data field named 'file'")
    device_id = request.form.get("device_id", "").strip() or None
    fmt = request.form.get("format") or None
    if fmt is not None and fmt not in serializers.IMPORT_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(serializers.IMPORT_FORMATS)}")
    conn = db.write()
    if device_id is not None:
        try:
            org_id = data.owner_org(conn, "device", device_id, _org_id())
        except data.NotFound:
            raise BadRequest(f"unknown device {device_id!r}", 422) from None
    else:
        org_id = _acting_org(request.form.get("org"))
    filename = (upload.filename or "").replace("\x00", "")[:255] or "upload"
    try:
        created = analysis.create_import(
            conn,
            org_id=org_id,
            content=upload.read(),
            filename=filename,
            fmt=fmt,
            device_id=device_id,
            created_by=g.api_user["id"],
        )
    except analysis.AnalysisRequestError as exc:
        raise BadRequest(str(exc), 422) from None
    response = jsonify(serializers.import_json(created))
    response.status_code = 202
    response.headers["Location"] = f"{request.path}/{created['id']}"
    return response


@bp.route("/imports/<import_id>")
def get_import(import_id: str) -> Any:
    parsed = serializers.parse_import_id(import_id)
    if parsed is None:
        abort(404)
    conn = db.read()
    try:
        org_id = data.owner_org(conn, "import", parsed, _org_id())
        found = analysis.get_import(conn, org_id, parsed)
    except (data.NotFound, analysis.NotFound):
        abort(404)
    return jsonify(serializers.import_json(found))
