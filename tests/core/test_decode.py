"""Unit tests for fieldhub.core.decode: the device contract, limits and reasons."""

from __future__ import annotations

import contextlib
import json
import math
import pickle
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldhub.core import decode
from fieldhub.core.decode import (
    DEVICE_ID_RE,
    MAX_FUTURE_SKEW_S,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS_PER_MESSAGE,
    MAX_SEQ,
    MAX_STRING_VALUE,
    MAX_UNIT_LENGTH,
    MAX_VALUES_PER_READING,
    METRIC_NAME_RE,
    MIN_TIMESTAMP,
    DecodeError,
    Reading,
    TopicInfo,
    decode_senml,
    decode_status,
    decode_telemetry,
    decode_telemetry_stamped,
    parse_topic,
    valid_device_id,
    valid_metric_name,
)

# 2026-11-27T10:00:00Z: a fixed "now" so every expected time is exact.
NOW = 1_795_773_600.0


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def one(payload: Any, received_at: float = NOW) -> Reading:
    readings = decode_telemetry(dumps(payload), received_at)
    assert len(readings) == 1
    return readings[0]


def reason_of(fn: Any, payload: bytes, *args: Any) -> str:
    with pytest.raises(DecodeError) as info:
        fn(payload, *args)
    return info.value.reason


def telemetry_reason(payload: bytes | Any) -> str:
    raw = payload if isinstance(payload, bytes) else dumps(payload)
    return reason_of(decode_telemetry, raw, NOW)


def senml_reason(payload: bytes | Any) -> str:
    raw = payload if isinstance(payload, bytes) else dumps(payload)
    return reason_of(decode_senml, raw, NOW)


# --- device ids, metric names, topics ------------------------------------------------


@pytest.mark.parametrize("device_id", ["a", "sensor-01", "x_y-z9", "0" * 64])
def test_valid_device_ids(device_id: str) -> None:
    assert valid_device_id(device_id)
    assert DEVICE_ID_RE.match(device_id)


@pytest.mark.parametrize(
    "device_id",
    ["", "A", "Sensor", "a" * 65, "a b", "a/b", "+", "#", "a+", "dev\n", "dév", "a.b"],
)
def test_invalid_device_ids(device_id: str) -> None:
    assert not valid_device_id(device_id)


@pytest.mark.parametrize("name", ["t", "temp", "Temp_1", "a.b:c/d-e_f", "3303/0/5700", "x" * 64])
def test_valid_metric_names(name: str) -> None:
    assert valid_metric_name(name)
    assert METRIC_NAME_RE.match(name)


@pytest.mark.parametrize(
    "name", ["", "_t", ".t", "-t", "/t", "t t", "temp$", "tém", "a\n", "x" * 65, "a+b"]
)
def test_invalid_metric_names(name: str) -> None:
    assert not valid_metric_name(name)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("devices/d1/telemetry", TopicInfo("telemetry", "d1", None)),
        ("devices/d1/telemetry/senml", TopicInfo("senml", "d1", None)),
        ("devices/d1/status", TopicInfo("status", "d1", None)),
        ("devices/d1/twin/reported", TopicInfo("twin_reported", "d1", None)),
        ("devices/d1/commands/c-42/ack", TopicInfo("command_ack", "d1", "c-42")),
        (
            "devices/d1/commands/01HZX3K5M6N7P8Q9R0S1T2V3W4/ack",
            TopicInfo("command_ack", "d1", "01HZX3K5M6N7P8Q9R0S1T2V3W4"),
        ),
        (
            f"devices/{'a' * 64}/commands/{'b' * 64}/ack",
            TopicInfo("command_ack", "a" * 64, "b" * 64),
        ),
    ],
)
def test_parse_topic_valid(topic: str, expected: TopicInfo) -> None:
    assert parse_topic(topic) == expected
    # Second call goes through the cache and must agree.
    assert parse_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "devices",
        "devices/d1",
        "devices/+/telemetry",
        "devices/#",
        "devices/d1/#",
        "devices/d+/telemetry",
        "devices/D1/telemetry",
        f"devices/{'a' * 65}/telemetry",
        "devices//telemetry",
        "/devices/d1/telemetry",
        "devices/d1/telemetry/",
        "devices/d1/telemetry/extra",
        "devices/d1/telemetry/senml/extra",
        "devices/d1/status/senml",
        "devices/d1/twin/desired",
        "devices/d1/twin/delta",
        "devices/d1/twin",
        "devices/d1/twin/reported/x",
        "devices/d1/telemetry/reported",
        "devices/d1/Telemetry",
        "device/d1/telemetry",
        "Devices/d1/telemetry",
        "devices/d1/other",
        "devices/d1/commands/c1",
        "devices/d1/commands/c1/nack",
        "devices/d1/commands//ack",
        "devices/d1/commands/+/ack",
        "devices/d1/commands/c.1/ack",
        f"devices/d1/commands/{'c' * 65}/ack",
        "devices/d1/commands/c1/ack/more",
        "devices/d1\n/telemetry",
        "devices/" + "a/" * 5000 + "telemetry",
    ],
)
def test_parse_topic_invalid(topic: str) -> None:
    assert parse_topic(topic) is None


