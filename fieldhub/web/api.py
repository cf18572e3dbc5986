"""The JSON API, /api/v1: bearer tokens, tenant scope, declared operations.

Each route is an operation of `API` (fieldhub/web/openapi.py): its signature's types
(fieldhub/web/api_shapes.py) parse the request and make the OpenAPI document at
/api/v1/openapi.json, which /api/v1/docs renders. Every error is an RFC 9457 problem
(fieldhub/web/problems.py), documented at its `type` URL; every list is paged by cursor.
docs/api.md has the conventions and why."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg
from flask import (
    Blueprint,
    Flask,
    Response,
    after_this_request,
    current_app,
    g,
    render_template,
    request,
)

from fieldhub.analysis import service as analysis
from fieldhub.core import command_requests, dead_letters, registry, twins, users
from fieldhub.web import data, db, history, problems, serializers
from fieldhub.web.api_shapes import (
    Alert,
    AlertKey,
    AlertPage,
    AlertQuery,
    AlertRule,
    Command,
    CommandKey,
    CommandPage,
    CommandQuery,
    DeadLetter,
    DeadLetterKey,
    DeadLetterPage,
    DeadLetterQuery,
    Delivery,
    DeliveryKey,
    DeliveryPage,
    DeliveryQuery,
    Device,
    DeviceId,
    DeviceKey,
    DevicePage,
    DeviceQuery,
    GatewayChoice,
    Import,
    ImportKey,
    ImportPage,
    ImportQuery,
    Latest,
    LatestValue,
    NewAlertRule,
    NewCommand,
    NewImport,
    NewWebhook,
    ObjectId,
    OrgQuery,
    PointKey,
    RuleKey,
    RulePage,
    RuleQuery,
    SavedWebhook,
    Telemetry,
    TelemetryQuery,
    TwinChange,
    TwinHistory,
    TwinHistoryQuery,
    TwinPatch,
    WebhookSetting,
)
from fieldhub.web.api_shapes import Twin as TwinShape
from fieldhub.web.errors import problem_response
from fieldhub.web.openapi import Api, page

bp = Blueprint("api", __name__, url_prefix="/api/v1")
API = Api(
    bp,
    "fieldhub API",
    """Devices, telemetry, commands, alerts and their rules, the alert webhook and data imports
of your organisation.

**Authentication.** Send an API token (`fieldhub token create EMAIL`) as
`Authorization: Bearer <token>`.

**Pagination.** Every list answers at most `limit` items and `next`: the URL of the next page,
or null on the last one. Follow `next` as it is until it is null; its `cursor` is opaque.
Lists are ordered by a unique key (newest first for events, by id otherwise), so following
`next` gives every item once even while items are added.

