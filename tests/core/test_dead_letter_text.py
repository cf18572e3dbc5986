"""Dead letters in words, and payload previews that are safe anywhere (pure)."""

from __future__ import annotations

import typing

from fieldhub.core import dead_letter_text
from fieldhub.core.dead_letter_text import PREVIEW_BYTES, preview
from fieldhub.core.decode import DecodeReason


def test_every_reason_the_decoder_gives_has_words() -> None:
    for reason in typing.get_args(DecodeReason):
        assert reason in dead_letter_text.EXPLANATIONS, reason
    assert dead_letter_text.explain("something_new") == "Refused (something_new)."


def test_text_stays_text_and_anything_else_is_hex() -> None:
    assert preview(b'{"t": "<b>"}\n', 13) == ("text", '{"t": "<b>"}\n', 13, False)
    assert preview(b"\x1b[31mred", 8).kind == "hex"  # a terminal escape
    assert preview(b"a\x00b", 3) == ("hex", "61 00 62", 3, False)
    assert preview(b"\xff", 1).kind == "hex"
    assert preview("a\u2028b".encode(), 5).kind == "hex"  # a line separator


def test_a_long_payload_is_cut_even_through_a_character() -> None:
    payload = ("é" * PREVIEW_BYTES).encode()  # two bytes each: the cut falls inside one
    shown = preview(payload[: PREVIEW_BYTES + 1], len(payload))
    assert shown.kind == "text"
    assert shown.text == "é" * (PREVIEW_BYTES // 2)
    assert shown.truncated
    assert shown.size == len(payload)
    # Invalid bytes before the cut are not hidden by it.
    broken = b"\xff" + b"a" * PREVIEW_BYTES
    assert preview(broken, len(broken) + 10).kind == "hex"