def test_parse_topic_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "_TOPIC_CACHE_MAX", 3)
    monkeypatch.setattr(decode, "_topic_cache", {})
    for i in range(10):
        assert parse_topic(f"devices/d{i}/telemetry") == TopicInfo("telemetry", f"d{i}", None)
        assert len(decode._topic_cache) <= 3


def test_command_ack_topics_are_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "_topic_cache", {})
    parse_topic("devices/d1/commands/c1/ack")
    assert decode._topic_cache == {}


# --- status -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "online"),
    [
        (b"online", True),
        (b"offline", False),
        (b"  online\n", True),
        (b"\toffline\r\n", False),
        (b'{"status":"online"}', True),
        (b' {"status": "offline", "reason": "lwt"} ', False),
    ],
)
def test_decode_status(payload: bytes, online: bool) -> None:
    assert decode_status(payload) is online


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"   ",
        b"Online",
        b"OFFLINE",
        b"on",
        b"online offline",
        b'"online"',
        b"1",
        b"true",
        b'{"status":"ONLINE"}',
        b'{"status":1}',
        b'{"state":"online"}',
        b'{"status":"online"',
        b'["online"]',
        b"\xff\xfe",
        b"{" + b" " * 5000 + b'"status":"online"}',
    ],
)
def test_decode_status_rejects(payload: bytes) -> None:
    assert reason_of(decode_status, payload) == "bad_status"


# --- telemetry: timestamps --------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1_795_770_000, 1_795_770_000.0),
        (1_795_770_000.25, 1_795_770_000.25),
        (1_795_770_000_123, 1_795_770_000.123),
        # A float above the ms threshold is milliseconds too (decided: as
        # seconds it would be year 5000+ and rejected anyway).
        (1_795_770_000_123.0, 1_795_770_000.123),
        (946_684_800, MIN_TIMESTAMP),
        (946_684_800_000, MIN_TIMESTAMP),
        ("2026-11-27T10:00:00Z", NOW),
        ("2026-11-27t10:00:00z", NOW),
        ("2026-11-27 10:00:00Z", NOW),
        ("2026-11-27T10:00:00.123Z", NOW + 0.123),
        ("2026-11-27T10:00:00.123+01:00", NOW - 3600 + 0.123),
        ("2026-11-27T04:30:00-05:30", NOW),
        ("2026-11-27T10:00:00+00:00", NOW),
        ("2026-11-27T10:00:00-00:00", NOW),
        ("2026-11-27T10:00:00.5Z", NOW + 0.5),
        ("2026-11-27T10:00:00.123456789Z", NOW + 0.123456),
        ("2026-11-27T11:00:00Z", NOW + MAX_FUTURE_SKEW_S),
    ],
)
def test_ts_forms(ts: Any, expected: float) -> None:
    reading = one({"ts": ts, "values": {"temp": 1}})
    assert reading.time == pytest.approx(expected, abs=1e-6)
    assert type(reading.time) is float


def test_rfc3339_matches_datetime() -> None:
    reading = one({"ts": "2026-11-27T10:00:00.123+01:00", "values": {"t": 1}})
    expected = datetime(2026, 11, 27, 9, 0, 0, 123000, tzinfo=UTC).timestamp()
    assert reading.time == expected


def test_missing_ts_uses_received_at() -> None:
    assert one({"values": {"temp": 1}}).time == NOW
    assert one({"values": {"temp": 1}}, received_at=NOW + 5.5).time == NOW + 5.5


@pytest.mark.parametrize(
    "ts",
    [
        True,
        False,
        None,
        [NOW],
        {"s": NOW},
        "",
        "now",
        "1795773600",
        "2026-11-27",
        "2026-11-27T10:00:00",
        "2026-11-27T10:00Z",
        "2026-W48-5T10:00:00Z",
        "20261127T100000Z",
        "2026-11-27T10:00:00.Z",
        "2026-11-27T10:00:00.1234567890Z",
        "2026-11-27T10:00:00+0100",
        "2026-11-27T10:00:60Z",
        "2026-13-01T10:00:00Z",
        "2026-02-30T10:00:00Z",
        "2026-11-27T24:00:00Z",
        "2026-11-27T10:00:00+24:00",
        "0000-01-01T00:00:00Z",
        "\uff12\uff10\uff12\uff16-11-27T10:00:00Z",  # fullwidth digits
        " 2026-11-27T10:00:00Z",
        "2026-11-27T10:00:00Z\n",
        # Before 2000-01-01.
        946_684_799,
        946_684_799.999,
        946_684_799_999,
        0,
        -1,
        -1_795_770_000_123,
        "1999-12-31T23:59:59Z",
        "0001-01-01T00:00:00+23:59",
    ],
)
def test_ts_invalid(ts: Any) -> None:
    assert telemetry_reason({"ts": ts, "values": {"temp": 1}}) == "ts_invalid"


@pytest.mark.parametrize(
    "ts",
    [
        NOW + MAX_FUTURE_SKEW_S + 1,
        int(NOW + MAX_FUTURE_SKEW_S + 1) * 1000,
        "2026-11-27T11:00:01Z",
        "9999-12-31T23:59:59-23:59",
        1e300,
        2**64 - 1,
    ],
)
def test_ts_in_future(ts: Any) -> None:
    assert telemetry_reason({"ts": ts, "values": {"temp": 1}}) == "ts_in_future"