**Errors.** Every error is an RFC 9457 problem document (`application/problem+json`) with
`type`, `title`, `status` and `detail`, plus `errors` naming each bad parameter or body
member. `type` is a URL path that documents the problem: [/api/v1/problems](problems).""",
)
# Served without a token: the description of the API and of its errors.
PUBLIC_ENDPOINTS = frozenset({"api.openapi", "api.docs", "api.problem_types", "api.problem_type"})


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.errorhandler(psycopg.DataError)
def _data_error(exc: psycopg.DataError) -> Response:
    # Values PostgreSQL cannot represent (timestamps out of range, ...): the caller's input.
    return problem_response(
        problems.BY_SLUG["invalid-parameter"],
        "A parameter is out of the range the database accepts.",
    )


@bp.before_request
def _authenticate() -> Response | None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    unauthorized = problems.BY_SLUG["unauthorized"]
    if scheme.lower() != "bearer" or not token.strip():
        return problem_response(
            unauthorized, "Send an API token as 'Authorization: Bearer <token>'."
        )
    try:
        user = users.api_token_user(db.write(), token.strip())
    except users.TokenExpired as exc:
        return _invalid_token(f"{serializers.sentence(exc)[:-1]}; create a new one.")
    if user is None:
        return _invalid_token("That API token is not valid (revoked or mistyped).")
    g.api_user = user
    return None


def _invalid_token(detail: str) -> Response:
    response = problem_response(problems.BY_SLUG["unauthorized"], detail)
    response.headers["WWW-Authenticate"] = 'Bearer realm="fieldhub", error="invalid_token"'
    return response


def _org_id() -> int | None:
    user = g.api_user
    return None if user["role"] == "operator" else int(user["org_id"])


def _not_found(what: str) -> problems.Problem:
    # The id is the caller's own: not repeated, so an answer shows nothing but "no such".
    return problems.Problem("not-found", f"There is no such {what} in your organisation.")


def _device(device_id: str) -> dict[str, Any]:
    try:
        return data.get_device(db.read(), _org_id(), device_id)
    except data.NotFound:
        raise _not_found("device") from None


def _device_json(row: Mapping[str, Any]) -> Device:
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


def _latest_json(rows: list[dict[str, Any]]) -> list[LatestValue]:
    # `unit` is "" unless the device sent one (SenML): one entry per metric and unit.
    return [
        {"metric": r["metric"], "unit": r["unit"], "time": r["time"], "value": r["value"]}
        for r in rows
    ]


def _alert_json(row: Mapping[str, Any]) -> Alert:
    return {
        "id": row["id"],
        "device_id": row["device_id"],
        "state": row["state"],
        "rule": row["rule"],
        "metric": row["metric"],
        "severity": row["severity"],
        "value": row["value"],
        "message": row["message"],
        "started_at": row["started_at"],
        "acknowledged_at": row["acknowledged_at"],
        "cleared_at": row["cleared_at"],
    }


# -- the description of the API ----------------------------------------------------------------
@bp.route("/openapi.json")
def openapi() -> Response:
    document = API.document(request.host_url.rstrip("/") + "/api/v1")
    return current_app.response_class(current_app.json.dumps(document), mimetype="application/json")


@bp.route("/docs")
def docs() -> str:
    """The OpenAPI document rendered by Swagger UI, served from our own static folder."""
    return render_template("api_docs.html")


@bp.route("/problems")
def problem_types() -> str:
    return render_template("api_problems.html", kinds=problems.CATALOGUE, selected=None)


@bp.route("/problems/<slug>")
def problem_type(slug: str) -> str:
    kind = problems.BY_SLUG.get(slug)
    if kind is None:
        raise problems.Problem("not-found", f"There is no problem type {slug!r}.")
    return render_template("api_problems.html", kinds=problems.CATALOGUE, selected=kind)


# -- devices ---------------------------------------------------------------------------------
@API.operation("GET", "/devices", "listDevices", summary="Devices, with online state")
def list_devices(query: DeviceQuery, after: DeviceKey | None) -> DevicePage:
    try:
        labels = data.parse_label_filter(query.label)
    except ValueError as exc:
        raise problems.Problem(
            "invalid-parameter",
            str(exc),
            errors=(problems.FieldProblem(str(exc), parameter="label"),),
        ) from None
    online = {"online": True, "offline": False}.get(query.status or "")
    rows, total = data.list_devices(
        db.read(),
        _org_id(),
        data.DeviceFilter(query.q, labels, online),
        limit=query.limit + 1,
        after=after.device_id if after else None,
    )
    shown, link = page(rows, query.limit)
    return {"devices": [_device_json(r) for r in shown], "total": total, "next": link}


@API.operation("GET", "/devices/{device_id}", "getDevice", summary="A device and its latest values")
def get_device(device_id: DeviceId) -> Device:
    row = _device(device_id)
    key = row["device_key"]
    latest = data.latest_values(db.read(), [key]).get(key, [])
    return {**_device_json(row), "latest": _latest_json(latest)}


@API.operation(
    "GET",
    "/devices/{device_id}/latest",
    "getLatest",
    summary="The latest value of each metric (and unit)",
)
def latest(device_id: DeviceId) -> Latest:
    key = _device(device_id)["device_key"]
    rows = data.latest_values(db.read(), [key]).get(key, [])
    return {"device_id": device_id, "values": _latest_json(rows)}


@API.operation(
    "GET",
    "/devices/{device_id}/telemetry",
    "getTelemetry",
    summary="Readings of one metric: raw points (paged), or aggregated buckets",
    description=(
        "Without `bucket`: raw points, oldest first, at most `limit` (10,000) per page; "
        "`next` continues after the last point within the same start and end. With `bucket` "
        "(seconds): one aggregate per bucket (from rollups where they exist), in one answer "
        f"of at most 20,000 buckets. start defaults to an hour before end; a range spans at "
        f"most {history.MAX_CUSTOM_SPAN.days} days. Readings of one metric in different "
        "units (SenML) are separate series: `unit` chooses one."
    ),
)
def telemetry(device_id: DeviceId, query: TelemetryQuery, after: PointKey | None) -> Telemetry:
    key = _device(device_id)["device_key"]
    end = query.end or datetime.now(UTC)
    start = query.start or end - timedelta(hours=1)
    if end <= start:
        raise _range_problem("end must be after start", "end")
    if end - start > history.MAX_CUSTOM_SPAN:
        raise _range_problem(f"a range spans at most {history.MAX_CUSTOM_SPAN.days} days", "start")
    conn = db.read()
    if query.bucket is None:
        points = data.raw_points(
            conn,
            key,
            query.metric,
            query.unit,
            history.TimeRange(start, end),
            limit=query.limit + 1,
            after=after,
        )
        # The next page keeps this page's range, even when it was "the last hour".
        shown, link = page(points, query.limit, start=start.isoformat(), end=end.isoformat())
        return {
            "device_id": device_id,
            "metric": query.metric,
            "unit": query.unit,
            "start": start,
            "end": end,
            "bucket": None,
            "aggregate": None,
            "source": "raw",
            "truncated": link is not None,
            "points": [{"time": p["time"], "value": p["value"]} for p in shown],
            "next": link,
        }
    span = history.TimeRange(start, end)
    try:
        history.check_bucket_count(span.span, query.bucket)
        resolution = history.bucket_resolution(query.bucket)
    except history.RangeError as exc:
        raise _range_problem(str(exc), "bucket") from None
    source, rows = data.buckets(conn, key, query.metric, query.unit, span, resolution)
    return {
        "device_id": device_id,
        "metric": query.metric,
        "unit": query.unit,
        "start": start,
        "end": end,
        "bucket": query.bucket,
        "aggregate": query.agg,
        "source": source,
        "truncated": False,
        "points": [{"time": r["bucket"], "value": _number(r[query.agg])} for r in rows],
        "next": None,
    }


def _range_problem(detail: str, parameter: str) -> problems.Problem:
    return problems.Problem(
        "invalid-parameter",
        detail[:1].upper() + detail[1:] + ".",
        errors=(problems.FieldProblem(detail, parameter=parameter),),
    )


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# -- commands --------------------------------------------------------------------------------
@API.operation(
    "GET", "/devices/{device_id}/commands", "listCommands", summary="Commands, newest first"
)
def device_commands(
    device_id: DeviceId, query: CommandQuery, after: CommandKey | None
) -> CommandPage:
    _device(device_id)
    commands = command_requests.list_commands(
        db.read(),
        device_id=device_id,
        status=query.status,
        org_id=_org_id(),
        limit=query.limit + 1,
        before=after,
    )
    shown, link = page(commands, query.limit)
    return {"commands": [serializers.command_json(c) for c in shown], "next": link}


@API.operation(
    "POST",
    "/devices/{device_id}/commands",
    "sendCommand",
    summary="Queue a command for the device",
    status=201,
    role="member",
)
def send_command(device_id: DeviceId, body: NewCommand) -> Command:
    _device(device_id)
    try:
        command = command_requests.send_command(
            db.write(),
            device_id=device_id,
            name=body.name,
            params=body.params,
            ttl_s=body.ttl_s,
            created_by=g.api_user["id"],
            org_id=_org_id(),
        )
    except command_requests.NotFound:
        raise _not_found("device") from None
    except command_requests.CommandRequestError as exc:
        raise problems.Problem("refused", serializers.sentence(exc)) from None
    return serializers.command_json(command)


# -- dead letters -----------------------------------------------------------------------------
@API.operation(
    "GET",
    "/devices/{device_id}/dead-letters",
    "listDeadLetters",
    summary="Messages of the device that were refused, newest first",
    description=(
        "Matched by the device itself, not its id: a device created again with an old id "
        "never sees its predecessor's letters. Kept as long as the worker's "
        "FIELDHUB_RETENTION_DEAD_LETTERS_DAYS (14 days by default)."
    ),
    role="admin",
)
def list_dead_letters(
    device_id: DeviceId, query: DeadLetterQuery, after: DeadLetterKey | None
) -> DeadLetterPage:
    key = _device(device_id)["device_key"]
    letters = dead_letters.for_device(
        db.read(), key, since=query.since, limit=query.limit + 1, before=after
    )
    items = [cast(DeadLetter, letter.as_json()) for letter in letters]
    shown, link = page(items, query.limit)
    return {"dead_letters": shown, "next": link}


# -- twin -------------------------------------------------------------------------------------
def _twin_json(twin: twins.Twin) -> TwinShape:
    @after_this_request
    def _version(response: Response) -> Response:
        # The desired version is what If-Match names: `PATCH ... If-Match: "3"`.
        response.headers["ETag"] = f'"{twin.desired_version}"'
        response.headers["Cache-Control"] = "no-store"
        return response

    return cast(TwinShape, twin.as_json())


def _if_match() -> int | None:
    """The desired version of an If-Match header: `"3"` (or W/"3", or 3); None without one."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    tag = raw.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or len(tag) > 18:
        raise problems.Problem(
            "invalid-parameter",
            'If-Match must name a desired version, like If-Match: "3".',
            errors=(problems.FieldProblem('must be a version like "3"', parameter="If-Match"),),
        )
    return int(tag)


