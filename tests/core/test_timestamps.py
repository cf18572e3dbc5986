"""Time parsing: strict RFC 3339 for devices and files, the looser form people type."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fieldhub.core.timestamps import parse_rfc3339, parse_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31T12:00:00Z", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31t12:00:00z", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        (
            "2026-01-31 12:00:00.5+02:00",
            datetime(2026, 1, 31, 12, 0, 0, 500000, timezone(timedelta(hours=2))),
        ),
    ],
)
def test_rfc3339_reads_the_forms_the_rfc_allows(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-31T12:00:00",
        "2026-W05-6T12:00:00Z",
        "20260131T120000Z",
        "2026-13-01T00:00:00Z",
        "٢٠٢٦-01-31T12:00:00Z",
        "",
    ],
)
def test_rfc3339_refuses_missing_offsets_week_dates_compact_forms_and_other_digits(
    text: str,
) -> None:
    with pytest.raises(ValueError, match=r"^is not (RFC 3339|a valid time)"):
        parse_rfc3339(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31T12:00:00Z", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        (" 2026-01-31 12:00 ", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T12:00", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T14:00+02:00", datetime(2026, 1, 31, 12, tzinfo=UTC)),
    ],
)
def test_typed_times_without_an_offset_are_utc(text: str, expected: datetime) -> None:
    value = parse_time(text)
    assert value == expected
    assert value.tzinfo is not None


def test_typed_times_refuse_what_is_not_a_time() -> None:
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_time("yesterday")