def test_future_skew_is_relative_to_received_at() -> None:
    ts = NOW + 2 * MAX_FUTURE_SKEW_S
    assert telemetry_reason({"ts": ts, "values": {"t": 1}}) == "ts_in_future"
    assert one({"ts": ts, "values": {"t": 1}}, received_at=NOW + MAX_FUTURE_SKEW_S).time == ts


# --- telemetry: seq -----------------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 4_294_967_296, MAX_SEQ])
def test_seq_valid(seq: int) -> None:
    assert one({"seq": seq, "values": {"t": 1}}).seq == seq


def test_seq_absent_is_none() -> None:
    assert one({"values": {"t": 1}}).seq is None


@pytest.mark.parametrize("seq", [-1, MAX_SEQ + 1, 1.0, 1.5, True, False, "5", None, [1]])
def test_seq_invalid(seq: Any) -> None:
    assert telemetry_reason({"seq": seq, "values": {"t": 1}}) == "seq_invalid"


# --- telemetry: values ---------------------------------------------------------------


def test_value_kinds() -> None:
    payload = {
        "ts": 1_795_770_000_000,
        "seq": 7,
        "values": {"temp": 21.5, "count": 3, "door": True, "alarm": False, "mode": "eco"},
    }
    t = 1_795_770_000.0
    assert decode_telemetry(dumps(payload), NOW) == [
        Reading(t, "temp", 21.5, None, False, 7),
        Reading(t, "count", 3.0, None, False, 7),
        Reading(t, "door", 1.0, None, True, 7),
        Reading(t, "alarm", 0.0, None, True, 7),
        Reading(t, "mode", None, "eco", False, 7),
    ]


def test_int_values_become_floats() -> None:
    reading = one({"values": {"n": 3}})
    assert type(reading.value) is float


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"-0", -0.0),
        (b"18446744073709551615", 18446744073709551615.0),
        (b"-9223372036854775808", -9223372036854775808.0),
        (b"123456789012345678901234567890", 1.2345678901234568e29),
        (b"1e308", 1e308),
        (b"-1.7976931348623157e308", -1.7976931348623157e308),
        (b"5e-324", 5e-324),
    ],
)
def test_extreme_finite_numbers(raw: bytes, expected: float) -> None:
    readings = decode_telemetry(b'{"values":{"x":' + raw + b"}}", NOW)
    assert readings[0].value == expected
    assert math.isfinite(readings[0].value)


@pytest.mark.parametrize("text", ["", "e", "x" * MAX_STRING_VALUE, "é" * MAX_STRING_VALUE, "😀"])
def test_string_values(text: str) -> None:
    reading = one({"values": {"s": text}})
    assert reading.text == text
    assert reading.value is None
    assert not reading.is_bool


@pytest.mark.parametrize("text", ["x" * (MAX_STRING_VALUE + 1), "é" * (MAX_STRING_VALUE + 1)])
def test_string_too_long(text: str) -> None:
    assert telemetry_reason({"values": {"s": text}}) == "string_too_long"


@pytest.mark.parametrize("value", [None, [1], [], {"v": 1}, {}])
def test_value_bad_type(value: Any) -> None:
    assert telemetry_reason({"values": {"x": value}}) == "bad_type"


@pytest.mark.parametrize(
    "payload",
    [
        {"ts": NOW},
        {"values": None},
        {"values": [1, 2]},
        {"values": [{"temp": 1}]},
        {"values": "temp=1"},
        {"values": 1},
        {"value": {"temp": 1}},
    ],
)
def test_values_bad_type(payload: Any) -> None:
    assert telemetry_reason(payload) == "bad_type"


def test_values_empty() -> None:
    assert telemetry_reason({"values": {}}) == "empty"


def test_values_limit() -> None:
    values = {f"m{i}": i for i in range(MAX_VALUES_PER_READING)}
    assert len(decode_telemetry(dumps({"values": values}), NOW)) == MAX_VALUES_PER_READING
    values["one_more"] = 1
    assert telemetry_reason({"values": values}) == "too_many_values"


@pytest.mark.parametrize(
    "name", ["", "_temp", "temp erature", "temp$", "tëmp", "x" * 65, "a\n", "-", "a#b"]
)
def test_bad_metric_name(name: str) -> None:
    assert telemetry_reason({"values": {"ok": 1, name: 2}}) == "bad_metric_name"


def test_bad_metric_name_is_never_cached() -> None:
    for _ in range(2):
        assert telemetry_reason({"values": {"bad name": 1}}) == "bad_metric_name"


def test_metric_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "_METRIC_CACHE_MAX", 5)
    monkeypatch.setattr(decode, "_known_metrics", set())
    for i in range(20):
        values = {f"metric_{i}_{j}": j for j in range(3)}
        readings = decode_telemetry(dumps({"values": values}), NOW)
        assert [r.metric for r in readings] == list(values)
        assert len(decode._known_metrics) <= 5
    assert telemetry_reason({"values": {"metric_0_0": 1, "bad name": 2}}) == "bad_metric_name"


def test_unknown_reading_keys_are_ignored() -> None:
    assert one({"values": {"t": 1}, "fw": "1.2.3", "rssi": -70}).value == 1.0


def test_duplicate_json_keys_last_wins() -> None:
    readings = decode_telemetry(b'{"values":{"t":1,"t":2}}', NOW)
    assert [(r.metric, r.value) for r in readings] == [("t", 2.0)]


