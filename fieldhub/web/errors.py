"""Errors as pages a person can act on; for programs (/api/v1, and pages' scripts that ask for
JSON), RFC 9457 problem documents (fieldhub/web/problems.py), the one JSON error format."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, make_response, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, InternalServerError

from fieldhub.web import problems

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

PROBLEM_JSON = "application/problem+json"


def problem_response(
    kind: problems.ProblemType,
    detail: str,
    errors: tuple[problems.FieldProblem, ...] = (),
    *,
    status: int = 0,
    extensions: dict[str, object] | None = None,
) -> Response:
    """An RFC 9457 problem document (fieldhub/web/problems.py) as the response."""
    response = current_app.response_class(
        current_app.json.dumps(problems.body(kind, detail, errors, status, extensions)),
        status=status or kind.status,
        mimetype=PROBLEM_JSON,
    )
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="fieldhub"'
    return response


def render_problem(exc: problems.Problem) -> Response:
    return problem_response(exc.type, exc.detail, exc.errors, extensions=exc.extensions)


def init_app(app: Flask) -> None:
    app.register_error_handler(problems.Problem, render_problem)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def _wants_json() -> bool:
    """The API always; a page's script that asked for JSON. People get pages."""
    return request.path.startswith("/api/") or request.accept_mimetypes.best in (
        "application/json",
        PROBLEM_JSON,
    )


def _too_large_advice() -> str:
    limit = request.max_content_length
    if not limit:
        return PAGES[413][1]
    size = f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"
    return f"Uploads here are limited to {size}: split the file into several."


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    status = exc.code or 500
    if _wants_json():
        kind = problems.for_status(status)
        detail = exc.description if status in (400, 422) and exc.description else kind.title
        if status == 413:
            detail = "The upload is too large. " + _too_large_advice()
        elif status == 405:
            detail = f"{request.method} is not allowed here."
        elif exc.description == "csrf":
            detail = "The form's security token is missing or stale: reload the page."
        response = problem_response(kind, detail, status=status)
        # Allow (405), Retry-After (429, 503): what werkzeug's exception says to send.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response
    title, advice = PAGES.get(status, (exc.name, ""))
    if status == 413:
        advice = _too_large_advice()
    if status == 429 and exc.description != type(exc).description:
        # A refusal that says what to wait for (an export slot, say) is more use than ours.
        title, advice = "Too many requests at once", exc.description or advice
    if status == 400 and exc.description == "csrf":
        title = "This form has expired"
        advice = "Reload the page and submit it again. (Its security token was missing or stale.)"
    page = make_response(
        render_template("error.html", status=status, title=title, advice=advice), status
    )
    for name, value in exc.get_headers():
        if name.lower() == "retry-after":
            page.headers[name] = value
    return page


def _unexpected(exc: Exception) -> ResponseReturnValue:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _http_error(InternalServerError())
