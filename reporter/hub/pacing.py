"""The send rate that adapts to the account's Migration Hub rate limit: cut when throttles
follow this host's rate, pause the whole host on RetryAfterSeconds, probe back up gently, and
learn to tolerate throttles that come whatever it sends (pure logic over an injected clock,
and the thread-safe pacer the Hub adapter waits on)."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Answers", "Pacer", "PacingPolicy", "PacingState", "RateController", "lower_bound"]

INFINITE = float("inf")


@dataclass(frozen=True)
class PacingPolicy:
    """The controller's constants: the defaults are what `benchmarks/run.py fleet` and
    `faults` were measured with (docs/fleet.md describes the behaviour they tune)."""

    beta: float = 0.7  # a cut keeps this share of the rate the Hub accepted (as AWS SDKs)
    floor: float = 0.2  # calls/s: never slower than one call every 5 s
    recent: int = 30  # throttled shares are judged over the last this many answers ...
    measure: float = 4.0  # ... or those of the last this many seconds, if more
    sample: int = 8  # the accepted rate is measured over at least this many answers
    settle: float = 2.0  # the accepted rate is measured over at least this many seconds
    least: int = 3  # answers since the last cut that can show we surely overload the Hub
    overload: float = 0.5  # a share surely above this: we overload it (a cut then stands)
    regrow: float = 0.05  # per window below the rate last cut: back to it quicker ...
    probe: float = 0.01  # ... than above it, (1 + (seconds since the cut /
    quicken: float = 10.0  # this)^2) times faster the longer the Hub accepts
    step: float = 0.01  # calls/s: the least a window adds
    window: float = 1.0  # seconds per growth step
    test_answers: int = 12  # answers after a cut that tell whether it helped ...
    early_throttles: int = 2  # ... or this many throttles in twice as many answers
    test_seconds: float = 60.0  # without either by then, the cut stands
    noticeable: float = 0.25  # a share this high after a cut: cutting did not help
    margin: float = 0.1  # a share cutting did not lower is tolerated, with this margin ...
    forget: float = 300.0  # ... and forgotten (halved) every this many seconds; a rate
    #                        not throttled for as long is dropped (the next burst starts cold)
    cold_until: int = 8  # the cold start ends at this many calls in flight
    pause_jitter: float = 0.5  # a RetryAfterSeconds pause lasts retry_after x U(1, 1 + this)
    longest_pause: float = 5.0  # ... never longer (the throttled call itself waits it all)
    default_retry_after: float = 1.0  # the pause for a throttle that names none
    start_jitter: float = 0.0  # a cold start's first call waits U(0, this) seconds, so a
    #                            wave of hosts given work at once does not call at once


@dataclass(frozen=True)
class PacingState:
    """What the controller does now (`rate`, `limit` and `tolerated` feed the metrics and
    `status`; `cuts` and `paused` are there for tests and debugging)."""

    rate: float  # calls/s this host allows itself (0: no limit of its own)
    limit: float  # calls/s in force: the adapted rate under the ceiling (0: none)
    tolerated: float  # the throttled share learnt to come whatever this host sends
    cuts: int  # how often throttling cut the rate
    paused: bool  # RetryAfterSeconds holds every call


def lower_bound(hits: int, n: int, z: float = 1.64) -> float:
    """Wilson's lower confidence bound (95%, one-sided) of a share seen as hits of n."""
    if n == 0:
        return 0.0
    share = hits / n
    centre = share + z * z / (2 * n)
    spread = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


