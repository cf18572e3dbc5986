"""QoS 0 shedding: what the bridge does with QoS 0 messages it cannot hold.

QoS 1 is bounded by the Receive Maximum the bridge announces: the broker stops sending once
that many are unacknowledged. QoS 0 has no such brake, so while the database is down (or too
slow) every QoS 0 message would wait in memory for its batch, without bound. Past
MAX_QOS0_BACKLOG uncommitted messages (or MAX_QOS0_BACKLOG_BYTES of payload) the bridge stops
holding QoS 0 messages: it counts them per device here and, once the database took the backlog,
writes ONE dead letter per device (reason `qos0_shed`) saying how many were shed and when, with
the last shed payload. QoS 1 messages are never shed.

The tallies are bounded by the number of topics' device ids the broker lets publish (the ACL
binds each device account to its own topics); messages on topics that name no device share
one tally. This module is pure: fieldhub.bridge.app applies it on the network thread and
writes what `take` returns."""

from __future__ import annotations

import dataclasses
import datetime
import threading

# Measured (tests/bridge/test_shedding.py, database stopped, 18,000 QoS 0 and 2,000 QoS 1
# messages held, then 60,000 more QoS 0 of ~40 bytes): the bridge's RSS grew by 1.3 MB during
# the flood with this bound, by 36 MB without it (about 600 bytes per held message, so the
# bound itself costs about 12 MB for small messages; MAX_QOS0_BACKLOG_BYTES caps large ones).
# 20,000 is twice the Receive Maximum, so QoS 1 alone never reaches it, and at the measured
# ~25,000 messages/s (docs/benchmarks.md) it is about a second of traffic: a slow commit does
# not shed, an outage does.
MAX_QOS0_BACKLOG = 20_000
# Payloads may be up to the broker's max_packet_size (260 KiB): 32 MiB bounds large ones too.
MAX_QOS0_BACKLOG_BYTES = 32 * 1024 * 1024

REASON = "qos0_shed"


@dataclasses.dataclass
class Tally:
    """QoS 0 messages of one device shed during one overload."""

    device_id: str | None
    device_key: int | None
    topic: str
    count: int
    first_at: float
    last_at: float
    payload: bytes

    def absorb(self, later: Tally) -> None:
        self.count += later.count
        self.first_at = min(self.first_at, later.first_at)
        if later.last_at >= self.last_at:
            self.last_at = later.last_at
            self.payload = later.payload
            self.topic = later.topic
            self.device_key = later.device_key

    def detail(self) -> str:
        return (
            f"{self.count} QoS 0 message(s) shed between {_iso(self.first_at)} and "
            f"{_iso(self.last_at)} while the database was unavailable or too slow (the bridge "
            f"held {MAX_QOS0_BACKLOG} uncommitted messages); the payload is the last one shed. "
            "Publish at QoS 1 what must not be lost."
        )


def over_bound(messages: int, payload_bytes: int) -> bool:
    """Whether a backlog of this many uncommitted messages/bytes sheds further QoS 0."""
    return messages >= MAX_QOS0_BACKLOG or payload_bytes >= MAX_QOS0_BACKLOG_BYTES


class Shedding:
    """Per-device tallies of shed QoS 0 messages, shared by the network and writer threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: dict[str | None, Tally] = {}
        self._unreported = 0

    def shed(
        self,
        device_id: str | None,
        device_key: int | None,
        topic: str,
        payload: bytes,
        received_at: float,
    ) -> None:
        with self._lock:
            self._unreported += 1
            tally = self._tallies.get(device_id)
            if tally is None:
                self._tallies[device_id] = Tally(
                    device_id, device_key, topic, 1, received_at, received_at, payload
                )
            else:
                tally.count += 1
                tally.last_at = received_at
                tally.payload = payload
                tally.topic = topic
                tally.device_key = device_key

    def unreported(self) -> int:
        """Messages shed since the last call (for the metric, added by the writer in bulk)."""
        with self._lock:
            count, self._unreported = self._unreported, 0
            return count

    def __bool__(self) -> bool:
        return bool(self._tallies)

    def take(self) -> list[Tally]:
        """Every tally so far, to be written as dead letters; `put_back` if that fails."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
        return sorted(tallies.values(), key=lambda t: t.first_at)

    def put_back(self, tallies: list[Tally]) -> None:
        with self._lock:
            for tally in tallies:
                newer = self._tallies.get(tally.device_id)
                if newer is not None:
                    tally.absorb(newer)
                self._tallies[tally.device_id] = tally


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).isoformat(
        timespec="milliseconds"
    )
