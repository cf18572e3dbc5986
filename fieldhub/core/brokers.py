"""Which broker a device is homed on: rendezvous (highest random weight) hashing.

Every broker gets a score from a hash of (broker, device id); the device goes to the highest.
The choice depends only on the two names, so every process computes the same home without
asking anyone, and adding a broker moves only the devices for which the new broker now scores
highest: about 1/n of them, where a `hash % n` scheme would move almost all. The result is
stored in devices.broker when the device is created, so a later change of the broker list
never moves an existing device by itself (its credentials name its broker)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence


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


def broker_preference(device_id: str, home: str, brokers: Sequence[str]) -> list[str]:
    """The order in which `device_id` tries brokers: its home, then the others by score.

    The same scores that pick a home rank the standbys, so when a broker is lost its devices
    spread over all the others (each goes to its own next-highest) instead of all falling
    onto whichever broker is listed first. `home` need not be in `brokers`."""
    others = sorted(
        (broker for broker in brokers if broker != home),
        key=lambda broker: (_score(broker, device_id), broker),
        reverse=True,
    )
    return [home, *others]


def urls_in_preference(device_id: str, home: str, urls: Mapping[str, str]) -> list[str]:
    """The device URLs of `urls` (broker name -> URL) in the device's order of preference:
    what its credentials list as `mqtt_urls`. Brokers without a URL are left out."""
    return [urls[name] for name in broker_preference(device_id, home, list(urls)) if name in urls]


__all__ = ["broker_preference", "home_broker", "urls_in_preference"]
