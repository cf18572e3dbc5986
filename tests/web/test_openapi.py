"""The OpenAPI document against the running API (schemathesis): every generated request gets
an answer the document describes, none is a server error, every error is an RFC 9457 problem
document, and every `next` link leads to the rest of its list.

The operations are driven one by one with schemathesis' strategies rather than through its
pytest plugin: the plugin always runs the coverage phase, whose eager case generation alone
took 108 s for this document on the shared test machine before the first request. Positive
cases (valid requests) and negative ones (each violating the document somewhere, which must
all be refused with a 4xx problem) check the same contracts in a time the suite can afford.
Requests carry an admin's token, so that the admin-only operations answer their success
schemas too (test_isolation.py covers what a smaller role is refused).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from fieldhub.web import problems
from fieldhub.web.api import PUBLIC_ENDPOINTS
from tests.web.helpers import World, api_token

pytestmark = pytest.mark.integration
LIST_KEYS = ("devices", "commands", "alerts", "rules", "deliveries", "imports", "points")


@pytest.fixture
def api_schema(app: Flask, world: World) -> Any:
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


def next_page_check(app: Flask) -> Any:
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
        following = app.test_client().get(
            body["next"], headers={"Authorization": case.headers["Authorization"]}
        )
        assert following.status_code == 200, following.get_data(as_text=True)
        assert not set(_items(following.get_json())) & set(first), "next repeats items"

    return next_page


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    problem_document,
]


def _operations(schema: Any) -> Iterator[Any]:
    for result in schema.get_all_operations():
        yield result.ok()


@pytest.mark.parametrize(
    ("mode", "examples"), [(GenerationMode.POSITIVE, 12), (GenerationMode.NEGATIVE, 6)]
)
def test_api_matches_its_openapi_document(
    app: Flask, api_schema: Any, world: World, mode: GenerationMode, examples: int
) -> None:
    headers = {"Authorization": "Bearer " + api_token(world.database_url, world.emails["a_admin"])}
    checks = [*CHECKS, next_page_check(app)]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)
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
        except Exception as exc:  # every operation is tried; all failures are shown
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


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
