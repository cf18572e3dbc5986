"""Admin pages: organisations (operators), users and devices (admins of their organisation).

Device changes go through fieldhub.core.registry, the same functions as the CLI, so validation
and "credentials are shown once" hold here too. Pages that show a secret are never cached."""

from __future__ import annotations

import csv
import io
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue

from fieldhub.analysis import service as analysis
from fieldhub.analysis.jobs import JOBS
from fieldhub.core import certificates, device_ca, registry, users
from fieldhub.core.brokers import urls_in_preference
from fieldhub.core.passwords import generate_secret, hash_secret
from fieldhub.web import data, db, replication, serializers
from fieldhub.web.auth import current_user, has_role, no_store, role_required, scope_org_id

bp = Blueprint("admin", __name__, url_prefix="/admin")

MAX_IMPORT_ROWS = 20000


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _org_for_new_object() -> str:
    """The organisation a new user or device goes to: an admin's own, or the operator's pick."""
    user = current_user()
    assert user is not None
    if user["role"] != "operator":
        return str(user["org"])
    chosen = request.form.get("org", "").strip()
    if not chosen:
        raise registry.RegistryError("choose an organisation")
    return chosen


def _device_or_404(device_id: str) -> dict[str, Any]:
    try:
        return data.get_device(db.read(), scope_org_id(), device_id)
    except data.NotFound:
        abort(404)


def _back() -> str:
    """Where to return after a change: a path on this site only, never another host."""
    target = request.form.get("back", "")
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("admin.devices")


@bp.route("/")
@role_required("admin")
def index() -> ResponseReturnValue:
    return redirect(url_for("admin.devices"))


# -- organisations --------------------------------------------------------------------------
@bp.route("/orgs", methods=["GET", "POST"])
@role_required("operator")
def orgs() -> ResponseReturnValue:
    conn = db.write()
    if request.method == "POST":
        try:
            org = registry.create_org(
                conn,
                request.form.get("name", "").strip(),
                request.form.get("display_name", "").strip() or None,
            )
        except registry.RegistryError as exc:
            flash(str(exc), "error")
        else:
            flash(f"Organisation {org['name']} created.", "info")
        return redirect(url_for("admin.orgs"))
    return render_template("admin/orgs.html", orgs=data.list_orgs(conn, None))


# -- users ----------------------------------------------------------------------------------
@bp.route("/users", methods=["GET", "POST"])
@role_required("admin")
def users_page() -> ResponseReturnValue:
    conn = db.write()
    org_id = scope_org_id()
    if request.method == "POST":
        role = request.form.get("role", "viewer")
        if role == "operator" and not has_role("operator"):
            abort(403)
        password = request.form.get("password", "")
        generated = not password
        if generated:
            password = users.generate_password()
        try:
            user = users.create_user(
                conn,
                request.form.get("email", ""),
                org=_org_for_new_object(),
                role=role,
                password=password,
            )
        except (users.UserError, registry.RegistryError) as exc:
            flash(str(exc), "error")
            return redirect(url_for("admin.users_page"))
        return no_store(
            render_template(
                "admin/user_created.html",
                user=user,
                password=password if generated else None,
            )
        )
    return render_template(
        "admin/users.html",
        users=users.list_users(conn, org_id=org_id),
        orgs=data.list_orgs(conn, org_id),
        roles=users.ROLES if has_role("operator") else users.ROLES[1:],
    )


def _user_in_scope(user_id: int) -> users.ListedUser:
    """A user this admin may manage: of their organisation (any, for an operator), and an
    operator only for an operator. 404 outside the organisation, 403 above one's role."""
    target = next(
        (u for u in users.list_users(db.write(), org_id=scope_org_id()) if u["id"] == user_id),
        None,
    )
    if target is None:
        abort(404)
    if target["role"] == "operator" and not has_role("operator"):
        abort(403)
    return target


def _is_me(target: users.ListedUser) -> bool:
    me = current_user()
    assert me is not None
    return bool(target["id"] == me["id"])


@bp.route("/users/<int:user_id>/delete", methods=["POST"])
@role_required("admin")
def delete_user(user_id: int) -> ResponseReturnValue:
    target = _user_in_scope(user_id)
    if _is_me(target):
        flash("You cannot delete your own account.", "error")
        return redirect(url_for("admin.users_page"))
    users.delete_user(db.write(), user_id, org_id=scope_org_id())
    flash(f"User {target['email']} deleted; their sessions and API tokens have ended.", "info")
    return redirect(url_for("admin.users_page"))


