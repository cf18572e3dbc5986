"""Which broker a device tries next, and how long it waits first: the failover rules of
docs/devices.md ("Credentials and which broker to use"), pure, for the simulator to apply.

A device holds its `mqtt_urls` in order: its home broker first, then the standbys ranked by
the same rendezvous scores that chose the home (fieldhub.core.brokers.broker_preference), so
the devices of a lost broker spread over all the others. The rules:

- A connection that was up and is closed (the broker or the network said so) is retried once
  on the same broker after a short random pause (0..`base_s`): most such losses are a broker
  restart or a blip, and the device's retained commands are there. A connection that went
  silent (see the PUBACK rule below) is not: a host that stopped answering is not back in a
  second, and the retry would cost a whole `connect_timeout_s` more.
- Every failed attempt moves to the next broker of the list (wrapping around) and waits a random
  time between 0 and min(`cap_s`, `base_s` x 2^failures) ("full jitter"): a fleet that lost its
  broker spreads its reconnects over the window instead of arriving in lockstep.
- A device on a standby checks its home every `home_probe_s` (x 0.5..1.5, so probes of many
  devices do not line up): a connection to its listener, TLS handshake included, then closed.
  Once the home has answered every check for `home_stable_s`, it moves back (after its message
  in flight is acknowledged): a broker that comes back is often restarted again soon (a crash
  loop, an operator's second try), and moving thousands of devices back and forth costs logins
  on the way.
- A QoS 1 message not acknowledged within `puback_timeout_s` means the connection is dead: a
  host that vanished with its link sends no reset, and TCP alone would notice only minutes later.

With the defaults a device of a lost broker publishes through a standby within about
`puback_timeout_s` (a silent host) or a moment (a closed connection, then `connect_timeout_s`
for the refused or unanswered retry) + 0-2 s (the first backoff) + one login: measured on the
eleven-host lab in docs/benchmarks.md."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class WalkPolicy:
    base_s: float = 1.0
    cap_s: float = 30.0
    connect_timeout_s: float = 5.0
    puback_timeout_s: float = 10.0
    home_probe_s: float = 15.0
    home_stable_s: float = 60.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"{field.name} must be > 0")
        if self.cap_s < self.base_s:
            raise ValueError("cap_s must be >= base_s")


class BrokerWalk:
    """One device's position in its broker list. `brokers[0]` is its home.

    The caller asks `first()` for the broker of its first attempt, then reports each outcome:
    `connected()`, `lost()` (a connection that was up ended) or `failed()` (an attempt that did
    not get a CONNACK); the last two return the next broker and the pause before trying it.
    While on a standby it reports home checks with `home_answered(now)` / `home_silent()` and
    moves back once `should_go_home(now)` says so."""

    def __init__(
        self, brokers: Sequence[str], policy: WalkPolicy, rng: random.Random | None = None
    ) -> None:
        if not brokers:
            raise ValueError("a device needs at least one broker")
        if len(set(brokers)) != len(brokers):
            raise ValueError(f"a broker is listed twice: {list(brokers)}")
        self.brokers = list(brokers)
        self.policy = policy
        self.rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not secrets
        self.index = 0
        self.failures = 0
        self._home_since: float | None = None

    @property
    def home(self) -> str:
        return self.brokers[0]

    @property
    def current(self) -> str:
        return self.brokers[self.index]

    @property
    def on_standby(self) -> bool:
        return self.index != 0

    def first(self) -> str:
        return self.current

    def connected(self) -> None:
        self.failures = 0
        self._home_since = None

    def lost(self, *, silent: bool = False) -> tuple[str, float]:
        """The connection to the current broker was lost: closed, try it once more shortly;
        silent (no PUBACK in time), go on to the next one as after a failed attempt."""
        if silent:
            return self.failed()
        return self.current, self.rng.uniform(0.0, self.policy.base_s)

    def failed(self) -> tuple[str, float]:
        """An attempt failed: the next broker in order, after a capped, jittered pause."""
        self.failures += 1
        self.index = (self.index + 1) % len(self.brokers)
        ceiling = min(self.policy.cap_s, self.policy.base_s * 2.0 ** min(self.failures, 32))
        return self.current, self.rng.uniform(0.0, ceiling)

    def next_home_check(self) -> float:
        """Seconds until the next check of the home broker, while on a standby."""
        return self.policy.home_probe_s * self.rng.uniform(0.5, 1.5)

    def home_answered(self, now: float) -> None:
        if self._home_since is None:
            self._home_since = now

    def home_silent(self) -> None:
        self._home_since = None

    def should_go_home(self, now: float) -> bool:
        return (
            self.on_standby
            and self._home_since is not None
            and now - self._home_since >= self.policy.home_stable_s
        )

    def went_home(self) -> None:
        self.index = 0
        self.failures = 0
        self._home_since = None


__all__ = ["BrokerWalk", "WalkPolicy"]
