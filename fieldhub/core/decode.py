"""Pure decoding of device MQTT messages into typed readings (no I/O).

The bridge calls this module once per inbound MQTT message, at 20,000+
messages per second on one CPython process, so it is written for the hot
path: one ``orjson`` parse, exact ``type(...) is`` checks instead of
``isinstance`` chains, and a bounded cache of already-validated metric
names and topics so that the common case is a set/dict lookup rather than a
regex match.  Anything slower (UTF-8 re-decode to classify a JSON error,
RFC 3339 parsing) happens only on the error path or for devices that send
string timestamps.

Measured with ``python -m timeit`` on the project's 2-core machine
(CPython 3.11.7 built without PGO/LTO, orjson 3.11.4): ``decode_telemetry``
of ``{"ts":1764237600123,"seq":42,"values":{"temp":21.5,"hum":40,"co2":412.0}}``
takes 2.5 us per message, 0.5 us of it in ``orjson.loads``; together with
``parse_topic`` and the garbage collector enabled, 2.9 us (about 350,000
messages/s on one core).  An array of 100 such readings takes about 215 us,
a 3-record SenML pack about 4.5 us, a cached ``parse_topic`` 0.07 us, and
classifying a bad 256 KiB payload about 0.7 ms.

Re-measured after readings gained their unit, NUL checks and one receive
stamp per array object (``python -m timeit -p``, process time, best of 9,
three alternating runs each on a machine shared with other test suites):
the message above 2.26 us through ``decode_telemetry_stamped`` (what the
bridge calls) and 2.34 us through ``decode_telemetry``, against 2.14 us
before; an array of 100 with ``ts`` 217 us (205 before), 100 without ``ts``
185 us (177), a 3-record SenML pack with units 5.0 us (4.6 without keeping
them), ``parse_topic`` 0.06 us (unchanged).  The NUL check is a C-level
substring test on string values only; units are validated once and then
found in a set, like metric names.

Device contract
---------------
Topics (see :func:`parse_topic`)::

    devices/{device_id}/telemetry                   JSON readings
    devices/{device_id}/telemetry/senml             SenML pack (RFC 8428)
    devices/{device_id}/status                      "online" / "offline"
    devices/{device_id}/commands/{command_id}/ack   command acknowledgement
    devices/{device_id}/twin/reported               twin report (fieldhub.core.twin_documents)

Telemetry payload (see :func:`decode_telemetry`): one reading object
``{"ts": T, "seq": N, "values": {"temp": 21.5, "door": true}}`` or a JSON
array of them.

Every message is all-or-nothing: the first problem raises
:class:`DecodeError` and no reading of that message is returned, so the
dead-letter store always holds a complete raw payload that can be replayed.

A reading's identity is (device, metric, unit, time, seq) (docs/devices.md):
every field returned fits its PostgreSQL column (finite doubles, times from
``MIN_TIMESTAMP`` to an hour after receipt, a bigint ``seq``, text without
NUL), so a decoded message can never fail the bridge's batch.

Limits (module constants)
-------------------------
``MAX_PAYLOAD_BYTES``        256 KiB per MQTT payload.
``MAX_READINGS_PER_MESSAGE`` 1000 reading objects (or SenML records).
``MAX_VALUES_PER_READING``   100 entries in one ``values`` object.
``MAX_STRING_VALUE``         256 characters per string value (no NUL).
``MAX_UNIT_LENGTH``          32 printable characters per SenML unit.
``MAX_FUTURE_SKEW_S``        3600 s: later timestamps are rejected.
``MIN_TIMESTAMP``            2000-01-01T00:00:00Z: earlier ones are rejected.
Metric names must match ``METRIC_NAME_RE`` (1-64 chars, first one
alphanumeric, then ``[A-Za-z0-9_.:/-]``); device ids ``DEVICE_ID_RE``.

Reason codes carried by :class:`DecodeError` are listed in ``DecodeReason``."""

from __future__ import annotations

import math
import re
from typing import Final, Literal, NamedTuple

import orjson

from fieldhub.core.registry import DEVICE_ID_PATTERN
from fieldhub.core.timestamps import parse_rfc3339

