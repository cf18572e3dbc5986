"""The API's declarations: Python types that both check a request and describe it in OpenAPI.

A request's query string and body are dataclasses, a response is a TypedDict; each field's
annotation is its type, and `Annotated[...]` adds what JSON Schema can say about it (Range,
Length, Pattern, OneOf) and its Doc. From one such type, `Schemas.of()` makes the OpenAPI 3.0 schema
and `parse_query()`/`parse_body()`/`parse_form()`/`parse_text()` make the typed value (or
raise `Invalid` naming every bad field at once). fieldhub/web/openapi.py binds each view to
its types, so the document says exactly what the parser enforces; tests/web/test_contract.py
checks the two against each other with generated inputs (a JSON Schema validator and this
parser must agree on every one).

Pure: no Flask, no database. Supported: str, int, float, bool, datetime, uuid.UUID, Literal
of strings, `X | None`, list[X], dict[str, X], `object` (any JSON value), dataclasses and
TypedDicts (named schemas), and `Upload` (a file of a multipart form).

Decisions, measured or reasoned:
- Strings never contain U+0000 (PostgreSQL text cannot hold it): every free string carries
  the pattern `^[^\\u0000]*$`, so the refusal is in the document too.
- Unknown body members are ignored, not refused: a client may PUT back what it GOT (with
  `id`, `created_at`); a dataclass with `closed = True` refuses them (a merge patch,
  where an unknown member would be a change nobody meant). Unknown query parameters are
  refused: OpenAPI lists an operation's parameters exhaustively, and a mistyped `?limt=5`
  must not quietly answer the default.
- A whole float (30.0) is an integer, as in JSON Schema."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Protocol,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
    runtime_checkable,
)

from fieldhub.web.history import RangeError, parse_time

T = TypeVar("T")
NUL_FREE = "^[^\\u0000]*$"
# Times before the epoch or after year 9000 are typing mistakes, not data; the years are those
# written (before any offset is applied), so that the pattern says exactly what is accepted.
TIME_YEARS = (1970, 9000)
TIME_PATTERN = "^(19[7-9][0-9]|[2-8][0-9]{3}|9000)-"
TIME_DOC = "RFC 3339, e.g. 2026-01-31T12:00:00Z (a time without offset is UTC)."


# -- what Annotated adds to a type -----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Range:
    minimum: int | float | None = None
    maximum: int | float | None = None


@dataclasses.dataclass(frozen=True)
class Length:
    min_length: int = 0
    max_length: int | None = None


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A regular expression in the common subset of Python's and ECMAScript's, anchored with
    ^ and $; it replaces the NUL-free default, so it must exclude U+0000 itself."""

    regex: str


@dataclasses.dataclass(frozen=True)
class OneOf:
    """The allowed values of a string, from the tuple of the module that owns them."""

    choices: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Doc:
    text: str