class Answers:
    """What the Hub answered this host lately (when each call was sent, whether it was
    throttled), and the spans when the host had nothing to send (not the account's doing,
    so no rate is measured over them)."""

    def __init__(self, policy: PacingPolicy) -> None:
        self.policy = policy
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._idle: deque[tuple[float, float]] = deque()
        self._idle_from: float | None = None

    def add(self, now: float, sent_at: float, throttled: bool, idle: bool) -> None:
        """One answer; `idle`: no call of this host is in flight any more."""
        p = self.policy
        self._outcomes.append((sent_at, throttled))
        while (len(self._outcomes) > 4 * p.recent
               and self._outcomes[0][0] < now - max(p.measure, p.settle)):
            self._outcomes.popleft()
        while self._idle and self._idle[0][1] < now - p.forget:
            self._idle.popleft()
        if idle:
            self.rest(now)

    def rest(self, now: float) -> None:
        """No call of this host is in flight: idle from now until it wants to send."""
        self._idle_from = now

    def wanted(self, now: float) -> None:
        """The host has a call to make: an idle span (if any) ends now."""
        if self._idle_from is not None and now > self._idle_from:
            self._idle.append((self._idle_from, now))
        self._idle_from = None

    def recent(self, now: float) -> list[bool]:
        """The last `recent` answers, or those of the last `measure` seconds if more."""
        p = self.policy
        timely = [t for s, t in self._outcomes if s >= now - p.measure]
        last = [t for _, t in list(self._outcomes)[-p.recent:]]
        return timely if len(timely) > len(last) else last

    def since(self, start: float, most: int | None = None) -> list[bool]:
        """Answers to calls sent at or after `start` (the last `most` of them)."""
        found = [t for s, t in self._outcomes if s >= start]
        return found if most is None else found[-most:]

    def sent_within(self, now: float, span: float) -> int:
        """Calls sent over the last `span` seconds."""
        return sum(1 for s, _ in self._outcomes if s >= now - span)

    def accepted_rate(self, now: float) -> float:
        """Calls/s accepted over the last `measure` seconds, or over the last `sample`
        answers if they span longer (a slow host's few answers say little): what the
        account let this host do, pauses included, idle spans not, over `settle` s at
        least (a host that has just started has not yet learnt what its share is). With
        none accepted yet, one call per `settle` s: the least the account is assumed to
        let a host do before it knows better."""
        p = self.policy
        answers = [(s, t) for s, t in self._outcomes if s >= now - p.measure]
        if len(answers) < p.sample:
            answers = list(self._outcomes)[-p.sample:]
        accepted = sum(1 for _, t in answers if not t)
        first = answers[0][0] if answers else now
        idle = sum(min(b, now) - max(a, first) for a, b in self._idle if b > first)
        return max(1, accepted) / max(p.settle, now - first - idle)