__all__ = [
    "COMMAND_ID_RE",
    "DEVICE_ID_RE",
    "MAX_FUTURE_SKEW_S",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS_PER_MESSAGE",
    "MAX_SEQ",
    "MAX_STRING_VALUE",
    "MAX_UNIT_LENGTH",
    "MAX_VALUES_PER_READING",
    "METRIC_NAME_RE",
    "MIN_TIMESTAMP",
    "MS_THRESHOLD",
    "SENML_RELATIVE_LIMIT",
    "DecodeError",
    "DecodeReason",
    "Reading",
    "TopicInfo",
    "TopicKind",
    "decode_senml",
    "decode_status",
    "decode_telemetry",
    "decode_telemetry_stamped",
    "parse_topic",
    "valid_device_id",
    "valid_metric_name",
]

MAX_PAYLOAD_BYTES: Final = 256 * 1024
"""Largest accepted payload; checked before parsing so a hostile device
cannot make the bridge allocate for a huge document."""

MAX_READINGS_PER_MESSAGE: Final = 1000
"""Most reading objects in one telemetry array (or records in one SenML
pack); bounds the work and the database batch one message can cause."""

MAX_VALUES_PER_READING: Final = 100
"""Most entries in one reading's ``values`` object."""

MAX_STRING_VALUE: Final = 256
"""Longest string value (in characters): telemetry strings are meant for
short states like ``"eco"``, not for logs or blobs."""

MAX_UNIT_LENGTH: Final = 32
"""Longest SenML unit (in characters).  The registered SenML units are short
(``Cel``, ``%RH``, ``m/s2``, ``lon``); a unit is part of a reading's identity,
so it is kept small and printable."""

MAX_FUTURE_SKEW_S: Final = 3600.0
"""How far (seconds) a timestamp may lie after the receive time.  A device
with a badly set clock would otherwise write points into the future that
hide every later real point on a "latest value" query."""

MIN_TIMESTAMP: Final = 946_684_800.0
"""2000-01-01T00:00:00Z.  Earlier times mean an unsynchronised RTC (devices
boot at 1970 or their build date), not a real measurement."""

MS_THRESHOLD: Final = 1e11
"""Numeric ``ts`` above this is epoch milliseconds: 1e11 s is the year 5138,
far past ``MAX_FUTURE_SKEW_S``, so seconds and milliseconds cannot be
confused for any timestamp we would accept."""

MAX_SEQ: Final = 2**63 - 1
"""Largest accepted ``seq``: what a signed 64-bit database column holds."""

SENML_RELATIVE_LIMIT: Final = 2**28
"""RFC 8428 section 4.5.3: a resolved SenML time below 2**28 is relative to
the time the pack was received."""

DEVICE_ID_RE: Final = re.compile(rf"\A(?:{DEVICE_ID_PATTERN.pattern})\Z")
"""Device id: the registry's own rule (``fieldhub.core.registry.DEVICE_ID_PATTERN``),
so a topic is accepted for exactly the ids that can be registered.  Anchored
with ``\\Z`` rather than ``$`` because ``$`` also matches before a trailing
newline, which would let ``"dev\\n"`` through."""

COMMAND_ID_RE: Final = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
"""Command id in an ack topic.  Upper case is allowed because ids are minted
by the backend (UUIDs, ULIDs) and the ack handler looks them up anyway; the
point here is only to keep MQTT wildcards and empty levels out."""

METRIC_NAME_RE: Final = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}\Z")
"""Metric name.  ``/`` and ``:`` are allowed because SenML names are often
``urn:dev:...:temp`` or ``3303/0/5700``."""

TopicKind = Literal["telemetry", "senml", "status", "command_ack", "twin_reported"]

DecodeReason = Literal[
    "invalid_utf8",
    "invalid_json",
    "payload_too_large",
    "empty",
    "bad_type",
    "not_finite",
    "bad_metric_name",
    "too_many_readings",
    "too_many_values",
    "string_too_long",
    "ts_invalid",
    "ts_in_future",
    "seq_invalid",
    "senml_invalid",
    "bad_status",
    "bad_string",
]


