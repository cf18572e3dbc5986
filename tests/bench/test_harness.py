"""bench.harness.settled: how benchmarks wait for a backlog to be stored."""

from __future__ import annotations

import time
from collections.abc import Callable

from fieldhub.bench.harness import settled


def counter(values: list[int]) -> tuple[Callable[[], int], list[int]]:
    """A count that reads `values` in turn (the last one for ever); the reads it gave."""
    reads: list[int] = []

    def count() -> int:
        reads.append(values[min(len(reads), len(values) - 1)])
        return reads[-1]

    return count, reads


def test_it_returns_once_the_count_reaches_enough() -> None:
    count, reads = counter([1, 5, 9, 12])
    settled(count, still_s=60, enough=9, poll_s=0.001)
    assert reads == [1, 5, 9]


def test_it_returns_once_the_count_has_stood_still_for_still_s() -> None:
    count, reads = counter([1, 2, 3])
    started = time.monotonic()
    settled(count, still_s=0.05, poll_s=0.005)
    assert time.monotonic() - started >= 0.05
    assert reads[:3] == [1, 2, 3]
    assert set(reads[3:]) == {3}


def test_a_count_that_keeps_moving_ends_at_the_timeout() -> None:
    reads: list[int] = []

    def moving() -> int:
        reads.append(len(reads))
        return reads[-1]

    started = time.monotonic()
    settled(moving, still_s=60, timeout=0.05, poll_s=0.005)
    assert 0.05 <= time.monotonic() - started < 5
    assert len(reads) > 2