@bp.route("/users/<int:user_id>/disable", methods=["POST"])
@role_required("admin")
def disable_user(user_id: int) -> ResponseReturnValue:
    target = _user_in_scope(user_id)
    if _is_me(target):
        flash("You cannot disable your own account.", "error")
        return redirect(url_for("admin.users_page"))
    users.set_disabled(db.write(), user_id, True, org_id=scope_org_id())
    flash(f"User {target['email']} disabled: logged out everywhere, API tokens revoked.", "info")
    return redirect(url_for("admin.users_page"))


@bp.route("/users/<int:user_id>/enable", methods=["POST"])
@role_required("admin")
def enable_user(user_id: int) -> ResponseReturnValue:
    target = _user_in_scope(user_id)
    users.set_disabled(db.write(), user_id, False, org_id=scope_org_id())
    flash(f"User {target['email']} enabled: they can log in again.", "info")
    return redirect(url_for("admin.users_page"))


@bp.route("/users/<int:user_id>/tokens")
@role_required("admin")
def user_tokens(user_id: int) -> ResponseReturnValue:
    target = _user_in_scope(user_id)
    return render_template(
        "admin/user_tokens.html",
        user=target,
        tokens=users.list_api_tokens(db.write(), user_id),
    )


@bp.route("/users/<int:user_id>/tokens/<int:token_id>/revoke", methods=["POST"])
@role_required("admin")
def revoke_user_token(user_id: int, token_id: int) -> ResponseReturnValue:
    target = _user_in_scope(user_id)
    try:
        row = users.revoke_api_token(db.write(), token_id, user_id=user_id, org_id=scope_org_id())
    except users.UserError:
        abort(404)
    flash(f"API token {row['name'] or row['id']} of {target['email']} revoked.", "info")
    return redirect(url_for("admin.user_tokens", user_id=user_id))


# -- devices --------------------------------------------------------------------------------
def device_urls(creds: registry.DeviceCredentials) -> list[str]:
    """The broker URLs a device tries in order: home first, then the standbys (as the CLI's
    `mqtt_urls`); brokers this web host has no URL for are left out."""
    known: dict[str, str] = current_app.config.get("DEVICE_MQTT_URLS") or {}
    return urls_in_preference(creds.device_id, creds.broker, known)


@bp.route("/devices", methods=["GET", "POST"])
@role_required("admin")
def devices() -> ResponseReturnValue:
    conn = db.write()
    org_id = scope_org_id()
    if request.method == "POST":
        try:
            labels = registry.parse_labels(
                [p for p in request.form.get("labels", "").split(",") if p.strip()]
            )
            creds = registry.create_device(
                conn,
                request.form.get("device_id", "").strip(),
                org=_org_for_new_object(),
                display_name=request.form.get("display_name", "").strip(),
                labels=labels,
            )
        except registry.RegistryError as exc:
            flash(str(exc), "error")
            return redirect(url_for("admin.devices"))
        return no_store(
            render_template(
                "admin/credentials.html",
                credentials=[creds],
                urls=device_urls(creds),
                action="created",
            )
        )
    search = request.args.get("q", "").strip() or None
    rows, total = data.list_devices(conn, org_id, data.DeviceFilter(search), limit=200, offset=0)
    return render_template(
        "admin/devices.html",
        devices=rows,
        total=total,
        search=search or "",
        orgs=data.list_orgs(conn, org_id),
    )


@bp.route("/devices/<device_id>/rotate", methods=["POST"])
@role_required("admin")
def rotate(device_id: str) -> ResponseReturnValue:
    _device_or_404(device_id)
    creds = registry.rotate_secret(db.write(), device_id)
    return no_store(
        render_template(
            "admin/credentials.html", credentials=[creds], urls=device_urls(creds), action="rotated"
        )
    )


@bp.route("/devices/<device_id>/certificate", methods=["POST"])
@role_required("admin")
def issue_certificate(device_id: str) -> Any:
    """A new key pair and certificate for the device, shown once (the previous certificate is
    revoked). Only where this host has the device CA: a web host never makes a CA of its own,
    which devices and the broker would not trust (docs/devices.md)."""
    device = _device_or_404(device_id)
    ca_dir = current_app.config.get("DEVICE_CA_DIR")
    if ca_dir is None or not device_ca.has_device_ca(ca_dir):
        flash(
            "This web host has no device CA: issue the certificate with "
            f"`fieldhub device rotate {device_id} --cert` on the host that has it.",
            "error",
        )
        return redirect(url_for("admin.devices"))
    issued = device_ca.issue(ca_dir, device_id)
    certificates.record(db.write(), device_id, issued)
    return no_store(render_template("admin/certificate.html", device=device, issued=issued))


