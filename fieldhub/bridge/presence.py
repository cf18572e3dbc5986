"""Presence: how one batch of status and telemetry messages moves a device's online flag.

Pure logic, apart from the SQL that applies it (fieldhub/bridge/ingest.py). A device's status
topic carries its own word ("online" after connecting, its retained Last Will "offline"); any
telemetry also proves it is online. Within a batch the events of one device are replayed in
receive order, so "offline" followed by telemetry means the device came back, and telemetry
followed by its Last Will means it is gone."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple

Source = Literal["status", "telemetry"]


class PresenceEvent(NamedTuple):
    time: float  # epoch seconds the bridge received the message
    online: bool
    source: Source


class PresenceOutcome(NamedTuple):
    online: bool
    last_seen: float
    flips: list[PresenceEvent]  # the events that changed the flag, to record and announce


def replay(previous: bool | None, events: Iterable[PresenceEvent]) -> PresenceOutcome:
    """Apply `events` (any order) to a device whose flag was `previous` (None: never seen).

    A device never seen before counts as offline, so its first message is an "online" flip."""
    ordered = sorted(events, key=lambda event: event.time)
    if not ordered:
        raise ValueError("replay needs at least one event")
    current = bool(previous)
    flips: list[PresenceEvent] = []
    for event in ordered:
        if event.online != current:
            flips.append(event)
            current = event.online
    return PresenceOutcome(current, ordered[-1].time, flips)
