"""The send rate that adapts to the account's Hub rate limit: cut when this host's own rate
draws throttles, pause the host on RetryAfterSeconds, probe back up gently (pure logic over an
injected clock, and the thread-safe pacer the Hub adapter waits on)."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

WALL_LIMITED = True
RESTORE_X = 2.0
DOUBLING = True
BUSY = True
EARLY = True
STREAK = False
STREAK_SETTLE = 5.0
EARLY_HITS = 2
WALL_FREE = True
__all__ = ["Mode", "Pacer", "PacingPolicy", "RateController", "lower_bound"]


class Mode(StrEnum):
    """Where the controller stands."""

    FREE = "free"  # no throttle limits this host: only the configured ceiling applies
    LIMITED = "limited"  # throttling followed our rate: sending at the adapted rate


@dataclass(frozen=True)
class PacingPolicy:
    """The controller's constants (the defaults are what the fleet benchmark was tuned with)."""

    beta: float = 0.7  # a cut keeps this share of the rate the Hub accepted (AWS SDKs: 0.7)
    floor: float = 0.2  # calls/s: never slower than one call every 5 s
    recent: int = 30  # the throttled share is judged over the last this many answers ...
    least: int = 3  # ... and never on fewer (a throttle then only pauses)
    measure: float = 4.0  # ... or those of the last this many seconds, if fewer
    shortest: float = 0.25  # a rate is never measured over less than this many seconds ...
    first_settle: float = 2.0
    settle: float = 2.0  # ... nor, when overloading the Hub, over less than this
    overload: float = 0.5  # a share surely above this: we overload the Hub (measured with
    #                        pauses, and a cut is kept whatever the test says)
    regrow: float = 0.1  # per quiet window below the rate last cut: back to it quickly ...
    probe: float = 0.03  # ... and above it, probing gently for more ...
    quicken: float = 10.0  # ... (1 + (seconds since the cut / this)^2) times faster
    step: float = 0.05  # calls/s: the least a quiet window adds
    discover: float = 0.2  # calls/s a quiet window adds before any call was accepted
    window: float = 1.0  # seconds per growth step
    test_answers: int = 12  # answers after a cut that tell whether it lowered the share ...
    test_seconds: float = 60.0  # ... if they come within this (else the cut stands)
    helped: float = 0.7  # it did when the share fell below this fraction of the one before
    margin: float = 0.1  # a share that cutting did not lower is tolerated from then on,
    #                      with this margin (throttles that come whatever we send)
    noticeable: float = 0.25
    forget: float = 300.0  # seconds over which a tolerated share is forgotten
    cold_until: int = 8  # the cold start ends at this many calls in flight
    pause_jitter: float = 0.5  # a RetryAfterSeconds pause lasts retry_after x U(1, 1 + this)
    default_retry_after: float = 1.0  # a throttle that names no RetryAfterSeconds


def lower_bound(hits: int, n: int, z: float = 1.64) -> float:
    """Wilson's lower confidence bound (95%, one-sided) of a share seen as hits of n."""
    if n == 0:
        return 0.0
    share = hits / n
    centre = share + z * z / (2 * n)
    spread = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


