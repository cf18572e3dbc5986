"""The API's operations: each view bound to one declaration that both parses its requests and
describes it in the OpenAPI document, so the two cannot drift.

A view declares itself with `@API.operation(method, path, operation_id, summary=...)`; its
signature is the rest of the declaration (fieldhub/web/api_shapes.py has the types):

    def send_command(device_id: DeviceId, body: NewCommand) -> Command

- path parameters by name (a value that does not fit the type is a 404: no such object),
- `query:` a dataclass of the query string (a misfit is a 400 problem naming each parameter),
- `body:` a dataclass of the JSON body, or of the multipart form when `media` says so
  (wrong Content-Type 415, malformed JSON 400, a misfit 422 naming each member),
- `after:` the NamedTuple key of a paged list, decoded from `query.cursor` (a cursor this list
  did not make is a 400 problem); the view answers `page(rows, limit)`'s link as `next`,
- the return type is the response body of `status` (None: 204, no body).
`role` is checked before the view runs (403); the view scopes every object to the caller.
The document (`API.document()`) lists exactly the registered operations with these types and
the problem responses each can give; tests/web/test_openapi.py runs schemathesis against it."""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints
from urllib.parse import urlencode

import orjson
from flask import Blueprint, Response, current_app, g, request

from fieldhub.web import contract, cursors, problems
from fieldhub.web.api_shapes import Problem as ProblemShape
from fieldhub.web.auth import ROLE_RANK

F = TypeVar("F", bound=Callable[..., Any])
JSON = "application/json"
MULTIPART = "multipart/form-data"
PROBLEM_JSON = "application/problem+json"
_PATH_PARAM = re.compile(r"\{(\w+)\}")
# Parameters lists had once: refused with a pointer to what replaced them (docs/api.md), not
# ignored, or a client paging by offset would read page one for ever.
GONE = {"offset": "is no longer supported: follow `next` (a cursor)"}


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    status: int
    role: str | None
    path_params: tuple[tuple[str, Any], ...]
    query: type | None
    body: type | None
    media: str
    response: Any
    key: type | None
    errors: tuple[int, ...]

    def error_statuses(self) -> list[int]:
        statuses = {401, *self.errors}
        if self.role:
            statuses.add(403)
        if self.path_params:
            statuses.add(404)
        if self.query is not None:
            statuses.add(400)
        if self.body is not None:
            statuses.update((400, 413, 415, 422))
        return sorted(statuses)