@API.operation(
    "GET",
    "/devices/{device_id}/twin",
    "getTwin",
    summary="Desired and reported state, and their delta",
    description="Its ETag is the desired version, for If-Match.",
)
def get_twin(device_id: DeviceId) -> TwinShape:
    _device(device_id)
    try:
        return _twin_json(twins.get_twin(db.read(), device_id, org_id=_org_id()))
    except twins.NotFound:
        raise _not_found("device") from None


@API.operation(
    "PATCH",
    "/devices/{device_id}/twin",
    "patchTwin",
    summary="Change desired state with a JSON merge patch",
    description=(
        'Send If-Match: "<desired version>" (the ETag of GET) to change it only if nobody else '
        "changed it since; otherwise 412 with current_version."
    ),
    role="member",
    errors=(412,),
)
def patch_twin(device_id: DeviceId, body: TwinPatch) -> TwinShape:
    _device(device_id)
    user = g.api_user
    try:
        twin = twins.update_desired(
            db.write(),
            device_id,
            body.desired,
            actor=twins.Actor(str(user["email"]), "api", int(user["id"])),
            if_version=_if_match(),
            org_id=_org_id(),
        )
    except twins.NotFound:
        raise _not_found("device") from None
    except twins.VersionMismatch as exc:
        raise problems.Problem(
            "precondition-failed",
            serializers.sentence(exc),
            extensions={"current_version": exc.current},
        ) from None
    except twins.TwinRequestError as exc:
        raise problems.Problem("refused", serializers.sentence(exc)) from None
    return _twin_json(twin)