@runtime_checkable
class Upload(Protocol):
    """A file of a multipart form (werkzeug's FileStorage is one)."""

    filename: str | None

    def read(self, size: int = -1) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One bad field: `where` is a parameter name (query, path, form) or, in a JSON body, a
    JSON Pointer ("/ttl_s", "" for the body itself)."""

    location: Literal["query", "path", "body"]
    where: str
    detail: str


class Invalid(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.where or 'body'}: {e.detail}" for e in errors))
        self.errors = errors


# -- looking at a type -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Shape:
    base: Any
    nullable: bool
    meta: tuple[object, ...]

    def first(self, kind: type[T]) -> T | None:
        return next((m for m in self.meta if isinstance(m, kind)), None)


@functools.cache
def _shape(tp: Any) -> _Shape:
    meta: tuple[object, ...] = ()
    nullable = False
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            meta = meta + tuple(tp.__metadata__)
            tp = get_args(tp)[0]
        elif origin is NotRequired:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            nullable = True
            tp = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
        else:
            return _Shape(tp, nullable, meta)


def _is_named(tp: Any) -> bool:
    return isinstance(tp, type) and (dataclasses.is_dataclass(tp) or is_typeddict(tp))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Resolving postponed annotations costs more than the rest of a parse: once per type.
    return get_type_hints(cls, include_extras=True)


def fields_of(cls: type) -> list[tuple[str, Any, bool, object]]:
    """(name, annotation, required, default) of a dataclass or TypedDict, in order."""
    hints = _hints(cls)
    if is_typeddict(cls):
        # NotRequired from the resolved hints: with postponed annotations, Python 3.11 counts
        # every key of a TypedDict in __required_keys__.
        return [(n, tp, get_origin(tp) is not NotRequired, None) for n, tp in hints.items()]
    result = []
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            result.append((field.name, hints[field.name], False, field.default))
        elif field.default_factory is not dataclasses.MISSING:
            result.append((field.name, hints[field.name], False, field.default_factory()))
        else:
            result.append((field.name, hints[field.name], True, None))
    return result


def base_of(tp: Any) -> Any:
    """The type under Annotated and `| None`."""
    return _shape(tp).base


def doc_of(tp: Any) -> str:
    found = _shape(tp).first(Doc)
    if found is not None:
        return found.text
    return TIME_DOC if _shape(tp).base is datetime else ""


# -- OpenAPI 3.0 schemas -----------------------------------------------------------------------
class Schemas:
    """Schemas of types; dataclasses and TypedDicts become named components (referenced with
    $ref), collected in `components` as they are met."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self._types: dict[str, tuple[type, bool]] = {}

    def of(self, tp: Any, default: object = None, *, request: bool = False) -> dict[str, Any]:
        """The schema of `tp`; `request`: what a client sends, whose free strings carry the
        NUL-free pattern the parser enforces (answers need no such promise)."""
        shape = _shape(tp)
        schema = self._base(shape, request)
        if shape.nullable:
            if "$ref" in schema:
                schema = {"allOf": [schema]}
            schema["nullable"] = True
        if default is not None and not _is_named(shape.base):
            schema["default"] = default
        return schema

    def _base(self, shape: _Shape, request: bool) -> dict[str, Any]:
        base = shape.base
        schema: dict[str, Any]
        if _is_named(base):
            return self._named(base, request)
        if base is bool:
            schema = {"type": "boolean"}
        elif base is int or base is float:
            schema = {"type": "integer" if base is int else "number"}
            bounds = shape.first(Range)
            if bounds is not None and bounds.minimum is not None:
                schema["minimum"] = bounds.minimum
            if bounds is not None and bounds.maximum is not None:
                schema["maximum"] = bounds.maximum
        elif base is str:
            schema = {"type": "string"}
            length = shape.first(Length)
            if length is not None and length.min_length:
                schema["minLength"] = length.min_length
            if length is not None and length.max_length is not None:
                schema["maxLength"] = length.max_length
            pattern = shape.first(Pattern)
            one_of = shape.first(OneOf)
            if one_of is not None:
                schema["enum"] = list(one_of.choices)
            elif pattern is not None:
                schema["pattern"] = pattern.regex
            elif request:
                schema["pattern"] = NUL_FREE
        elif base is datetime:
            schema = {"type": "string", "format": "date-time"}
            if request:
                schema["pattern"] = TIME_PATTERN
        elif base is uuid.UUID:
            schema = {"type": "string", "format": "uuid"}
        elif get_origin(base) is Literal:
            schema = {"type": "string", "enum": list(get_args(base))}
        elif get_origin(base) is list:
            schema = {"type": "array", "items": self.of(get_args(base)[0], request=request)}
        elif get_origin(base) is dict:
            value_type = get_args(base)[1]
            schema = {"type": "object"}
            if value_type is not object:
                schema["additionalProperties"] = self.of(value_type, request=request)
        elif base is object:
            schema = {}
        elif base is Upload:
            schema = {"type": "string", "format": "binary"}
        else:
            raise TypeError(f"the API contract cannot describe {base!r}")
        doc = shape.first(Doc)
        if doc is not None:
            schema["description"] = doc.text
        return schema

    def _named(self, cls: type, request: bool) -> dict[str, Any]:
        name = cls.__name__
        if self._types.setdefault(name, (cls, request)) != (cls, request):
            raise TypeError(f"{name}: two types of that name, or one for requests and answers")
        if name not in self.components:
            self.components[name] = {}  # placeholder: a type may refer to itself
            properties = {}
            required = []
            for field_name, annotation, is_required, default in fields_of(cls):
                properties[field_name] = self.of(annotation, default, request=request)
                if is_required:
                    required.append(field_name)
            component: dict[str, Any] = {"type": "object", "properties": properties}
            if getattr(cls, "closed", False):
                component["additionalProperties"] = False
            if required:
                component["required"] = required
            if cls.__doc__ and not cls.__doc__.startswith(f"{name}("):
                component["description"] = " ".join(cls.__doc__.split())
            self.components[name] = component
        return {"$ref": f"#/components/schemas/{name}"}


