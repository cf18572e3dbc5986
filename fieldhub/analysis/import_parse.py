"""Parsing of import files into readings, line by line (pure; no I/O).

Formats:

* ``csv``: a header line, then one reading per line (long form: ``time,device_id,metric,value``)
  or several (wide form: ``time,device_id,temp,hum``: every column other than the time and
  device columns is a metric). ``device_id`` (or ``device``) is optional when the import
  names a device. Times are epoch seconds, epoch milliseconds or RFC 3339. Values are
  numbers, ``true``/``false``, or text (without NUL). An empty cell in the wide form is no
  reading. CSV readings have no unit and no seq, except in the export format: a header of
  exactly ``time,metric,unit,seq,type,value`` is a file of fieldhub.core.reading_files (what
  `fieldhub export` and the web export write), read back with its units, seqs, types and
  escaped cells, so an export re-imports without loss.
* ``ndjson``: one telemetry payload of the device contract per line
  (``{"ts": ..., "values": {...}}``, decoded by fieldhub.core.decode.decode_telemetry) plus an
  optional ``"device_id"`` key. ``ts`` is required: an import without times is meaningless.
  A line with exactly the keys of an NDJSON export (``time, metric, unit, seq, value``) is a
  record of fieldhub.core.reading_files.
* ``senml``: one SenML pack (RFC 8428 JSON array) per line, decoded by
  fieldhub.core.decode.decode_senml; the device is the import's device.

Every line is all-or-nothing, as for MQTT messages: a line with any problem contributes no
reading and is reported by its number (1-based, the header is line 1 of a CSV file) with the
reason. Anything a line can carry that PostgreSQL would refuse (NUL in a text, metric, unit
or device cell, a time outside PostgreSQL's or the device contract's range, a non-finite
number, a seq beyond bigint, bytes that are not UTF-8) is such a line error, found here,
before anything is written: a batch never fails for one line's content. Device ids are
checked against the devices the importing organisation owns. A line
yields its device id and its readings (fieldhub.core.decode.Reading, as the bridge decodes
them), which fieldhub.core.readings writes."""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import orjson

from fieldhub.core import reading_files
from fieldhub.core.decode import (
    MAX_FUTURE_SKEW_S,
    MAX_STRING_VALUE,
    MAX_UNIT_LENGTH,
    MIN_TIMESTAMP,
    MS_THRESHOLD,
    DecodeError,
    Reading,
    decode_senml,
    decode_telemetry,
    valid_metric_name,
)
from fieldhub.core.timestamps import parse_rfc3339

FORMATS: Final = ("csv", "ndjson", "senml")
TIME_COLUMNS: Final = ("time", "ts", "timestamp")
DEVICE_COLUMNS: Final = ("device_id", "device")
MAX_LINE_BYTES: Final = 256 * 1024

# Metric names already validated (bounded: names come from files).
_KNOWN_METRICS_MAX: Final = 10_000
_known_metrics: set[str] = set()


class LineError(ValueError):
    """One line cannot be imported; str() is the reason shown to the user.

    The reason is stored in a jsonb column, which refuses U+0000, so a NUL that a reason
    quotes is spelled out: one line's content must never fail the import's bookkeeping."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason.replace("\0", "\\x00"))


# The device id of a line and its readings. A CSV line's are a tuple: a tuple of atoms is
# dropped from the garbage collector's tracking after its first collection, and an import
# holds a whole batch of lines (100,000) alive; lists of them made collection a third of
# the import's CPU time (measured with py-spy).
Line = tuple[str, Sequence[Reading]]
# (line number, the line's device and readings) or (line number, error)
ParsedLine = tuple[int, Line | LineError]

# As in fieldhub.core.decode: tuple.__new__ skips NamedTuple's Python-level __new__.
_new_reading = tuple.__new__
# (line number, text) or (line number, why it could not even be decoded)
NumberedLine = tuple[int, str | LineError]


def guess_format(filename: str) -> str:
    lower = filename.lower()
    if lower.endswith((".senml", ".senml.json", ".senml.ndjson")):
        return "senml"
    if lower.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    if lower.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    raise ValueError(f"cannot tell the format of {filename!r}: give --format csv|ndjson|senml")


def parse_time(raw: str, now: float) -> float:
    raw = raw.strip()
    try:
        t = float(raw)
    except ValueError:
        try:
            t = parse_rfc3339(raw).timestamp()
        except ValueError:
            raise LineError(
                f"time {raw[:40]!r} is not epoch seconds/milliseconds or RFC 3339"
            ) from None
    else:
        if not math.isfinite(t):
            raise LineError(f"time {raw[:40]!r} is not a finite number")
        if t > MS_THRESHOLD:
            t /= 1000.0
    check_time(t, now)
    return t


def check_time(t: float, now: float) -> None:
    if t < MIN_TIMESTAMP:
        raise LineError("time is before 2000-01-01 (an unset clock?)")
    if t > now + MAX_FUTURE_SKEW_S:
        raise LineError("time is more than an hour in the future")


def parse_value(raw: str) -> tuple[float | None, str | None, bool]:
    try:
        value = float(raw)
    except ValueError:
        lowered = raw.strip().lower()
        if lowered in ("true", "false"):
            return (1.0 if lowered == "true" else 0.0), None, True
        if len(raw) > MAX_STRING_VALUE:
            raise LineError(f"text value longer than {MAX_STRING_VALUE} characters") from None
        if "\0" in raw:
            # PostgreSQL text cannot hold it; the same reason code as the bridge's.
            raise LineError("bad_string: text value contains NUL (U+0000)") from None
        return None, raw, False
    if not math.isfinite(value):
        raise LineError(f"value {raw!r} is not a finite number")
    return value, None, False


class _Devices:
    """Resolves the device of a line: the line's own, else the import's; only the org's."""

    def __init__(self, allowed: frozenset[str], default: str | None) -> None:
        self.allowed = allowed
        self.default = default

    def resolve(self, raw: str | None) -> str:
        device_id = raw.strip() if raw else self.default
        if not device_id:
            raise LineError("no device: give the import a device or add a device_id column")
        if device_id not in self.allowed:
            raise LineError(f"unknown device {device_id[:64]!r}")
        return device_id


