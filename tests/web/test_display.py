"""Pure rules of what a person reads: values, times and time zone names. The same cases run
against static/format.js in Chromium (tests/web/test_browser_view.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fieldhub.core import time_zones
from fieldhub.web import display

CASES: dict[str, Any] = json.loads(
    (Path(__file__).with_name("display_cases.json")).read_text(encoding="utf-8")
)


@pytest.mark.parametrize(("value", "expected"), CASES["values"])
def test_values_read_as_the_browser_writes_them(value: object, expected: str) -> None:
    assert display.value_text(value) == expected


def test_booleans_are_true_and_false_never_one_and_zero() -> None:
    assert [display.value_text(v) for v in (True, False, 1, 0, 1.0)] == [
        "true",
        "false",
        "1",
        "0",
        "1",
    ]


@pytest.mark.parametrize(("instant", "zone", "expected"), CASES["times"])
def test_times_are_the_wall_clock_of_the_zone(instant: str, zone: str, expected: str) -> None:
    when = datetime.fromisoformat(instant)
    assert display.local_time(when, ZoneInfo(zone)) == expected


def test_machine_times_are_utc_with_milliseconds() -> None:
    berlin = datetime(2026, 1, 31, 13, 0, 5, 123456, tzinfo=ZoneInfo("Europe/Berlin"))
    assert display.iso_utc(berlin) == "2026-01-31T12:00:05.123Z"


def test_ago() -> None:
    now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert display.ago(None) == "never"
    assert display.ago(now + timedelta(seconds=5), now) == "just now"
    assert display.ago(now - timedelta(seconds=59), now) == "59 s ago"
    assert display.ago(now - timedelta(minutes=3), now) == "3 min ago"
    assert display.ago(now - timedelta(hours=5), now) == "5 h ago"
    assert display.ago(now - timedelta(days=2), now) == "2 d ago"


def test_zone_names_are_checked_against_the_zone_database() -> None:
    assert time_zones.check_zone(" Europe/Berlin ") == "Europe/Berlin"
    # Browsers report ICU's names, which keep some old ones; the server formats them too.
    assert time_zones.check_zone("Asia/Calcutta") == "Asia/Calcutta"
    assert time_zones.parse_choice("browser") is None
    assert time_zones.parse_choice("") is None
    assert time_zones.parse_choice(None) is None
    assert time_zones.parse_choice("UTC") == "UTC"
    for bad in (
        "Mars/Olympus_Mons",
        "../../etc/passwd",
        "/etc/localtime",
        "Europe/Berlin; x",
        "x" * 65,
    ):
        with pytest.raises(time_zones.TimeZoneError):
            time_zones.check_zone(bad)


def test_the_choices_are_geographic_names_and_utc() -> None:
    offered = time_zones.choices()
    assert offered[0] == "UTC"
    assert {"Europe/Berlin", "America/St_Johns", "Australia/Adelaide"} <= set(offered)
    assert not [z for z in offered if z.startswith(("posix/", "right/", "Etc/"))]
    for name in offered:
        time_zones.check_zone(name)