# --- telemetry: arrays and message shape --------------------------------------------


def test_array_of_readings_keeps_order_and_per_reading_fields() -> None:
    payload = [
        {"ts": 1_795_770_000, "seq": 1, "values": {"temp": 20.0, "hum": 40}},
        {"ts": "2026-11-27T09:00:01Z", "seq": 2, "values": {"temp": 20.5}},
        {"values": {"door": True}},
    ]
    assert decode_telemetry(dumps(payload), NOW) == [
        Reading(1_795_770_000.0, "temp", 20.0, None, False, 1),
        Reading(1_795_770_000.0, "hum", 40.0, None, False, 1),
        Reading(1_795_770_001.0, "temp", 20.5, None, False, 2),
        # Without ts: the receive stamp plus the object's index in microseconds.
        Reading(NOW + 2e-6, "door", 1.0, None, True, None),
    ]


def test_array_limit() -> None:
    readings = [{"seq": i, "values": {"t": i}} for i in range(MAX_READINGS_PER_MESSAGE)]
    assert len(decode_telemetry(dumps(readings), NOW)) == MAX_READINGS_PER_MESSAGE
    readings.append({"values": {"t": 0}})
    assert telemetry_reason(readings) == "too_many_readings"


def test_empty_array() -> None:
    assert telemetry_reason([]) == "empty"


@pytest.mark.parametrize("item", [1, "x", None, [], True])
def test_array_item_not_object(item: Any) -> None:
    assert telemetry_reason([{"values": {"t": 1}}, item]) == "bad_type"


def test_one_bad_reading_rejects_the_whole_message() -> None:
    payload = [
        {"values": {"t": 1}},
        {"ts": True, "values": {"t": 2}},
        {"values": {"t": 3}},
    ]
    with pytest.raises(DecodeError) as info:
        decode_telemetry(dumps(payload), NOW)
    assert info.value.reason == "ts_invalid"
    assert "reading 1" in info.value.detail


@pytest.mark.parametrize("payload", [b"1", b'"x"', b"null", b"true", b"1.5"])
def test_top_level_bad_type(payload: bytes) -> None:
    assert telemetry_reason(payload) == "bad_type"


# --- telemetry: payload-level rejections --------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe",
        b"\xff\xfe{\x00}\x00",
        b'{"values":{"t":"\xff"}}',
        b'{"values":{"\xc0\xaf":1}}',
        b'{"values":{"t":"\xed\xa0\x80"}}',
        b'{"values":{"t":1}}\xe2\x82',
    ],
)
def test_invalid_utf8(payload: bytes) -> None:
    assert telemetry_reason(payload) == "invalid_utf8"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"values":{"t":NaN}}',
        b'{"values":{"t":Infinity}}',
        b'{"values":{"t":-Infinity}}',
        b'{"values":{"t":1e400}}',
        b'{"values":{"t":-1e400}}',
        b'{"values":{"t":1' + b"0" * 400 + b"}}",
        b'{"values":{"t":1' + b"0" * 5000 + b"}}",
        b'{"ts":NaN,"values":{"t":1}}',
        b"[NaN]",
        b'{"values":{"a":1,"b":NaN,"c":"x"}}',
        b'{"values":{"\xc3\xa9":"\xe2\x82\xac","t": NaN}}',
        # What C firmware gets from printf("%f") of a NaN or infinity.
        b'{"values":{"t":nan}}',
        b'{"values":{"t":-nan}}',
        b'{"values":{"t":inf}}',
        b'{"values":{"t":-inf}}',
        b'{"values":{"t":1.5E+99999}}',
    ],
)
def test_not_finite(payload: bytes) -> None:
    assert telemetry_reason(payload) == "not_finite"


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b'{"values":{"t":1}',
        b'{"values":{"t":"NaN"}',
        b'{"values":{"t":"Infinity"},}',
        b"{'values':{}}",
        b'{"values":{"t":nul}}',
        b'{"values":{"t":Infinit}}',
        b'{"values":{"t":Infinity1}}',
        b'{"values":{"t":nanx}}',
        b'{"values":{"t":01}',
        b'{"values":{"t":1e-99999 x}}',
        b'{"values":{"t":1}} x',
        b'{"values":{"t":"\\ud800"}}',
        b'\xef\xbb\xbf{"values":{"t":1}}',
        b'{"values":{"t":"a\x01b"}}',
        b'{"values":{"t":01}}',
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_invalid_json(payload: bytes) -> None:
    assert telemetry_reason(payload) == "invalid_json"


@pytest.mark.parametrize("payload", [b"", b" ", b"\n\t "])
def test_empty_payload(payload: bytes) -> None:
    assert telemetry_reason(payload) == "empty"


def test_payload_size_limit() -> None:
    body = b'{"values":{"t":1}}'
    exactly = body + b" " * (MAX_PAYLOAD_BYTES - len(body))
    assert len(exactly) == MAX_PAYLOAD_BYTES
    assert len(decode_telemetry(exactly, NOW)) == 1
    assert telemetry_reason(exactly + b" ") == "payload_too_large"
    # Checked before anything else, so even garbage is classified by size.
    assert telemetry_reason(b"\xff" * (MAX_PAYLOAD_BYTES + 1)) == "payload_too_large"
    assert senml_reason(b"[" + b" " * MAX_PAYLOAD_BYTES + b"]") == "payload_too_large"