class Reading(NamedTuple):
    """One decoded data point.

    Exactly one of ``value`` and ``text`` is set: numbers and booleans go to
    ``value`` (booleans as 1.0/0.0 with ``is_bool`` set, so they can be
    stored in the numeric column yet rendered as true/false), strings go to
    ``text``.

    A reading's identity is (device, ``metric``, ``unit``, ``time``, ``seq``);
    ``value``/``text``/``is_bool`` are its content (docs/devices.md).  Every
    field holds only what PostgreSQL accepts in its column: a finite
    ``value``, a ``time`` between ``MIN_TIMESTAMP`` and an hour after receipt,
    a ``seq`` that fits a bigint, and text without NUL."""

    time: float
    """Epoch seconds, UTC."""
    metric: str
    value: float | None
    text: str | None
    is_bool: bool
    seq: int | None
    """The device's message counter, for gap/duplicate detection; always
    ``None`` for SenML, which has no such field."""
    unit: str = ""
    """The SenML unit (``u``, or the pack's base unit ``bu``); ``""`` when
    the payload names none, which plain telemetry never does."""


class TopicInfo(NamedTuple):
    """What :func:`parse_topic` learned from a topic name."""

    kind: TopicKind
    device_id: str
    command_id: str | None
    """Set only for ``command_ack``."""


class DecodeError(ValueError):
    """A message that must go to the dead letter, with a reason code.

    ``reason`` is a short stable code from ``DecodeReason`` for metrics and
    alerting; ``detail`` is for humans and may change between releases."""

    def __init__(self, reason: DecodeReason, detail: str) -> None:
        # Both go into args so the exception survives pickling (e.g. when
        # handed to a multiprocessing dead-letter writer).
        super().__init__(reason, detail)
        self.reason: DecodeReason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


# NamedTuple's generated __new__ is a Python-level function; going straight
# to tuple.__new__ skips it and saves ~100 ns per reading on the hot path.
_new_reading = tuple.__new__

# Metric names (and topics) that already passed validation.  Fleets use a
# small vocabulary of names, so this turns a regex match per value into a
# set lookup.  Bounded because names come from devices: when full it is
# simply emptied (cheaper and simpler than LRU bookkeeping; refilling costs
# one regex per name).  Only valid names enter, so a device spraying junk
# names cannot evict anything without also passing validation.  Plain
# set/dict operations are atomic under the GIL, and a lost race only costs a
# redundant regex check.
_METRIC_CACHE_MAX: Final = 10_000
_known_metrics: set[str] = set()

# SenML units that already passed validation (same reasoning as metric names).
_UNIT_CACHE_MAX: Final = 1_000
_known_units: set[str] = set()

_TOPIC_CACHE_MAX: Final = 50_000
_topic_cache: dict[str, TopicInfo] = {}

# Longest valid topic: devices/<64>/commands/<64>/ack.  Anything longer is
# rejected before split() so a 64 KiB topic costs nothing.
_MAX_TOPIC_LEN: Final = len("devices//commands//ack") + 64 + 64

# RFC 8428 fields this decoder supports.  vd, s and bs are rejected; any
# other field is ignored unless its name ends in "_", which RFC 8428
# section 4.4 makes must-understand.
_SENML_SUPPORTED: Final = frozenset(
    {"bn", "bt", "bu", "bv", "bver", "n", "u", "v", "vs", "vb", "t", "ut"}
)


def valid_device_id(s: str) -> bool:
    """Return whether ``s`` is a valid device id (1-64 of ``[a-z0-9_-]``)."""
    return DEVICE_ID_RE.match(s) is not None


def valid_metric_name(s: str) -> bool:
    """Return whether ``s`` is a valid metric name (see ``METRIC_NAME_RE``)."""
    return s in _known_metrics or METRIC_NAME_RE.match(s) is not None