# -- parsing ---------------------------------------------------------------------------------
_MISSING = object()
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,19}")


class _Checker:
    def __init__(self, location: Literal["query", "path", "body"], from_text: bool) -> None:
        self.location = location
        self.from_text = from_text
        self.errors: list[FieldError] = []

    def fail(self, where: str, detail: str) -> object:
        self.errors.append(FieldError(self.location, where, detail))
        return _MISSING

    def value(self, tp: Any, raw: object, where: str) -> object:
        shape = _shape(tp)
        if raw is None:
            # `object` is any JSON value, null included.
            if shape.nullable or shape.base is object:
                return None
            return self.fail(where, "must not be null")
        base = shape.base
        if _is_named(base):
            return self.named(base, raw, where)
        if base is object:
            return raw
        if base is bool:
            return self.boolean(raw, where)
        if base is int or base is float:
            return self.number(base, shape, raw, where)
        if base is str:
            return self.string(shape, raw, where)
        if base is datetime:
            return self.time(raw, where)
        if base is uuid.UUID:
            try:
                return (
                    uuid.UUID(raw) if isinstance(raw, str) else self.fail(where, "must be a UUID")
                )
            except ValueError:
                return self.fail(where, f"must be a UUID, not {raw!r}")
        if get_origin(base) is Literal:
            choices = get_args(base)
            if raw in choices:
                return raw
            return self.fail(where, f"must be one of {', '.join(map(str, choices))}")
        if get_origin(base) is list:
            if not isinstance(raw, list):
                return self.fail(where, "must be an array")
            item_type = get_args(base)[0]
            items = [self.value(item_type, v, f"{where}/{i}") for i, v in enumerate(raw)]
            return _MISSING if _MISSING in items else items
        if get_origin(base) is dict:
            if not isinstance(raw, dict):
                return self.fail(where, "must be a JSON object")
            value_type = get_args(base)[1]
            checked = {
                k: self.value(value_type, v, f"{where}/{_escape(k)}") for k, v in raw.items()
            }
            return _MISSING if _MISSING in checked.values() else checked
        if base is Upload:
            return raw if isinstance(raw, Upload) else self.fail(where, "must be a file")
        raise TypeError(f"the API contract cannot parse {base!r}")

    def boolean(self, raw: object, where: str) -> object:
        if self.from_text and isinstance(raw, str) and raw in ("true", "false"):
            return raw == "true"
        if isinstance(raw, bool):
            return raw
        return self.fail(where, "must be true or false")

    def number(self, base: type, shape: _Shape, raw: object, where: str) -> object:
        kind = "a whole number" if base is int else "a number"
        value: int | float
        if self.from_text and isinstance(raw, str):
            try:
                if base is int:
                    if not _INTEGER_TEXT.fullmatch(raw):
                        raise ValueError(raw)
                    value = int(raw)
                else:
                    value = float(raw)
            except ValueError:
                return self.fail(where, f"must be {kind}, not {raw!r}")
        elif isinstance(raw, bool) or not isinstance(raw, int | float):
            return self.fail(where, f"must be {kind}")
        else:
            value = raw
        if isinstance(value, float) and not math.isfinite(value):
            return self.fail(where, f"must be {kind}, not {raw!r}")
        if base is int:
            if value != int(value):
                return self.fail(where, f"must be {kind}, not {raw!r}")
            value = int(value)
        else:
            try:
                value = float(value)
            except OverflowError:
                return self.fail(where, "is too large for a double-precision number")
        bounds = shape.first(Range)
        if bounds is not None:
            low, high = bounds.minimum, bounds.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                return self.fail(where, _bounds_text(low, high))
        return value

    def string(self, shape: _Shape, raw: object, where: str) -> object:
        if not isinstance(raw, str):
            return self.fail(where, "must be a string")
        one_of = shape.first(OneOf)
        if one_of is not None:
            if raw in one_of.choices:
                return raw
            return self.fail(where, f"must be one of {', '.join(one_of.choices)}")
        length = shape.first(Length)
        if length is not None:
            if len(raw) < length.min_length:
                if length.min_length == 1:
                    return self.fail(where, "must not be empty")
                return self.fail(where, f"must be at least {length.min_length} characters")
            if length.max_length is not None and len(raw) > length.max_length:
                return self.fail(where, f"must be at most {length.max_length} characters")
        pattern = shape.first(Pattern)
        if pattern is not None:
            if not re.search(pattern.regex, raw):
                return self.fail(where, f"must match {pattern.regex}")
        elif "\x00" in raw:
            return self.fail(where, "must not contain the NUL character (U+0000)")
        return raw

    def time(self, raw: object, where: str) -> object:
        if not isinstance(raw, str):
            return self.fail(where, "must be a time as a string")
        try:
            value = parse_time(raw, "time")
        except RangeError:
            return self.fail(where, f"must be a time like 2026-01-31T12:00:00Z, not {raw!r}")
        low, high = TIME_YEARS
        if not low <= value.year <= high:
            return self.fail(where, f"must be between the years {low} and {high}")
        return value

    def named(self, cls: type, raw: object, where: str) -> object:
        if not isinstance(raw, dict):
            return self.fail(where, "must be a JSON object")
        if is_typeddict(cls):
            raise TypeError(f"{cls.__name__}: TypedDicts describe responses; parse dataclasses")
        errors_before = len(self.errors)
        if getattr(cls, "closed", False):
            declared = {name for name, *_ in fields_of(cls)}
            for name in raw:
                if name not in declared:
                    self.fail(f"{where}/{_escape(str(name))}", "is not a member of this object")
        values: dict[str, object] = {}
        for name, annotation, required, default in fields_of(cls):
            if name not in raw:
                if required:
                    self.fail(f"{where}/{name}", "is required")
                values[name] = default
            else:
                values[name] = self.value(annotation, raw[name], f"{where}/{name}")
        return _MISSING if len(self.errors) > errors_before else cls(**values)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _bounds_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"must be between {_number_text(low)} and {_number_text(high)}"
    if low is not None:
        return f"must be at least {_number_text(low)}"
    return f"must be at most {_number_text(high)}"


