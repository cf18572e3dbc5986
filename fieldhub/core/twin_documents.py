"""The rules of device twins, as pure functions (no I/O).

A twin is two JSON objects per device: *desired* (set by people) and *reported* (sent by the
device). Both change only by RFC 7396 merge patches, so a stored document never holds null
(null in a patch deletes the key). The *delta* is what the device still has to do: the desired
keys whose values differ from reported, recursively.

The I/O that applies these rules: fieldhub.core.twins (desired changes from the web app, the
API and the CLI) and fieldhub.bridge.twin (device reports in, retained documents out). The
device contract is in docs/devices.md, "Twin".

Limits (the same for both documents and for patches; AWS IoT allows 8 KiB per shadow
document and depth 6, Azure 32 KiB per twin section and depth 10):

* ``MAX_DOCUMENT_BYTES``: 16 KiB as compact JSON, per document and per patch.
* ``MAX_DEPTH``: 8 levels of nested objects (arrays are values, not levels).
* ``MAX_KEY_CHARS``: 128 characters per key, at least 1.
* no NUL character in keys or strings (PostgreSQL's jsonb cannot store U+0000), no NaN or
  infinite numbers (JSON has none).
* numbers within a signed 64-bit integer's range (``MAX_NUMBER``): jsonb keeps numbers as
  exact decimals and writes 6.9e210 back as 211 digits, which JSON encoders and devices'
  parsers (orjson, cJSON, ArduinoJson) cannot read back."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final, NamedTuple, TypeAlias

import orjson

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
Document: TypeAlias = "dict[str, JsonValue]"

MAX_DOCUMENT_BYTES: Final = 16 * 1024
MAX_DEPTH: Final = 8
MAX_KEY_CHARS: Final = 128
MAX_VERSION: Final = 2**63 - 1
MAX_NUMBER: Final = 2**63 - 1

# Dead-letter reasons of device reports (docs/devices.md).
STALE: Final = "twin_stale"
INVALID: Final = "twin_invalid"


class TwinDocumentError(ValueError):
    """A document, patch or report that breaks the rules; the message is for the person."""


class Report(NamedTuple):
    """A device's report on devices/{id}/twin/reported, decoded."""

    version: int
    """The desired version the device has applied."""
    seq: int | None
    """Optional order number of reports of one version (a counter or the clock in ms)."""
    state: Document
    """A merge patch for the reported document."""


class Versions(NamedTuple):
    """What a report is judged against: the stored twin's versions."""

    desired_version: int
    reported_version: int
    reported_seq: int | None


# -- checks ------------------------------------------------------------------------------------
def check_patch(patch: object, what: str = "patch") -> Document:
    """A merge patch that may be applied to a twin document, or TwinDocumentError.

    Only objects: a patch that is not an object would replace the whole document by a
    non-object, and a twin document is always an object."""
    if not isinstance(patch, Mapping):
        raise TwinDocumentError(f"{what} must be a JSON object, not {_json_type(patch)}")
    _check_value(patch, what, 1)
    checked: Document = dict(patch)
    size = document_size(checked)
    if size > MAX_DOCUMENT_BYTES:
        raise TwinDocumentError(
            f"{what} is {size} bytes as JSON; the limit is {MAX_DOCUMENT_BYTES}"
        )
    return checked


def check_document(document: Document, what: str) -> Document:
    """A document after a merge: within the size limit (its parts were checked as patches)."""
    size = document_size(document)
    if size > MAX_DOCUMENT_BYTES:
        raise TwinDocumentError(
            f"the {what} document would be {size} bytes as JSON; the limit is {MAX_DOCUMENT_BYTES}"
        )
    return document


def document_size(document: Document) -> int:
    return len(orjson.dumps(document))