class Api:
    def __init__(self, blueprint: Blueprint, title: str, description: str) -> None:
        self.blueprint = blueprint
        self.title = title
        self.description = description
        self.operations: list[Operation] = []
        self._documents: dict[str, dict[str, Any]] = {}

    def operation(
        self,
        method: str,
        path: str,
        operation_id: str,
        *,
        summary: str,
        description: str = "",
        status: int = 200,
        role: str | None = None,
        media: str = JSON,
        errors: tuple[int, ...] = (),
    ) -> Callable[[F], F]:
        def register(view: F) -> F:
            hints = get_type_hints(view, include_extras=True)
            path_params = tuple((name, hints[name]) for name in _PATH_PARAM.findall(path))
            returned = hints.get("return")
            op = Operation(
                method=method,
                path=path,
                operation_id=operation_id,
                summary=summary,
                description=description,
                status=status,
                role=role,
                path_params=path_params,
                query=hints.get("query"),
                body=hints.get("body"),
                media=media,
                response=None if returned is type(None) else returned,
                key=_optional_of(hints["after"]) if "after" in hints else None,
                errors=errors,
            )
            if op.key is not None and (op.query is None or not _has_field(op.query, "cursor")):
                raise TypeError(f"{operation_id}: a paged list needs a query with a cursor")
            self.operations.append(op)
            self.blueprint.add_url_rule(
                _flask_rule(path, path_params),
                endpoint=view.__name__,
                view_func=_handler(op, view),
                methods=[method],
            )
            return view

        return register

    def document(self, server_url: str) -> dict[str, Any]:
        """The OpenAPI 3.0 document of every operation (made once per server URL)."""
        if server_url not in self._documents:
            self._documents[server_url] = self._build(server_url)
        return self._documents[server_url]

    def _build(self, server_url: str) -> dict[str, Any]:
        schemas = contract.Schemas()
        problem_ref = schemas.of(ProblemShape)
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            parameters = [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": schemas.of(tp, request=True),
                    **_description(tp),
                }
                for name, tp in op.path_params
            ]
            if op.query is not None:
                for name, tp, required, default in contract.fields_of(op.query):
                    parameters.append(
                        {
                            "name": name,
                            "in": "query",
                            "required": required,
                            "schema": schemas.of(tp, default, request=True),
                            **_description(tp),
                        }
                    )
            responses: dict[str, Any] = {}
            if op.response is None:
                responses[str(op.status)] = {"description": "Done; no content."}
            else:
                responses[str(op.status)] = {
                    "description": op.summary,
                    "content": {JSON: {"schema": schemas.of(op.response)}},
                }
            for status in op.error_statuses():
                responses[str(status)] = {
                    "description": " / ".join(
                        f"{kind.title} ({kind.uri})"
                        for kind in problems.CATALOGUE
                        if kind.status == status
                    ),
                    "content": {PROBLEM_JSON: {"schema": problem_ref}},
                }
            entry: dict[str, Any] = {
                "operationId": op.operation_id,
                "summary": op.summary,
                "tags": [op.path.split("/")[1]],
                "parameters": parameters,
                "responses": responses,
            }
            notes = [op.description] if op.description else []
            if op.role:
                notes.append(f"Needs the role {op.role} or above.")
            if op.key is not None:
                notes.append("A paged list: follow `next` until it is null (see Pagination above).")
            if notes:
                entry["description"] = " ".join(notes)
            if op.body is not None:
                entry["requestBody"] = {
                    "required": True,
                    "content": {op.media: {"schema": schemas.of(op.body, request=True)}},
                }
            paths.setdefault(op.path, {})[op.method.lower()] = entry
        return {
            "openapi": "3.0.3",
            "info": {"title": self.title, "version": "1", "description": self.description},
            "servers": [{"url": server_url}],
            "security": [{"bearer": []}],
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": schemas.components,
            },
            "paths": paths,
        }


def _description(tp: Any) -> dict[str, str]:
    text = contract.doc_of(tp)
    return {"description": text} if text else {}


def _optional_of(tp: Any) -> type:
    if get_origin(tp) in (Union, types.UnionType):
        return cast(type, next(a for a in get_args(tp) if a is not type(None)))
    return cast(type, tp)


def _has_field(cls: type, name: str) -> bool:
    return any(field[0] == name for field in contract.fields_of(cls))


def _flask_rule(path: str, path_params: tuple[tuple[str, Any], ...]) -> str:
    kinds = dict(path_params)

    def converter(match: re.Match[str]) -> str:
        name = match.group(1)
        # Flask's int converter takes digits only: anything else is a 404 of the routing.
        is_int = contract.base_of(kinds[name]) is int
        return f"<int:{name}>" if is_int else f"<{name}>"

    return _PATH_PARAM.sub(converter, path)


