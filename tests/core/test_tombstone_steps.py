"""The order of a deleted device's steps per broker, and what a waiting id is told (pure)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from fieldhub.core.tombstone_steps import STEPS, next_step, waiting_for

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_steps_run_in_order_and_a_later_step_never_counts_before_an_earlier_one() -> None:
    progress: dict[str, datetime | None] = dict.fromkeys(STEPS)
    assert next_step(progress) == "cut_off_at"
    # A later step recorded (it cannot be, but say it were) does not skip the earlier one.
    progress["session_cleared_at"] = NOW
    assert next_step(progress) == "cut_off_at"
    progress["session_cleared_at"] = None
    for done, expected in itertools.pairwise(STEPS):
        progress[done] = NOW
        assert next_step(progress) == expected
    progress["session_cleared_at"] = NOW
    assert next_step(progress) is None
    assert waiting_for("broker-1", progress) is None


def test_waiting_for_names_the_broker_and_the_bridges_behind() -> None:
    progress: dict[str, datetime | None] = dict.fromkeys(STEPS)
    assert "auth-sync of broker-2" in (waiting_for("broker-2", progress) or "")
    progress.update(cut_off_at=NOW, retained_cleared_at=NOW)
    sentence = waiting_for("broker-2", progress, ["svc.bridge-2"]) or ""
    assert "the bridges of broker-2" in sentence
    assert "(not yet: svc.bridge-2)" in sentence
    assert "a stopped bridge blocks this" in sentence
