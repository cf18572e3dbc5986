"""What a person reads for a time or a reading: pure rules, no I/O.

static/format.js applies the same rules in the browser (live updates, the chart, the history
table), so a value reads the same whether the server or the browser wrote it; the test
vectors in tests/web/display_cases.json are checked against both.

- Times travel in UTC; a person reads them as `2026-01-31 13:00:05` in their zone (their
  account's, else their browser's), wall clock without an offset, the zone named once per page.
- Booleans read `true` and `false`: the words the device sent, the API returns and exports
  write, and neutral about meaning (`on`/`off` would misread `door_open` or `leak`).
- Numbers: at least four significant digits, the integer part never rounded (a counter at
  123456 reads 123456, not 123500), no trailing zeros; below 1e-4 or from 1e15 up in
  scientific notation (`1.235e-5`). Ties round away from zero, as JavaScript's toFixed does.
- Text is cut at 40 characters."""

from __future__ import annotations

import math
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal, localcontext

MISSING = "—"
SIGNIFICANT = 4
TEXT_LIMIT = 40


def local_time(value: datetime, zone: tzinfo) -> str:
    """`2026-01-31 13:00:05`: the wall clock of `zone` at that instant."""
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def iso_utc(value: datetime) -> str:
    """The machine form of an instant, for `<time datetime>` and JSON: milliseconds, Z."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """'12 s ago', '3 min ago', '5 h ago', '2 d ago' or 'never'."""
    if value is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    if seconds < 0:
        return "just now"
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600)):
        if seconds < limit:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds // 86400)} d ago"


def value_text(value: object) -> str:
    """A reading as a person reads it: booleans, numbers and text by the rules above."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number_text(float(value))
    text = str(value)
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


def number_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == 0:
        return "0"
    size = abs(value)
    if size < 1e-4 or size >= 1e15:
        with localcontext(rounding=ROUND_HALF_UP):
            mantissa, exponent = f"{Decimal(value):.{SIGNIFICANT - 1}e}".split("e")
        return f"{_strip_zeros(mantissa)}e{int(exponent)}"
    digits = math.floor(math.log10(size)) + 1
    places = max(0, SIGNIFICANT - digits)
    if (size * 10**places) % 1 != 0.5:
        # Not a tie (the product is exact when it is one): float formatting rounds the same
        # way, at a seventh of Decimal's cost, which a list page of 200 values notices.
        return _strip_zeros(f"{value:.{places}f}")
    rounded = Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return _strip_zeros(f"{rounded:f}")


def _strip_zeros(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text