@bp.route("/devices/<device_id>/enable", methods=["POST"])
@role_required("admin")
def enable(device_id: str) -> ResponseReturnValue:
    _device_or_404(device_id)
    registry.set_enabled(db.write(), device_id, True)
    flash(f"Device {device_id} enabled: it can connect again.", "info")
    return redirect(_back())


@bp.route("/devices/<device_id>/disable", methods=["POST"])
@role_required("admin")
def disable(device_id: str) -> ResponseReturnValue:
    _device_or_404(device_id)
    registry.set_enabled(db.write(), device_id, False)
    flash(f"Device {device_id} disabled: the broker refuses it from now on.", "info")
    return redirect(_back())


@bp.route("/devices/<device_id>/attach", methods=["POST"])
@role_required("admin")
def attach(device_id: str) -> ResponseReturnValue:
    _device_or_404(device_id)
    gateway_id = request.form.get("gateway_id", "").strip()
    try:
        registry.attach_gateway(db.write(), device_id, gateway_id, org_id=scope_org_id())
    except registry.NotFound:
        flash(f"There is no device {gateway_id!r} in this organisation.", "error")
    except registry.RegistryError as exc:
        flash(str(exc), "error")
    else:
        flash(f"{device_id} is attached to gateway {gateway_id}.", "info")
    return redirect(_back())


@bp.route("/devices/<device_id>/detach", methods=["POST"])
@role_required("admin")
def detach(device_id: str) -> ResponseReturnValue:
    _device_or_404(device_id)
    gateway = registry.detach_gateway(db.write(), device_id, org_id=scope_org_id())
    if gateway is not None:
        flash(f"{device_id} is detached from gateway {gateway}.", "info")
    return redirect(_back())


@bp.route("/devices/import", methods=["GET", "POST"])
@role_required("admin")
def import_devices() -> ResponseReturnValue:
    conn = db.write()
    if request.method == "GET":
        return render_template("admin/import.html", orgs=data.list_orgs(conn, scope_org_id()))
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        flash("Choose a CSV file to upload.", "error")
        return redirect(url_for("admin.import_devices"))
    try:
        org = _org_for_new_object()
        registry.get_org(conn, org)
        text = upload.read().decode("utf-8-sig")
    except registry.RegistryError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.import_devices"))
    except UnicodeDecodeError:
        flash("The file is not UTF-8 text; save it as CSV (UTF-8) and upload again.", "error")
        return redirect(url_for("admin.import_devices"))
    rows = list(enumerate(csv.reader(io.StringIO(text)), start=1))
    if len(rows) > MAX_IMPORT_ROWS:
        flash(f"At most {MAX_IMPORT_ROWS} devices per upload; split the file.", "error")
        return redirect(url_for("admin.import_devices"))
    good, errors = registry.parse_device_rows(rows)
    secrets = {spec.device_id: generate_secret() for _, spec in good}
    inserted = registry.provision_devices(
        conn, org, [(spec, hash_secret(secrets[spec.device_id])) for _, spec in good]
    )
    for line, spec in good:
        if spec.device_id not in inserted:
            errors.append(registry.RowError(line, f"device {spec.device_id!r} already exists"))
    created = [
        registry.DeviceCredentials(spec.device_id, spec.device_id, secrets[spec.device_id], "")
        for _, spec in good
        if spec.device_id in inserted
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["device_id", "username", "password"])
    for creds in created:
        writer.writerow([creds.device_id, creds.username, creds.password])
    return no_store(
        render_template(
            "admin/import_result.html",
            created=len(created),
            errors=sorted(errors, key=lambda e: e.line),
            credentials_csv=buffer.getvalue(),
            org=org,
        )
    )


# -- alert rules and the webhook (admins of their organisation, operators of any) -----------
def _acting_org() -> dict[str, Any]:
    """The organisation a rules or webhook page acts in (an operator picks it by `org`)."""
    user = current_user()
    assert user is not None
    try:
        return serializers.acting_org(db.write(), user, request.values.get("org"))
    except serializers.UnknownOrg:
        abort(404)


def _rule_or_404(rule_id: int) -> tuple[int, dict[str, Any]]:
    conn = db.write()
    try:
        org_id = data.owner_org(conn, "rule", rule_id, scope_org_id())
        return org_id, analysis.get_alert_rule(conn, org_id, rule_id)
    except (data.NotFound, analysis.NotFound):
        abort(404)


def _org_by_id(org_id: int) -> dict[str, Any]:
    return next(o for o in data.list_orgs(db.write(), org_id))


def _rules_page(
    org: dict[str, Any], form: dict[str, Any] | None, status: int = 200
) -> ResponseReturnValue:
    return (
        render_template(
            "admin/rules.html",
            org=org,
            orgs=data.list_orgs(db.write(), scope_org_id()),
            rules=analysis.list_alert_rules(db.write(), org["id"]),
            form=form or {"enabled": True, "severity": "warning", "condition": "above"},
        ),
        status,
    )