def parse_topic(topic: str) -> TopicInfo | None:
    """Classify a device topic; return ``None`` for anything off-contract.

    Returns ``None`` (rather than raising) because an unknown topic is a
    routing question for the caller, not a malformed payload."""
    info = _topic_cache.get(topic)
    if info is not None:
        return info
    if len(topic) > _MAX_TOPIC_LEN:
        return None
    parts = topic.split("/")
    n = len(parts)
    if n < 3 or n > 5 or parts[0] != "devices":
        return None
    device_id = parts[1]
    if DEVICE_ID_RE.match(device_id) is None:
        return None
    kind: TopicKind
    if n == 3:
        if parts[2] == "telemetry":
            kind = "telemetry"
        elif parts[2] == "status":
            kind = "status"
        else:
            return None
    elif n == 4:
        if parts[2] == "telemetry" and parts[3] == "senml":
            kind = "senml"
        elif parts[2] == "twin" and parts[3] == "reported":
            kind = "twin_reported"
        else:
            return None
    else:
        if parts[2] != "commands" or parts[4] != "ack":
            return None
        command_id = parts[3]
        if COMMAND_ID_RE.match(command_id) is None:
            return None
        # Not cached: every command has a fresh id, so caching ack topics
        # would only churn the cache.
        return TopicInfo("command_ack", device_id, command_id)
    info = TopicInfo(kind, device_id, None)
    if len(_topic_cache) >= _TOPIC_CACHE_MAX:
        _topic_cache.clear()
    _topic_cache[topic] = info
    return info


def decode_status(payload: bytes | bytearray) -> bool:
    """Decode a status payload; ``True`` means online.

    Accepts the bare words ``online``/``offline`` (surrounding whitespace is
    tolerated because some firmware appends a newline) or a JSON object with
    ``"status": "online"|"offline"`` (other keys ignored, e.g. a reason).

    An empty payload raises too: on MQTT that is how a retained status is
    cleared, which the caller may want to treat differently from garbage.

    Raises:
        DecodeError: reason ``bad_status`` for anything else."""
    word = payload.strip()
    if word == b"online":
        return True
    if word == b"offline":
        return False
    if word[:1] == b"{" and len(word) <= 4096:
        try:
            doc = orjson.loads(word)
        except orjson.JSONDecodeError:
            doc = None
        if type(doc) is dict:
            status = doc.get("status")
            if status == "online":
                return True
            if status == "offline":
                return False
    raise DecodeError("bad_status", f"expected online/offline, got {_preview(payload)}")


def decode_telemetry(payload: bytes | bytearray, received_at: float) -> list[Reading]:
    """Decode a ``devices/{id}/telemetry`` payload: the readings of
    :func:`decode_telemetry_stamped` (for callers that keep no receive clock)."""
    return decode_telemetry_stamped(payload, received_at)[0]


def decode_telemetry_stamped(
    payload: bytes | bytearray, received_at: float
) -> tuple[list[Reading], float]:
    """Decode a ``devices/{id}/telemetry`` payload; return its readings and the
    last receive stamp they use.

    ``payload`` is one reading object or a non-empty array of them::

        {"ts": 1764237600123, "seq": 7, "values": {"temp": 21.5, "door": true}}

    ``ts`` is optional and may be epoch seconds (int or float), epoch
    milliseconds (any number above ``MS_THRESHOLD``) or an RFC 3339 string
    with ``Z`` or a numeric offset.  Without ``ts`` a reading object gets its
    own receive stamp: ``received_at`` plus its index in the array in
    microseconds, so an array without ``ts`` that carries one metric several
    times keeps every one of them.  ``seq`` is an optional integer in
    ``0..MAX_SEQ``.  ``values`` maps metric names to finite numbers, booleans
    or strings of at most ``MAX_STRING_VALUE`` characters without NUL.  Other
    keys of a reading are ignored so that firmware can add fields before the
    bridge knows them.

    Args:
        payload: the raw MQTT payload.
        received_at: epoch seconds when the bridge received the message (whole
            microseconds); the first receive stamp and the reference for
            ``MAX_FUTURE_SKEW_S``.

    Returns:
        One :class:`Reading` per value, in payload order, and the last receive
        stamp used (``received_at`` when at most the first object had no
        ``ts``): the bridge's receive clock must move past it, so that the
        next message's stamps are later still.

    Raises:
        DecodeError: for any violation; nothing of the message is returned."""
    doc = _parse_json(payload)
    out: list[Reading] = []
    last_stamp = received_at
    if type(doc) is dict:
        _decode_reading(doc, received_at, out, 0)
    elif type(doc) is list:
        if not doc:
            raise DecodeError("empty", "reading array is empty")
        if len(doc) > MAX_READINGS_PER_MESSAGE:
            raise DecodeError(
                "too_many_readings",
                f"{len(doc)} readings, limit is {MAX_READINGS_PER_MESSAGE}",
            )
        # Index microseconds past the message's own stamp: one stamp per object. Counted in
        # whole microseconds and divided once, so each stamp is the double nearest to its
        # microsecond (adding index * 1e-6 to a float drifts by one now and then).
        base_us = round(received_at * 1_000_000)
        for index, item in enumerate(doc):
            if type(item) is not dict:
                raise DecodeError(
                    "bad_type", f"reading {index} is {_json_type(item)}, not an object"
                )
            stamp = (base_us + index) / 1_000_000 if index else received_at
            if _decode_reading(item, stamp, out, index):
                last_stamp = stamp
    else:
        raise DecodeError("bad_type", f"payload is {_json_type(doc)}, not an object or array")
    return out, last_stamp


