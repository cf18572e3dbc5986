"""Pure logic of history requests: ranges and which data answers them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fieldhub.core import users
from fieldhub.web import history

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "source", "bucket_s"),
    [
        ("1h", "raw", 0),
        ("24h", "rollup_1m", 60),
        ("7d", "rollup_1m", 360),
        ("30d", "rollup_1h", 3600),
    ],
)
def test_named_ranges_use_raw_data_when_short_and_rollups_when_long(
    name: str, source: str, bucket_s: int
) -> None:
    span = history.resolve_range(name, None, None, now=NOW)
    assert span.end == NOW
    assert span.span == history.RANGES[name]
    resolution = history.chart_resolution(span.span)
    assert (resolution.source, resolution.bucket_s) == (source, bucket_s)
    if bucket_s:
        assert span.span.total_seconds() / bucket_s <= history.TARGET_POINTS


def test_custom_range_parses_iso_times_and_refuses_nonsense() -> None:
    span = history.resolve_range("custom", "2026-02-01T00:00", "2026-02-02T00:00:00Z", now=NOW)
    assert span.start == datetime(2026, 2, 1, tzinfo=UTC)
    assert span.span == timedelta(days=1)
    with pytest.raises(history.RangeError, match="after its start"):
        history.resolve_range(None, "2026-02-02T00:00Z", "2026-02-01T00:00Z", now=NOW)
    with pytest.raises(history.RangeError, match="not a time"):
        history.resolve_range(None, "yesterday", None, now=NOW)
    with pytest.raises(history.RangeError, match="needs a start"):
        history.resolve_range("custom", None, None, now=NOW)
    with pytest.raises(history.RangeError, match="one of"):
        history.resolve_range("2h", None, None, now=NOW)


def test_api_buckets_use_the_coarsest_rollup_that_divides_them() -> None:
    assert history.bucket_resolution(7200).source == "rollup_1h"
    assert history.bucket_resolution(300).source == "rollup_1m"
    assert history.bucket_resolution(30).source == "raw_buckets"
    with pytest.raises(history.RangeError):
        history.check_bucket_count(timedelta(days=30), 1)


def test_throttle_blocks_only_keys_over_their_limit() -> None:
    policy = users.ThrottlePolicy(window_s=900, per_email=5, per_ip=30)
    rows = [
        {"key": "email:a@x", "failures": 4, "retry_after_s": 100.0},
        {"key": "ip:10.0.0.1", "failures": 29, "retry_after_s": 50.0},
    ]
    assert users.blocked_for(rows, policy) is None
    rows[0]["failures"] = 5
    assert users.blocked_for(rows, policy) == 100.0
    assert users.blocked_for([{"key": "ip:1", "failures": 30, "retry_after_s": 0.2}], policy) == 1.0


def test_passwords_are_argon2id_and_checked() -> None:
    with pytest.raises(users.UserError, match="at least 10"):
        users.check_password("short")
    stored = users.hash_password("long enough password")
    assert stored.startswith("$argon2id$")
    assert users.verify_password("long enough password", stored)
    assert not users.verify_password("long enough passwore", stored)
    assert not users.verify_password("x", "not a hash")
