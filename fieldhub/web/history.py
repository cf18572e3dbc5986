"""Which data answers a history request: pure logic, no I/O.

Short ranges are drawn from raw readings; longer ones from the analysis worker's rollups
(`rollup_1m`, `rollup_1h`), re-bucketed so a chart never gets more than a few thousand points."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta

from fieldhub.core import timestamps

RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
RAW_MAX_SPAN = timedelta(hours=6)
MAX_CUSTOM_SPAN = timedelta(days=400)
TARGET_POINTS = 2000
AGGREGATES = ("min", "max", "avg", "count", "last")


class RangeError(ValueError):
    """A history request that cannot be answered; the message is for the person."""


@dataclasses.dataclass(frozen=True)
class Resolution:
    source: str  # 'raw', 'rollup_1m' or 'rollup_1h'
    bucket_s: int  # 0 for raw points


@dataclasses.dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @property
    def span(self) -> timedelta:
        return self.end - self.start


def parse_time(text: str, what: str) -> datetime:
    """fieldhub.core.timestamps.parse_time, its error a RangeError that names the field."""
    try:
        return timestamps.parse_time(text)
    except ValueError:
        raise RangeError(f"{what} {text!r} is not a time like 2026-01-31T12:00:00Z") from None


def resolve_range(
    name: str | None, start: str | None, end: str | None, *, now: datetime
) -> TimeRange:
    """A named range ending now, or a custom one from `start`/`end`."""
    if start or end or name == "custom":
        if not start:
            raise RangeError("a custom range needs a start time")
        begin = parse_time(start, "start")
        finish = parse_time(end, "end") if end else now
        if finish <= begin:
            raise RangeError("the end of a range must be after its start")
        if finish - begin > MAX_CUSTOM_SPAN:
            raise RangeError(f"a range spans at most {MAX_CUSTOM_SPAN.days} days")
        return TimeRange(begin, finish)
    span = RANGES.get(name or "1h")
    if span is None:
        raise RangeError(f"range must be one of {', '.join(RANGES)} or custom, not {name!r}")
    return TimeRange(now - span, now)


def chart_resolution(span: timedelta) -> Resolution:
    """Raw points for short ranges, otherwise rollups bucketed to at most ~TARGET_POINTS."""
    if span <= RAW_MAX_SPAN:
        return Resolution("raw", 0)
    seconds = span.total_seconds()
    if span <= timedelta(days=8):
        return Resolution("rollup_1m", 60 * max(1, math.ceil(seconds / 60 / TARGET_POINTS)))
    return Resolution("rollup_1h", 3600 * max(1, math.ceil(seconds / 3600 / TARGET_POINTS)))


def bucket_resolution(bucket_s: int) -> Resolution:
    """For API requests with an explicit bucket: the coarsest rollup that divides it."""
    if bucket_s < 1:
        raise RangeError("bucket must be at least 1 second")
    if bucket_s % 3600 == 0:
        return Resolution("rollup_1h", bucket_s)
    if bucket_s % 60 == 0:
        return Resolution("rollup_1m", bucket_s)
    return Resolution("raw_buckets", bucket_s)


def check_bucket_count(span: timedelta, bucket_s: int, limit: int = 20000) -> None:
    if span.total_seconds() / bucket_s > limit:
        raise RangeError(
            f"{span} in buckets of {bucket_s}s is more than {limit} buckets; use a larger bucket"
        )
