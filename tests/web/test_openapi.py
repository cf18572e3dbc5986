"""The OpenAPI document against the running API (schemathesis): every generated request gets
an answer the document describes, none is a server error, every error is an RFC 9457 problem
document, and every `next` link leads to the rest of its list.

The operations are driven one by one with schemathesis' strategies rather than through its
pytest plugin: the plugin always runs the coverage phase, whose eager case generation alone
took 108 s for this document on the shared test machine before the first request. Positive
cases (valid requests) and negative ones (each violating the document somewhere; an invalid
JSON body must be refused with a 4xx problem) check the same contracts in a time the suite can
afford.
Requests carry an admin's token, so that the admin-only operations answer their success
schemas too (test_isolation.py covers what a smaller role is refused)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from psycopg.rows import dict_row
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fieldhub.core import command_requests, registry
from fieldhub.web import problems
from fieldhub.web.api import PUBLIC_ENDPOINTS
from tests.web.helpers import World, api_token

pytestmark = pytest.mark.integration
# Lists with more than two items in the api_schema fixture's organisation, and the parameters
# they need.
PAGED: dict[str, dict[str, object]] = {
    "/devices": {},
    "/devices/{device_id}/commands": {},
    "/alert-rules": {},
    "/devices/{device_id}/telemetry": {"metric": "temperature"},
}
LIST_KEYS = ("devices", "commands", "alerts", "rules", "deliveries", "imports", "points")


def _fill_lists(world: World, round_: int) -> None:
    """More than a page of 2 (the example limit) in every list of organisation a, so that
    `next` links are generated and followed."""
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        for i in range(3):
            registry.create_device(conn, f"extra-{round_}-{i}", org="org-a")
            command_requests.send_command(
                conn, device_id=world.devices["a"], name="ping", params={}, ttl_s=None
            )
            conn.execute(
                "INSERT INTO alert_rules (org_id, name, metric, device_id, condition,"
                " threshold_high) SELECT org_id, 'rule', 'temperature', device_id, 'above', 1"
                " FROM devices WHERE device_id = %s",
                (world.devices["a"],),
            )


@pytest.fixture
def api_schema(app: Flask, world: World) -> Any:
    _fill_lists(world, 0)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    # Explicit examples naming the caller's own objects, so that besides random ids (404s)
    # the 200 answers are generated too and checked against their documented schemas.
    examples = {
        "device_id": world.devices["a"],
        "command_id": world.commands["a"],
        "alert_id": world.alerts["a"],
        "rule_id": world.rules["a"],
        "import_id": world.imports["a"],
        "metric": "temperature",
        "limit": 2,
    }
    for item in schema.raw_schema["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in examples:
                    parameter["example"] = examples[parameter["name"]]
    return schema


def problem_document(ctx: Any, response: Any, case: Any) -> None:
    """Every error is application/problem+json with a documented type of its status."""
    if response.status_code < 400:
        return
    headers = {name.lower(): values for name, values in response.headers.items()}
    assert headers["content-type"][0].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == response.status_code
    assert body["title"], body
    assert body["detail"], body
    slug = body["type"].removeprefix(problems.TYPE_PREFIX)
    assert problems.BY_SLUG[slug].status == response.status_code, body
    for error in body.get("errors", []):
        assert error["detail"]
        assert ("parameter" in error) != ("pointer" in error), error


def _items(body: dict[str, Any]) -> list[Any]:
    key = next(k for k in LIST_KEYS if k in body)
    items = body[key]
    return [item.get("id", item.get("device_id", item.get("time"))) for item in items]


def next_page_check(app: Flask, headers: dict[str, str], followed: list[str]) -> Any:
    def next_page(ctx: Any, response: Any, case: Any) -> None:
        """A page with `next` is full, and `next` answers the rest of the list, no overlap."""
        if response.status_code != 200 or not isinstance(response.json(), dict):
            return
        body = response.json()
        if not body.get("next"):
            return
        first = _items(body)
        limit = int((case.query or {}).get("limit", 0) or 0)
        if limit:
            assert len(first) == limit, "a page with a next page is full"
        following = app.test_client().get(body["next"], headers=headers)
        assert following.status_code == 200, following.get_data(as_text=True)
        assert not set(_items(following.get_json())) & set(first), "next repeats items"
        followed.append(case.operation.label)

    return next_page


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    problem_document,
]


def negative_body_refused(ctx: Any, response: Any, case: Any) -> None:
    """A JSON body that violates the document is refused with a 4xx. (Negative query strings
    are not judged: a query value is text, so schemathesis' number for a string parameter, its
    null or its one-element array arrive as valid values, and the verdict would be noise;
    tests/web/test_contract.py checks the parser against the schema directly instead.)"""
    info = (case.meta.components if case.meta else {}).get(ParameterLocation.BODY)
    if info is None or info.mode is not GenerationMode.NEGATIVE:
        return
    if case.media_type != "application/json":
        return
    assert 400 <= response.status_code < 500, f"accepted an invalid body: {case.body!r}"


def _operations(schema: Any) -> Iterator[Any]:
    for result in schema.get_all_operations():
        yield result.ok()


@pytest.mark.parametrize(
    ("mode", "examples"), [(GenerationMode.POSITIVE, 25), (GenerationMode.NEGATIVE, 8)]
)
def test_api_matches_its_openapi_document(
    app: Flask, api_schema: Any, world: World, mode: GenerationMode, examples: int
) -> None:
    headers = {"Authorization": "Bearer " + api_token(world.database_url, world.emails["a_admin"])}
    followed: list[str] = []
    checks = [*CHECKS, next_page_check(app, headers, followed)]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_body_refused)
    failures = []
    for operation in _operations(api_schema):
        strategy = operation.as_strategy(generation_mode=mode)

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            if case.media_type == "multipart/form-data" and not isinstance(case.body, dict):
                # A multipart form cannot express a non-object body; schemathesis' WSGI
                # transport crashes building one before any request.
                return
            case.call_and_validate(headers=headers, checks=checks)

        try:
            run()
        except Unsatisfiable:
            # No negative case exists (a UUID in the path is all there is to get wrong, and
            # schemathesis cannot make a string that is not one): nothing to refuse.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # every operation is tried; all failures are shown
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    if mode is GenerationMode.POSITIVE:
        # Every list of more than two items, a page of two at a time: next links followed.
        # Filled again first: generated ids are small integers too, so the run above may have
        # deleted the rules (or other objects) filled before it.
        _fill_lists(world, 1)
        for operation in _operations(api_schema):
            if operation.method == "get" and operation.path in PAGED:
                case = operation.Case(
                    path_parameters={"device_id": world.devices["a"]}
                    if "{device_id}" in operation.path
                    else {},
                    query={"limit": 2, **PAGED[operation.path]},
                )
                case.call_and_validate(headers=headers, checks=checks)
        assert set(followed) >= {f"GET {path}" for path in PAGED}, followed


def test_openapi_document_lists_every_api_route(app: Flask) -> None:
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    documented = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api.") and rule.endpoint not in PUBLIC_ENDPOINTS:
            path = rule.rule.removeprefix("/api/v1").replace("<int:", "<")
            path = path.replace("<", "{").replace(">", "}")
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                routed.add((path, method))
    assert documented == routed