class RateController:
    """Decides, from the outcome of every call, how fast this host may send.

    A cold start ramps per round trip (one more call in flight per answer, as TCP's slow
    start). When the share of recent calls the Hub throttled is surely above what this host
    has learnt to tolerate, the whole host pauses for the Hub's RetryAfterSeconds, jittered
    (so a wave of hosts does not come back together), and cuts its rate to `beta` of what the
    Hub accepted from it; throttles of calls sent before the pause ended change nothing more.
    Below the rate it cut, the rate grows back quickly; above it, gently at first and faster
    the longer the Hub accepts (the shape of TCP's CUBIC).

    Each cut is also a test: if the share of the next `test_answers` answers is not clearly
    lower, the throttles come whatever we send (random throttling): the cut is undone and that
    share is tolerated from then on (forgotten over `forget` seconds), so it costs a single
    host one pause. A host of a busy fleet sends too few calls at its share of the account's
    rate to finish a test quickly, and its share falls when it cuts, so its cuts stand.
    `ceiling` (calls/s, 0: none) caps the adapted rate.
    """

    def __init__(self, ceiling: float = 0.0, policy: PacingPolicy | None = None,
                 rng: random.Random | None = None) -> None:
        self.policy = policy or PacingPolicy()
        self.ceiling = ceiling
        self.rate: float | None = None  # the adapted rate (None: no limit of ours)
        self.pause_until = 0.0
        self.cuts = 0
        self.tolerated = 0.0  # a throttled share learnt to come whatever we send
        self._tolerated_at = 0.0
        self._rng = rng or random.Random()
        self._tokens = 1.0
        self._stamp: float | None = None
        self._in_flight = 0
        self._cold: int | None = 1  # calls in flight allowed during a cold start
        self._outcomes: deque[tuple[float, bool]] = deque()  # (sent at, throttled)
        self._pauses: deque[tuple[float, float]] = deque()  # (from, until)
        self._epoch = float("-inf")  # calls sent before this were sent before the last pause
        self._cut_at = 0.0  # when the last cut's pause ended
        self._peak = 0.0  # the rate the last cut was made from
        self._test: tuple[float, float, float | None, bool] | None = None
        #             (calls from, share before, rate before, kept whatever the result)
        self._grown_at = 0.0
        self._doubling = False
        self._streak_from: float | None = None
        self._streak: deque[bool] = deque(maxlen=60)
        self._idle: deque[tuple[float, float]] = deque()  # (from, until): nothing to send
        self._idle_from: float | None = None

    @property
    def mode(self) -> Mode:
        return Mode.FREE if self.rate is None else Mode.LIMITED

    # -- sending -------------------------------------------------------------------------------
    def limit(self) -> float:
        """Calls/s allowed now (0: no limit)."""
        caps = [c for c in (self.rate, self.ceiling or None) if c]
        return min(caps) if caps else 0.0

    def ready_in(self, now: float) -> float:
        """Seconds until one call may go (0: now; inf: once an answer comes back). Asking
        means this host has a call to make: the time since its last answer with none in
        flight was idle (not the account's doing), and no rate is measured over it."""
        if self._idle_from is not None:
            if BUSY and now > self._idle_from:
                self._idle.append((self._idle_from, now))
            self._idle_from = None
        if now < self.pause_until:
            return self.pause_until - now
        if self._cold is not None and self._in_flight >= self._cold:
            return float("inf")
        limit = self.limit()
        if not limit:
            return 0.0
        tokens = self._refill(now, limit)
        return 0.0 if tokens >= 1.0 - 1e-9 else (1.0 - tokens) / limit

    def take(self, now: float) -> None:
        """One call goes now (after `ready_in` said 0)."""
        self._in_flight += 1
        limit = self.limit()
        if limit:
            self._tokens = self._refill(now, limit) - 1.0
            self._stamp = now

    def cancel(self) -> None:
        """A call `take` let go was not made after all."""
        self._in_flight = max(0, self._in_flight - 1)

    def _refill(self, now: float, limit: float) -> float:
        burst = max(1.0, limit * self.policy.window / 4)  # a quarter window of calls at most
        if self._stamp is None:
            return min(burst, self._tokens)
        return min(burst, self._tokens + max(0.0, now - self._stamp) * limit)

    # -- learning --------------------------------------------------------------------------------
    def record(self, now: float, sent_at: float, throttled: bool,
               retry_after: float | None = None) -> None:
        """The outcome of one call sent at `sent_at`: throttled by the Hub, or not.
        `retry_after` is the Hub's RetryAfterSeconds (None: it named none)."""
        p = self.policy
        import os
        if os.environ.get("PACING_DEBUG"):
            with open("/tmp/pacing.log", "a") as f:
                f.write(f"{now:.2f} sent={sent_at:.2f} thr={throttled} rate={self.rate} cold={self._cold} fl={self._in_flight} tol={self.tolerated:.2f} test={self._test} pause={self.pause_until:.2f} epoch={self._epoch:.2f}\n")
        self._in_flight = max(0, self._in_flight - 1)
        if not self._in_flight:
            self._idle_from = now
        if self._cold is not None and not throttled:
            self._cold = None if self._cold >= p.cold_until else self._cold + 1
        self._outcomes.append((sent_at, throttled))
        horizon = now - p.forget
        while len(self._outcomes) > 4 * p.test_answers and self._outcomes[0][0] < now - p.measure:
            self._outcomes.popleft()
        while self._pauses and self._pauses[0][1] < horizon:
            self._pauses.popleft()
        if self.tolerated and now - self._tolerated_at > p.forget:
            self.tolerated, self._tolerated_at = self.tolerated / 2, now
        if STREAK:
            if self._streak_from is not None and sent_at >= self._streak_from:
                self._streak.append(throttled)
                k = len(self._streak)
                share = sum(self._streak) / k if k else 0.0
                if k >= p.test_answers and p.noticeable <= share < p.overload and share + p.margin > self.tolerated:
                    self.tolerated = min(p.overload, share + p.margin)
                    self._tolerated_at = now
                    self._streak_from = None
                    self._streak.clear()
                    if self.rate is not None:
                        self.rate *= RESTORE_X
                        self._doubling = DOUBLING
                        self._cut_at = now
                    self.pause_until = min(self.pause_until, now)
        elif self._test is not None:
            self._judge(now)
        if throttled and sent_at >= self._epoch:
            n, hits = self._recent(now)
            fresh = [t for s, t in list(self._outcomes)[-p.recent:] if s >= self._cut_at]
            overloading = len(fresh) >= p.least and lower_bound(sum(fresh), len(fresh)) > max(
                p.overload, self.tolerated)
            if overloading:
                self._cut(now, retry_after, n, hits, overloading=True, wall=True)
            elif hits == n:  # nothing accepted yet: wait, then start
                self._pause(now, retry_after)  # over slowly (one call per round trip)
                self._cold = 1
            elif (STREAK or self._test is None) and lower_bound(hits, n) > self.tolerated:
                self._cut(now, retry_after, n, hits, overloading=False,
                          wall=WALL_FREE or self.rate is not None)
        elif not throttled and self.rate is not None:
            self._grow(now)

    def _recent(self, now: float) -> tuple[int, int]:
        """(answers, throttled) of the last `recent` answers, or of the last `measure`
        seconds when those are more."""
        p = self.policy
        timely = [t for s, t in self._outcomes if s >= now - p.measure]
        last = list(self._outcomes)[-p.recent:]
        chosen = timely if len(timely) > len(last) else [t for _, t in last]
        return len(chosen), sum(chosen)

    def _cut(self, now: float, retry_after: float | None, n: int, hits: int,
             overloading: bool, wall: bool) -> None:
        """Pause, and cut to `beta` of the rate the Hub accepted over the last `measure`
        seconds. Overloading the Hub (most calls refused, or already limited): over the whole
        time, pauses included and never less than `settle` seconds, which is what the account
        lets this host do; each host of a full account scales down by the share it saw
        accepted, so together they come down to what the account takes. Otherwise: over the
        time spent sending, what this host can do, left to the test."""
        p = self.policy
        since = now - p.measure
        answers = [(s, t) for s, t in self._outcomes if s >= since]
        accepted = sum(1 for _, t in answers if not t)
        first = answers[0][0] if answers else now
        seconds = now - first
        while self._idle and self._idle[0][1] < now - p.forget:
            self._idle.popleft()
        seconds -= sum(min(b, now) - max(a, first) for a, b in self._idle if b > first)
        settle = p.settle if self.rate is not None or overloading else p.first_settle
        seconds = max(settle if wall else p.shortest, seconds)
        base = accepted / max(p.shortest, seconds)
        if self.rate is not None:
            base = min(base, self.rate)
        if self._test is None:
            self._test = (0.0, hits / n if n else 1.0, self.rate, overloading)
        self._peak = max(base, p.floor / p.beta) if accepted else float("inf")
        self.rate = max(p.floor, p.beta * base)
        if self.ceiling:
            self.rate = min(self.rate, self.ceiling)
        self._pause(now, retry_after)
        self._cut_at = self._grown_at = self.pause_until
        start, before, restore, kept = self._test
        self._test = (self.pause_until if not start else start, before, restore, kept)
        self._cold = None
        self._doubling = False
        if self._streak_from is None:
            self._streak_from = self.pause_until + STREAK_SETTLE
        self.cuts += 1

    def _pause(self, now: float, retry_after: float | None) -> None:
        p = self.policy
        wait = p.default_retry_after if retry_after is None else retry_after
        until = now + wait * (1 + p.pause_jitter * self._rng.random())
        if until > self.pause_until:
            self._pauses.append((max(now, self.pause_until), until))
            self.pause_until = until
        self._epoch = max(self._epoch, self.pause_until, now)
        # after the pause, the first call waits its turn at the rate (a jittered share of
        # one interval): hosts paused together do not all call at the pause's end
        self._tokens, self._stamp = -self._rng.random(), self.pause_until

    def _judge(self, now: float) -> None:
        """Did cutting lower the throttled share? Judged on the answers to calls sent after
        the test's first cut; without enough of them by `forget` seconds, the cut stands."""
        assert self._test is not None
        p = self.policy
        start, before, restore, kept = self._test
        after = [t for s, t in self._outcomes if s >= start]
        early = EARLY and sum(after) >= EARLY_HITS and len(after) >= 2 * EARLY_HITS and sum(after) / len(after) >= p.noticeable
        if len(after) < p.test_answers and not early:
            if now - start > p.test_seconds:  # too slow to tell (a fleet's share of the
                self._test = None             # account): the cut stands
            return
        self._test = None
        share = sum(after) / len(after)
        if kept or share < p.noticeable or lower_bound(sum(after), len(after)) > p.overload:
            return  # our rate drew them (or most calls are still refused): the cut stands
        self.tolerated = max(self.tolerated, min(p.overload, share + p.margin))
        self._tolerated_at = now
        if RESTORE_X and self.rate is not None:
            self.rate = min(restore or float("inf"), RESTORE_X * self.rate)
            self._doubling = DOUBLING
            self._cut_at = now
        else:
            self.rate = restore  # they come whatever we send: no cut for them
        self.pause_until = min(self.pause_until, now)

    def _grow(self, now: float) -> None:
        """One step per quiet window: quickly back to the rate last cut, then above it,
        faster the longer the Hub accepts; only while the rate is what holds us back (a host
        sending less has no evidence the Hub would take more)."""
        p = self.policy
        assert self.rate is not None
        if now < self._grown_at + p.window:
            return
        span = max(p.window, 2 / self.rate)  # at least two calls' worth of time
        sent = sum(1 for s, _ in self._outcomes if s >= now - span)
        if sent >= 0.5 * self.rate * span:
            quiet = (now - self._cut_at) / p.quicken
            if self._doubling:
                self.rate *= 2
            elif self._peak == float("inf"):  # nothing accepted yet: find our share slowly
                self.rate += p.discover
            else:
                growth = p.regrow if self.rate < self._peak else p.probe * (1 + quiet * quiet)
                self.rate += max(p.step, growth * self.rate)
            if self.ceiling:
                self.rate = min(self.rate, self.ceiling)
        self._grown_at = now


