"""Receive stamps: the time a reading without `ts` is stored at, for the bridge (MQTT) and the
web app's HTTP ingest alike (one clock per process)."""

from __future__ import annotations

import time
from collections.abc import Callable


class ReceiveClock:
    """Receive times in whole microseconds that strictly increase.

    Readings without `ts` are stamped with their receive time, and the time is part of a
    reading's identity: two messages stamped in the same microsecond (or across a backwards
    step of the wall clock) would be stored as one. A message is stamped once; the objects of
    an array without `ts` take the stamps after it, one microsecond each
    (fieldhub.core.decode.decode_telemetry_stamped), and `advance_past` then moves the clock
    beyond the last of them. Only one thread calls stamp() and advance_past(): the bridge's
    network thread; in a web worker, gevent's greenlets, which never switch inside them."""

    def __init__(self, now_ns: Callable[[], int] = time.time_ns) -> None:
        self._now_ns = now_ns
        self._last_us = 0

    def stamp(self) -> float:
        now_us = self._now_ns() // 1000
        if now_us <= self._last_us:
            now_us = self._last_us + 1
        self._last_us = now_us
        return now_us / 1_000_000

    def advance_past(self, stamp: float) -> None:
        """The next stamp() is later than `stamp` (a stamp this clock gave out, plus whole
        microseconds)."""
        used_us = round(stamp * 1_000_000)
        if used_us > self._last_us:
            self._last_us = used_us
