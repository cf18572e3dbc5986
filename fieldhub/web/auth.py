"""Logging in and out, sessions, roles, tenant scope and CSRF.

Sessions are rows of `web_sessions` (the cookie holds a random token; the table holds its
hash), so logout and a password change end them in every worker at once. Every
state-changing request of a logged-in browser must carry the session's CSRF token (form
field `csrf_token` or header `X-CSRF-Token`); the login form, which has no session yet, uses a
double-submit cookie. The JSON API authenticates with bearer tokens only, never cookies, so
a browser cannot be tricked into calling it."""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue

from fieldhub.core import users
from fieldhub.core.db import Conn
from fieldhub.web import db
from fieldhub.web.proxies import client_address

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)

SESSION_COOKIE = "fh_session"
LOGIN_CSRF_COOKIE = "fh_login_csrf"
# Authenticated by what each request carries (an API token, a device's credentials), never by
# a cookie: no session is loaded and no CSRF token asked for.
NO_COOKIE_BLUEPRINTS = frozenset({"api", "ingest"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ROLE_RANK = {"viewer": 0, "member": 1, "admin": 2, "operator": 3}

F = TypeVar("F", bound=Callable[..., Any])


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.before_request(_load_user)
    app.before_request(_check_csrf)
    app.after_request(_security_headers)


# -- who is asking ---------------------------------------------------------------------------
def current_user() -> users.SessionUser | None:
    user: users.SessionUser | None = g.get("user")
    return user


def scope_org_id() -> int | None:
    """The organisation every query of this request is limited to (None: an operator)."""
    user = current_user()
    if user is None:
        abort(401)
    return None if user["role"] == "operator" else int(user["org_id"])


def has_role(minimum: str) -> bool:
    user = current_user()
    return user is not None and ROLE_RANK[user["role"]] >= ROLE_RANK[minimum]


def login_required(view: F) -> F:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_user() is None:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return cast(F, wrapped)


def role_required(minimum: str) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if current_user() is None:
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if not has_role(minimum):
                abort(403)
            return view(*args, **kwargs)

        return cast(F, wrapped)

    return decorator


def _load_user() -> None:
    g.user = None
    if request.blueprint in NO_COOKIE_BLUEPRINTS or (request.endpoint or "").startswith("static"):
        return
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        g.user = users.session_user(db.write(), token)


def credential_check() -> Callable[[Conn], bool]:
    """How something that outlives this request (a live stream) checks, later, that the
    credential the request came with still lets its user in."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return lambda conn: False
    return lambda conn: users.session_valid(conn, token)


def csrf_token() -> str:
    user = current_user()
    if user is not None:
        return str(user["csrf_token"])
    token = g.get("login_csrf")
    if token is None:
        token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
        g.login_csrf = token
    return str(token)


def _check_csrf() -> None:
    if request.method not in UNSAFE_METHODS or request.blueprint in NO_COOKIE_BLUEPRINTS:
        return
    if request.routing_exception is not None:
        # No such route or method: answer that (404/405), not "form expired".
        return
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    user = current_user()
    expected = user["csrf_token"] if user else request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(str(sent), str(expected)):
        abort(400, description="csrf")


def _cookie_secure() -> bool:
    return bool(request.is_secure or current_app.config["COOKIE_SECURE_ALWAYS"])


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
    )
    if g.get("login_csrf") and current_user() is None:
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            g.login_csrf,
            httponly=True,
            samesite="Lax",
            secure=_cookie_secure(),
            max_age=3600,
        )
    return response


def no_store(html: str) -> Response:
    """A page that shows a secret once: never kept by a browser cache or a proxy."""
    response = Response(html)
    response.headers["Cache-Control"] = "no-store"
    return response


def _safe_next(target: str | None) -> str:
    """Only same-site paths, so a login link cannot bounce a user to another site."""
    if not target:
        return url_for("pages.devices")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("pages.devices")
    return target


def _policy() -> users.ThrottlePolicy:
    cfg = current_app.config
    return users.ThrottlePolicy(
        window_s=int(cfg["LOGIN_WINDOW_S"]),
        per_email=int(cfg["LOGIN_MAX_PER_EMAIL"]),
        per_ip=int(cfg["LOGIN_MAX_PER_IP"]),
    )


# -- routes ---------------------------------------------------------------------------------
@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    if request.method == "GET":
        if current_user() is not None:
            return redirect(_safe_next(request.args.get("next")))
        return render_template("login.html", next=request.args.get("next", ""), email="")
    email = request.form.get("email", "").strip()
    password = request.form.get("password", "")
    next_url = request.form.get("next", "")
    if not email or not password:
        flash("Enter your email and password.", "error")
        return render_template("login.html", next=next_url, email=email), 400
    address = client_address()
    try:
        user, wait = users.attempt_login(db.write(), email, password, address, _policy())
    except users.AccountDisabled as exc:
        flash(str(exc).capitalize() + ".", "error")
        return render_template("login.html", next=next_url, email=email), 403
    if wait is not None:
        log.warning("login for %r from %s refused: too many failed attempts", email, address)
        minutes = max(1, round(wait / 60))
        flash(
            f"Too many failed attempts. Try again in about {minutes} minute"
            f"{'s' if minutes != 1 else ''}, or ask your administrator to reset your password.",
            "error",
        )
        response = current_app.make_response(
            (render_template("login.html", next=next_url, email=email), 429)
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    if user is None:
        flash("That email and password do not match an account.", "error")
        return render_template("login.html", next=next_url, email=email), 401
    token = users.create_session(db.write(), user["id"])
    # Housekeeping rides on logins: expired sessions and failures older than the window go.
    users.prune(db.write(), _policy())
    done = redirect(_safe_next(next_url))
    done.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Lax",
        secure=_cookie_secure(),
        max_age=users.SESSION_TTL_S,
    )
    done.delete_cookie(LOGIN_CSRF_COOKIE)
    return done


@bp.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        users.delete_session(db.write(), token)
    g.user = None
    response = redirect(url_for("auth.login"))
    response.delete_cookie(SESSION_COOKIE)
    return response


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def change_password() -> ResponseReturnValue:
    if request.method == "GET":
        return render_template("password.html")
    user = current_user()
    assert user is not None
    new = request.form.get("new_password", "")
    if new != request.form.get("confirm_password", ""):
        flash("The two new passwords differ.", "error")
        return render_template("password.html"), 400
    try:
        users.change_password(db.write(), user["id"], request.form.get("current_password", ""), new)
    except users.UserError as exc:
        flash(str(exc).capitalize() + ".", "error")
        return render_template("password.html"), 400
    # Every session of the user has ended, this one included: log in afresh.
    response = redirect(url_for("auth.login"))
    response.delete_cookie(SESSION_COOKIE)
    flash("Password changed; your API tokens were revoked. Log in with the new password.", "info")
    return response
