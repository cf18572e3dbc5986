"""Which broker a device is homed on: rendezvous (highest random weight) hashing.

Every broker gets a score from a hash of (broker, device id); the device goes to the highest.
The choice depends only on the two names, so every process computes the same home without
asking anyone, and adding a broker moves only the devices for which the new broker now scores
highest: about 1/n of them, where a `hash % n` scheme would move almost all. The result is
stored in devices.broker when the device is created, so a later change of the broker list
never moves an existing device by itself (its credentials name its broker).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _score(broker: str, device_id: str) -> int:
    # blake2b rather than hash(): Python salts str hashes per process, and the home must be
    # the same in every process and on every host.
    digest = hashlib.blake2b(f"{broker}\0{device_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def home_broker(device_id: str, brokers: Sequence[str]) -> str:
    """The broker `device_id` is homed on among `brokers` (at least one name)."""
    if not brokers:
        raise ValueError("no brokers configured to home a device on")
    # Ties are practically impossible with 64-bit scores; the name breaks them deterministically.
    return max(brokers, key=lambda broker: (_score(broker, device_id), broker))


__all__ = ["home_broker"]
