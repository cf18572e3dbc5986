"""Errors as pages a person can act on (or, under /api/v1, the API's one error format)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

# What to say and what to offer for each status; the default text of werkzeug is for
# developers, not for the person looking at the page.
PAGES: dict[int, tuple[str, str]] = {
    400: ("That request could not be handled", "Go back, check what you entered and try again."),
    401: ("Please log in", "Your session has ended. Log in again to continue."),
    403: (
        "You do not have access to this",
        "Your role does not allow this action. Ask an administrator of your organisation "
        "if you need it.",
    ),
    404: (
        "Not found",
        "There is nothing here, or it belongs to an organisation you are not part of. "
        "Check the address or go back to the device list.",
    ),
    405: ("That action is not available here", "Use the buttons on the page instead."),
    413: ("That file is too large", "Upload a smaller file, or split it into several."),
    429: ("Too many attempts", "Wait a few minutes before trying again."),
    500: (
        "Something went wrong on our side",
        "The error has been logged. Try again in a moment; if it keeps happening, tell your "
        "operator what you were doing.",
    ),
    503: ("The service is busy", "Try again in a moment."),
}

API_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def api_error(status: int, message: str, **extra: Any) -> Any:
    body: dict[str, Any] = {
        "error": {"code": API_CODES.get(status, "error"), "message": message, **extra}
    }
    response = jsonify(body)
    response.status_code = status
    return response


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def _too_large_advice() -> str:
    limit = request.max_content_length
    if not limit:
        return PAGES[413][1]
    size = f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"
    return f"Uploads here are limited to {size}: split the file into several."


def _http_error(exc: HTTPException) -> Any:
    status = exc.code or 500
    if _wants_json():
        message = exc.description if status in (400, 422) and exc.description else None
        if status == 413:
            message = "the upload is too large. " + _too_large_advice()
        response = api_error(status, message or PAGES.get(status, ("Error", ""))[0])
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="fieldhub"'
        return response
    title, advice = PAGES.get(status, (exc.name, ""))
    if status == 413:
        advice = _too_large_advice()
    if status == 400 and exc.description == "csrf":
        title = "This form has expired"
        advice = "Reload the page and submit it again. (Its security token was missing or stale.)"
    return render_template("error.html", status=status, title=title, advice=advice), status


def _unexpected(exc: Exception) -> Any:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _http_error(InternalServerError())
