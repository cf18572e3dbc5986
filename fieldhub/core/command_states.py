"""The lifecycle of a command to a device, as pure decisions (no I/O).

    queued -> sent -> delivered -> succeeded | failed | rejected
    queued | sent | delivered -> expired | cancelled

Every writer (the shared API, the bridge's ack handling, the dispatcher, the expiry sweep) asks
this module what a given event does to a command in a given state, so the rules live in one
place. The database is only told the outcome.

Acks come from devices over at-least-once MQTT, so the rules are forgiving: a duplicate ack, an
ack that overtakes an earlier one (`succeeded` before `accepted`), or an ack after the command
is already final changes nothing and is not an error. The first final state wins."""

from __future__ import annotations

import dataclasses
from typing import Final, Literal

Status = Literal[
    "queued", "sent", "delivered", "succeeded", "failed", "rejected", "expired", "cancelled"
]
AckStatus = Literal["accepted", "in_progress", "succeeded", "failed", "rejected"]

STATUSES: Final[tuple[Status, ...]] = (
    "queued",
    "sent",
    "delivered",
    "succeeded",
    "failed",
    "rejected",
    "expired",
    "cancelled",
)
# Still waiting for a final answer from the device (these count against the pending cap).
OPEN_STATUSES: Final[frozenset[Status]] = frozenset({"queued", "sent", "delivered"})
FINAL_STATUSES: Final[frozenset[Status]] = frozenset(
    {"succeeded", "failed", "rejected", "expired", "cancelled"}
)
ACK_STATUSES: Final[tuple[AckStatus, ...]] = (
    "accepted",
    "in_progress",
    "succeeded",
    "failed",
    "rejected",
)
# The device has the command and works on it; not an answer yet.
_PROGRESS_ACKS: Final[frozenset[AckStatus]] = frozenset({"accepted", "in_progress"})
_FINAL_ACKS: Final[dict[AckStatus, Status]] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "rejected": "rejected",
}
# How far along the open states are; a command never moves backwards.
_RANK: Final[dict[Status, int]] = {"queued": 0, "sent": 1, "delivered": 2}


class TransitionRefused(ValueError):
    """A person asked for something the lifecycle does not allow; the message says why."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What an event does to a command: the new status, or None when nothing changes."""

    new_status: Status | None
    why: str

    @property
    def changes(self) -> bool:
        return self.new_status is not None


def is_open(status: Status) -> bool:
    return status in OPEN_STATUSES


def is_final(status: Status) -> bool:
    return status in FINAL_STATUSES


def parse_status(value: str) -> Status:
    """A status named by a person (CLI, query string), or a clear error."""
    for status in STATUSES:
        if status == value:
            return status
    raise TransitionRefused(f"unknown command status {value!r}; use one of {', '.join(STATUSES)}")


def parse_ack_status(value: object) -> AckStatus:
    for status in ACK_STATUSES:
        if status == value:
            return status
    raise ValueError(f"ack status {value!r} is not one of {', '.join(ACK_STATUSES)}")


def on_ack(current: Status, ack: AckStatus) -> Outcome:
    """What a device's ack does to its command.

    A final ack ends an open command whatever the open state: `queued` too, because a
    dispatcher that crashed after publishing but before recording `sent` leaves the command
    `queued` while the device already has it. A progress ack moves an open command to
    `delivered` unless it is already there."""
    if is_final(current):
        return Outcome(None, f"command is already {current}; late ack ignored")
    if ack in _PROGRESS_ACKS:
        if current == "delivered":
            return Outcome(None, f"command is already delivered; {ack} changes nothing")
        return Outcome("delivered", f"device answered {ack}")
    return Outcome(_FINAL_ACKS[ack], f"device answered {ack}")


def on_published(current: Status) -> Outcome:
    """The broker acknowledged the command's publish (PUBACK).

    Only `queued` moves to `sent`: the device may have answered before the dispatcher got
    round to recording the PUBACK, and that answer must not be overwritten."""
    if current == "queued":
        return Outcome("sent", "broker acknowledged the publish")
    return Outcome(None, f"command is already {current}")


def published_moves() -> tuple[list[Status], Status]:
    """on_published as data, for the SQL that records a PUBACK in one statement
    (fieldhub.bridge.commands): the statuses that move, and where to."""
    moves = {s: outcome.new_status for s in STATUSES if (outcome := on_published(s)).new_status}
    targets = set(moves.values())
    if len(targets) != 1:
        raise AssertionError(f"a PUBACK must lead to one status, not {sorted(targets)}")
    return list(moves), targets.pop()


def on_expiry(current: Status) -> Outcome:
    """The time to live ran out (the caller checked the clock)."""
    if is_open(current):
        return Outcome("expired", "time to live ran out before a final answer")
    return Outcome(None, f"command is already {current}")


def on_cancel(current: Status) -> Outcome:
    """A person cancels the command; refused once the command is final."""
    if is_open(current):
        return Outcome("cancelled", "cancelled by a user")
    raise TransitionRefused(
        f"command is already {current}; only queued, sent or delivered commands can be cancelled"
    )


def allowed_transitions() -> dict[Status, frozenset[Status]]:
    """Every status change any event can make, for documentation and for tests."""
    moves: dict[Status, set[Status]] = {status: set() for status in STATUSES}
    for status in STATUSES:
        outcomes = [on_published(status), on_expiry(status)]
        outcomes += [on_ack(status, ack) for ack in ACK_STATUSES]
        if is_open(status):
            outcomes.append(on_cancel(status))
        for outcome in outcomes:
            if outcome.new_status is not None:
                moves[status].add(outcome.new_status)
    return {status: frozenset(targets) for status, targets in moves.items()}


def never_backwards(current: Status, new: Status) -> bool:
    """True when moving from `current` to `new` keeps the lifecycle's order."""
    if is_final(current):
        return False
    if is_final(new):
        return True
    return _RANK[new] > _RANK[current]
