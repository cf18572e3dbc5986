"""Pages for people: the device list and the device page (chart, history, export, commands)."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue

from fieldhub.analysis import service as analysis
from fieldhub.core import (
    command_requests,
    dead_letters,
    reading_files,
    registry,
    tombstones,
    twins,
)
from fieldhub.core.db import Conn
from fieldhub.core.twin_documents import patch_between
from fieldhub.web import data, db, exports, history, problems, serializers
from fieldhub.web.auth import current_user, has_role, login_required, role_required, scope_org_id

bp = Blueprint("pages", __name__)

# The newest refused messages on the device page; the API and CLI page through the rest.
DEAD_LETTERS_SHOWN = 10


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def device_or_404(device_id: str) -> dict[str, Any]:
    try:
        return data.get_device(db.read(), scope_org_id(), device_id)
    except data.NotFound:
        abort(404)


def _now() -> datetime:
    return datetime.now(UTC)


@bp.route("/")
@login_required
def index() -> ResponseReturnValue:
    return redirect(url_for("pages.devices"))


@bp.route("/devices")
@login_required
def devices() -> ResponseReturnValue:
    page_size = int(current_app.config["PAGE_SIZE"])
    search = request.args.get("q", "").strip() or None
    label_text = request.args.get("label", "").strip()
    status = request.args.get("status", "")
    online = {"online": True, "offline": False}.get(status)
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    error = None
    try:
        labels = data.parse_label_filter(label_text)
    except ValueError as exc:
        error, labels = str(exc), None
    conn = db.read()
    org_id = scope_org_id()
    rows, total = data.list_devices(
        conn,
        org_id,
        data.DeviceFilter(search, labels, online),
        limit=page_size,
        offset=(page - 1) * page_size,
    )
    latest = data.latest_values(conn, [r["device_key"] for r in rows])
    pages = max(1, math.ceil(total / page_size))
    args = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_template(
        "devices.html",
        devices=rows,
        latest=latest,
        total=total,
        page=page,
        pages=pages,
        args=args,
        search=search or "",
        label=label_text,
        status=status,
        label_pairs=_label_suggestions(conn, org_id),
        error=error,
    )


MAX_STATE_IDS = 200


@bp.route("/devices/state.json")
@login_required
def devices_state() -> ResponseReturnValue:
    """Online state, last seen and latest values of the listed devices, for the list page to
    refresh itself; ids outside the user's organisation are silently left out."""
    wanted = [i for i in request.args.get("ids", "").split(",") if i][:MAX_STATE_IDS]
    conn = db.read()
    rows, _ = data.list_devices_by_id(conn, scope_org_id(), wanted)
    latest = data.latest_values(conn, [r["device_key"] for r in rows])
    return jsonify(
        {
            "devices": [
                {
                    "device_id": r["device_id"],
                    "online": bool(r["online"]),
                    "enabled": r["enabled"],
                    "last_seen": r["last_seen"],
                    "latest": [
                        {"metric": v["metric"], "unit": v["unit"], "value": v["value"]}
                        for v in latest.get(r["device_key"], [])[:4]
                    ],
                }
                for r in rows
            ]
        }
    )


LABEL_CACHE_S = 60.0


def _label_suggestions(conn: Conn, org_id: int | None) -> list[dict[str, Any]]:
    """The label filter's suggestions. Aggregating every device's labels costs more than the
    rest of the list page, and suggestions a minute old are fine: each process keeps them for
    a minute, per organisation."""
    cache: dict[int | None, tuple[float, list[dict[str, Any]]]] = current_app.extensions.setdefault(
        "fieldhub.label_cache", {}
    )
    now = time.monotonic()
    cached = cache.get(org_id)
    if cached is not None and now - cached[0] < LABEL_CACHE_S:
        return cached[1]
    pairs = data.label_pairs(conn, org_id)
    cache[org_id] = (now, pairs)
    return pairs


@bp.route("/devices/<device_id>")
@login_required
def device(device_id: str) -> ResponseReturnValue:
    return _device_page(device_id)