def _split_csv(line: str) -> list[str]:
    # The common line has no quotes; csv.reader is only needed (and 5x slower) when it does.
    if '"' not in line:
        return line.split(",")
    return next(csv.reader([line]))


def _admit(row: reading_files.Row, now: float) -> Reading:
    """A record of the export format as a reading, if the device contract allows it."""
    reading = reading_files.to_reading(row)
    check_time(reading.time, now)
    if not valid_metric_name(row.metric):
        raise LineError(f"metric {row.metric[:64]!r} is not a valid metric name")
    if row.unit and (len(row.unit) > MAX_UNIT_LENGTH or not row.unit.isprintable()):
        raise LineError(f"unit {row.unit[:40]!r} is not 1-{MAX_UNIT_LENGTH} printable characters")
    if reading.text is not None:
        if len(reading.text) > MAX_STRING_VALUE:
            raise LineError(f"text value longer than {MAX_STRING_VALUE} characters")
        if "\0" in reading.text:
            raise LineError("bad_string: text value contains NUL (U+0000)")
    return reading


@dataclasses.dataclass(frozen=True)
class _CsvLayout:
    width: int
    time_col: int
    device_col: int | None
    metric_col: int | None  # long form: metric and value columns
    value_col: int
    wide_cols: list[tuple[int, str]]  # wide form: (column, metric name)
    export: bool = False  # fieldhub.core.reading_files.COLUMNS


_EXPORT_LAYOUT: Final = _CsvLayout(len(reading_files.COLUMNS), 0, None, None, -1, [], True)


def _csv_layout(line: str) -> _CsvLayout:
    names = [h.strip() for h in _split_csv(line)]
    lowered = [h.lower() for h in names]
    if tuple(lowered) == reading_files.COLUMNS:
        return _EXPORT_LAYOUT
    time_col = next((lowered.index(c) for c in TIME_COLUMNS if c in lowered), None)
    if time_col is None:
        raise LineError("the header has no time column (time, ts or timestamp)")
    device_col = next((lowered.index(c) for c in DEVICE_COLUMNS if c in lowered), None)
    if "metric" in lowered and "value" in lowered:
        return _CsvLayout(
            len(names), time_col, device_col, lowered.index("metric"), lowered.index("value"), []
        )
    wide_cols = [(i, n) for i, n in enumerate(names) if i not in (time_col, device_col)]
    for _, name in wide_cols:
        if not valid_metric_name(name):
            raise LineError(f"column {name[:64]!r} is not a valid metric name")
    if not wide_cols:
        raise LineError("the header names no metric columns (or metric and value)")
    return _CsvLayout(len(names), time_col, device_col, None, -1, wide_cols)


def _csv_rows(fields: list[str], layout: _CsvLayout, devices: _Devices, now: float) -> Line:
    # The hot path of a bulk import (a million lines in seconds): plain float() and set
    # lookups first; the thorough checks with their error messages only when those fail.
    if len(fields) != layout.width:
        raise LineError(f"{len(fields)} fields, the header has {layout.width}")
    if layout.export:
        try:
            row = reading_files.from_csv_cells(fields)
        except reading_files.FormatError as exc:
            raise LineError(str(exc)) from None
        return devices.resolve(None), (_admit(row, now),)
    raw_time = fields[layout.time_col]
    try:
        t = float(raw_time)
    except ValueError:
        t = parse_time(raw_time, now)
    else:
        if t > MS_THRESHOLD:
            t /= 1000.0
        if not MIN_TIMESTAMP <= t <= now + MAX_FUTURE_SKEW_S:
            t = parse_time(raw_time, now)
    raw_device = fields[layout.device_col] if layout.device_col is not None else None
    device_id = raw_device if raw_device in devices.allowed else devices.resolve(raw_device)
    if layout.metric_col is not None:
        metric = fields[layout.metric_col]
        if metric not in _known_metrics:
            metric = metric.strip()
            if not valid_metric_name(metric):
                raise LineError(f"metric {metric[:64]!r} is not a valid metric name")
            if len(_known_metrics) < _KNOWN_METRICS_MAX:
                _known_metrics.add(metric)
        raw_value = fields[layout.value_col]
        try:
            number = float(raw_value)
        except ValueError:
            value, text, is_bool = parse_value(raw_value)
            return device_id, (_new_reading(Reading, (t, metric, value, text, is_bool, None, "")),)
        if not math.isfinite(number):
            raise LineError(f"value {raw_value!r} is not a finite number")
        return device_id, (_new_reading(Reading, (t, metric, number, None, False, None, "")),)
    readings = []
    for index, name in layout.wide_cols:
        cell = fields[index]
        if cell == "":
            continue
        value, text, is_bool = parse_value(cell)
        readings.append(_new_reading(Reading, (t, name, value, text, is_bool, None, "")))
    if not readings:
        raise LineError("no values on this line")
    return device_id, tuple(readings)


