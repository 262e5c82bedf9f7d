"""Retry timing: capped exponential backoff, full jitter, Retry-After floor, give-up (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "give_up_reason"]


@dataclass(frozen=True)
class Backoff:
    """`delay(n)` for the n-th consecutive failure: uniform(0, min(cap, base * 2**(n-1)))."""

    base: float = 1.0
    cap: float = 300.0
    factor: float = 2.0

    def ceiling(self, attempt: int, cap: float | None = None) -> float:
        """The upper bound of the jittered delay after `attempt` failures (attempt >= 1), under
        `cap` when given (never above the policy's own cap)."""
        exponent = min(max(attempt, 1) - 1, 64)
        limit = self.cap if cap is None else min(cap, self.cap)
        return float(min(limit, self.base * self.factor**exponent))

    def delay(
        self,
        attempt: int,
        rng: random.Random,
        retry_after: float | None = None,
        cap: float | None = None,
    ) -> float:
        """Seconds to wait before the next try; never below the server's RetryAfterSeconds."""
        jittered = rng.uniform(0.0, self.ceiling(attempt, cap))
        return max(jittered, retry_after or 0.0)


def give_up_reason(
    attempts: int, age_seconds: float, max_attempts: int, max_age_seconds: float, last_error: str
) -> str | None:
    """Why a row that keeps failing transiently is given up, or None to keep trying (0 = never)."""
    if max_attempts and attempts >= max_attempts:
        return (
            f"gave up after {attempts} attempts ([publish] max_attempts); last error: {last_error}"
        )
    if max_age_seconds and age_seconds >= max_age_seconds:
        return (
            f"gave up after {age_seconds:.0f}s pending ([publish] max_age_seconds); "
            f"last error: {last_error}"
        )
    return None