def _device_page(
    device_id: str, *, twin_text: str | None = None, twin_error: str | None = None
) -> ResponseReturnValue:
    found = device_or_404(device_id)
    conn = db.read()
    org_id = scope_org_id()
    key = found["device_key"]
    latest = data.latest_values(conn, [key]).get(key, [])
    commands = command_requests.list_commands(conn, device_id=device_id, org_id=org_id, limit=20)
    twin = twins.get_twin(conn, device_id, org_id=org_id)
    children = registry.gateway_children(conn, device_id)
    # Refused messages can carry anything the device sent: shown to the roles the API's
    # listDeadLetters allows (admins and operators).
    letters = (
        dead_letters.for_device(conn, key, limit=DEAD_LETTERS_SHOWN) if has_role("admin") else None
    )
    # An id taken over from a deleted device: why the new device cannot log in yet.
    login_waits = (
        [row["waiting_for"] for row in tombstones.pending(conn, device_id)]
        if has_role("admin")
        else []
    )
    html = render_template(
        "device.html",
        device=found,
        login_waits=login_waits,
        latest=latest,
        # The chart's series: one per metric and unit.
        series=[(row["metric"], row["unit"]) for row in latest if _numeric(row["value"])],
        presence=data.presence_events(conn, key),
        alerts=data.device_alerts(conn, org_id, device_id),
        commands=commands,
        ranges=list(history.RANGES),
        twin=twin,
        twin_history=[
            {
                **change,
                "patch_text": json.dumps(change["patch"], sort_keys=True, ensure_ascii=False),
            }
            for change in twins.desired_history(conn, device_id, org_id=org_id, limit=10)
        ],
        twin_text=twin_text if twin_text is not None else _pretty(twin.desired),
        twin_reported=_pretty(twin.reported),
        twin_delta=_pretty(twin.delta),
        children=children,
        dead_letters=letters,
        dead_letters_days=int(current_app.config["DEAD_LETTERS_RETENTION_DAYS"]),
        twin_error=twin_error,
        ttl={
            "default": command_requests.DEFAULT_TTL_S,
            "min": command_requests.MIN_TTL_S,
            "max": command_requests.MAX_TTL_S,
        },
    )
    return html if twin_error is None else (html, 422)


def _pretty(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)


# -- twin ------------------------------------------------------------------------------------
@bp.route("/devices/<device_id>/twin", methods=["POST"])
@role_required("member")
def set_desired(device_id: str) -> ResponseReturnValue:
    """The page's editor holds the whole desired document; the change stored is the merge
    patch from the version it was based on, refused if someone changed it meanwhile."""
    device_or_404(device_id)
    user = current_user()
    assert user is not None
    text = request.form.get("desired", "")
    org_id = scope_org_id()
    try:
        base = int(request.form.get("version", ""))
    except ValueError:
        return _device_page(device_id, twin_text=text, twin_error="the form lost its version")
    try:
        document = twins.parse_patch(text)
        current = twins.get_twin(db.write(), device_id, org_id=org_id)
        twin = twins.update_desired(
            db.write(),
            device_id,
            patch_between(current.desired, document),
            actor=twins.Actor(str(user["email"]), "web", int(user["id"])),
            if_version=base,
            org_id=org_id,
        )
    except twins.NotFound:
        abort(404)
    except twins.TwinRequestError as exc:
        return _device_page(device_id, twin_text=text, twin_error=str(exc))
    if twin.desired_version == base:
        flash("The desired state is unchanged.", "info")
    else:
        flash(f"Desired state saved as version {twin.desired_version}.", "info")
    return redirect(url_for("pages.device", device_id=device_id) + "#twin")


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float)


def _range_from_args() -> history.TimeRange:
    try:
        return history.resolve_range(
            request.args.get("range"),
            request.args.get("start") or None,
            request.args.get("end") or None,
            now=_now(),
        )
    except history.RangeError as exc:
        abort(400, description=str(exc))


@bp.route("/devices/<device_id>/history.json")
@login_required
def device_history(device_id: str) -> ResponseReturnValue:
    key = device_or_404(device_id)["device_key"]
    metric = request.args.get("metric", "")
    if not metric:
        abort(400, description="choose a metric")
    unit = request.args.get("unit", "")
    span = _range_from_args()
    conn = db.read()
    series = data.chart_series(conn, key, metric, unit, span)
    return jsonify(
        {
            "device_id": device_id,
            "metric": metric,
            "unit": unit,
            # 'boolean' metrics are charted as 1/0 and read as true/false.
            "type": data.metric_types(conn, key).get((metric, unit), "number"),
            "start": span.start.isoformat(),
            "end": span.end.isoformat(),
            **series,
        }
    )