@API.operation(
    "GET",
    "/devices/{device_id}/twin/history",
    "twinHistory",
    summary="Who changed desired state and when, newest first",
)
def twin_history(device_id: DeviceId, query: TwinHistoryQuery) -> TwinHistory:
    _device(device_id)
    changes = twins.desired_history(db.read(), device_id, org_id=_org_id(), limit=query.limit)
    return {"changes": cast(list[TwinChange], changes)}


# -- gateways (admins of the organisation) ----------------------------------------------------
@API.operation(
    "PUT",
    "/devices/{device_id}/gateway",
    "attachGateway",
    summary="Let a gateway device act for this device",
    role="admin",
)
def attach_gateway(device_id: DeviceId, body: GatewayChoice) -> Device:
    _device(device_id)
    try:
        registry.attach_gateway(db.write(), device_id, body.gateway_id, org_id=_org_id())
    except registry.NotFound:
        raise problems.Problem("refused", "There is no such gateway device.") from None
    except registry.RegistryError as exc:
        raise problems.Problem("refused", serializers.sentence(exc)) from None
    return _device_json(data.get_device(db.write(), _org_id(), device_id))


@API.operation(
    "DELETE",
    "/devices/{device_id}/gateway",
    "detachGateway",
    summary="Stop a gateway acting for this device",
    status=204,
    role="admin",
)
def detach_gateway(device_id: DeviceId) -> None:
    _device(device_id)
    registry.detach_gateway(db.write(), device_id, org_id=_org_id())