def decode_senml(payload: bytes | bytearray, received_at: float) -> list[Reading]:
    """Decode a ``devices/{id}/telemetry/senml`` payload (RFC 8428 JSON).

    Supported: ``bn``, ``bt``, ``bu``, ``bv`` (carried forward to later
    records until overridden), ``n``, ``t``, ``u``, ``v``, ``vb``, ``vs``;
    ``ut`` and ``bver`` are accepted and ignored.  The metric name is ``n``
    when no base name is in effect, otherwise ``bn + n`` verbatim (no
    separator is inserted or stripped); the result must satisfy
    ``METRIC_NAME_RE``.  The unit is ``u``, else the base unit ``bu``, else
    none (``""``); it is part of the reading's identity, so records that
    differ only by unit (RFC 8428 section 5.1.5) are separate readings.  A
    unit is 1 to ``MAX_UNIT_LENGTH`` printable characters (``senml_invalid``
    otherwise).  The time is ``bt + t``; a result below
    ``SENML_RELATIVE_LIMIT`` is relative to ``received_at`` (so ``t: -60``
    means a minute before receipt), and the resolved time is then held to
    the same window as plain telemetry.  A NUL (U+0000) in ``vs`` or a unit
    is refused with ``bad_string``: PostgreSQL text cannot hold it.

    A record carrying only base fields sets context and yields no reading.
    Rejected with ``senml_invalid``: data values (``vd``), sums (``s``,
    ``bs``: the bridge has no sum semantics), records with more than one
    value field, records with ``n``/``t`` but no value, and unknown
    must-understand fields (names ending in ``_``).

    Raises:
        DecodeError: for any violation; nothing of the pack is returned."""
    doc = _parse_json(payload)
    if type(doc) is not list:
        raise DecodeError("senml_invalid", f"a SenML pack is an array, got {_json_type(doc)}")
    if not doc:
        raise DecodeError("empty", "SenML pack is empty")
    if len(doc) > MAX_READINGS_PER_MESSAGE:
        raise DecodeError(
            "too_many_readings",
            f"{len(doc)} records, limit is {MAX_READINGS_PER_MESSAGE}",
        )
    base_name = ""
    base_time = 0.0
    base_value = 0.0
    base_unit = ""
    out: list[Reading] = []
    known = _known_metrics
    units = _known_units
    append = out.append
    for index, rec in enumerate(doc):
        if type(rec) is not dict:
            raise DecodeError(
                "senml_invalid", f"record {index} is {_json_type(rec)}, not an object"
            )
        # One C-level subset test per record; only records with fields
        # beyond the supported set take the slow path that rejects or
        # ignores them.
        if not _SENML_SUPPORTED.issuperset(rec):
            _check_other_senml_fields(rec, index)

        if "bn" in rec:
            bn = rec["bn"]
            if type(bn) is not str:
                raise DecodeError("senml_invalid", f"record {index}: bn is not a string")
            base_name = bn
        if "bt" in rec:
            base_time = _senml_number(rec["bt"], "bt", index, "ts_invalid")
        if "bv" in rec:
            base_value = _senml_number(rec["bv"], "bv", index, "bad_type")
        if "bu" in rec:
            bu = rec["bu"]
            # The type test first: a list or object is not hashable.
            base_unit = bu if type(bu) is str and bu in units else _admit_unit(bu, "bu", index)

        has_v = "v" in rec
        has_vb = "vb" in rec
        has_vs = "vs" in rec
        value_fields = has_v + has_vb + has_vs
        if value_fields == 0:
            if "n" in rec or "t" in rec:
                raise DecodeError("senml_invalid", f"record {index} has no value (v, vb or vs)")
            continue
        if value_fields > 1:
            raise DecodeError("senml_invalid", f"record {index} has more than one value field")

        name = rec.get("n", "")
        if type(name) is not str:
            raise DecodeError("senml_invalid", f"record {index}: n is not a string")
        metric = base_name + name
        if metric not in known:
            _admit_metric(metric, "record", index)
        if "u" in rec:
            u = rec["u"]
            unit = u if type(u) is str and u in units else _admit_unit(u, "u", index)
        else:
            unit = base_unit

        t = base_time
        if "t" in rec:
            t += _senml_number(rec["t"], "t", index, "ts_invalid")
        if t < SENML_RELATIVE_LIMIT:
            t += received_at
        if not MIN_TIMESTAMP <= t <= received_at + MAX_FUTURE_SKEW_S:
            _check_time(t, received_at, "record", index)

        if has_v:
            v = rec["v"]
            if type(v) is not float and type(v) is not int:
                raise DecodeError("bad_type", f"record {index}: v is {_json_type(v)}, not a number")
            fv = base_value + v
            # orjson never yields inf, but bv + v can overflow.
            if not math.isfinite(fv):
                raise DecodeError("not_finite", f"record {index}: bv + v overflows")
            append(_new_reading(Reading, (t, metric, fv, None, False, None, unit)))
        elif has_vb:
            vb = rec["vb"]
            if type(vb) is not bool:
                raise DecodeError(
                    "bad_type", f"record {index}: vb is {_json_type(vb)}, not a boolean"
                )
            append(_new_reading(Reading, (t, metric, 1.0 if vb else 0.0, None, True, None, unit)))
        else:
            vs = rec["vs"]
            if type(vs) is not str:
                raise DecodeError(
                    "bad_type", f"record {index}: vs is {_json_type(vs)}, not a string"
                )
            if len(vs) > MAX_STRING_VALUE:
                raise DecodeError(
                    "string_too_long",
                    f"record {index}: {len(vs)} chars, limit is {MAX_STRING_VALUE}",
                )
            if "\0" in vs:
                raise DecodeError("bad_string", f"record {index}: vs contains NUL (U+0000)")
            append(_new_reading(Reading, (t, metric, None, vs, False, None, unit)))
    if not out:
        raise DecodeError("empty", "SenML pack has no value records")
    return out


