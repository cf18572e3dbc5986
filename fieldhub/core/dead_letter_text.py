"""What a dead letter means to the people whose device sent it (pure; no I/O).

A dead letter keeps a refused message whole (docs/devices.md); the CLI, the API and the
device page show it through this module: the reason in words a firmware author understands,
and a preview of the payload that is safe anywhere. The preview is plain text, never markup
(pages escape it like any text): UTF-8 without control characters other than tab and line
breaks is shown as text, anything else as hex, since a binary payload shown as text could
carry terminal escape sequences or look like something it is not."""

from __future__ import annotations

from typing import Final, NamedTuple

# Bytes of a payload shown: enough for a typical telemetry message, bounded so that a list
# of a hundred letters stays small (payloads can be 256 KiB).
PREVIEW_BYTES: Final = 256

EXPLANATIONS: Final[dict[str, str]] = {
    "invalid_utf8": "The payload is not valid UTF-8 text.",
    "invalid_json": "The payload is not valid JSON.",
    "empty": "The payload is empty, or has no readings in it.",
    "payload_too_large": "The payload is larger than the broker accepts for one message.",
    "bad_type": "A field has the wrong JSON type (values are numbers, booleans or short "
    "strings; the values field is an object).",
    "not_finite": "A value is NaN, Infinity or too large for a double.",
    "bad_metric_name": "A metric name has characters or a length that is not allowed.",
    "too_many_readings": "The message carries more readings than one message may.",
    "too_many_values": "A reading carries more values than one reading may.",
    "string_too_long": "A text value is longer than allowed.",
    "ts_invalid": "The timestamp (ts) is not a time fieldhub understands, or is before 2000 "
    "(is the device's clock set?).",
    "ts_in_future": "The timestamp (ts) is more than an hour ahead of the server's clock "
    "(is the device's clock or time zone right?).",
    "seq_invalid": "seq is not an integer from 0 to 2^63-1.",
    "senml_invalid": "The SenML pack uses a feature fieldhub does not support, or is malformed.",
    "bad_status": "A status message other than online/offline.",
    "bad_string": "A text value or unit contains a NUL character (U+0000), which cannot be stored.",
    "bad_topic": "The topic is not one of the device topics.",
    "unknown_device": "No device with this id exists.",
    "disabled_device": "The device is disabled: its messages are refused until it is enabled.",
    "deleted_device": "The device was deleted while the message was on its way.",
    "conflict": "A reading has the same time, metric, unit and seq as a stored reading but "
    "another value; the stored one was kept (the message's other readings were stored).",
    "twin_invalid": "The twin report is malformed.",
    "twin_stale": "The twin report arrived after a newer one and was ignored.",
    "invalid_ack": "The command acknowledgement is not a JSON object with a valid status.",
    "unknown_command": "The acknowledgement names a command that does not exist (or expired "
    "and was removed).",
    "foreign_command": "The acknowledgement names a command of another device.",
    "db_rejected": "The database refused the message although it decoded: a fieldhub bug, "
    "please report it.",
}


def explain(reason: str) -> str:
    """The reason in words; a reason this version does not know is shown as its code."""
    return EXPLANATIONS.get(reason, f"Refused ({reason}).")


class Preview(NamedTuple):
    kind: str
    """``text`` or ``hex``."""
    text: str
    size: int
    """The whole payload's length in bytes."""
    truncated: bool


def _is_plain(text: str) -> bool:
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _decode(head: bytes, truncated: bool) -> str | None:
    # A preview that cuts through a multi-byte character at its end is still text.
    for cut in range(4 if truncated else 1):
        try:
            return head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def preview(head: bytes, size: int) -> Preview:
    """A safe preview of a payload from its first bytes (`head`) and its full `size`."""
    head = head[:PREVIEW_BYTES]
    truncated = size > len(head)
    text = _decode(head, truncated)
    if text is None or not _is_plain(text):
        return Preview("hex", head.hex(" "), size, truncated)
    return Preview("text", text, size, truncated)