CommandId = uuid.UUID


@API.operation("GET", "/commands/{command_id}", "getCommand", summary="A command and its timeline")
def get_command(command_id: CommandId) -> Command:
    try:
        command = command_requests.get_command(db.read(), str(command_id), org_id=_org_id())
    except command_requests.NotFound:
        raise _not_found("command") from None
    return serializers.command_json(command)


@API.operation(
    "POST",
    "/commands/{command_id}/cancel",
    "cancelCommand",
    summary="Cancel a command that has no final answer yet",
    role="member",
    errors=(409,),
)
def cancel_command(command_id: CommandId) -> Command:
    try:
        command = command_requests.cancel_command(db.write(), str(command_id), org_id=_org_id())
    except command_requests.NotFound:
        raise _not_found("command") from None
    except command_requests.CommandRequestError as exc:
        raise problems.Problem("conflict", serializers.sentence(exc)) from None
    return serializers.command_json(command)


# -- alerts ----------------------------------------------------------------------------------
@API.operation("GET", "/alerts", "listAlerts", summary="Alerts, newest first", errors=(404,))
def list_alerts(query: AlertQuery, after: AlertKey | None) -> AlertPage:
    if query.device_id is not None:
        _device(query.device_id)
    rows = data.list_alerts(
        db.read(),
        _org_id(),
        state=query.state,
        device_id=query.device_id,
        limit=query.limit + 1,
        before=after,
    )
    shown, link = page(rows, query.limit)
    return {"alerts": [_alert_json(r) for r in shown], "next": link}


@API.operation("GET", "/alerts/{alert_id}", "getAlert", summary="One alert")
def get_alert(alert_id: ObjectId) -> Alert:
    try:
        return _alert_json(data.get_alert(db.read(), _org_id(), alert_id))
    except data.NotFound:
        raise _not_found("alert") from None


@API.operation(
    "POST",
    "/alerts/{alert_id}/acknowledge",
    "acknowledgeAlert",
    summary="Acknowledge an active alert",
    role="member",
    errors=(409,),
)
def acknowledge_alert(alert_id: ObjectId) -> Alert:
    conn = db.write()
    try:
        org_id = data.owner_org(conn, "alert", alert_id, _org_id())
        analysis.acknowledge_alert(conn, org_id, alert_id, user_id=g.api_user["id"])
    except (data.NotFound, analysis.NotFound):
        raise _not_found("alert") from None
    except analysis.AnalysisRequestError as exc:
        raise problems.Problem("conflict", serializers.sentence(exc)) from None
    return _alert_json(data.get_alert(conn, org_id, alert_id))


# -- alert rules (admins of their organisation; operators name another with `org`) ------------
def _acting_org(chosen: str | None) -> int:
    try:
        return int(serializers.acting_org(db.write(), g.api_user, chosen)["id"])
    except serializers.UnknownOrg:
        raise _not_found("organisation") from None


def _rule_org(rule_id: int) -> int:
    try:
        return data.owner_org(db.write(), "rule", rule_id, _org_id())
    except data.NotFound:
        raise _not_found("alert rule") from None


