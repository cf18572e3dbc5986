"""Which time zone names a person may choose: pure rules, no I/O.

Times are stored and travel in UTC (timestamptz, ISO 8601 with Z, epoch seconds); only what
a person reads is in a zone. Theirs is either an IANA name kept on their account or, by
default, the browser's own (`BROWSER`, stored as NULL), which the web app learns from the
browser itself."""

from __future__ import annotations

import functools
import re
import zoneinfo

BROWSER = "browser"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+/-]{0,63}")
# The zone database also ships POSIX-style aliases and leap-second variants; a person picks
# from the geographic names (plus UTC), which is what browsers report.
_AREAS = (
    "Africa/",
    "America/",
    "Antarctica/",
    "Arctic/",
    "Asia/",
    "Atlantic/",
    "Australia/",
    "Europe/",
    "Indian/",
    "Pacific/",
)


class TimeZoneError(ValueError):
    """A zone name that is not in the zone database; the message is for the person."""


def check_zone(name: str) -> str:
    """`name` if it names a zone the server can format in, else TimeZoneError.

    Any name of the zone database is accepted, not only the ones offered in the list:
    browsers report ICU's names, which keep some the list leaves out (Asia/Calcutta)."""
    text = name.strip()
    if not _NAME.fullmatch(text) or ".." in text:
        raise TimeZoneError(f"{name[:80]!r} is not a time zone name like Europe/Berlin")
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise TimeZoneError(f"there is no time zone {text!r}") from None
    return text


def parse_choice(text: str | None) -> str | None:
    """A preference as entered: None for "the browser's zone", else a checked zone name."""
    if text is None or text.strip() in ("", BROWSER):
        return None
    return check_zone(text)


@functools.cache
def choices() -> tuple[str, ...]:
    """The zones offered for choosing: UTC and the geographic names, sorted."""
    names = zoneinfo.available_timezones()
    return ("UTC", *sorted(n for n in names if n.startswith(_AREAS)))
