"""Wall-clock steps back (NTP after a VM resume, an operator's `date -s`): noticed as a drop of
wall time minus the boot-time clock between two looks (pure; the relay re-bases its stored
times). A step forward needs nothing: waits measured on the wall clock just end early, as they
would after a suspend, which the boot-time clock counts and so never mistakes for a step."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["STEP_SECONDS", "StepWatch"]

# A drop of (wall - boot time) this large between two looks is a step, not drift or slewing.
STEP_SECONDS = 2.0


def _boottime() -> float:
    """Seconds since boot, counting suspend (monotonic elsewhere)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


class StepWatch:
    """`step()` returns how far the wall clock stepped back since the last look (negative
    seconds; 0.0: none)."""

    def __init__(
        self,
        wall: Callable[[], float],
        mono: Callable[[], float] = _boottime,
        threshold: float = STEP_SECONDS,
    ) -> None:
        self._wall, self._mono, self._threshold = wall, mono, threshold
        self._base = wall() - mono()

    def step(self) -> float:
        """The step back since the last look (negative), or 0.0 for none, for a step forward or
        below the threshold. Every look re-bases, so slow slewing never adds up to a step."""
        now = self._wall() - self._mono()
        delta, self._base = now - self._base, now
        return delta if delta <= -self._threshold else 0.0
