"""The export format (fieldhub.core.reading_files) read back by the importer: nothing is lost.

Pure: rows are encoded to a file, the file is parsed by fieldhub.analysis.import_parse as an
import of another device, and every reading must come back exactly (time to the microsecond,
metric, unit, seq, value and its type), with spreadsheet triggers neutralised on the way."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fieldhub.analysis import import_parse
from fieldhub.core import reading_files
from fieldhub.core.decode import MAX_STRING_VALUE, MAX_UNIT_LENGTH, MIN_TIMESTAMP, Reading
from fieldhub.core.reading_files import Row

NOW = datetime(2026, 12, 1, tzinfo=UTC)
EPOCH_2000 = datetime.fromtimestamp(MIN_TIMESTAMP, UTC)
TRICKY = ["=1+1", "+1", "-1", "@SUM(A1)", "'quoted", "\tx", "\rx", "true", "42", "a\nb", "\\n"]

times = st.integers(0, int((NOW - EPOCH_2000).total_seconds() * 1e6)).map(
    lambda micros: EPOCH_2000 + timedelta(microseconds=micros)
)
metrics = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:/-]{0,20}\Z")
units = st.one_of(
    st.just(""),
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co")),
        min_size=1,
        max_size=MAX_UNIT_LENGTH,
    ).filter(str.isprintable),
    st.sampled_from(["%RH", "-dB", "=x", "'m", "@s"]),
)
texts = st.one_of(
    st.sampled_from(TRICKY),
    st.text(
        st.characters(codec="utf-8", exclude_characters="\0", exclude_categories=["Cs"]),
        max_size=MAX_STRING_VALUE,
    ).map(lambda text: text[:MAX_STRING_VALUE]),
    st.sampled_from(TRICKY).flatmap(lambda head: st.text(max_size=20).map(lambda t: head + t)),
).filter(lambda text: "\0" not in text and len(text) <= MAX_STRING_VALUE)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    texts,
)
rows = st.builds(
    Row,
    time=times,
    metric=metrics,
    unit=units,
    seq=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    value=values,
)


def _import(content: bytes, fmt: str) -> list[tuple[int, object]]:
    parsed = import_parse.parse(
        fmt,
        iter(io.BytesIO(content)),
        allowed_devices=frozenset({"copy"}),
        default_device="copy",
        now=NOW.timestamp(),
    )
    return list(parsed)


def _micros(reading: Reading) -> tuple[object, ...]:
    # Float seconds carry a microsecond exactly once rounded (as readings.write does).
    return (round(reading.time * 1e6), *reading[1:])


def _expected(row: Row) -> tuple[object, ...]:
    reading = reading_files.to_reading(row)
    assert round(reading.time * 1e6) == round(
        (row.time - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)
    )
    return _micros(reading)


@pytest.mark.parametrize("fmt", reading_files.FORMATS)
@settings(max_examples=80, deadline=None)
@given(batch=st.lists(rows, min_size=1, max_size=20))
@example(batch=[Row(NOW, "t", "", None, text) for text in TRICKY])
@example(batch=[Row(NOW, "t", "", 1, True), Row(NOW, "t", "", 2, 42.0), Row(NOW, "t", "", 3, "42")])
def test_an_export_imports_into_another_device_exactly(fmt: str, batch: list[Row]) -> None:
    content = "".join(reading_files.chunks(batch, fmt)).encode()  # type: ignore[arg-type]
    parsed = _import(content, fmt)
    assert all(not isinstance(result, import_parse.LineError) for _, result in parsed), parsed
    got = [
        _micros(reading)
        for _, result in parsed
        for reading in result[1]  # type: ignore[index]
    ]
    assert got == [_expected(row) for row in batch]
    assert {result[0] for _, result in parsed} == {"copy"}  # type: ignore[index]


@given(batch=st.lists(rows, min_size=1, max_size=20))
@settings(max_examples=80, deadline=None)
def test_no_csv_cell_starts_a_formula_and_every_record_is_one_line(batch: list[Row]) -> None:
    content = "".join(reading_files.chunks(batch, "csv"))
    # The importer splits lines at "\n" only (not at U+2028 and the like).
    lines = content.split("\n")
    assert len(lines) == len(batch) + 2  # header, records, the empty end after the last "\n"
    for record in csv.reader(lines[1:-1]):
        time, metric, unit, seq, kind, value = record
        assert seq == "" or seq.lstrip("-").isdigit()
        # seq and number values are numeric literals, read as numbers, never as formulas.
        cells = [time, metric, unit, kind] + ([] if kind == "number" else [value])
        for cell in cells:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), record
        if kind == "number":
            float(value)  # a numeric literal, which a spreadsheet reads as a number


def test_the_escape_rule_by_example() -> None:
    assert reading_files.neutralise("=SUM(A1)") == "'=SUM(A1)"
    assert reading_files.neutralise("'already") == "''already"
    assert reading_files.neutralise("-x\\y\nz") == "'-x\\\\y\\nz"
    assert reading_files.neutralise("plain \\ text") == "plain \\ text"
    for text in ["=SUM(A1)", "'already", "-x\\y\nz", "a\r\nb", "\\", "'\\"]:
        assert reading_files.restore(reading_files.neutralise(text)) == text
    with pytest.raises(reading_files.FormatError, match="lone backslash"):
        reading_files.restore("'abc\\")
    with pytest.raises(reading_files.FormatError, match="unknown escape"):
        reading_files.restore("'a\\qb")


def test_types_are_kept_and_times_are_utc_microseconds() -> None:
    when = datetime(2026, 1, 1, 2, 0, 0, 250000, tzinfo=timezone(timedelta(hours=1)))
    batch = [
        Row(when, "m", "", None, "true"),
        Row(when, "m", "", 5, True),
        Row(when, "n", "", None, 42.0),
    ]
    text = "".join(reading_files.chunks(batch, "csv"))
    assert text.splitlines() == [
        "time,metric,unit,seq,type,value",
        "2026-01-01T01:00:00.250000Z,m,,,text,true",
        "2026-01-01T01:00:00.250000Z,m,,5,boolean,true",
        "2026-01-01T01:00:00.250000Z,n,,,number,42.0",
    ]
    lines = "".join(reading_files.chunks(batch, "ndjson")).splitlines()
    assert [orjson.loads(line)["value"] for line in lines] == ["true", True, 42.0]


def test_an_export_imported_without_a_device_is_one_clear_error() -> None:
    content = "".join(reading_files.chunks([Row(NOW, "t", "", None, 1.0)] * 3, "csv")).encode()
    parsed = list(
        import_parse.parse(
            "csv",
            iter(io.BytesIO(content)),
            allowed_devices=frozenset({"copy"}),
            default_device=None,
            now=NOW.timestamp(),
        )
    )
    assert len(parsed) == 1
    number, result = parsed[0]
    assert number == 1
    assert "give the import the device" in str(result)