class RateController:
    """Decides, from the outcome of every call, how fast this host may send.

    A cold start's first call waits U(0, `start_jitter`) s, then the start ramps per round
    trip (one more call in flight per accepted answer, as TCP's slow start) up to
    `cold_until` in flight, then sends freely. A throttle of a call
    sent since the last pause, when the recent throttled share is surely above what the host
    tolerates, pauses the whole host (RetryAfterSeconds, jittered) and cuts its rate to `beta`
    of what the account let it do (one call per `settle` s before anything was accepted);
    throttles of calls sent before the pause ended change nothing more. Below the rate it
    cut, the rate grows back quicker; above it gently, faster the longer the Hub accepts
    (the shape of TCP's CUBIC). Growth counts seconds, not answers: a host cut low (its
    answers seconds apart) regrows as fast as one answered often, so hosts sharing the
    account converge to fair shares and none of a fleet lags far behind.

    Each cut is a test. If `noticeable` of the answers after it are still throttled (and
    not surely most of them), cutting did not lower the share: the throttles come whatever
    this host sends (random throttling, another tool's burst). That share is tolerated from
    then on, and the rate doubles each window until the next cut. A cut made because the
    host surely overloads the Hub (most answers since the last cut throttled) stands. A host
    of a busy fleet sees its throttled share fall as the fleet cuts, so its cuts stand;
    `ceiling` (calls/s, 0: none) caps the adapted rate.
    """

    def __init__(self, ceiling: float = 0.0, policy: PacingPolicy | None = None,
                 rng: random.Random | None = None) -> None:
        self.policy = policy or PacingPolicy()
        self.ceiling = ceiling
        self.answers = Answers(self.policy)
        self.rate: float | None = None  # the adapted rate (None: no limit of ours)
        self.pause_until = 0.0
        self.cuts = 0
        self.tolerated = 0.0
        self._tolerated_at = 0.0
        self._rng = rng or random.Random()
        self._tokens = 1.0
        self._stamp: float | None = None
        self._in_flight = 0
        self._cold: int | None = 1  # calls in flight allowed during a cold start
        self._jitter = self.policy.start_jitter > 0  # the cold start's first call waits
        self._epoch = -INFINITE  # calls sent before this were sent before the last pause
        self._cut_at = -INFINITE  # when the last cut's pause ended
        self._peak = 0.0  # the rate the last cut was made from
        self._test: tuple[float, bool, float | None] | None = None  # (from, stands, rate)
        self._grown_at = 0.0
        self._doubling = False
        self._throttled_at = -INFINITE

    # -- sending -------------------------------------------------------------------------------
    def limit(self) -> float:
        """Calls/s allowed now (0: no limit)."""
        caps = [c for c in (self.rate, self.ceiling or None) if c]
        return min(caps) if caps else 0.0

    def ready_in(self, now: float) -> float:
        """Seconds until one call may go (0: now; inf: once an answer comes back). Asking
        means the host has a call to make."""
        self.answers.wanted(now)
        if self._jitter:
            self._jitter = False
            self.pause_until = max(self.pause_until,
                                   now + self.policy.start_jitter * self._rng.random())
        if now < self.pause_until:
            return self.pause_until - now
        if self._cold is not None and self._in_flight >= self._cold:
            return INFINITE
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

    def cancel(self, now: float) -> None:
        """A call `take` let go was not made after all."""
        self._in_flight = max(0, self._in_flight - 1)
        if not self._in_flight:
            self.answers.rest(now)

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
        self._in_flight = max(0, self._in_flight - 1)
        self.answers.add(now, sent_at, throttled, idle=not self._in_flight)
        if self._cold is not None and not throttled:
            self._cold = None if self._cold >= p.cold_until else self._cold + 1
        if self.tolerated and now - self._tolerated_at > p.forget:
            self.tolerated, self._tolerated_at = self.tolerated / 2, now
        if throttled:
            self._throttled_at = now
        elif self.rate is not None and now - self._throttled_at > p.forget:
            self.rate, self._cold, self._test = None, 1, None  # quiet for long: start cold
            self._jitter = p.start_jitter > 0
        if self._test is not None:
            self._judge(now)
        if throttled and sent_at >= self._epoch:
            self._throttled(now, retry_after)
        elif not throttled and self.rate is not None:
            self._grow(now)

    def _throttled(self, now: float, retry_after: float | None) -> None:
        p = self.policy
        recent = self.answers.recent(now)
        fresh = self.answers.since(self._cut_at, p.recent)
        if len(fresh) >= p.least and lower_bound(sum(fresh), len(fresh)) > max(
                p.overload, self.tolerated):
            self._cut(now, retry_after, stands=True)  # surely overloading the Hub
        elif self._test is None and lower_bound(sum(recent), len(recent)) > self.tolerated:
            self._cut(now, retry_after, stands=False)

    def _cut(self, now: float, retry_after: float | None, stands: bool) -> None:
        """Pause, and cut to `beta` of the rate the account let this host do: each host of a
        full account scales down by the share it saw accepted, so together they come down
        to what the account takes."""
        p = self.policy
        base = self.answers.accepted_rate(now)
        if self.rate is not None:
            base = min(base, self.rate)
        before = self.rate
        self._peak = max(base, p.floor / p.beta)
        self.rate = max(p.floor, p.beta * base)
        if self.ceiling:
            self.rate = min(self.rate, self.ceiling)
        self._pause(now, retry_after)
        self._cut_at = self._grown_at = self.pause_until
        if self._test is None:
            self._test = (self.pause_until, stands, before)
        elif stands:
            self._test = (self._test[0], True, self._test[2])
        self._cold = None
        self._doubling = False
        self.cuts += 1

    def _pause(self, now: float, retry_after: float | None) -> None:
        """Hold every call for the Hub's RetryAfterSeconds x U(1, 1 + jitter); afterwards
        the first call waits a random share of one interval at the rate, so hosts paused
        together do not all call at the pause's end."""
        p = self.policy
        wait = p.default_retry_after if retry_after is None else retry_after
        wait = min(p.longest_pause, wait * (1 + p.pause_jitter * self._rng.random()))
        self.pause_until = max(self.pause_until, now + wait)
        self._epoch = max(self._epoch, self.pause_until, now)
        self._tokens, self._stamp = 1 - self._rng.random(), self.pause_until

    def _judge(self, now: float) -> None:
        """Did the cut under test lower the throttled share? Judged on the answers to calls
        sent after its pause; without enough of them in `test_seconds`, the cut stands."""
        assert self._test is not None
        p = self.policy
        start, stands, before = self._test
        after = self.answers.since(start)
        hits = sum(after)
        early = (hits >= p.early_throttles and len(after) >= 2 * p.early_throttles
                 and hits >= p.noticeable * len(after))
        if len(after) < p.test_answers and not early:
            if now - start > p.test_seconds:
                self._test = None
            return
        self._test = None
        share = hits / len(after)
        if stands or share < p.noticeable or lower_bound(hits, len(after)) > p.overload:
            return  # the cut helped (or most calls are still refused): it stands
        self.tolerated = max(self.tolerated, min(p.overload, share + p.margin))
        self._tolerated_at = now
        assert self.rate is not None
        self.rate = min(before or INFINITE, 2 * self.rate)
        if self.ceiling:
            self.rate = min(self.rate, self.ceiling)
        self._doubling, self._cut_at = True, now
        self.pause_until = min(self.pause_until, now)

    def _grow(self, now: float) -> None:
        """One step per window, only while the rate is what holds the host back (a host
        sending less has no evidence the Hub would take more)."""
        p = self.policy
        assert self.rate is not None
        if now < self._grown_at + p.window:
            return
        span = max(p.window, 2 / self.rate)  # at least two calls' worth of time
        windows = min(now - self._grown_at, span) / p.window
        self._grown_at = now
        if self.answers.sent_within(now, span) < 0.5 * self.rate * span:
            return
        if self._doubling:  # throttles we tolerate: back to what we can do
            self.rate *= 2
        else:
            quiet = (now - self._cut_at) / p.quicken
            growth = p.regrow if self.rate < self._peak else p.probe * (1 + quiet * quiet)
            self.rate += max(p.step, growth * self.rate) * windows
        if self.ceiling:
            self.rate = min(self.rate, self.ceiling)

    def state(self, now: float) -> PacingState:
        """What it does now."""
        return PacingState(self.rate or 0.0, self.limit(), self.tolerated, self.cuts,
                           now < self.pause_until)


