"""A person's own account page: who they are, their time zone, the way to their password, and
their API tokens (made, listed and revoked here; shown once)."""

from __future__ import annotations

from flask import Blueprint, Flask, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from fieldhub.core import time_zones, users
from fieldhub.web import db, serializers
from fieldhub.web.auth import current_user, login_required, no_store

bp = Blueprint("account", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


# What the page offers for a new token's lifetime (the CLI takes any, up to 3650d).
TOKEN_EXPIRY_CHOICES = (
    ("7d", "in 7 days"),
    ("30d", "in 30 days"),
    ("90d", "in 90 days"),
    ("365d", "in a year"),
    ("never", "never (until revoked)"),
)


def _page(status: int = 200) -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    return (
        render_template(
            "account.html",
            zones=time_zones.choices(),
            tokens=users.list_api_tokens(db.write(), int(user["id"])),
            expiry_choices=TOKEN_EXPIRY_CHOICES,
        ),
        status,
    )


@bp.route("/account")
@login_required
def show() -> ResponseReturnValue:
    return _page()


@bp.route("/account/time-zone", methods=["POST"])
@login_required
def set_time_zone() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    try:
        zone = users.set_time_zone(db.write(), user["id"], request.form.get("time_zone"))
    except users.UserError as exc:
        flash(serializers.sentence(exc) + " Your time zone is unchanged.", "error")
        return _page(400)
    if zone is None:
        flash("Times are now shown in your browser's time zone.", "info")
    else:
        flash(f"Times are now shown in {zone}.", "info")
    return redirect(url_for("account.show"))


@bp.route("/account/tokens", methods=["POST"])
@login_required
def create_token() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    choice = request.form.get("expires_in", "90d")
    try:
        expires_in = None if choice == "never" else users.parse_expires_in(choice)
        token, row = users.create_api_token(
            db.write(), str(user["email"]), name=request.form.get("name", ""), expires_in=expires_in
        )
    except users.UserError as exc:
        flash(serializers.sentence(exc), "error")
        return redirect(url_for("account.show", _anchor="api-tokens"))
    return no_store(render_template("token_created.html", token=token, row=row))


@bp.route("/account/tokens/<int:token_id>/revoke", methods=["POST"])
@login_required
def revoke_token(token_id: int) -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    try:
        row = users.revoke_api_token(db.write(), token_id, user_id=int(user["id"]))
    except users.UserError:
        abort(404)
    flash(f"API token {row['name'] or row['id']} revoked.", "info")
    return redirect(url_for("account.show", _anchor="api-tokens"))