def _decode_reading(
    reading: dict[str, object], stamp: float, out: list[Reading], index: int
) -> bool:
    # Split out of decode_telemetry only so the array and single-object
    # shapes share it; it appends to the caller's list to avoid building and
    # concatenating a list per reading.  Returns whether the object took its
    # receive stamp (it had no ts).  The future-skew bound is measured from
    # the stamp: at most MAX_READINGS_PER_MESSAGE microseconds more lenient.
    ts = reading.get("ts")
    t: float
    stamped = False
    if type(ts) is int or type(ts) is float:
        t = ts / 1000 if ts > MS_THRESHOLD else float(ts)
    elif type(ts) is str:
        t = _parse_rfc3339(ts, index)
    elif ts is None and "ts" not in reading:
        t = stamp
        stamped = True
    else:
        # bool lands here on purpose: type(True) is bool, not int, and a
        # boolean timestamp is a firmware bug rather than 1970-01-01T00:00:01.
        raise DecodeError("ts_invalid", f"reading {index}: ts is {_json_type(ts)}")
    if not MIN_TIMESTAMP <= t <= stamp + MAX_FUTURE_SKEW_S:
        _check_time(t, stamp, "reading", index)

    seq = reading.get("seq")
    if seq is not None:
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise DecodeError(
                "seq_invalid", f"reading {index}: seq must be an integer in 0..{MAX_SEQ}"
            )
    elif "seq" in reading:
        raise DecodeError("seq_invalid", f"reading {index}: seq is null")

    values = reading.get("values")
    if type(values) is not dict:
        raise DecodeError(
            "bad_type", f"reading {index}: values is {_json_type(values)}, not an object"
        )
    count = len(values)
    if count == 0:
        raise DecodeError("empty", f"reading {index}: values is empty")
    if count > MAX_VALUES_PER_READING:
        raise DecodeError(
            "too_many_values",
            f"reading {index}: {count} values, limit is {MAX_VALUES_PER_READING}",
        )
    # One C-level subset test for all names instead of a lookup per value;
    # only a message with a not-yet-seen name pays for the regex.
    if not _known_metrics.issuperset(values):
        for name in values:
            if name not in _known_metrics:
                _admit_metric(name, "reading", index)
    # Locals: global lookups in this loop are a measurable share of the cost.
    append = out.append
    new = _new_reading
    cls = Reading
    for name, v in values.items():
        # Ordered by frequency in real fleets.  No isfinite() needed: orjson
        # refuses NaN/Infinity/overflowing literals, and every int it returns
        # fits in a u64, whose float() is finite.
        vt = type(v)
        if vt is float:
            append(new(cls, (t, name, v, None, False, seq, "")))
        elif vt is int:
            append(new(cls, (t, name, float(v), None, False, seq, "")))
        elif vt is bool:
            append(new(cls, (t, name, 1.0 if v else 0.0, None, True, seq, "")))
        elif vt is str:
            if len(v) > MAX_STRING_VALUE:
                raise DecodeError(
                    "string_too_long",
                    f"reading {index}: {_preview(name)} has {len(v)} chars, "
                    f"limit is {MAX_STRING_VALUE}",
                )
            if "\0" in v:
                raise DecodeError(
                    "bad_string", f"reading {index}: {_preview(name)} contains NUL (U+0000)"
                )
            append(new(cls, (t, name, None, v, False, seq, "")))
        else:
            raise DecodeError(
                "bad_type",
                f"reading {index}: {_preview(name)} is {_json_type(v)}; "
                "values must be numbers, booleans or strings",
            )
    return stamped


