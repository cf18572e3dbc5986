"""When the broker auth sync must (re)send SIGHUP: pure rules, no I/O.

The broker runs with the current auth files once it has either received SIGHUP after they were
written or started after they were written (Mosquitto reads its files at start, after it writes
its pid file: src/mosquitto.c). Until one of the two is true the files are *pending*, and the
sync retries the reload with a short backoff instead of waiting for the next registry change,
which may never come."""

from __future__ import annotations

import dataclasses

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 5.0
# Process start times come from /proc with a 10 ms tick and file times from the file system;
# a broker that started within this margin after the write may have read the older files.
START_MARGIN_S = 0.1


def started_after(started_at: float, written_at: float, margin_s: float = START_MARGIN_S) -> bool:
    """True if a broker started at `started_at` read files written at `written_at` (both wall
    clock seconds): it read them after its start, so starting after the write is enough."""
    return started_at > written_at + margin_s


@dataclasses.dataclass
class PendingReload:
    """The files the broker has not been shown yet, and when to try again.

    `written_at` is the wall-clock time the newest files were written (None: the broker runs
    with them); `next_try` is on the monotonic clock."""

    written_at: float | None = None
    next_try: float = 0.0
    delay_s: float = FIRST_RETRY_S
    failures: int = 0

    @property
    def pending(self) -> bool:
        return self.written_at is not None

    def files_written(self, written_at: float, now: float) -> None:
        """New files are on disk: try to reload at once."""
        self.written_at = written_at
        self.next_try = now
        self.delay_s = FIRST_RETRY_S
        self.failures = 0

    def applied(self) -> None:
        self.written_at = None
        self.failures = 0
        self.delay_s = FIRST_RETRY_S

    def failed(self, now: float) -> float:
        """The reload could not be done now; returns the seconds until the next try."""
        self.failures += 1
        wait = self.delay_s
        self.next_try = now + wait
        self.delay_s = min(self.delay_s * 2, MAX_RETRY_S)
        return wait

    def due(self, now: float) -> bool:
        return self.pending and now >= self.next_try

    def wait_s(self, now: float, sweep_s: float) -> float:
        """How long the sync may sleep before it has something to do."""
        if not self.pending:
            return sweep_s
        return max(0.0, min(sweep_s, self.next_try - now))
