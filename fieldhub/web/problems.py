"""The API's error types (RFC 9457 problem details): what each means and what to do about it.

Every error of /api/v1 (and of the pages' JSON answers) is an `application/problem+json` body
{type, title, status, detail[, errors]}. `type` is a URI reference, "/api/v1/problems/<slug>":
the same string on every fieldhub deployment, so clients compare it as it is, and resolved
against the API's own address it opens the page that documents it (fieldhub/web/api.py
serves those pages from this catalogue). RFC 9457 allows relative references; absolute ones
would differ from one deployment to the next.

Pure: the catalogue and the exception; fieldhub/web/errors.py renders them."""

from __future__ import annotations

import dataclasses

TYPE_PREFIX = "/api/v1/problems/"


@dataclasses.dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str
    description: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


CATALOGUE: tuple[ProblemType, ...] = (
    ProblemType(
        "invalid-parameter",
        400,
        "A parameter of the request is not valid",
        "A query parameter is missing, of the wrong type or out of its bounds. `errors` lists "
        "each one as {parameter, detail}. Correct the request; repeating it unchanged fails "
        "the same way.",
    ),
    ProblemType(
        "invalid-cursor",
        400,
        "The page cursor is not valid",
        "The `cursor` parameter is not one this API made for this list (it was edited, cut "
        "short, or taken from another list). Start again from the first page, or follow the "
        "`next` URL of the previous page exactly as given.",
    ),
    ProblemType(
        "malformed-body",
        400,
        "The request body is not valid JSON",
        "The body could not be parsed as JSON. `detail` says where parsing stopped.",
    ),
    ProblemType(
        "unauthorized",
        401,
        "No valid API token",
        "Send an API token as `Authorization: Bearer <token>`. A token stops working when it "
        "is revoked or expires, or when its user is disabled or changes their password; create "
        "one on your account page or with `fieldhub token create EMAIL`.",
    ),
    ProblemType(
        "device-unauthorized",
        401,
        "No valid device credentials",
        "HTTP ingest takes the device's own credentials: its id and secret as HTTP Basic "
        "(`curl -u DEVICE_ID:SECRET`), or a client certificate where the TLS front asks for "
        "one. The secret is the one `fieldhub device create` or `rotate` showed; a deleted "
        "device's credentials are void.",
    ),
    ProblemType(
        "device-disabled",
        403,
        "The device is disabled",
        "A disabled device may not send data (nor log in to the broker). An administrator of "
        "its organisation can enable it again.",
    ),
    ProblemType(
        "forbidden",
        403,
        "Your role may not do this",
        "The token's user has a role below what this operation needs (the operation's summary "
        "names it: member, admin or operator). Ask an administrator of your organisation.",
    ),
    ProblemType(
        "not-found",
        404,
        "Not found",
        "There is no such object, or it belongs to another organisation (the API does not say "
        "which), or there is no such URL.",
    ),
    ProblemType(
        "method-not-allowed",
        405,
        "Method not allowed",
        "This URL does not accept this HTTP method; the `Allow` header lists those it does.",
    ),
    ProblemType(
        "conflict",
        409,
        "The object is not in a state that allows this",
        "For example a command that is already final cannot be cancelled, an alert that is "
        "not active cannot be acknowledged. Fetch the object to see its state.",
    ),
    ProblemType(
        "reading-conflict",
        409,
        "A reading is already stored with other content",
        "A reading's identity is its device, metric, unit, time and seq; one that is stored "
        "keeps its content. The request's other readings were stored (`stored`, `duplicates`) "
        "and the request is kept as a dead letter with reason `conflict`. Send changed data "
        "with a new `seq` or time.",
    ),
    ProblemType(
        "precondition-failed",
        412,
        "The object changed since you read it",
        "If-Match named a version the object is no longer at (`current_version` says which it "
        "is at). Read it again, reapply your change, and send that version.",
    ),
    ProblemType(
        "too-large",
        413,
        "The request body is too large",
        "Uploads are limited (imports to 100 MiB by default, other bodies to 8 MiB); split the "
        "data into several requests.",
    ),
    ProblemType(
        "unsupported-media-type",
        415,
        "Unsupported Content-Type",
        "Send JSON bodies with `Content-Type: application/json` and uploads as "
        "`multipart/form-data`, as the operation documents.",
    ),
    ProblemType(
        "invalid-body",
        422,
        "The request body is not valid",
        "The body is JSON (or a form) but does not match the operation's schema. `errors` lists "
        "each bad member as {pointer, detail}, with a JSON Pointer into the body (for a form, "
        "the field's name).",
    ),
    ProblemType(
        "refused",
        422,
        "The request was refused",
        "The request is well-formed but cannot be carried out: a disabled device, too many "
        "pending commands, a rule naming an unknown device, an unreadable upload. `detail` says "
        "which rule refused it.",
    ),
    ProblemType(
        "dead-letter",
        422,
        "The payload breaks the device contract",
        "Nothing of the request was stored; it is kept as a dead letter, and `reason` names the "
        "rule it broke with the same code the MQTT bridge uses (invalid_json, too_many_readings, "
        "ts_invalid, ...; docs/devices.md). Repeating it unchanged fails the same way.",
    ),
    ProblemType(
        "idempotency-key-reused",
        422,
        "The Idempotency-Key was used for another request",
        "A retry must repeat the first request's body exactly. Use a new key for new data; "
        "keys are kept for 24 hours.",
    ),
    ProblemType(
        "too-many-requests",
        429,
        "Too many requests",
        "Slow down; the `Retry-After` header, when present, says for how many seconds.",
    ),
    ProblemType(
        "internal-error",
        500,
        "Internal error",
        "fieldhub failed to answer; the error is logged on the server. Retrying later may "
        "work; if it keeps happening, tell your operator the time and the request.",
    ),
    ProblemType(
        "unavailable",
        503,
        "Service unavailable",
        "A service fieldhub needs (the database) is not answering. Retry after a moment.",
    ),
)
BY_SLUG = {p.slug: p for p in CATALOGUE}
# The type of an error that only has an HTTP status (werkzeug's, a route that does not exist).
FOR_STATUS = {
    400: BY_SLUG["invalid-parameter"],
    401: BY_SLUG["unauthorized"],
    403: BY_SLUG["forbidden"],
    404: BY_SLUG["not-found"],
    405: BY_SLUG["method-not-allowed"],
    409: BY_SLUG["conflict"],
    412: BY_SLUG["precondition-failed"],
    413: BY_SLUG["too-large"],
    415: BY_SLUG["unsupported-media-type"],
    422: BY_SLUG["invalid-body"],
    429: BY_SLUG["too-many-requests"],
    500: BY_SLUG["internal-error"],
    503: BY_SLUG["unavailable"],
}