class Pacer:
    """The controller behind a lock, for the Hub adapter's threads: `wait()` before a call,
    `record()` (or `cancel()`, when it was not made) after it."""

    def __init__(self, ceiling: float = 0.0, policy: PacingPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self._controller = RateController(ceiling, policy, rng)
        self._clock = clock
        self._lock = threading.Condition()
        self._waiting = 0  # threads blocked in wait(): only they need waking

    def set_ceiling(self, ceiling: float) -> None:
        """A new ceiling (config reload, this replica's share); what was learnt is kept."""
        with self._lock:
            self._controller.ceiling = ceiling
            if ceiling and self._controller.rate is not None:
                self._controller.rate = min(self._controller.rate, ceiling)
            self._lock.notify_all()

    def wait(self) -> float:
        """Block until a call may go; returns the time it goes (by the clock)."""
        with self._lock:
            while True:
                now = self._clock()
                delay = self._controller.ready_in(now)
                if delay <= 0:
                    self._controller.take(now)
                    return now
                self._waiting += 1
                try:
                    self._lock.wait(min(delay, 0.25))  # an answer may open the way sooner
                finally:
                    self._waiting -= 1

    def record(self, sent_at: float, throttled: bool, retry_after: float | None) -> None:
        """The Hub answered the call that `wait` let go at `sent_at`."""
        with self._lock:
            self._controller.record(self._clock(), sent_at, throttled, retry_after)
            if self._waiting:
                self._lock.notify_all()

    def cancel(self) -> None:
        """The call `wait` let go was not made (its lease was lost first)."""
        with self._lock:
            self._controller.cancel(self._clock())
            self._lock.notify_all()

    def state(self) -> PacingState:
        """What the controller does now."""
        with self._lock:
            return self._controller.state(self._clock())