def test_accepts_bytes_like_payloads() -> None:
    body = b'{"values":{"t":1}}'
    assert decode_telemetry(bytearray(body), NOW) == decode_telemetry(body, NOW)
    assert decode_senml(bytearray(b'[{"n":"t","v":1}]'), NOW)[0].value == 1.0
    assert decode_status(bytearray(b"online")) is True
    assert telemetry_reason(bytes(bytearray(b"\xff"))) == "invalid_utf8"
    with pytest.raises(DecodeError, match="invalid_utf8"):
        decode_telemetry(bytearray(b"\xff"), NOW)


# --- DecodeError ----------------------------------------------------------------------


def test_decode_error_shape() -> None:
    with pytest.raises(ValueError, match=r"^too_many_values: ") as info:
        decode_telemetry(dumps({"values": {f"m{i}": 1 for i in range(101)}}), NOW)
    err = info.value
    assert isinstance(err, DecodeError)
    assert err.reason == "too_many_values"
    assert "101" in err.detail
    clone = pickle.loads(pickle.dumps(err))  # noqa: S301 -- our own object
    assert (clone.reason, clone.detail) == (err.reason, err.detail)


def test_detail_caps_device_supplied_text() -> None:
    with pytest.raises(DecodeError) as info:
        decode_telemetry(dumps({"values": {"x" * 10_000: 1}}), NOW)
    assert len(info.value.detail) < 200


# --- SenML ----------------------------------------------------------------------------


def test_senml_rfc_example_with_base_fields() -> None:
    bn = "urn:dev:ow:10e2073a01080063:"
    pack = [
        {"bn": bn, "bt": 1_795_770_000, "bu": "%RH", "n": "humidity", "v": 20, "u": "%RH"},
        {"n": "temp", "t": 5, "v": 23.5},
        {"n": "door", "t": 10, "vb": True},
        {"n": "mode", "vs": "eco"},
    ]
    # The base unit applies to every record without a unit of its own.
    assert decode_senml(dumps(pack), NOW) == [
        Reading(1_795_770_000.0, bn + "humidity", 20.0, None, False, None, "%RH"),
        Reading(1_795_770_005.0, bn + "temp", 23.5, None, False, None, "%RH"),
        Reading(1_795_770_010.0, bn + "door", 1.0, None, True, None, "%RH"),
        Reading(1_795_770_000.0, bn + "mode", None, "eco", False, None, "%RH"),
    ]


def test_senml_base_fields_can_be_overridden() -> None:
    pack = [
        {"bn": "a/", "bt": 1_795_770_000, "n": "x", "v": 1},
        {"bn": "b:", "n": "x", "v": 2},
        {"bt": 1_795_771_000, "n": "y", "t": 1, "v": 3},
        {"bn": "", "n": "z", "v": 4},
    ]
    got = [(r.metric, r.time, r.value) for r in decode_senml(dumps(pack), NOW)]
    assert got == [
        ("a/x", 1_795_770_000.0, 1.0),
        ("b:x", 1_795_770_000.0, 2.0),
        ("b:y", 1_795_771_001.0, 3.0),
        ("z", 1_795_771_000.0, 4.0),
    ]


def test_senml_name_without_base_and_base_without_name() -> None:
    got = decode_senml(dumps([{"n": "temp", "v": 1}, {"bn": "hum", "v": 2}]), NOW)
    assert [r.metric for r in got] == ["temp", "hum"]


def test_senml_relative_times() -> None:
    pack = [
        {"n": "a", "v": 1},
        {"n": "b", "t": -60, "v": 2},
        {"bt": -100, "n": "c", "t": 10, "v": 3},
        {"n": "d", "t": 2**28 - 1 - 1e9, "v": 4},
    ]
    times = [r.time for r in decode_senml(dumps(pack), NOW)]
    assert times == [NOW, NOW - 60, NOW - 90, NOW + 2**28 - 1 - 1e9 - 100]


def test_senml_relative_future_is_limited() -> None:
    assert decode_senml(dumps([{"n": "a", "t": 3600, "v": 1}]), NOW)[0].time == NOW + 3600
    assert senml_reason([{"n": "a", "t": 3601, "v": 1}]) == "ts_in_future"


def test_senml_absolute_time_threshold() -> None:
    # 2**28 is absolute (1978), which is then too early.
    assert senml_reason([{"bt": 2**28, "n": "a", "v": 1}]) == "ts_invalid"
    assert senml_reason([{"bt": 2**28 - 1, "n": "a", "v": 1}]) == "ts_in_future"


def test_senml_base_value() -> None:
    pack = [
        {"bv": 100, "n": "a", "v": 1.5},
        {"n": "b", "v": -100},
        {"n": "c", "vs": "s"},
        {"bv": 0, "n": "d", "v": 7},
    ]
    got = [(r.metric, r.value, r.text) for r in decode_senml(dumps(pack), NOW)]
    assert got == [("a", 101.5, None), ("b", 0.0, None), ("c", None, "s"), ("d", 7.0, None)]


def test_senml_base_only_records_set_context() -> None:
    pack = [{"bn": "dev:", "bt": 1_795_770_000, "bver": 10}, {"n": "t", "v": 1}, {"bn": "x"}]
    assert decode_senml(dumps(pack), NOW) == [
        Reading(1_795_770_000.0, "dev:t", 1.0, None, False, None)
    ]


