"""The OpenAPI document against the running API (schemathesis): every generated request gets
an answer the document describes, and none is a server error."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.web.helpers import World, api_token

pytestmark = pytest.mark.integration


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
    }
    for item in schema.raw_schema["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in examples:
                    parameter["example"] = examples[parameter["name"]]
    return schema


@pytest.fixture
def auth_headers(world: World) -> dict[str, str]:
    return {"Authorization": "Bearer " + api_token(world.database_url, world.emails["a_member"])}


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_matches_its_openapi_document(case: Any, auth_headers: dict[str, str]) -> None:
    if case.media_type == "multipart/form-data" and not isinstance(case.body, dict):
        # The coverage phase also tries non-object bodies, which a multipart form cannot
        # express; schemathesis' WSGI transport crashes building one before any request.
        return
    case.call_and_validate(
        headers=auth_headers,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )


def test_openapi_document_lists_every_api_route(app: Flask) -> None:
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    documented = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api.") and rule.endpoint != "api.openapi":
            path = rule.rule.removeprefix("/api/v1").replace("<int:", "<")
            path = path.replace("<", "{").replace(">", "}")
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                routed.add((path, method))
    assert documented == routed
