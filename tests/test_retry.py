"""Backoff timing, give-up rules and the adaptive limiter (pure logic)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from reporter.delivery.retry import Backoff, give_up_reason
from reporter.hub.limiter import AdaptiveLimiter, RateLimiter, aimd


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 12, 40])
def test_full_jitter_bounds_and_cap(attempt: int):
    """Delays fall in [0, min(cap, base*2^(n-1))] and use the whole range."""
    backoff = Backoff(base=1.0, cap=60.0)
    rng = random.Random(attempt)
    delays = [backoff.delay(attempt, rng) for _ in range(2000)]
    ceiling = min(60.0, 2.0 ** (attempt - 1))
    assert backoff.ceiling(attempt) == ceiling
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > 0.9 * ceiling and min(delays) < 0.1 * ceiling


def test_retry_after_is_a_floor():
    """Never sooner than the server's RetryAfterSeconds, even if jitter says sooner."""
    backoff = Backoff(base=0.1, cap=1.0)
    rng = random.Random(1)
    assert all(backoff.delay(3, rng, retry_after=7) == 7 for _ in range(200))


def test_seeded_jitter_is_reproducible():
    """The same seed gives the same schedule."""
    a = [Backoff().delay(n, random.Random(5)) for n in range(1, 10)]
    b = [Backoff().delay(n, random.Random(5)) for n in range(1, 10)]
    assert a == b


def test_give_up_rules():
    """Rows are given up only by rule; 0 means retry forever."""
    assert give_up_reason(1000, 1e9, 0, 0, "x") is None
    assert "max_attempts" in (give_up_reason(5, 1, 5, 0, "Throttling") or "")
    assert "max_age_seconds" in (give_up_reason(1, 3600, 0, 600, "x") or "")
    assert give_up_reason(4, 10, 5, 600, "x") is None


def test_aimd_shrinks_on_throttling_and_recovers():
    """Halve on throttling (not below the floor); grow by about one per window of successes."""
    assert aimd(16, True, 1, 32) == 8
    assert aimd(1, True, 1, 32) == 1
    limit = 4.0
    for _ in range(4 + 5 + 6):
        limit = aimd(limit, False, 1, 32)
    assert 6.5 <= limit <= 8
    assert aimd(32, False, 1, 32) == 32
    assert aimd(8, False, 1, 32, slow_start=True) == 9
    assert aimd(32, False, 1, 32, slow_start=True) == 32


def test_adaptive_limiter_slow_starts_then_grows_additively():
    """Before any throttle the limit grows by one per success (doubling per round trip)."""
    limiter = AdaptiveLimiter(initial=4, high=64)
    for _ in range(8):
        limiter.release(False, limiter.acquire())
    assert limiter.limit == 12
    limiter.release(True, limiter.acquire())
    assert limiter.limit == 6
    for _ in range(6):
        limiter.release(False, limiter.acquire())
    assert limiter.limit == 6  # additive now: about one per window of successes, not one each
    limiter.release(False, limiter.acquire())
    assert limiter.limit == 7


def test_adaptive_limiter_halves_once_per_congestion_event():
    """A burst of throttles from calls in flight together halves the limit once, not per call."""
    limiter = AdaptiveLimiter(initial=16, high=32)
    tickets = [limiter.acquire() for _ in range(16)]
    for t in tickets:
        limiter.release(True, t)
    assert limiter.limit == 8
    limiter.release(True, limiter.acquire())  # a call begun after the decrease counts again
    assert limiter.limit == 4


def test_adaptive_limiter_bounds_concurrency():
    """No more calls than the limit run at once, and throttling lowers the limit."""
    limiter = AdaptiveLimiter(initial=3, high=8)
    running, peak = 0, 0
    lock = threading.Lock()

    def call() -> None:
        nonlocal running, peak
        ticket = limiter.acquire()
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        limiter.release(True, ticket)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak <= 3
    assert limiter.limit == 1


def test_rate_limiter_paces_calls():
    """A hard cap of N/s makes the N+1th call within a second wait."""
    now = [0.0]
    limiter = RateLimiter(2.0, clock=lambda: now[0], sleep=lambda s: None)
    waits = [limiter.wait_time() for _ in range(4)]
    assert waits[:2] == [0.0, 0.0] and waits[2] == pytest.approx(0.5) and waits[3] == pytest.approx(1.0)
    assert RateLimiter(0).wait_time() == 0.0