@dataclasses.dataclass(frozen=True)
class FieldProblem:
    """One entry of `errors`: a query or path `parameter`, or a JSON `pointer` into the body."""

    detail: str
    parameter: str | None = None
    pointer: str | None = None


class Problem(Exception):
    """Raised by a view; rendered as application/problem+json with the type's status."""

    def __init__(
        self,
        slug: str,
        detail: str,
        *,
        errors: tuple[FieldProblem, ...] = (),
        extensions: dict[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.type = BY_SLUG[slug]
        self.detail = detail
        self.errors = errors
        # Members a type documents beyond RFC 9457's (precondition-failed: current_version).
        self.extensions = extensions or {}


def body(
    kind: ProblemType,
    detail: str,
    errors: tuple[FieldProblem, ...] = (),
    status: int = 0,
    extensions: dict[str, object] | None = None,
) -> dict[str, object]:
    """The problem document. `status` overrides the type's (an HTTP error without a type of its
    own, e.g. 418, gets the nearest generic type but keeps its status)."""
    document: dict[str, object] = {
        "type": kind.uri,
        "title": kind.title,
        "status": status or kind.status,
        "detail": detail,
    }
    document.update(extensions or {})
    if errors:
        document["errors"] = [
            {k: v for k, v in dataclasses.asdict(e).items() if v is not None} for e in errors
        ]
    return document


def for_status(status: int) -> ProblemType:
    if status in FOR_STATUS:
        return FOR_STATUS[status]
    return FOR_STATUS[500] if status >= 500 else FOR_STATUS[400]
