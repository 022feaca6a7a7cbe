"""The front end's in-memory rate-limit storage counts as the library's does, starts one thread for its sweep
rather than one per counter update after each sweep, and still gives back the memory of expired keys."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from services.api.rate_limit import FrontEndLimits, RateLimited, SweptMemoryStorage
from tests.support.polling import wait_until


def _threads_started_by(monkeypatch: pytest.MonkeyPatch, work: Callable[[], None]) -> list[str]:
    started: list[str] = []
    real_start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    work()
    monkeypatch.setattr(threading.Thread, "start", real_start)
    return started


@pytest.mark.parametrize(("storage_class", "expected"), [(MemoryStorage, 4), (SweptMemoryStorage, 1)])
def test_counter_updates_after_a_sweep_start_no_thread_of_their_own(
    monkeypatch: pytest.MonkeyPatch, storage_class: type[MemoryStorage], expected: int
) -> None:
    storage = storage_class()
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = parse("100/second")

    def four_spaced_hits() -> None:
        for _ in range(4):
            # The library's sweep runs 10 ms after a hit on a thread that then ends: each hit finds it ended.
            wait_until(lambda: not storage.timer.is_alive(), timeout=5, interval=0.005, message="the sweep done")
            assert limiter.hit(item, "k", "who")

    started = _threads_started_by(monkeypatch, four_spaced_hits)
    assert len(started) == expected, started


def test_the_limits_count_as_before() -> None:
    limits = FrontEndLimits((parse("3/minute"),), (parse("2/minute"),))
    for _ in range(3):
        limits.read("alice")
    with pytest.raises(RateLimited) as refused:
        limits.read("alice")
    assert refused.value.retry_after_seconds >= 1
    limits.read("bob")  # a subject of its own
    limits.write("ACC-1")
    limits.write("ACC-1")
    with pytest.raises(RateLimited):
        limits.write("ACC-1")


def test_expired_keys_are_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SweptMemoryStorage, "SWEEP_SECONDS", 0.01)
    storage = SweptMemoryStorage()
    storage.incr("short-lived", expiry=0.05)
    assert "short-lived" in storage.storage
    wait_until(lambda: "short-lived" not in storage.storage, timeout=5, interval=0.01, message="the key swept")
    assert storage.get("short-lived") == 0