def test_senml_vb_false_and_unknown_fields_ignored() -> None:
    pack = [{"n": "door", "vb": False, "ut": 60, "x-vendor": 1}]
    assert decode_senml(dumps(pack), NOW) == [Reading(NOW, "door", 0.0, None, True, None)]


@pytest.mark.parametrize(
    "pack",
    [
        {"n": "a", "v": 1},
        "x",
        1,
        None,
        [1],
        [{"n": "a", "v": 1}, []],
        [{"n": "a", "vd": "AAEC"}],
        [{"n": "a", "v": 1, "vd": "AAEC"}],
        [{"n": "a", "s": 5}],
        [{"n": "a", "v": 1, "s": 5}],
        [{"bs": 5}, {"n": "a", "v": 1}],
        [{"n": "a", "v": 1, "vb": True}],
        [{"n": "a", "v": 1, "vs": "x"}],
        [{"n": "a"}],
        [{"t": 1}],
        [{"n": "a", "v": 1, "foo_": 1}],
        [{"bn": 1, "n": "a", "v": 1}],
        [{"bn": None, "n": "a", "v": 1}],
        [{"n": 1, "v": 1}],
        [{"n": None, "v": 1}],
    ],
)
def test_senml_invalid(pack: Any) -> None:
    assert senml_reason(pack) == "senml_invalid"


@pytest.mark.parametrize(
    "record",
    [
        {"n": "a", "v": True},
        {"n": "a", "v": "1"},
        {"n": "a", "v": None},
        {"n": "a", "vb": 1},
        {"n": "a", "vb": "true"},
        {"n": "a", "vs": 1},
        {"n": "a", "vs": None},
        {"bv": True, "n": "a", "v": 1},
    ],
)
def test_senml_bad_value_type(record: Any) -> None:
    assert senml_reason([record]) == "bad_type"


@pytest.mark.parametrize(
    "record",
    [
        {"bt": True, "n": "a", "v": 1},
        {"bt": "2026-11-27T10:00:00Z", "n": "a", "v": 1},
        {"n": "a", "t": None, "v": 1},
        {"n": "a", "t": False, "v": 1},
        {"bt": 1e308, "n": "a", "t": 1e308, "v": 1},
        {"bt": -1e308, "n": "a", "t": -1e308, "v": 1},
        {"bt": 2**28 + 1000, "n": "a", "v": 1},
    ],
)
def test_senml_ts_invalid(record: Any) -> None:
    assert senml_reason([record]) == "ts_invalid"


def test_senml_metric_name_rule_applies_to_bn_plus_n() -> None:
    assert senml_reason([{"n": "", "v": 1}]) == "bad_metric_name"
    assert senml_reason([{"bn": "urn:dev:" + "x" * 60, "n": "temp", "v": 1}]) == "bad_metric_name"
    assert senml_reason([{"bn": "dev ", "n": "temp", "v": 1}]) == "bad_metric_name"
    assert senml_reason([{"bn": "/dev/", "n": "temp", "v": 1}]) == "bad_metric_name"


def test_senml_other_reasons() -> None:
    assert senml_reason([]) == "empty"
    assert senml_reason([{"bn": "a"}, {"bt": NOW}]) == "empty"
    assert senml_reason([{"n": "a", "vs": "x" * (MAX_STRING_VALUE + 1)}]) == "string_too_long"
    assert senml_reason([{"bv": 1e308, "n": "a", "v": 1e308}]) == "not_finite"
    assert senml_reason(b'[{"n":"a","v":NaN}]') == "not_finite"
    assert senml_reason(b'[{"n":"a","v":1e999}]') == "not_finite"
    assert senml_reason(b"[{") == "invalid_json"
    assert senml_reason(b"\xff") == "invalid_utf8"
    assert senml_reason(b"") == "empty"


def test_senml_record_limit() -> None:
    pack = [{"n": "a", "t": -i, "v": i} for i in range(MAX_READINGS_PER_MESSAGE)]
    assert len(decode_senml(dumps(pack), NOW)) == MAX_READINGS_PER_MESSAGE
    pack.append({"n": "a", "v": 0})
    assert senml_reason(pack) == "too_many_readings"


# --- the identity of a reading: units, one receive stamp per object --------------------


def test_senml_records_that_differ_only_by_unit_are_three_readings() -> None:
    # RFC 8428 section 5.1.5: one name, one time, three units.
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063", "u": "%RH", "v": 20},
        {"u": "lon", "v": 24.30621},
        {"u": "lat", "v": 60.07965},
    ]
    got = [(r.metric, r.time, r.unit, r.value) for r in decode_senml(dumps(pack), NOW)]
    assert got == [
        ("urn:dev:ow:10e2073a01080063", NOW, "%RH", 20.0),
        ("urn:dev:ow:10e2073a01080063", NOW, "lon", 24.30621),
        ("urn:dev:ow:10e2073a01080063", NOW, "lat", 60.07965),
    ]


def test_senml_unit_overrides_the_base_unit_and_plain_telemetry_has_none() -> None:
    pack = [{"bu": "Cel", "n": "a", "v": 1}, {"n": "b", "u": "°F", "v": 2}, {"n": "c", "v": 3}]
    assert [r.unit for r in decode_senml(dumps(pack), NOW)] == ["Cel", "°F", "Cel"]
    assert [r.unit for r in decode_senml(dumps([{"n": "a", "v": 1}]), NOW)] == [""]
    assert one({"u": "Cel", "values": {"a": 1}}).unit == ""  # not a field of telemetry


