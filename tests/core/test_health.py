"""The readiness probe's rules: cached answers, one check in flight, bounded waits."""

from __future__ import annotations

import threading
import time

from fieldhub.core.health import NotReady, ReadinessProbe
from fieldhub.core.health_checks import missing_migrations
from fieldhub.core.migrate import discover


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_answers_are_cached_for_the_ttl_then_checked_again() -> None:
    calls: list[str] = []
    clock = Clock()
    probe = ReadinessProbe({"db": lambda: calls.append("db")}, ttl_s=1.5, clock=clock)
    assert probe.current().ready
    clock.now += 1.0
    assert probe.current().ready
    assert calls == ["db"]
    clock.now += 1.0
    assert probe.current().checks == {"db": "ok"}
    assert calls == ["db", "db"]


def test_a_failing_check_names_itself_and_what_is_wrong() -> None:
    def migrations() -> None:
        raise NotReady("migrations not applied yet: 0007_x")

    state = ReadinessProbe({"db": lambda: None, "migrations": migrations}).current()
    assert not state.ready
    assert state.checks == {"db": "ok", "migrations": "migrations not applied yet: 0007_x"}
    assert state.as_json() == {"ready": False, "checks": state.checks}


def test_a_hanging_check_is_not_waited_for_and_not_started_twice() -> None:
    release = threading.Event()
    started: list[float] = []

    def hangs() -> None:
        started.append(time.monotonic())
        release.wait(30)

    probe = ReadinessProbe({"db": hangs}, ttl_s=0.0, timeout_s=0.3)
    try:
        began = time.monotonic()
        answers = [probe.current() for _ in range(3)]
        # Each caller waits at most what is left of the timeout of the one check in flight.
        assert time.monotonic() - began < 1.5
        assert [a.ready for a in answers] == [False, False, False]
        assert "no answer for" in answers[0].checks["checks"]
        assert len(started) == 1
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while not probe.current().ready and time.monotonic() < deadline:
        time.sleep(0.05)
    assert probe.current().ready


def test_missing_migrations_ignores_newer_ones() -> None:
    shipped = [m.version for m in discover()]
    assert missing_migrations([*shipped, 9999]) == []
    last = discover()[-1]
    assert missing_migrations(shipped[:-1]) == [f"{last.version:04d}_{last.name}"]
