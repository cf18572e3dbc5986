"""The API's declarations (fieldhub/web/contract.py): the OpenAPI schema a type makes and the
parser it makes must agree, for the real request types of /api/v1.

Pure: no database. For every JSON body of the API, a JSON Schema validator (jsonschema) and
the parser must accept exactly the same bodies; every body and query string generated from the
document (hypothesis-jsonschema, as schemathesis does) must parse."""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple, NotRequired, TypedDict

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from fieldhub.core import command_requests
from fieldhub.web import contract, cursors
from fieldhub.web.api import API
from fieldhub.web.api_shapes import NewAlertRule, NewCommand, NewWebhook, TelemetryQuery
from fieldhub.web.contract import Doc, Length, OneOf, Pattern, Range

JSON_BODIES = [op for op in API.operations if op.body and op.media == "application/json"]
QUERIES = [op for op in API.operations if op.query is not None]


def _json_schema(schemas: contract.Schemas, root: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI 3.0 schema as plain JSON Schema: `nullable` as a null alternative, $refs
    inlined (our types are not recursive)."""

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return convert(schemas.components[node["$ref"].rsplit("/", 1)[1]])
        node = {k: convert(v) for k, v in node.items() if k not in ("default", "description")}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node

    return convert(copy.deepcopy(root))  # type: ignore[no-any-return]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "above", "warning", "reboot", "https://x.example", "\x00", "a\n"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def _bodies_near(cls: type) -> st.SearchStrategy[Any]:
    """JSON values, mostly objects with the declared members set to anything."""
    names = [name for name, *_ in contract.fields_of(cls)]
    near = st.fixed_dictionaries({}, optional={name: json_values for name in names})
    return st.one_of(near, near, near, json_values)


@pytest.mark.parametrize("op", JSON_BODIES, ids=lambda op: op.operation_id)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_json_bodies_are_accepted_exactly_when_the_schema_says(
    op: Any, data: st.DataObject
) -> None:
    schemas = contract.Schemas()
    schema = _json_schema(schemas, schemas.of(op.body, request=True))
    body = data.draw(_bodies_near(op.body))
    valid = jsonschema.Draft4Validator(schema).is_valid(body)
    refusal = None
    try:
        contract.parse_body(op.body, body)
    except contract.Invalid as exc:
        refusal = str(exc)
    assert (refusal is None) == valid, f"document says valid={valid}, parser: {refusal}"


@pytest.mark.parametrize("op", JSON_BODIES, ids=lambda op: op.operation_id)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_bodies_generated_from_the_document_parse(op: Any, data: st.DataObject) -> None:
    schemas = contract.Schemas()
    body = data.draw(from_schema(_json_schema(schemas, schemas.of(op.body, request=True))))
    parsed = contract.parse_body(op.body, body)
    assert isinstance(parsed, op.body)


def _as_text(value: object) -> str:
    """A query parameter's value as schemathesis sends it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@pytest.mark.parametrize("op", QUERIES, ids=lambda op: op.operation_id)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_query_strings_generated_from_the_document_parse(op: Any, data: st.DataObject) -> None:
    schemas = contract.Schemas()
    args = {}
    for name, tp, required, default in contract.fields_of(op.query):
        schema = _json_schema(schemas, schemas.of(tp, default, request=True))
        if required or data.draw(st.booleans()):
            value = data.draw(from_schema(schema).filter(lambda v: v is not None))
            args[name] = _as_text(value)
    contract.parse_query(op.query, args)


def test_the_documented_bounds_are_the_cores() -> None:
    schemas = contract.Schemas()
    schemas.of(NewCommand, request=True)
    ttl = schemas.components["NewCommand"]["properties"]["ttl_s"]
    assert (ttl["minimum"], ttl["maximum"], ttl["default"]) == (
        command_requests.MIN_TTL_S,
        command_requests.MAX_TTL_S,
        command_requests.DEFAULT_TTL_S,
    )
    assert contract.parse_body(NewCommand, {"name": "reboot"}).ttl_s == 3600
    with pytest.raises(contract.Invalid) as refused:
        contract.parse_body(NewCommand, {"name": "reboot", "ttl_s": 5})
    assert refused.value.errors == [
        contract.FieldError("body", "/ttl_s", "must be between 10 and 2592000")
    ]
    # A whole float is an integer, as in JSON Schema; a fraction is not.
    assert contract.parse_body(NewCommand, {"name": "r", "ttl_s": 30.0}).ttl_s == 30
    with pytest.raises(contract.Invalid):
        contract.parse_body(NewCommand, {"name": "r", "ttl_s": 30.5})


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(contract.Invalid) as refused:
        contract.parse_body(
            NewAlertRule, {"name": "", "condition": "sideways", "enabled": "yes", "metric": 3}
        )
    assert {(e.where, e.detail) for e in refused.value.errors} == {
        ("/name", "must not be empty"),
        ("/metric", "must be a string"),
        ("/condition", "must be one of above, below, outside"),
        ("/enabled", "must be true or false"),
    }
    with pytest.raises(contract.Invalid) as not_object:
        contract.parse_body(NewWebhook, ["https://x.example"])
    assert not_object.value.errors == [contract.FieldError("body", "", "must be a JSON object")]


def test_query_strings_are_typed_and_bounded() -> None:
    query = contract.parse_query(
        TelemetryQuery, {"metric": "t", "start": "2026-01-31T12:00:00Z", "bucket": "60"}
    )
    assert query.start == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert (query.bucket, query.agg, query.limit, query.end) == (60, "avg", 10000, None)
    with pytest.raises(contract.Invalid) as refused:
        contract.parse_query(
            TelemetryQuery,
            {"bucket": "1.5", "agg": "median", "limit": "0", "start": "1900-01-01T00:00:00Z"},
        )
    assert {(e.where, e.detail) for e in refused.value.errors} == {
        ("metric", "is required"),
        ("bucket", "must be a whole number, not '1.5'"),
        ("agg", "must be one of min, max, avg, count, last"),
        ("limit", "must be between 1 and 10000"),
        ("start", "must be between the years 1970 and 9000"),
    }
    # Given empty is given: an API client leaves out what it does not mean.
    with pytest.raises(contract.Invalid) as empty:
        contract.parse_query(TelemetryQuery, {"metric": "t", "bucket": ""})
    assert empty.value.errors == [
        contract.FieldError("query", "bucket", "must be a whole number, not ''")
    ]
    with pytest.raises(contract.Invalid) as unknown:
        contract.parse_query(TelemetryQuery, {"metric": "t", "limt": "5"})
    assert unknown.value.errors == [
        contract.FieldError("query", "limt", "is not a parameter of this operation")
    ]


@dataclasses.dataclass(frozen=True)
class Sample:
    n: Annotated[int, Range(1, 5), Doc("n")]
    s: Annotated[str, Length(1, 3)]
    p: Annotated[str, Pattern("^[a-z]+$")] | None = None
    e: Annotated[str, OneOf(("x", "y"))] = "x"
    t: list[dict[str, float]] = dataclasses.field(default_factory=list)


class Answer(TypedDict):
    id: uuid.UUID
    at: datetime | None
    any: object
    maybe: NotRequired[Sample]


def test_schemas_of_every_supported_type() -> None:
    schemas = contract.Schemas()
    assert schemas.of(Answer) == {"$ref": "#/components/schemas/Answer"}
    answer = schemas.components["Answer"]
    assert answer["required"] == ["id", "at", "any"]
    assert answer["properties"]["at"] == {"type": "string", "format": "date-time", "nullable": True}
    assert answer["properties"]["id"] == {"type": "string", "format": "uuid"}
    assert answer["properties"]["any"] == {}
    sample = schemas.components["Sample"]["properties"]
    assert sample["n"] == {"type": "integer", "minimum": 1, "maximum": 5, "description": "n"}
    # Answers make no promise about NUL; a Sample inside an answer is an answer too.
    assert sample["s"] == {"type": "string", "minLength": 1, "maxLength": 3}
    assert sample["p"] == {"type": "string", "pattern": "^[a-z]+$", "nullable": True}
    assert sample["e"] == {"type": "string", "enum": ["x", "y"], "default": "x"}
    assert sample["t"]["items"] == {"type": "object", "additionalProperties": {"type": "number"}}
    requests = contract.Schemas()
    requests.of(Sample, request=True)
    assert requests.components["Sample"]["properties"]["s"]["pattern"] == contract.NUL_FREE
    with pytest.raises(TypeError):
        requests.of(Sample)  # the same type for requests and answers


class Key(NamedTuple):
    at: datetime
    id: uuid.UUID
    n: int
    s: str


@given(
    st.datetimes(timezones=st.just(UTC)),
    st.uuids(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=50),
)
def test_cursors_round_trip(at: datetime, id_: uuid.UUID, n: int, s: str) -> None:
    key = Key(at, id_, n, s)
    text = cursors.encode("listX", key)
    assert cursors.decode("listX", Key, text) == key
    with pytest.raises(cursors.InvalidCursor):
        cursors.decode("listY", Key, text)


@given(st.text(max_size=600))
def test_anything_but_our_cursor_is_an_invalid_cursor(text: str) -> None:
    # Nothing but InvalidCursor may escape (a server error otherwise).
    with contextlib.suppress(cursors.InvalidCursor):
        cursors.decode("listX", Key, text)


@pytest.mark.parametrize(
    "values",
    [
        ["listX", "2026-01-01T00:00:00", str(uuid.uuid4()), 1, "a"],  # no time zone
        ["listX", "2026-01-01T00:00:00+00:00", "nope", 1, "a"],
        ["listX", "2026-01-01T00:00:00+00:00", str(uuid.uuid4()), True, "a"],
        ["listX", "2026-01-01T00:00:00+00:00", str(uuid.uuid4()), 2**63, "a"],
        ["listX", "2026-01-01T00:00:00+00:00", str(uuid.uuid4()), 1],
        {"listX": 1},
    ],
)
def test_cursors_with_wrong_values_are_refused(values: object) -> None:
    text = base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")
    with pytest.raises(cursors.InvalidCursor):
        cursors.decode("listX", Key, text)