@pytest.mark.parametrize(
    ("unit", "reason"),
    [
        (1, "senml_invalid"),
        (["m"], "senml_invalid"),
        ({}, "senml_invalid"),
        ("", "senml_invalid"),
        ("x" * (MAX_UNIT_LENGTH + 1), "senml_invalid"),
        ("m\n", "senml_invalid"),
        ("\x7f", "senml_invalid"),
        ("m\u200b", "senml_invalid"),
        ("%R\x00H", "bad_string"),
    ],
)
def test_senml_bad_units(unit: Any, reason: str) -> None:
    assert senml_reason([{"n": "a", "u": unit, "v": 1}]) == reason
    assert senml_reason([{"bu": unit, "n": "a", "v": 1}]) == reason


def test_an_array_without_ts_keeps_every_reading_of_a_repeated_metric() -> None:
    payload = [
        {"values": {"n": 1}},
        {"ts": 1_795_770_000, "values": {"n": 2}},
        {"values": {"n": 3}},
    ]
    readings, last = decode_telemetry_stamped(dumps(payload), NOW)
    # Object i without ts gets the message's receive stamp plus i microseconds.
    assert [(round(r.time * 1e6), r.value) for r in readings] == [
        (round(NOW * 1e6), 1.0),
        (1_795_770_000_000_000, 2.0),
        (round(NOW * 1e6) + 2, 3.0),
    ]
    assert round(last * 1e6) == round(NOW * 1e6) + 2
    # Nothing after the first object used a stamp: the clock need not move.
    assert decode_telemetry_stamped(dumps(payload[:2]), NOW)[1] == NOW
    assert decode_telemetry_stamped(dumps(payload[0]), NOW)[1] == NOW


@settings(deadline=None)
@given(st.floats(min_value=MIN_TIMESTAMP, max_value=4e9), st.integers(0, 999))
def test_property_receive_stamps_are_exact_microseconds(seconds: float, index: int) -> None:
    received_at = round(seconds * 1e6) / 1e6  # what ReceiveClock hands out
    payload = dumps([{"values": {"n": i}} for i in range(index + 1)])
    readings, last = decode_telemetry_stamped(payload, received_at)
    micros = [round((r.time - 946_684_800.0) * 1_000_000) for r in readings]
    first = round(received_at * 1e6) - 946_684_800_000_000
    assert micros == list(range(first, first + index + 1))
    assert round(last * 1e6) == round(received_at * 1e6) + index


# --- every field the decoder returns is accepted by PostgreSQL -----------------------
# A reading that reaches the database must not fail the bridge's whole batch: each field is
# held to its column's domain here, one test per field.


def fits_postgres(r: Reading, received_at: float = NOW) -> bool:
    """What the readings columns accept, as fieldhub.core.readings sends them."""
    text_ok = all(
        "\x00" not in s and s.encode("utf-8", "strict") is not None
        for s in (r.metric, r.unit, r.text or "")
    )
    return (
        math.isfinite(r.time)
        and MIN_TIMESTAMP <= r.time <= received_at + MAX_FUTURE_SKEW_S  # timestamptz, sane
        and (r.value is None or math.isfinite(r.value))  # float8, no NaN/Infinity
        and (r.seq is None or 0 <= r.seq <= 2**63 - 1)  # int8
        and type(r.is_bool) is bool
        and (r.value is None) != (r.text is None)
        and text_ok
        and len(r.unit) <= MAX_UNIT_LENGTH
    )


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"ts": 1e300, "values": {"a": 1}}, "ts_in_future"),
        ({"ts": -1, "values": {"a": 1}}, "ts_invalid"),
        ({"ts": "9999-12-31T23:59:59Z", "values": {"a": 1}}, "ts_in_future"),
        ({"ts": "0001-01-01T00:00:00Z", "values": {"a": 1}}, "ts_invalid"),
        ({"ts": "2026-11-27T10:00:00+24:00", "values": {"a": 1}}, "ts_invalid"),
    ],
)
def test_field_time_stays_in_the_timestamptz_range(payload: Any, reason: str) -> None:
    assert telemetry_reason(payload) == reason
    assert senml_reason([{"bt": 1e308, "t": 1e308, "n": "a", "v": 1}]) == "ts_invalid"
    assert senml_reason([{"bt": -1e308, "n": "a", "v": 1}]) == "ts_invalid"


def test_field_value_is_a_finite_double() -> None:
    assert telemetry_reason(b'{"values": {"a": 1e400}}') == "not_finite"
    assert telemetry_reason(b'{"values": {"a": -Infinity}}') == "not_finite"
    assert senml_reason([{"bv": 1e308, "n": "a", "v": 1e308}]) == "not_finite"
    huge = one({"values": {"a": 2**64 - 1}})
    assert fits_postgres(huge)


@pytest.mark.parametrize("seq", [-1, 2**63, 1.0, "1", True, None])
def test_field_seq_fits_a_bigint(seq: Any) -> None:
    assert telemetry_reason({"seq": seq, "values": {"a": 1}}) == "seq_invalid"
    assert one({"seq": 2**63 - 1, "values": {"a": 1}}).seq == 2**63 - 1


