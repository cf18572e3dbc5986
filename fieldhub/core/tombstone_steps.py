"""What a deleted device's id still waits for on each broker: pure rules, no I/O.

A tombstone (migration 0013) is worked off per broker in a fixed order, each step recorded in
`tombstone_brokers` by the process that owns it (tombstones.py has the I/O):

1. cut_off_at: auth-sync rendered the broker's password file without the old device and the
   broker reloaded it, so the old device is disconnected and cannot log in again;
2. retained_cleared_at: that broker's command dispatcher published empty retained messages on
   the old device's command and twin topics, then the in-stream marker to every bridge;
3. drained_at: every bridge session of that broker passed the marker, so every message the old
   device sent before it is stored under the old key or dead-lettered;
4. session_cleared_at: auth-sync destroyed the old device's stored broker session (a login as
   its client id with clean start and session expiry 0 on the reaper listener).

Only then is a new device with the same id rendered into that broker's password file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

STEPS = ("cut_off_at", "retained_cleared_at", "drained_at", "session_cleared_at")

# How each missing step reads to a person waiting for it ({broker} filled in).
WAITING_FOR = {
    "cut_off_at": "auth-sync of {broker} to remove the old device's login and reload the broker",
    "retained_cleared_at": (
        "the command dispatcher of {broker} (in a running bridge) to clear the old device's "
        "retained commands and twin"
    ),
    "drained_at": (
        "the bridges of {broker} to pass the deletion marker in their message stream{sessions}; "
        "a stopped bridge blocks this until it runs again or its broker session expires"
    ),
    "session_cleared_at": "auth-sync of {broker} to destroy the old device's broker session",
}


def next_step(progress: Mapping[str, datetime | None]) -> str | None:
    """The first step of one broker's row not done yet (None: the broker is done)."""
    for step in STEPS:
        if progress.get(step) is None:
            return step
    return None


def waiting_for(
    broker: str, progress: Mapping[str, datetime | None], sessions: Sequence[str] = ()
) -> str | None:
    """A sentence for `fieldhub device show` and the admin page (None: nothing to wait for).

    `sessions` are the bridge sessions of the broker that have not passed the marker yet."""
    step = next_step(progress)
    if step is None:
        return None
    named = f" (not yet: {', '.join(sessions)})" if sessions else ""
    return WAITING_FOR[step].format(broker=broker, sessions=named)


__all__ = ["STEPS", "WAITING_FOR", "next_step", "waiting_for"]