def _admit_unit(unit: object, field: str, index: int) -> str:
    # Slow path of the unit cache, as for metric names: only valid units enter.
    if type(unit) is not str:
        raise DecodeError("senml_invalid", f"record {index}: {field} is not a string")
    if "\0" in unit:
        raise DecodeError("bad_string", f"record {index}: {field} contains NUL (U+0000)")
    if not 0 < len(unit) <= MAX_UNIT_LENGTH or not unit.isprintable():
        raise DecodeError(
            "senml_invalid",
            f"record {index}: {field} {_preview(unit)} is not 1-{MAX_UNIT_LENGTH} "
            "printable characters",
        )
    if len(_known_units) >= _UNIT_CACHE_MAX:
        _known_units.clear()
    _known_units.add(unit)
    return unit


def _admit_metric(name: str, item: str, index: int) -> None:
    # Slow path of the metric-name cache: validate once, then remember.
    if METRIC_NAME_RE.match(name) is None:
        raise DecodeError(
            "bad_metric_name", f"{item} {index}: invalid metric name {_preview(name)}"
        )
    if len(_known_metrics) >= _METRIC_CACHE_MAX:
        _known_metrics.clear()
    _known_metrics.add(name)


def _check_time(t: float, received_at: float, item: str, index: int) -> None:
    # Called only once the inline range test has failed, so it can afford to
    # work out which way (NaN/inf from SenML arithmetic fails both bounds).
    if not math.isfinite(t) or t < MIN_TIMESTAMP:
        raise DecodeError(
            "ts_invalid", f"{item} {index}: timestamp {t!r} is not finite or before 2000-01-01"
        )
    if t > received_at + MAX_FUTURE_SKEW_S:
        raise DecodeError(
            "ts_in_future",
            f"{item} {index}: timestamp is {t - received_at:.0f} s after receipt, "
            f"limit is {MAX_FUTURE_SKEW_S:.0f} s",
        )


