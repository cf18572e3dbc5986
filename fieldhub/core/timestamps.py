"""Times given as text: the strict RFC 3339 of devices and files, and the looser form people type.

Every parser of a time in fieldhub is one of these two (the decoder, the import parser, the
web's ranges and API parameters, the command line's --from/--to), so they cannot disagree
on what a time is. Each caller turns ValueError into its own error (a decode reason, a line
error, a problem document, an argparse message)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

# Strict RFC 3339 shape (ASCII digits only: \d would admit other scripts' digits, which
# fromisoformat then happily parses). fromisoformat alone is too lenient: it takes week
# dates, missing offsets and compact forms. A space instead of "T" is allowed, as the note
# in RFC 3339 section 5.6 does.
RFC3339_RE: Final = re.compile(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(?:\.[0-9]{1,9})?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)


def parse_rfc3339(text: str) -> datetime:
    """A strict RFC 3339 time (with its offset); ValueError for anything else.

    The error's message leaves out the text (callers show it their own way, shortened):
    "is not RFC 3339", or "is not a valid time (...)" for a well-formed impossible date.

    Python 3.11's fromisoformat wants upper-case T/Z; RFC 3339 allows lower case. Leap
    seconds (":60") are refused: datetime cannot represent them and they are vanishingly
    rare from devices."""
    if RFC3339_RE.match(text) is None:
        raise ValueError("is not RFC 3339")
    try:
        moment = datetime.fromisoformat(text.upper())
        # Years at the edge of datetime's range overflow once the offset is applied (to
        # UTC, to epoch seconds): refused here rather than wherever that happens later.
        moment.timestamp()
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"is not a valid time ({exc})") from None
    return moment


def parse_time(text: str) -> datetime:
    """A time a person typed: ISO 8601 (Z or z, a space for T), no offset meaning UTC.

    ValueError for anything fromisoformat cannot read; the result always has a time zone."""
    value = datetime.fromisoformat(
        text.strip().replace("Z", "+00:00").replace("z", "+00:00").replace(" ", "T")
    )
    return value if value.tzinfo else value.replace(tzinfo=UTC)
