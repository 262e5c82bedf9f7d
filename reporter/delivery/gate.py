"""Whether delivery may proceed: blocked and its recheck, the home-Region lookup and its backoff,
and the outage brake, all kept in one persisted `GateState` (no SQL, no boto3)."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from reporter.config import PublishConfig
from reporter.delivery.conditions import Conditions
from reporter.delivery.retry import Backoff
from reporter.hub.errors import NO_HOME_REGION_CODES, Failure, HubError, Outcome
from reporter.stores.contract import GateState

__all__ = [
    "OUTAGE_MIN_CALLS",
    "OUTAGE_RATIO",
    "OUTAGE_WINDOW_CALLS",
    "OUTAGE_WINDOW_SECONDS",
    "Admission",
    "Blocked",
    "CallResult",
    "Gate",
    "Hold",
    "Open",
    "RegionSource",
]

# The outage brake judges the last calls across tasks, never one pass or one task: it engages
# when at least OUTAGE_RATIO of the last OUTAGE_WINDOW_CALLS calls (within
# OUTAGE_WINDOW_SECONDS, and at least OUTAGE_MIN_CALLS of them) failed transiently. At 60% random
# failures the chance of 29 failures in 30 calls is about 5e-6; a real outage fails every call.
OUTAGE_WINDOW_CALLS = 50
OUTAGE_WINDOW_SECONDS = 60.0
OUTAGE_MIN_CALLS = 30
OUTAGE_RATIO = 0.95

CallResult = Failure | None  # one Hub call: None when it succeeded


@dataclass(frozen=True)
class Open:
    """Delivery may proceed; while the brake is on, as a single probe."""

    probe: bool = False


@dataclass(frozen=True)
class Hold:
    """Nothing may be sent before `until` (region lookup backing off, outage brake)."""

    until: float


@dataclass(frozen=True)
class Blocked:
    """Only a person can fix this; delivery holds until a recheck succeeds."""

    failure: Failure


Admission = Open | Hold | Blocked


class RegionSource(Protocol):
    """Where writes go: the resolved home Region (the `Hub` adapter)."""

    @property
    def region(self) -> str | None:
        """The resolved home Region, or None before the first successful lookup."""

    def resolve_region(self) -> str:
        """Look the home Region up; raise HubError when it cannot be used."""


class Gate:
    """Admits or holds delivery, and learns from every call's outcome."""

    def __init__(
        self,
        state: GateState,
        region: RegionSource,
        publish: PublishConfig,
        save: Callable[[GateState], None] = lambda state: None,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
        conditions: Conditions | None = None,
    ) -> None:
        # A fresh start (a new process, a reload) re-checks a saved block at once: the cause may
        # have been fixed while nobody was asking (a row waits no longer than the first pass).
        self._state = replace(state, recheck_at=0.0) if state.blocked_reason else state
        self._region = region
        self._save = save
        self._rng = rng or random.Random()
        self._clock = clock or (lambda: time.time())
        self._recheck_seconds = publish.blocked_recheck_seconds
        self._lookup_backoff = Backoff(publish.backoff_base_seconds, publish.backoff_max_seconds)
        self._brake_backoff = Backoff(
            publish.backoff_base_seconds, publish.outage_backoff_max_seconds
        )
        self._window: deque[tuple[float, bool]] = deque(maxlen=OUTAGE_WINDOW_CALLS)
        self._last_failure: str | None = None
        self._conditions = conditions
        self._log = structlog.get_logger("reporter.gate")

    # -- read-only view -----------------------------------------------------------------------
    @property
    def state(self) -> GateState:
        """The persisted record as it is now."""
        return self._state

    @property
    def blocked(self) -> Failure | None:
        """Why delivery is blocked, or None."""
        s = self._state
        if s.blocked_reason is None:
            return None
        return Failure(Outcome.BLOCKED, s.blocked_code or "Blocked", s.blocked_reason)

    @property
    def braking(self) -> bool:
        """True while the outage brake sends only single probes."""
        return self._state.brake_attempts > 0

    @property
    def last_failure(self) -> str | None:
        """The latest transient failure (operation, code, message) while it is the latest word
        from the Hub; None once a call succeeds."""
        return self._last_failure

    @property
    def hold_until(self) -> float:
        """Nothing can be sent before this time (0: no hold)."""
        s = self._state
        holds = [s.brake_until if self.braking else 0.0]
        if self._region.region is None and s.blocked_reason is None:
            holds.append(s.region_retry_at)
        return max(holds)

    @property
    def recheck_time(self) -> float:
        """While blocked: when the next look at the cause may be made (its recheck, and the
        backoff of a home-Region lookup that failed on the way)."""
        return max(self._state.recheck_at, self._state.region_retry_at)

    def rebase(self, delta: float) -> None:
        """The wall clock stepped by `delta`: the block's recheck, the lookup's retry and the
        outage brake stay as far away as they were; so does the window of recent calls."""
        s = self._state
        shifted = {
            name: getattr(s, name) + delta
            for name in ("recheck_at", "region_retry_at", "brake_until")
            if getattr(s, name)
        }
        if shifted:
            self._update(**shifted)
        self._window = deque(((t + delta, f) for t, f in self._window), maxlen=self._window.maxlen)

    # -- decisions ----------------------------------------------------------------------------
    def admit(self, now: float) -> Admission:
        """May delivery proceed now? Looks the home Region up when it is unknown or a blocked
        state is due for its recheck (each lookup on its own backoff)."""
        s = self._state
        blocked = self.blocked
        if blocked is not None and now < s.recheck_at:
            return Blocked(blocked)
        if blocked is not None or self._region.region is None:
            if now < s.region_retry_at:  # a lookup failed: the next one waits its backoff
                return Blocked(blocked) if blocked is not None else Hold(s.region_retry_at)
            lookup = self._look_up_region(now)
            if lookup is not None:
                return lookup
        if self.braking and now < s.brake_until:
            return Hold(s.brake_until)
        return Open(probe=self.braking)

    def _look_up_region(self, now: float) -> Admission | None:
        try:
            region = self._region.resolve_region()
        except HubError as err:
            if err.failure.outcome is Outcome.BLOCKED:
                self.block(err.failure, now)
                return Blocked(err.failure)
            self._last_failure = f"GetHomeRegion: {err.failure}"[:300]
            attempts = self._state.region_attempts + 1
            delay = self._lookup_backoff.delay(attempts, self._rng, err.failure.retry_after)
            self._update(region_attempts=attempts, region_retry_at=now + delay)
            if self._conditions is not None:  # one condition, as for every other call
                self._conditions.failed(err.failure, "GetHomeRegion", delay, attempt=attempts)
            else:
                self._log.warning(
                    "home_region_unavailable",
                    operation="GetHomeRegion",
                    attempt=attempts,
                    error_code=err.failure.code,
                    error=err.failure.message,
                    delay=round(delay, 3),
                )
            return Hold(now + delay)
        self._last_failure = None
        if self._conditions is not None:
            self._conditions.succeeded()
        previous = self.blocked
        if previous is not None:
            self._log.info("delivery_resumed", previous_error_code=previous.code)
        self._log.info("home_region", region=region)
        self._update(
            blocked_code=None,
            blocked_reason=None,
            blocked_since=None,
            recheck_at=0.0,
            home_region=region,
            region_attempts=0,
            region_retry_at=0.0,
        )
        return None

    def block(self, failure: Failure, now: float) -> None:
        """Hold all delivery for a cause only a person can fix; re-check on a slow schedule.
        The block is dated from when this cause began (another cause before it starts a new
        date); a Region that is not the home Region any more is forgotten."""
        s = self._state
        if s.blocked_reason != failure.message:
            self._log.error(
                "delivery_blocked",
                error_code=failure.code,
                reason=failure.message,
                recheck_in=self._recheck_seconds,
            )
        same_cause = s.blocked_since is not None and s.blocked_code == failure.code
        changes: dict[str, object] = {}
        if failure.code in NO_HOME_REGION_CODES:
            changes["home_region"] = None
        self._update(
            blocked_code=failure.code,
            blocked_reason=failure.message,
            blocked_since=s.blocked_since if same_cause else now,
            recheck_at=now + self._recheck_seconds,
            **changes,
        )

    def recheck_now(self) -> None:
        """Re-check a blocked state on the next admission (a person may have fixed it)."""
        if self._state.recheck_at:
            self._update(recheck_at=0.0)

    def learn(self, calls: Sequence[CallResult], now: float) -> None:
        """Take in the outcome of every call a pass made; engage or release the outage brake."""
        blocked = next((f for f in calls if f is not None and f.outcome is Outcome.BLOCKED), None)
        if blocked is not None:
            self.block(blocked, now)
            return
        if not calls:
            return
        changes: dict[str, float | int | None] = {}
        if calls[-1] is None:
            self._last_failure = None
        elif calls[-1].outcome is Outcome.TRANSIENT:
            self._last_failure = str(calls[-1])[:300]
        if any(f is None for f in calls):
            changes["last_success_at"] = now
        failed = [f is not None and f.outcome is Outcome.TRANSIENT for f in calls]
        self._window.extend((now, f) for f in failed)
        if self.braking:
            if not all(failed):  # the Hub answered: the outage is over
                self._log.info("outage_over", attempts=self._state.brake_attempts)
                self._window.clear()
                changes.update(brake_attempts=0, brake_until=0.0)
            else:
                changes.update(self._brake(self._state.brake_attempts + 1, now, calls))
        elif self._outage(now):
            changes.update(self._brake(1, now, calls))
        self._update(**changes)

    def failure_ratio(self, now: float) -> float:
        """The share of recent calls (the outage window) that failed transiently; 0 without
        evidence (fewer than OUTAGE_MIN_CALLS recent calls)."""
        while self._window and self._window[0][0] < now - OUTAGE_WINDOW_SECONDS:
            self._window.popleft()
        total = len(self._window)
        if total < OUTAGE_MIN_CALLS:
            return 0.0
        return sum(1 for _, failed in self._window if failed) / total

    def _outage(self, now: float) -> bool:
        return self.failure_ratio(now) >= OUTAGE_RATIO

    def _brake(
        self, attempts: int, now: float, calls: Sequence[CallResult]
    ) -> dict[str, float | int | None]:
        delay = self._brake_backoff.delay(attempts, self._rng)
        last = next((f for f in reversed(calls) if f is not None), None)
        self._log.warning(
            "outage_brake",
            attempt=attempts,
            delay=round(delay, 3),
            error_code=last.code if last else None,
            error=str(last) if last else None,
        )
        return {"brake_attempts": attempts, "brake_until": now + delay}

    def _update(self, **changes: object) -> None:
        new = replace(self._state, **changes)  # type: ignore[arg-type]
        if new != self._state:
            self._state = new
            self._save(new)