@bp.route("/devices/<device_id>/export.csv")
@login_required
def export_csv(device_id: str) -> ResponseReturnValue:
    """The readings of the chosen range in the export format (fieldhub.core.reading_files),
    streamed; at most EXPORTS_PER_USER at once per user (fieldhub.web.exports)."""
    key = device_or_404(device_id)["device_key"]
    span = _range_from_args()
    metric = request.args.get("metric") or None
    user = current_user()
    assert user is not None
    chunks, resources = exports.stream(
        int(user["id"]),
        key,
        "csv",
        start=span.start,
        end=span.end,
        metric=metric,
        unit=request.args.get("unit") if metric else None,
    )
    filename = f"{device_id}_{span.start:%Y%m%dT%H%M}_{span.end:%Y%m%dT%H%M}.csv"
    # No stream_with_context: the chunks need no request context (the connection and slot
    # were taken above), so the request's own connections go back as soon as this returns.
    response = Response(
        chunks,
        mimetype=reading_files.MEDIA_TYPES["csv"],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
    # Werkzeug closes the response when the download ends or the client goes away, even if
    # the body was never iterated: then the slot and the connection go back.
    response.call_on_close(resources.close)
    return response


# -- commands --------------------------------------------------------------------------------
@bp.route("/devices/<device_id>/commands.json")
@login_required
def device_commands(device_id: str) -> ResponseReturnValue:
    device_or_404(device_id)
    commands = command_requests.list_commands(
        db.read(), device_id=device_id, org_id=scope_org_id(), limit=20
    )
    return jsonify({"commands": [serializers.command_json(c) for c in commands]})


@bp.route("/devices/<device_id>/commands", methods=["POST"])
@role_required("member")
def send_command(device_id: str) -> ResponseReturnValue:
    device_or_404(device_id)
    user = current_user()
    assert user is not None
    body = request.get_json(silent=True) if request.is_json else None
    form: dict[str, Any] = body if isinstance(body, dict) else request.form.to_dict()
    try:
        params = form.get("params") or {}
        if isinstance(params, str):
            params = command_requests.parse_params(params) if params.strip() else {}
        # Blank: the core's default, the same for the pages, the API and the command line.
        ttl = form.get("ttl_s") or None
        command = command_requests.send_command(
            db.write(),
            device_id=device_id,
            name=str(form.get("name", "")).strip(),
            params=params,
            ttl_s=int(ttl) if ttl is not None and str(ttl).strip().isdigit() else ttl,
            created_by=user["id"],
            org_id=scope_org_id(),
        )
    except command_requests.NotFound:
        abort(404)
    except command_requests.CommandRequestError as exc:
        if request.is_json:
            raise problems.Problem("refused", serializers.sentence(exc)) from None
        flash(str(exc), "error")
        return redirect(url_for("pages.device", device_id=device_id) + "#commands")
    if request.is_json:
        return jsonify({"command": serializers.command_json(command)}), 201
    flash(f"Command {command['name']} queued.", "info")
    return redirect(url_for("pages.device", device_id=device_id) + "#commands")


@bp.route("/devices/<device_id>/commands/<command_id>/cancel", methods=["POST"])
@role_required("member")
def cancel_command(device_id: str, command_id: str) -> ResponseReturnValue:
    device_or_404(device_id)
    org_id = scope_org_id()
    try:
        found = command_requests.get_command(db.read(), command_id, org_id=org_id)
        if found["device_id"] != device_id:
            abort(404)
        command = command_requests.cancel_command(db.write(), command_id, org_id=org_id)
    except command_requests.NotFound:
        abort(404)
    except command_requests.CommandRequestError as exc:
        if request.is_json:
            raise problems.Problem("conflict", serializers.sentence(exc)) from None
        flash(str(exc), "error")
        return redirect(url_for("pages.device", device_id=device_id) + "#commands")
    if request.is_json:
        return jsonify({"command": serializers.command_json(command)})
    flash("Command cancelled.", "info")
    return redirect(url_for("pages.device", device_id=device_id) + "#commands")


@bp.route("/alerts")
@login_required
def alerts() -> ResponseReturnValue:
    state = request.args.get("state") or None
    if state not in (None, "active", "acknowledged", "cleared"):
        state = None
    conn = db.read()
    return render_template(
        "alerts.html",
        alerts=data.list_alerts(conn, scope_org_id(), state=state, limit=200),
        state=state or "",
    )


def _back(default: str) -> str:
    """Where to return after a change: a path on this site only, never another host."""
    target = request.form.get("back", "")
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


@bp.route("/alerts/<int:alert_id>/acknowledge", methods=["POST"])
@role_required("member")
def acknowledge_alert(alert_id: int) -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    conn = db.write()
    try:
        org_id = data.owner_org(conn, "alert", alert_id, scope_org_id())
        analysis.acknowledge_alert(conn, org_id, alert_id, user_id=user["id"])
    except (data.NotFound, analysis.NotFound):
        abort(404)
    except analysis.AnalysisRequestError as exc:
        flash(serializers.sentence(exc), "error")
    else:
        flash(f"Alert {alert_id} acknowledged.", "info")
    return redirect(_back(url_for("pages.alerts")))


# -- imports ---------------------------------------------------------------------------------
def _import_or_404(raw_id: str) -> dict[str, Any]:
    import_id = serializers.parse_import_id(raw_id)
    if import_id is None:
        abort(404)
    conn = db.read()
    try:
        org_id = data.owner_org(conn, "import", import_id, scope_org_id())
        return analysis.get_import(conn, org_id, import_id)
    except (data.NotFound, analysis.NotFound):
        abort(404)


def _import_page(status: int = 200) -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    conn = db.read()
    chosen = request.values.get("org")
    try:
        org = serializers.acting_org(conn, user, chosen)
    except serializers.UnknownOrg:
        abort(404)
    return (
        render_template(
            "imports.html",
            imports=[serializers.import_json(r) for r in analysis.list_imports(conn, org["id"])],
            org=org,
            orgs=data.list_orgs(conn, scope_org_id()),
            formats=serializers.IMPORT_FORMATS,
            limit_mib=current_app.config["IMPORT_MAX_BYTES"] // 2**20,
        ),
        status,
    )


@bp.route("/imports", methods=["GET", "POST"])
@login_required
def imports() -> ResponseReturnValue:
    if request.method == "GET":
        return _import_page()
    if not has_role("member"):
        abort(403)
    user = current_user()
    assert user is not None
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        flash("Choose a CSV, NDJSON or SenML file to upload.", "error")
        return _import_page(400)
    device_id = request.form.get("device_id", "").strip() or None
    fmt = request.form.get("format") or None
    conn = db.write()
    try:
        if device_id is not None:
            org_id = data.owner_org(conn, "device", device_id, scope_org_id())
        else:
            org_id = int(serializers.acting_org(conn, user, request.form.get("org"))["id"])
        created = analysis.create_import(
            conn,
            org_id=org_id,
            content=upload.read(),
            filename=upload.filename,
            fmt=fmt if fmt in serializers.IMPORT_FORMATS else None,
            device_id=device_id,
            created_by=user["id"],
        )
    except data.NotFound:
        flash(f"There is no device {device_id!r} in your organisation.", "error")
        return _import_page(400)
    except serializers.UnknownOrg as exc:
        flash(f"There is no organisation {exc}.", "error")
        return _import_page(400)
    except analysis.AnalysisRequestError as exc:
        flash(serializers.sentence(exc), "error")
        return _import_page(400)
    return redirect(url_for("pages.import_detail", import_id=str(created["id"])))


@bp.route("/imports/<import_id>")
@login_required
def import_detail(import_id: str) -> ResponseReturnValue:
    found = serializers.import_json(_import_or_404(import_id))
    return render_template(
        "import.html", imp=found, final=found["status"] in serializers.FINAL_IMPORT_STATES
    )


@bp.route("/imports/<import_id>/progress.json")
@login_required
def import_progress(import_id: str) -> ResponseReturnValue:
    return jsonify(serializers.import_json(_import_or_404(import_id)))