def _rule_data(body: NewAlertRule) -> dict[str, Any]:
    fields = {k: v for k, v in vars(body).items() if k != "org"}
    return fields


@API.operation(
    "GET", "/alert-rules", "listAlertRules", summary="Alert rules, oldest first", role="admin"
)
def list_alert_rules(query: RuleQuery, after: RuleKey | None) -> RulePage:
    org_id = _acting_org(query.org)
    rules = analysis.list_alert_rules(
        db.write(), org_id, limit=query.limit + 1, after=after.id if after else None
    )
    shown, link = page(rules, query.limit)
    return {"rules": [serializers.rule_json(r) for r in shown], "next": link}


@API.operation(
    "POST",
    "/alert-rules",
    "createAlertRule",
    summary="Create an alert rule",
    status=201,
    role="admin",
)
def create_alert_rule(body: NewAlertRule) -> AlertRule:
    org_id = _acting_org(body.org)
    try:
        rule = analysis.create_alert_rule(db.write(), org_id, _rule_data(body))
    except analysis.AnalysisRequestError as exc:
        raise problems.Problem("refused", serializers.sentence(exc)) from None
    return serializers.rule_json(rule)


@API.operation("GET", "/alert-rules/{rule_id}", "getAlertRule", summary="One rule", role="admin")
def get_alert_rule(rule_id: ObjectId) -> AlertRule:
    org_id = _rule_org(rule_id)
    try:
        return serializers.rule_json(analysis.get_alert_rule(db.write(), org_id, rule_id))
    except analysis.NotFound:
        raise _not_found("alert rule") from None


@API.operation(
    "PUT",
    "/alert-rules/{rule_id}",
    "updateAlertRule",
    summary="Replace an alert rule",
    role="admin",
)
def update_alert_rule(rule_id: ObjectId, body: NewAlertRule) -> AlertRule:
    org_id = _rule_org(rule_id)
    try:
        rule = analysis.update_alert_rule(db.write(), org_id, rule_id, _rule_data(body))
    except analysis.NotFound:
        raise _not_found("alert rule") from None
    except analysis.AnalysisRequestError as exc:
        raise problems.Problem("refused", serializers.sentence(exc)) from None
    return serializers.rule_json(rule)


@API.operation(
    "DELETE",
    "/alert-rules/{rule_id}",
    "deleteAlertRule",
    summary="Delete an alert rule and its alerts",
    status=204,
    role="admin",
)
def delete_alert_rule(rule_id: ObjectId) -> None:
    org_id = _rule_org(rule_id)
    try:
        analysis.delete_alert_rule(db.write(), org_id, rule_id)
    except analysis.NotFound:
        raise _not_found("alert rule") from None


