"""Adaptive concurrency (AIMD) and an optional hard request-rate cap for Hub calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["AdaptiveLimiter", "RateLimiter", "aimd"]


def aimd(
    limit: float, throttled: bool, low: int, high: int, slow_start: bool = False
) -> float:
    """Next concurrency limit: halve on throttling; on success add one per limit's worth of
    successes, or one per success during slow start (the limit doubles each round trip)."""
    if throttled:
        return float(max(low, limit / 2))
    step = 1.0 if slow_start else 1.0 / max(limit, 1.0)
    return float(min(high, limit + step))


class AdaptiveLimiter:
    """A semaphore whose size follows AIMD: shrinks when the Hub throttles, grows on success.

    Like TCP: slow start until the first throttle, then additive increase; and one decrease per
    congestion event (throttles of calls that began before the last decrease don't halve again,
    so a burst of throttled replies does not collapse the limit to the floor).
    """

    def __init__(self, initial: int, high: int, low: int = 1) -> None:
        self._limit = float(initial)
        self._low, self._high = low, high
        self._in_flight = 0
        self._epoch = 0  # bumped by every decrease
        self._slow_start = True
        self._cond = threading.Condition()

    def resize(self, high: int) -> None:
        """A new ceiling (config reload); the adapted limit is kept within it."""
        with self._cond:
            self._high = high
            self._limit = min(self._limit, float(high))
            self._cond.notify_all()

    @property
    def limit(self) -> int:
        """The current whole number of calls allowed at once."""
        return max(self._low, int(self._limit))

    def acquire(self) -> int:
        """Wait for a free slot; the ticket returned goes back to `release`."""
        with self._cond:
            while self._in_flight >= self.limit:
                self._cond.wait()
            self._in_flight += 1
            return self._epoch

    def release(self, throttled: bool, ticket: int) -> None:
        """Free a slot and adapt the limit to the outcome of the call that took `ticket`."""
        with self._cond:
            self._in_flight -= 1
            if not throttled or ticket == self._epoch:
                self._limit = aimd(self._limit, throttled, self._low, self._high, self._slow_start)
                if throttled:
                    self._epoch += 1
                    self._slow_start = False
            self._cond.notify_all()


class RateLimiter:
    """A token bucket of `rate` calls per second (burst of one second); rate 0 means no cap."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._rate = rate
        self._clock, self._sleep = clock, sleep
        self._tokens = max(rate, 1.0)
        self._stamp = clock()
        self._lock = threading.Lock()

    def wait_time(self) -> float:
        """Take a token; return how long the caller must wait before using it."""
        if self._rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(
                max(self._rate, 1.0), self._tokens + (now - self._stamp) * self._rate
            )
            self._stamp = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def acquire(self) -> None:
        """Block until one call may be made."""
        wait = self.wait_time()
        if wait > 0:
            self._sleep(wait)