def _check_value(value: object, path: str, depth: int) -> None:
    if isinstance(value, Mapping):
        if depth > MAX_DEPTH:
            raise TwinDocumentError(f"{path} nests objects deeper than {MAX_DEPTH} levels")
        for key, item in value.items():
            if not isinstance(key, str):
                raise TwinDocumentError(f"{path} has a key that is not a string")
            if not 1 <= len(key) <= MAX_KEY_CHARS or "\x00" in key:
                raise TwinDocumentError(
                    f"{path} has the key {key[:40]!r}: keys are 1-{MAX_KEY_CHARS} characters "
                    "without NUL"
                )
            _check_value(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            # Objects inside arrays count as levels too: they are stored and sent the same way.
            _check_value(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, str):
        if "\x00" in value:
            raise TwinDocumentError(f"{path} holds a NUL character, which cannot be stored")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise TwinDocumentError(f"{path} is {value}; JSON has no NaN or infinite numbers")
        if abs(value) > MAX_NUMBER:
            raise TwinDocumentError(f"{path} is {value}; numbers lie within ±{MAX_NUMBER}")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -MAX_NUMBER - 1 <= value <= MAX_NUMBER:
            raise TwinDocumentError(f"{path} is {value}; numbers lie within ±{MAX_NUMBER}")
    elif value is not None and not isinstance(value, bool):
        raise TwinDocumentError(f"{path} is a {type(value).__name__}, which JSON cannot hold")


# -- merge and delta -------------------------------------------------------------------------
def merge_patch(target: Mapping[str, JsonValue], patch: Mapping[str, JsonValue]) -> Document:
    """RFC 7396: `patch` applied to `target`, as a new document (neither is changed)."""
    result: Document = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            result[key] = merge_patch(current if isinstance(current, dict) else {}, value)
        else:
            result[key] = value
    return result


def delta(desired: Mapping[str, JsonValue], reported: Mapping[str, JsonValue]) -> Document:
    """The desired keys whose values differ from reported, recursively.

    Objects are compared key by key, so a delta holds only the leaves that differ; arrays and
    other values are compared whole. Keys only reported are not in it: they are the device's
    business, not something anyone asked for."""
    out: Document = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            inner = delta(want, have)
            if inner:
                out[key] = inner
        elif key not in reported or not json_equal(want, have):
            out[key] = want
    return out


def patch_between(old: Mapping[str, JsonValue], new: Mapping[str, JsonValue]) -> Document:
    """The smallest merge patch that turns `old` into `new` (a removed key becomes null).

    The web page edits the whole desired document; what is stored and shown as the change is
    this patch, the same kind of change the API and the command line make."""
    patch: Document = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = patch_between(before, value)
            if inner:
                patch[key] = inner
        elif key not in old or not json_equal(before, value):
            patch[key] = value
    return patch


def json_equal(a: JsonValue, b: JsonValue) -> bool:
    """Equality as JSON means it: true is not 1 (Python says it is), 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# -- device messages -------------------------------------------------------------------------
def message(version: int, state: Document) -> bytes:
    """The payload of devices/{id}/twin/desired and /delta: {"version": N, "state": {...}}."""
    return orjson.dumps({"version": version, "state": state})


def parse_report(payload: bytes) -> Report:
    """A device report, or TwinDocumentError saying what is wrong with it.

    `{"version": N, "state": {...}, "seq": S}`: `version` (required) is the desired version the
    device has applied, an integer from 0; `state` (required) is a merge patch object; `seq`
    (optional) an integer from 0. Other keys are ignored, so firmware may add its own."""
    if len(payload) > MAX_DOCUMENT_BYTES + 1024:
        raise TwinDocumentError(
            f"report is {len(payload)} bytes; the limit is {MAX_DOCUMENT_BYTES} for its state"
        )
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise TwinDocumentError(f"report is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise TwinDocumentError(
            f'report must be an object like {{"version": 3, "state": {{...}}}}, '
            f"not {_json_type(body)}"
        )
    version = body.get("version")
    if not _is_counter(version):
        raise TwinDocumentError(
            f"report version must be an integer from 0 (the desired version applied), "
            f"not {_json_type(version)}"
        )
    seq = body.get("seq")
    if seq is not None and not _is_counter(seq):
        raise TwinDocumentError(f"report seq must be an integer from 0, not {_json_type(seq)}")
    if "state" not in body:
        raise TwinDocumentError("report has no state (a merge patch object)")
    state = check_patch(body["state"], "state")
    assert isinstance(version, int)
    return Report(version, seq if isinstance(seq, int) else None, state)


def judge_report(current: Versions, report: Report) -> str | None:
    """Why a report must not be applied (it is stale), or None when it may be.

    Reports are applied in (version, seq) order and never out of it. Two bridge instances
    sharing the subscription can receive one device's reports in the order other than it sent
    them; a report that arrives after a later one was applied is refused here rather than
    applied on top of it. `seq` is compared only between reports of one version that both
    carry it; an equal seq is the same report again (a redelivery) and applies as a no-op."""
    if report.version > current.desired_version:
        return (
            f"report of desired version {report.version}, but the desired document is at "
            f"version {current.desired_version}"
        )
    if report.version < current.reported_version:
        return (
            f"report of desired version {report.version} arrived after one of version "
            f"{current.reported_version} was applied"
        )
    if (
        report.version == current.reported_version
        and report.seq is not None
        and current.reported_seq is not None
        and report.seq < current.reported_seq
    ):
        return (
            f"report seq {report.seq} of version {report.version} arrived after seq "
            f"{current.reported_seq} was applied"
        )
    return None


def seq_after(current: Versions, report: Report) -> int | None:
    """The stored seq once `report` is applied: its own, else the version's last one."""
    if report.seq is not None:
        return report.seq
    return current.reported_seq if report.version == current.reported_version else None


def _is_counter(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_VERSION


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


__all__ = [
    "INVALID",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_KEY_CHARS",
    "STALE",
    "Document",
    "JsonValue",
    "Report",
    "TwinDocumentError",
    "Versions",
    "check_document",
    "check_patch",
    "delta",
    "document_size",
    "json_equal",
    "judge_report",
    "merge_patch",
    "message",
    "parse_report",
    "patch_between",
    "seq_after",
]