def parse_csv(lines: Iterator[NumberedLine], devices: _Devices, now: float) -> Iterator[ParsedLine]:
    layout: _CsvLayout | None = None
    for number, line in lines:
        if isinstance(line, LineError):
            yield number, line
            continue
        try:
            if layout is None:
                found = _csv_layout(line)
                if found.export and devices.default is None:
                    raise LineError(
                        "an export file has no device column: give the import the device "
                        "its readings go to"
                    )
                layout = found
                continue
            yield number, _csv_rows(_split_csv(line), layout, devices, now)
        except LineError as exc:
            yield number, exc
            if layout is None:
                # Without a header no line can be read; the rest are not reported one by one.
                return
        except csv.Error as exc:
            yield number, LineError(f"bad CSV: {exc}")


def parse_ndjson(
    lines: Iterator[NumberedLine], devices: _Devices, now: float
) -> Iterator[ParsedLine]:
    for number, line in lines:
        if isinstance(line, LineError):
            yield number, line
            continue
        try:
            payload = line.encode()
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise LineError("not valid JSON") from None
            if reading_files.is_ndjson_record(doc):
                assert isinstance(doc, dict)
                try:
                    row = reading_files.from_ndjson(doc)
                except reading_files.FormatError as exc:
                    raise LineError(str(exc)) from None
                yield number, (devices.resolve(None), (_admit(row, now),))
                continue
            items = doc if isinstance(doc, list) else [doc]
            device_raw = None
            for item in items:
                if not isinstance(item, dict):
                    raise LineError("each line is a JSON object (or an array of them)")
                if "ts" not in item:
                    raise LineError("ts is missing: imported readings need their time")
                if device_raw is None:
                    found = item.get("device_id", item.get("device"))
                    device_raw = found if isinstance(found, str) else None
            device_id = devices.resolve(device_raw)
            yield number, (device_id, decode_telemetry(payload, now))
        except DecodeError as exc:
            yield number, LineError(f"{exc.reason}: {exc.detail}")
        except LineError as exc:
            yield number, exc


def parse_senml(
    lines: Iterator[NumberedLine], devices: _Devices, now: float
) -> Iterator[ParsedLine]:
    for number, line in lines:
        if isinstance(line, LineError):
            yield number, line
            continue
        try:
            device_id = devices.resolve(None)
            yield number, (device_id, decode_senml(line.encode(), now))
        except DecodeError as exc:
            yield number, LineError(f"{exc.reason}: {exc.detail}")
        except LineError as exc:
            yield number, exc


_PARSERS: dict[str, Callable[[Iterator[NumberedLine], _Devices, float], Iterator[ParsedLine]]] = {
    "csv": parse_csv,
    "ndjson": parse_ndjson,
    "senml": parse_senml,
}


def numbered_lines(
    raw_lines: Iterator[bytes], on_bytes: Callable[[int], None] | None = None
) -> Iterator[NumberedLine]:
    """Decode and number the lines, skipping blank ones; report bytes consumed."""
    pending_bytes = 0
    for number, raw in enumerate(raw_lines, start=1):
        pending_bytes += len(raw)
        if pending_bytes > 1 << 20 and on_bytes is not None:
            on_bytes(pending_bytes)
            pending_bytes = 0
        if len(raw) > MAX_LINE_BYTES:
            yield number, LineError(f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, LineError("not valid UTF-8")
            continue
        text = text.rstrip("\r\n")
        if number == 1:
            text = text.lstrip("\ufeff")
        if text and not text.isspace():
            yield number, text
    if on_bytes is not None:
        on_bytes(pending_bytes)


def parse(
    fmt: str,
    raw_lines: Iterator[bytes],
    *,
    allowed_devices: frozenset[str],
    default_device: str | None,
    now: float | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[ParsedLine]:
    """Yield (line number, rows or error) for every non-blank line of the file, in order."""
    if fmt not in _PARSERS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    devices = _Devices(allowed_devices, default_device)
    current = time.time() if now is None else now
    return _PARSERS[fmt](numbered_lines(raw_lines, on_bytes), devices, current)