@pytest.mark.parametrize("value", ["\x00", "a\x00b", "eco\x00"])
def test_field_text_has_no_nul(value: str) -> None:
    assert telemetry_reason({"values": {"mode": value}}) == "bad_string"
    assert senml_reason([{"n": "mode", "vs": value}]) == "bad_string"
    # Lone surrogates (no UTF-8 form) never become text: the JSON itself is refused.
    assert telemetry_reason(b'{"values": {"mode": "\\ud800"}}') == "invalid_json"
    assert senml_reason(b'[{"n": "mode", "vs": "\\udfff"}]') == "invalid_json"


def test_field_metric_is_a_clean_name() -> None:
    assert telemetry_reason({"values": {"a\x00": 1}}) == "bad_metric_name"
    assert senml_reason([{"bn": "a\x00", "n": "b", "v": 1}]) == "bad_metric_name"


def test_field_unit_is_short_printable_text() -> None:
    assert senml_reason([{"n": "a", "u": "\x00", "v": 1}]) == "bad_string"
    assert senml_reason([{"n": "a", "u": "\x1b[31m", "v": 1}]) == "senml_invalid"
    longest = decode_senml(dumps([{"n": "a", "u": "é" * MAX_UNIT_LENGTH, "v": 1}]), NOW)
    assert all(fits_postgres(r) for r in longest)


def test_field_is_bool_says_which_numbers_are_booleans() -> None:
    readings = decode_senml(dumps([{"n": "a", "vb": False}, {"n": "b", "v": 0}]), NOW)
    assert [(r.value, r.is_bool) for r in readings] == [(0.0, True), (0.0, False)]
    assert one({"values": {"a": True}}).is_bool is True


# --- properties -----------------------------------------------------------------------

metric_names = st.from_regex(METRIC_NAME_RE, fullmatch=True)
json_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
    # Text PostgreSQL can store: no NUL (bad_string has tests of its own above).
    st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        max_size=MAX_STRING_VALUE,
    ),
)
timestamps = st.one_of(
    st.none(),
    st.integers(min_value=int(MIN_TIMESTAMP), max_value=int(NOW)),
    st.integers(min_value=int(MIN_TIMESTAMP) * 1000, max_value=int(NOW) * 1000),
)


@settings(deadline=None)
@given(
    readings=st.lists(
        st.tuples(
            timestamps,
            st.none() | st.integers(min_value=0, max_value=MAX_SEQ),
            st.dictionaries(metric_names, json_values, min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_property_valid_readings_round_trip(
    readings: list[tuple[int | None, int | None, dict[str, Any]]],
) -> None:
    payload = []
    expected = []
    for index, (ts, seq, values) in enumerate(readings):
        reading: dict[str, Any] = {"values": values}
        if ts is not None:
            reading["ts"] = ts
        if seq is not None:
            reading["seq"] = seq
        payload.append(reading)
        if ts is None:
            t = (round(NOW * 1e6) + index) / 1e6
        elif ts > 1e11:
            t = ts / 1000
        else:
            t = float(ts)
        for name, v in values.items():
            if isinstance(v, bool):
                expected.append(Reading(t, name, float(v), None, True, seq))
            elif isinstance(v, str):
                expected.append(Reading(t, name, None, v, False, seq))
            else:
                expected.append(Reading(t, name, float(v), None, False, seq))
    assert decode_telemetry(dumps(payload), NOW) == expected
    if len(payload) == 1:
        assert decode_telemetry(dumps(payload[0]), NOW) == expected


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_property_arbitrary_bytes_only_raise_decode_error(payload: bytes) -> None:
    for fn in (decode_telemetry, decode_senml):
        with contextlib.suppress(DecodeError):
            fn(payload, NOW)
    status_reasons = []
    try:
        decode_status(payload)
    except DecodeError as exc:
        status_reasons.append(exc.reason)
    assert set(status_reasons) <= {"bad_status"}


json_docs = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["ts", "seq", "values", "bn", "bt", "bu", "n", "u", "v", "vb", "vs", "t", "x"]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(deadline=None)
@given(json_docs)
def test_property_arbitrary_json_only_raises_decode_error(doc: Any) -> None:
    # orjson cannot serialise NaN as JSON, so build the text with the stdlib
    # to also exercise the NaN/Infinity classification.
    raw = json.dumps(doc).encode()
    for fn in (decode_telemetry, decode_senml):
        try:
            readings = fn(raw, NOW)
        except DecodeError:
            continue
        for r in readings:
            assert fits_postgres(r, NOW + len(readings) * 1e-6)
            assert valid_metric_name(r.metric)


@given(st.text(max_size=80))
def test_property_parse_topic_total(topic: str) -> None:
    info = parse_topic(topic)
    if info is not None:
        assert valid_device_id(info.device_id)
        assert "+" not in topic
        assert "#" not in topic


@given(st.from_regex(DEVICE_ID_RE, fullmatch=True))
def test_property_parse_topic_accepts_every_valid_device_id(device_id: str) -> None:
    assert parse_topic(f"devices/{device_id}/telemetry") == TopicInfo("telemetry", device_id, None)
    assert parse_topic(f"devices/{device_id}/status") == TopicInfo("status", device_id, None)