def _number_text(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else f"{value}"


def parse_query(
    cls: type[T],
    args: Mapping[str, str],
    *,
    repeated: Collection[str] = (),
    gone: Mapping[str, str] = {},
) -> T:
    """A dataclass from a query string (its first value of each name); a value given empty is
    the empty string, which is a misfit for any type but a string that may be empty (API
    clients, unlike HTML forms, leave out what they do not mean). A name the type does not
    declare is refused (`?limt=5` would otherwise silently answer the default page); `gone`
    says why for names that were parameters once; `repeated` names those given twice."""
    declared = {name for name, *_ in fields_of(cls)}
    unknown = [
        FieldError("query", name, gone.get(name, "is not a parameter of this operation"))
        for name in args
        if name not in declared
    ]
    # No parameter is an array: `?org=a&org=b` is a mistake, not a choice of the first.
    unknown += [
        FieldError("query", name, "is given more than once")
        for name in repeated
        if name in declared
    ]
    try:
        parsed = _parse_flat(cls, dict(args.items()), "query")
    except Invalid as exc:
        raise Invalid(unknown + exc.errors) from None
    if unknown:
        raise Invalid(unknown)
    return parsed


def parse_form(cls: type[T], form: Mapping[str, str], files: Mapping[str, Upload]) -> T:
    """A dataclass from a multipart form: fields as text, files as Upload."""
    raw: dict[str, object] = dict(form.items())
    raw.update(files)
    return _parse_flat(cls, raw, "body")


def _parse_flat(cls: type[T], raw: Mapping[str, object], location: Literal["query", "body"]) -> T:
    checker = _Checker(location, from_text=True)
    values: dict[str, object] = {}
    for name, annotation, required, default in fields_of(cls):
        # A query parameter by its name; a form field, like a JSON member, by its pointer.
        where = name if location == "query" else f"/{name}"
        if name not in raw:
            if required:
                checker.fail(where, "is required")
            values[name] = default
        else:
            values[name] = checker.value(annotation, raw[name], where)
    if checker.errors:
        raise Invalid(checker.errors)
    return cls(**values)


def parse_body(cls: type[T], body: object) -> T:
    """A dataclass from a parsed JSON body; errors name JSON Pointers into the body."""
    checker = _Checker("body", from_text=False)
    result = checker.value(cls, body, "")
    if checker.errors:
        raise Invalid(checker.errors)
    return cast(T, result)


def parse_text(tp: Any, raw: str, name: str) -> object:
    """One path parameter."""
    checker = _Checker("path", from_text=True)
    result = checker.value(tp, raw, name)
    if checker.errors:
        raise Invalid(checker.errors)
    return result
