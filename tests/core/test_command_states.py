"""The command lifecycle, every state against every event (pure, no servers)."""

from __future__ import annotations

import itertools

import pytest

from fieldhub.core.command_states import (
    ACK_STATUSES,
    FINAL_STATUSES,
    OPEN_STATUSES,
    STATUSES,
    AckStatus,
    Status,
    TransitionRefused,
    allowed_transitions,
    never_backwards,
    on_ack,
    on_cancel,
    on_expiry,
    on_published,
    parse_ack_status,
    parse_status,
    published_moves,
)

# What each ack does in each state, written out in full: None means "ignored".
EXPECTED_ACK: dict[tuple[Status, AckStatus], Status | None] = {
    ("queued", "accepted"): "delivered",
    ("queued", "in_progress"): "delivered",
    ("queued", "succeeded"): "succeeded",
    ("queued", "failed"): "failed",
    ("queued", "rejected"): "rejected",
    ("sent", "accepted"): "delivered",
    ("sent", "in_progress"): "delivered",
    ("sent", "succeeded"): "succeeded",
    ("sent", "failed"): "failed",
    ("sent", "rejected"): "rejected",
    ("delivered", "accepted"): None,
    ("delivered", "in_progress"): None,
    ("delivered", "succeeded"): "succeeded",
    ("delivered", "failed"): "failed",
    ("delivered", "rejected"): "rejected",
    **{(final, ack): None for final in FINAL_STATUSES for ack in ACK_STATUSES},
}


def test_the_expected_table_covers_every_state_and_ack() -> None:
    assert set(EXPECTED_ACK) == set(itertools.product(STATUSES, ACK_STATUSES))


@pytest.mark.parametrize(("current", "ack"), sorted(EXPECTED_ACK))
def test_each_ack_in_each_state(current: Status, ack: AckStatus) -> None:
    outcome = on_ack(current, ack)
    assert outcome.new_status == EXPECTED_ACK[(current, ack)]
    assert outcome.changes == (outcome.new_status is not None)
    assert outcome.why  # every decision, even "ignored", says why (it is logged)


def test_open_and_final_partition_the_statuses() -> None:
    assert set(STATUSES) == OPEN_STATUSES | FINAL_STATUSES
    assert not OPEN_STATUSES & FINAL_STATUSES


def replay(acks: list[AckStatus], start: Status = "sent") -> tuple[Status, list[Status]]:
    """Apply acks in order as the bridge does; return the end state and the recorded changes."""
    status = start
    changes: list[Status] = []
    for ack in acks:
        outcome = on_ack(status, ack)
        if outcome.new_status is not None:
            status = outcome.new_status
            changes.append(status)
    return status, changes


def test_the_usual_conversation() -> None:
    assert replay(["accepted", "in_progress", "succeeded"]) == (
        "succeeded",
        ["delivered", "succeeded"],
    )


def test_duplicate_acks_change_nothing_more() -> None:
    assert replay(["accepted", "accepted", "succeeded", "succeeded"]) == (
        "succeeded",
        ["delivered", "succeeded"],
    )


def test_succeeded_overtaking_accepted_stays_succeeded() -> None:
    assert replay(["succeeded", "accepted", "in_progress"]) == ("succeeded", ["succeeded"])


def test_first_final_answer_wins() -> None:
    assert replay(["failed", "succeeded"]) == ("failed", ["failed"])
    assert replay(["rejected", "failed", "succeeded"]) == ("rejected", ["rejected"])


def test_ack_for_a_command_still_queued_counts() -> None:
    # The dispatcher crashed after the publish but before recording `sent`.
    assert replay(["accepted", "succeeded"], start="queued") == (
        "succeeded",
        ["delivered", "succeeded"],
    )


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
def test_acks_after_a_final_state_are_ignored_not_errors(final: Status) -> None:
    for ack in ACK_STATUSES:
        outcome = on_ack(final, ack)
        assert outcome.new_status is None
        assert final in outcome.why


@pytest.mark.parametrize("current", STATUSES)
def test_published(current: Status) -> None:
    expected = "sent" if current == "queued" else None
    assert on_published(current).new_status == expected


def test_published_moves_are_on_published_as_data() -> None:
    """What the SQL that records a broker's PUBACK applies (record_command_published)."""
    assert published_moves() == (["queued"], "sent")


@pytest.mark.parametrize("current", STATUSES)
def test_expiry(current: Status) -> None:
    expected = "expired" if current in OPEN_STATUSES else None
    assert on_expiry(current).new_status == expected


@pytest.mark.parametrize("current", sorted(OPEN_STATUSES))
def test_cancel_open(current: Status) -> None:
    assert on_cancel(current).new_status == "cancelled"


@pytest.mark.parametrize("current", sorted(FINAL_STATUSES))
def test_cancel_final_is_refused_with_the_reason(current: Status) -> None:
    with pytest.raises(TransitionRefused, match=f"already {current}"):
        on_cancel(current)


def test_the_whole_transition_graph() -> None:
    assert allowed_transitions() == {
        "queued": frozenset(
            {"sent", "delivered", "succeeded", "failed", "rejected", "expired", "cancelled"}
        ),
        "sent": frozenset({"delivered", "succeeded", "failed", "rejected", "expired", "cancelled"}),
        "delivered": frozenset({"succeeded", "failed", "rejected", "expired", "cancelled"}),
        **{final: frozenset() for final in FINAL_STATUSES},
    }


def test_no_transition_goes_backwards() -> None:
    for current, targets in allowed_transitions().items():
        for target in targets:
            assert never_backwards(current, target), (current, target)
    assert not never_backwards("delivered", "sent")
    assert not never_backwards("succeeded", "failed")


def test_parse_status() -> None:
    assert parse_status("delivered") == "delivered"
    with pytest.raises(TransitionRefused, match="unknown command status 'done'"):
        parse_status("done")


@pytest.mark.parametrize("bad", ["ACCEPTED", "ok", "", None, 1, ["succeeded"]])
def test_parse_ack_status_refuses_anything_else(bad: object) -> None:
    with pytest.raises(ValueError, match="is not one of"):
        parse_ack_status(bad)


def test_parse_ack_status_accepts_the_contract() -> None:
    assert [parse_ack_status(s) for s in ACK_STATUSES] == list(ACK_STATUSES)