def _handler(op: Operation, view: Callable[..., Any]) -> Callable[..., Response]:
    def handle(**path_values: object) -> Response:
        g.api_operation = op
        kwargs: dict[str, object] = {}
        for name, tp in op.path_params:
            try:
                kwargs[name] = contract.parse_text(tp, str(path_values[name]), name)
            except contract.Invalid:
                detail = f"There is no such {name.replace('_', ' ').removesuffix(' id')}."
                raise problems.Problem("not-found", detail) from None
        if op.role is not None:
            require_role(op.role)
        if op.query is not None:
            try:
                query: object = contract.parse_query(
                    op.query,
                    request.args,
                    repeated=[name for name, values in request.args.lists() if len(values) > 1],
                    gone=GONE if op.key is not None else {},
                )
            except contract.Invalid as exc:
                raise _invalid(
                    "invalid-parameter", "A query parameter is not valid.", exc
                ) from None
            kwargs["query"] = query
            if op.key is not None:
                kwargs["after"] = _after(op, op.key, getattr(query, "cursor", None))
        if op.body is not None:
            kwargs["body"] = _read_body(op, op.body)
        result = view(**kwargs)
        if op.response is None:
            return Response(status=op.status)
        response = current_app.response_class(
            current_app.json.dumps(result), status=op.status, mimetype=JSON
        )
        return response

    handle.__name__ = view.__name__
    handle.__doc__ = view.__doc__
    return handle


def require_role(minimum: str) -> None:
    role = g.api_user["role"]
    if ROLE_RANK[role] < ROLE_RANK[minimum]:
        raise problems.Problem(
            "forbidden", f"Your role ({role}) cannot do this; it needs {minimum}."
        )


def _invalid(slug: str, detail: str, exc: contract.Invalid) -> problems.Problem:
    errors = tuple(
        problems.FieldProblem(e.detail, parameter=e.where)
        if e.location in ("query", "path")
        else problems.FieldProblem(e.detail, pointer="#" + e.where)
        for e in exc.errors
    )
    first = exc.errors[0]
    name = first.where.removeprefix("/") or "the body"
    summary = f"{name} {first.detail}" + (
        f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    )
    return problems.Problem(slug, f"{detail} {summary}.", errors=errors)


def _after(op: Operation, key: type, cursor: object) -> object:
    if cursor is None:
        return None
    try:
        return cursors.decode(op.operation_id, cast(type[tuple[Any, ...]], key), str(cursor))
    except cursors.InvalidCursor as exc:
        raise problems.Problem(
            "invalid-cursor",
            f"{exc}: start from the first page or follow `next` as given.",
            errors=(problems.FieldProblem(str(exc), parameter="cursor"),),
        ) from None


def _read_body(op: Operation, cls: type) -> object:
    if op.media == MULTIPART:
        if request.mimetype != MULTIPART:
            raise problems.Problem(
                "unsupported-media-type", "Send the data as multipart/form-data."
            )
        try:
            return contract.parse_form(cls, request.form, request.files)
        except contract.Invalid as exc:
            raise _invalid("invalid-body", "The form is not valid.", exc) from None
    if not request.is_json:
        raise problems.Problem(
            "unsupported-media-type", "Send the body as JSON, with Content-Type: application/json."
        )
    try:
        data = orjson.loads(request.get_data(cache=True))
    except orjson.JSONDecodeError as exc:
        raise problems.Problem("malformed-body", f"The body is not valid JSON: {exc}.") from None
    try:
        return contract.parse_body(cls, data)
    except contract.Invalid as exc:
        raise _invalid("invalid-body", "The body is not valid.", exc) from None


R = TypeVar("R", bound=Mapping[str, Any])


def page(rows: list[R], limit: int, **overrides: str) -> tuple[list[R], str | None]:
    """The first `limit` rows (the query fetched limit + 1, so that one more row means another
    page) and the URL of the next page: this request's URL with its parameters (some replaced by
    `overrides`) and the cursor of the last row's sort key (the view's `after` type names the
    columns), or None on the last page."""
    if len(rows) <= limit:
        return rows, None
    op: Operation = g.api_operation
    assert op.key is not None, f"{op.operation_id} is not a paged list"
    last = rows[limit - 1]
    key = op.key._make(last[name] for name in op.key._fields)  # type: ignore[attr-defined]
    params = {k: v for k, v in request.args.items() if k != "cursor"}
    params.update(overrides)
    params["cursor"] = cursors.encode(op.operation_id, key)
    return rows[:limit], f"{request.host_url.rstrip('/')}{request.path}?{urlencode(params)}"