@bp.route("/rules", methods=["GET", "POST"])
@role_required("admin")
def rules() -> ResponseReturnValue:
    org = _acting_org()
    if request.method == "GET":
        return _rules_page(org, None)
    form = serializers.rule_from_form(request.form)
    try:
        rule = analysis.create_alert_rule(db.write(), org["id"], form)
    except analysis.AnalysisRequestError as exc:
        flash(serializers.sentence(exc), "error")
        return _rules_page(org, {**form, "target": request.form.get("target")}, 400)
    flash(f"Rule {rule['name']} created; it is evaluated within 15 seconds.", "info")
    return redirect(url_for("admin.rules", org=org["name"]))


@bp.route("/rules/<int:rule_id>", methods=["GET", "POST"])
@role_required("admin")
def edit_rule(rule_id: int) -> ResponseReturnValue:
    org_id, rule = _rule_or_404(rule_id)
    org = _org_by_id(org_id)
    if request.method == "GET":
        return render_template("admin/rule_edit.html", org=org, rule=rule, form=rule)
    form = serializers.rule_from_form(request.form)
    try:
        updated = analysis.update_alert_rule(db.write(), org_id, rule_id, form)
    except analysis.NotFound:
        abort(404)
    except analysis.AnalysisRequestError as exc:
        flash(serializers.sentence(exc), "error")
        shown = {**form, "target": request.form.get("target")}
        return render_template("admin/rule_edit.html", org=org, rule=rule, form=shown), 400
    flash(f"Rule {updated['name']} saved.", "info")
    return redirect(url_for("admin.rules", org=org["name"]))


@bp.route("/rules/<int:rule_id>/delete", methods=["POST"])
@role_required("admin")
def delete_rule(rule_id: int) -> ResponseReturnValue:
    org_id, rule = _rule_or_404(rule_id)
    try:
        analysis.delete_alert_rule(db.write(), org_id, rule_id)
    except analysis.NotFound:
        abort(404)
    flash(f"Rule {rule['name']} and its alerts deleted.", "info")
    return redirect(url_for("admin.rules", org=_org_by_id(org_id)["name"]))


@bp.route("/webhook", methods=["GET", "POST"])
@role_required("admin")
def webhook() -> ResponseReturnValue:
    org = _acting_org()
    conn = db.write()
    if request.method == "GET":
        return _webhook_page(org, None)
    url = request.form.get("url", "")
    try:
        saved = analysis.set_webhook(
            conn,
            org["id"],
            url,
            allowed_networks=current_app.config["WEBHOOK_ALLOWED_NETWORKS"],
            enabled=request.form.get("enabled") in ("on", "true", "1"),
        )
    except analysis.AnalysisRequestError as exc:
        # The page again, with what was typed and why it is refused (a refused target, a
        # host that does not resolve): 422 like the API.
        flash(serializers.sentence(exc), "error")
        return _webhook_page(org, url, 422)
    return no_store(render_template("admin/webhook_secret.html", org=org, hook=saved))


def _webhook_page(
    org: dict[str, Any], typed_url: str | None, status: int = 200
) -> ResponseReturnValue:
    conn = db.write()
    return (
        render_template(
            "admin/webhook.html",
            org=org,
            orgs=data.list_orgs(conn, scope_org_id()),
            hook=analysis.get_webhook(conn, org["id"]),
            typed_url=typed_url,
            deliveries=analysis.list_webhook_deliveries(conn, org["id"], limit=100),
        ),
        status,
    )


@bp.route("/webhook/delete", methods=["POST"])
@role_required("admin")
def delete_webhook() -> ResponseReturnValue:
    org = _acting_org()
    analysis.delete_webhook(db.write(), org["id"])
    flash("Webhook removed: alerts are no longer sent anywhere.", "info")
    return redirect(url_for("admin.webhook", org=org["name"]))


# -- job runs (operators) ---------------------------------------------------------------------
@bp.route("/jobs")
@role_required("operator")
def jobs() -> ResponseReturnValue:
    job = request.args.get("job", "").strip() or None
    names = [j.name for j in JOBS]
    if job not in names:
        job = None
    return render_template(
        "admin/jobs.html",
        runs=analysis.list_job_runs(db.write(), job=job, limit=200),
        job=job or "",
        names=names,
    )


# -- system: where reads come from, replication lag (operators) -------------------------------
@bp.route("/system")
@role_required("operator")
def system() -> ResponseReturnValue:
    return render_template(
        "admin/system.html", state=replication.replication_state(db.read_side(), db.write())
    )