def _parse_rfc3339(s: str, index: int) -> float:
    try:
        return parse_rfc3339(s).timestamp()
    except ValueError as exc:
        raise DecodeError("ts_invalid", f"reading {index}: ts {_preview(s)} {exc}") from None


def _senml_number(x: object, field: str, index: int, reason: DecodeReason) -> float:
    if type(x) is float or type(x) is int:
        return float(x)
    raise DecodeError(reason, f"record {index}: {field} is {_json_type(x)}, not a number")


def _check_other_senml_fields(rec: dict[str, object], index: int) -> None:
    if "vd" in rec:
        raise DecodeError("senml_invalid", f"record {index}: data values (vd) are not supported")
    if "s" in rec or "bs" in rec:
        raise DecodeError("senml_invalid", f"record {index}: sums (s, bs) are not supported")
    for key in rec:
        if key.endswith("_"):
            raise DecodeError(
                "senml_invalid",
                f"record {index}: unsupported must-understand field {_preview(key)}",
            )


def _parse_json(payload: bytes | bytearray) -> object:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError(
            "payload_too_large",
            f"{len(payload)} bytes, limit is {MAX_PAYLOAD_BYTES}",
        )
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _classify_json_error(payload, exc) from exc


# What can sit at orjson's error position when the JSON is fine except for a
# non-finite number: a NaN/Infinity word (any case, since C firmware that
# printf()s a float writes "nan"/"inf", and orjson points past a leading
# "-"), or a number literal that overflows a double, like 1e400.
_NON_FINITE_AT_RE: Final = re.compile(
    r"(?P<word>nan|inf(?:inity)?)(?![a-z0-9_])|-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?",
    re.IGNORECASE,
)


def _classify_json_error(payload: bytes | bytearray, exc: orjson.JSONDecodeError) -> DecodeError:
    # Error path only.  orjson reports invalid UTF-8, NaN/Infinity and 1e400
    # all as JSONDecodeError, but operators need to tell broken firmware
    # encoding from a sensor emitting NaN from a truncated message.  Only the
    # token where orjson stopped is looked at: scanning the whole payload
    # for "NaN" would misreport a NaN inside a string, and a full stdlib
    # re-parse would let a device make every bad message cost milliseconds.
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return DecodeError("invalid_utf8", f"invalid UTF-8 at byte {uexc.start}")
    if not text.strip():
        return DecodeError("empty", "payload is empty")
    # orjson's pos counts characters, not bytes, so it indexes ``text``.
    m = _NON_FINITE_AT_RE.match(text, exc.pos)
    if m is not None and (m.group("word") is not None or math.isinf(float(m.group()))):
        return DecodeError(
            "not_finite", f"non-finite number {_preview(m.group())} at char {exc.pos}"
        )
    return DecodeError("invalid_json", f"{exc.msg} at char {exc.pos}")


def _json_type(x: object) -> str:
    # JSON vocabulary in messages: the people reading dead letters write
    # firmware, not Python.
    if x is None:
        return "null"
    t = type(x)
    if t is bool:
        return "a boolean"
    if t is int or t is float:
        return "a number"
    if t is str:
        return "a string"
    if t is list:
        return "an array"
    if t is dict:
        return "an object"
    return t.__name__


def _preview(x: str | bytes | bytearray) -> str:
    # Device-supplied text ends up in logs; cap it so one message cannot
    # flood them.
    if len(x) > 40:
        return repr(x[:40]) + "..."
    return repr(x)
