"""Opaque page cursors of the API's lists: where the last page ended, in the list's sort key.

Every list is paged by keyset: it is sorted on a unique key (a device id; (started_at, id) of
an alert; ...), and the next page is "the rows after this key". Unlike OFFSET, a page costs
the same however deep it is (an index range scan from the key, not a scan of every skipped
row), and rows added or removed meanwhile neither repeat nor skip a row on the next page.

A cursor is base64url (no padding) of the JSON array [list, key values...]: `list` names the
list it came from, so the cursor of one list given to another is refused. It is not signed:
it only says where to start reading rows the caller may see anyway, every query is scoped to
the caller's organisation whatever the cursor says, and a cursor that survives a rotation of
the web app's secret is worth more than the tamper-evidence. Decoding checks every value's type,
so anything but a cursor we made is an `InvalidCursor` (a 400 problem), never a server error.
Clients must treat it as opaque: the format may change with any release."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any, NamedTuple, TypeVar, get_type_hints

import orjson

MAX_LENGTH = 512
K = TypeVar("K", bound=tuple[Any, ...])


class InvalidCursor(ValueError):
    pass


def encode(scope: str, key: NamedTuple) -> str:
    values: list[object] = [scope]
    for value in key:
        if isinstance(value, datetime):
            values.append(value.isoformat())
        elif isinstance(value, uuid.UUID):
            values.append(str(value))
        else:
            values.append(value)
    return base64.urlsafe_b64encode(orjson.dumps(values)).rstrip(b"=").decode()


def decode(scope: str, key_type: type[K], text: str) -> K:
    """The key of a cursor of list `scope`; `key_type` is a NamedTuple of str, int, datetime
    and uuid.UUID fields."""
    if len(text) > MAX_LENGTH:
        raise InvalidCursor("the cursor is too long to be one of ours")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        values = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidCursor("the cursor is not one this API made") from None
    hints = get_type_hints(key_type)
    if not isinstance(values, list) or len(values) != len(hints) + 1 or values[0] != scope:
        raise InvalidCursor("the cursor belongs to another list or is not one this API made")
    parsed = [_value(kind, value) for kind, value in zip(hints.values(), values[1:], strict=True)]
    return key_type._make(parsed)  # type: ignore[attr-defined, no-any-return]


def _value(kind: object, value: object) -> object:
    if kind is str and isinstance(value, str):
        return value
    if kind is int and type(value) is int and -(2**63) <= value < 2**63:
        return value
    if kind is datetime and isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    if kind is uuid.UUID and isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidCursor("the cursor is not one this API made")