class Pacer:
    """The controller behind a lock, for the Hub adapter's threads: `wait()` before a call,
    `record()` (or `cancel()`, when it was not made) after it. `start_jitter` spreads the first
    call of a process over that many seconds (a wave of hosts started together); `on_change`
    hears each change of mode (what the daemon logs)."""

    def __init__(self, ceiling: float = 0.0, policy: PacingPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 start_jitter: float = 0.0, rng: random.Random | None = None,
                 on_change: Callable[[Mode, float | None], None] | None = None) -> None:
        self._controller = RateController(ceiling, policy, rng)
        self._clock = clock
        self._lock = threading.Condition()
        self._on_change = on_change
        if start_jitter > 0:
            self._controller.pause_until = clock() + start_jitter * (rng or random).random()

    def set_ceiling(self, ceiling: float) -> None:
        """A new ceiling (config reload, this replica's share); what was learnt is kept."""
        with self._lock:
            self._controller.ceiling = ceiling

    def wait(self) -> float:
        """Block until a call may go; returns the time it goes (by the clock)."""
        with self._lock:
            while True:
                now = self._clock()
                delay = self._controller.ready_in(now)
                if delay <= 0:
                    self._controller.take(now)
                    return now
                self._lock.wait(min(delay, 0.25))  # an answer may open the way sooner

    def record(self, sent_at: float, throttled: bool, retry_after: float | None) -> None:
        """The Hub answered the call that `wait` let go at `sent_at`."""
        with self._lock:
            before = self._controller.mode
            self._controller.record(self._clock(), sent_at, throttled, retry_after)
            after, rate = self._controller.mode, self._controller.rate
            self._lock.notify_all()
        if after is not before and self._on_change is not None:
            self._on_change(after, rate)

    def cancel(self) -> None:
        """The call `wait` let go was not made (its lease was lost first)."""
        with self._lock:
            self._controller.cancel()
            self._lock.notify_all()

    def state(self) -> tuple[Mode, float, float]:
        """(mode, the limit in force in calls/s (0: none), the share of throttling tolerated
        as coming whatever we send)."""
        with self._lock:
            c = self._controller
            return c.mode, c.limit(), c.tolerated
