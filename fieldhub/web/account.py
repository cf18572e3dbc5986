"""A person's own account page: who they are, their time zone, and the way to their password."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, flash, redirect, render_template, request, url_for

from fieldhub.core import time_zones, users
from fieldhub.web import db, serializers
from fieldhub.web.auth import current_user, login_required

bp = Blueprint("account", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _page(status: int = 200) -> Any:
    return render_template("account.html", zones=time_zones.choices()), status


@bp.route("/account")
@login_required
def show() -> Any:
    return _page()


@bp.route("/account/time-zone", methods=["POST"])
@login_required
def set_time_zone() -> Any:
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