# -- the organisation's webhook (admins; operators name another organisation with `org`) ------
def _delivery_json(row: Mapping[str, Any]) -> Delivery:
    return {
        "id": row["id"],
        "alert_id": row["alert_id"],
        "event": row["event"],
        "status": row["status"],
        "attempt_count": row["attempt_count"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "next_attempt_at": row["next_attempt_at"],
        "created_at": row["created_at"],
        "delivered_at": row["delivered_at"],
    }


@API.operation("GET", "/webhook", "getWebhook", summary="Where the alerts are POSTed", role="admin")
def get_webhook(query: OrgQuery) -> WebhookSetting:
    hook = analysis.get_webhook(db.write(), _acting_org(query.org))
    if hook is None:
        return {"webhook": None}
    return {
        "webhook": {
            "url": hook["url"],
            "enabled": hook["enabled"],
            "legacy_signature": hook["legacy_signature"],
        }
    }


@API.operation(
    "PUT",
    "/webhook",
    "setWebhook",
    summary="Set the webhook URL; answers a new signing secret, shown only once",
    description=(
        "The URL must be http(s) and its host must resolve to public addresses only: "
        "loopback, private, link-local, shared (CGNAT), multicast, reserved and cloud metadata "
        "addresses are refused (422) unless the operator allows them with "
        "FIELDHUB_WEBHOOK_ALLOWED_NETWORKS."
    ),
    role="admin",
)
def put_webhook(body: NewWebhook) -> SavedWebhook:
    org_id = _acting_org(body.org)
    try:
        saved = analysis.set_webhook(
            db.write(),
            org_id,
            body.url,
            allowed_networks=current_app.config["WEBHOOK_ALLOWED_NETWORKS"],
            enabled=body.enabled,
        )
    except analysis.AnalysisRequestError as exc:
        raise problems.Problem("refused", serializers.sentence(exc)) from None

    @after_this_request
    def _no_store(response: Response) -> Response:
        # The signing secret is in this answer only; fieldhub never shows it again.
        response.headers["Cache-Control"] = "no-store"
        return response

    return {"url": saved["url"], "enabled": saved["enabled"], "secret": saved["secret"]}


@API.operation(
    "DELETE",
    "/webhook",
    "deleteWebhook",
    summary="Remove the webhook (or there was none)",
    status=204,
    role="admin",
)
def delete_webhook(query: OrgQuery) -> None:
    analysis.delete_webhook(db.write(), _acting_org(query.org))


@API.operation(
    "GET",
    "/webhook/deliveries",
    "listWebhookDeliveries",
    summary="The delivery log with every attempt, newest first",
    role="admin",
)
def webhook_deliveries(query: DeliveryQuery, after: DeliveryKey | None) -> DeliveryPage:
    org_id = _acting_org(query.org)
    rows = analysis.list_webhook_deliveries(
        db.write(),
        org_id,
        limit=query.limit + 1,
        before=after,
    )
    shown, link = page(rows, query.limit)
    return {"deliveries": [_delivery_json(r) for r in shown], "next": link}


# -- imports ----------------------------------------------------------------------------------
@API.operation("GET", "/imports", "listImports", summary="Imports, newest first")
def list_imports(query: ImportQuery, after: ImportKey | None) -> ImportPage:
    org_id = _acting_org(query.org)
    rows = analysis.list_imports(
        db.read(),
        org_id,
        limit=query.limit + 1,
        before=after,
    )
    shown, link = page(rows, query.limit)
    return {"imports": [serializers.import_json(r) for r in shown], "next": link}


@API.operation(
    "POST",
    "/imports",
    "createImport",
    summary="Upload a CSV, NDJSON or SenML file to import",
    description=(
        "The file is queued and imported by the analysis worker; follow "
        "GET /imports/{import_id} (the Location header) for progress and the bad lines."
    ),
    status=202,
    role="member",
    media="multipart/form-data",
)
def create_import(body: NewImport) -> Import:
    conn = db.write()
    if body.device_id is not None:
        try:
            org_id = data.owner_org(conn, "device", body.device_id, _org_id())
        except data.NotFound:
            raise problems.Problem(
                "refused", f"There is no device {body.device_id!r} in your organisation."
            ) from None
    else:
        org_id = _acting_org(body.org)
    filename = (body.file.filename or "").replace("\x00", "")[:255] or "upload"
    try:
        created = analysis.create_import(
            conn,
            org_id=org_id,
            content=body.file.read(),
            filename=filename,
            fmt=body.format,
            device_id=body.device_id,
            created_by=g.api_user["id"],
        )
    except analysis.AnalysisRequestError as exc:
        raise problems.Problem("refused", serializers.sentence(exc)) from None
    location = f"{request.path}/{created['id']}"

    @after_this_request
    def _location(response: Response) -> Response:
        response.headers["Location"] = location
        return response

    return serializers.import_json(created)


@API.operation("GET", "/imports/{import_id}", "getImport", summary="An import and its progress")
def get_import(import_id: uuid.UUID) -> Import:
    conn = db.read()
    try:
        org_id = data.owner_org(conn, "import", import_id, _org_id())
        found = analysis.get_import(conn, org_id, import_id)
    except (data.NotFound, analysis.NotFound):
        raise _not_found("import") from None
    return serializers.import_json(found)
