"""The adaptive send rate's pure logic (reporter/hub/pacing.py) over an injected clock: the cold
start, pauses on RetryAfterSeconds, cuts that follow our rate, tolerance of throttles that do
not, growth, the ceiling; and the thread-safe pacer."""

from __future__ import annotations

import random
import threading

import pytest

from reporter.hub.pacing import Pacer, PacingPolicy, RateController, lower_bound


class Host:
    """One host's controller driven by a virtual clock: `send` asks, takes and answers."""

    def __init__(self, ceiling: float = 0.0, seed: int = 1, **policy: float) -> None:
        self.now = 1000.0
        self.c = RateController(ceiling, PacingPolicy(**policy), random.Random(seed))

    def wait(self) -> float:
        """Advance the clock until a call may go; returns the time waited."""
        waited = 0.0
        while (delay := self.c.ready_in(self.now)) > 0:
            assert delay != float("inf"), "nothing in flight, yet the cold start blocks"
            self.now += delay
            waited += delay
        return waited

    def send(self, throttled: bool, rtt: float = 0.01, retry_after: float | None = 1.0) -> float:
        """One call, answered after `rtt`; returns when it was sent."""
        self.wait()
        sent = self.now
        self.c.take(sent)
        self.now += rtt
        self.c.record(self.now, sent, throttled, retry_after)
        return sent


def test_wilson_lower_bound() -> None:
    assert lower_bound(0, 0) == 0.0
    assert lower_bound(0, 10) == 0.0
    assert 0.5 < lower_bound(3, 3) < 0.55  # three throttles of three: surely over half
    assert lower_bound(1, 2) < 0.15  # one of two tells little
    assert lower_bound(30, 100) == pytest.approx(0.23, abs=0.01)
    assert lower_bound(100, 100) < 1.0


def test_a_cold_start_ramps_per_round_trip_then_sends_freely() -> None:
    """One more call in flight per accepted answer (slow start: the window doubles each
    round trip) up to `cold_until`, then no limit of ours."""
    c = RateController()
    now, windows = 0.0, []
    for _ in range(5):
        taken = 0
        while c.ready_in(now) == 0.0 and taken < 100:
            c.take(now)
            taken += 1
        windows.append(taken)
        now += 0.01
        for _ in range(taken):
            c.record(now, now - 0.01, False)
    assert windows == [1, 2, 4, 8, 100]
    assert c.rate is None and c.limit() == 0.0


def test_a_throttle_before_anything_was_accepted_pauses_jittered_and_cuts_to_the_least() -> None:
    pauses, afters = [], []
    for seed in range(20):
        h = Host(seed=seed)
        h.send(throttled=True, retry_after=2.0)
        # no call accepted yet: the account is assumed to take one per `settle` (2 s)
        assert h.c.rate == pytest.approx(0.7 / 2.0) and h.c.cuts == 1
        pauses.append(h.c.pause_until - h.now)
        afters.append((h.wait() - pauses[-1]) * h.c.rate)  # the whole host waits ...
    assert all(2.0 - 0.02 <= p <= 3.0 for p in pauses)  # RetryAfter x U(1, 1.5)
    assert max(pauses) - min(pauses) > 0.3  # hosts paused together come back apart
    # ... then a random share of one interval at its new rate (not one interval or more)
    assert all(0.0 <= a <= 1.0 + 1e-9 for a in afters) and max(afters) - min(afters) > 0.5


def test_a_throttle_after_accepted_calls_pauses_the_host_and_cuts_to_the_accepted_rate() -> None:
    h = Host()
    for _ in range(5):
        h.send(throttled=False, rtt=0.05)
    h.send(throttled=True, retry_after=1.0)
    assert h.c.cuts == 1
    # 5 accepted over at least `settle` (2 s): 2.5/s; the cut keeps 0.7 of it
    assert h.c.rate == pytest.approx(0.7 * 5 / 2.0)
    assert h.c.pause_until - h.now >= 1.0 - 0.02
    # a throttle of a call sent before the pause changes nothing more
    h.c.record(h.now + 0.01, h.now - 0.5, True, 1.0)
    assert h.c.cuts == 1


def test_fleet_shaped_throttling_keeps_its_cut_and_the_rate_settles_to_the_share() -> None:
    """Throttles that follow the rate (a token bucket of 2 calls/s for this host): the
    controller cuts, the share falls, the cut stands; the accepted rate ends near the
    bucket's and the throttled share is low."""
    h = Host(seed=3)
    tokens, at = 2.0, h.now
    results = []
    while h.now < 1200.0:
        h.wait()
        tokens = min(2.0, tokens + (h.now - at) * 2.0)
        at = h.now
        ok = tokens >= 1.0
        tokens -= 1.0 if ok else 0.0
        h.send(throttled=not ok, rtt=0.02)
        results.append((h.now, ok))
    late = [ok for t, ok in results if t > 1100.0]
    assert h.c.tolerated == 0.0  # never mistaken for random throttling
    assert 1.2 <= sum(late) / 100.0 <= 2.05  # accepted calls/s near the bucket's 2
    assert late.count(False) / len(late) < 0.15


def test_random_throttling_is_learnt_and_tolerated_not_cut_for() -> None:
    """30% of calls throttled whatever the rate: after one cut the controller learns the
    share, stops cutting for it and grows back to a fast rate within seconds."""
    rng = random.Random(5)
    h = Host(seed=5)
    start = h.now
    while h.now < start + 60 and not (h.c.tolerated and (h.c.rate or 99) > 50):
        h.send(throttled=rng.random() < 0.3, rtt=0.005)
    assert h.c.tolerated >= 0.3
    assert h.now - start < 30
    cuts = h.c.cuts
    sent_before = h.now
    for _ in range(2000):
        h.send(throttled=rng.random() < 0.3, rtt=0.005)
    assert h.c.cuts <= cuts + 2  # no longer cut for
    assert 2000 / (h.now - sent_before) > 50  # calls/s


def test_an_overloaded_account_is_not_mistaken_for_random_throttling() -> None:
    """Every call throttled after the cut (the account is full): the cut stands, the host
    pauses on each throttle and is never tolerant."""
    h = Host()
    for _ in range(4):
        h.send(throttled=False)
    for _ in range(40):
        h.send(throttled=True, retry_after=1.0)
    assert h.c.tolerated == 0.0
    assert h.c.rate == pytest.approx(h.c.policy.floor)


def test_growth_only_while_the_rate_binds_and_never_above_the_ceiling() -> None:
    h = Host(ceiling=3.0)
    for _ in range(7):
        h.send(throttled=False, rtt=0.05)
    h.send(throttled=True)
    cut = h.c.rate
    assert cut is not None and cut <= 3.0
    # a host with little to send: no evidence the Hub would take more
    for _ in range(5):
        h.now += 10.0
        h.send(throttled=False)
    assert h.c.rate == pytest.approx(cut)
    # sending at the rate, every answer accepted: it grows, up to the ceiling only
    for _ in range(400):
        h.send(throttled=False)
    assert h.c.rate == pytest.approx(3.0)
    assert h.c.limit() == pytest.approx(3.0)


def test_idle_time_is_not_counted_as_the_accounts_doing() -> None:
    """A host that had nothing to send for a while, then is throttled: its accepted rate is
    measured over the time it wanted to send, not the idle span."""
    h = Host()
    for _ in range(3):
        h.send(throttled=False, rtt=0.01)
    h.now += 3.0  # idle: nothing in flight, nothing asked
    for _ in range(3):
        h.send(throttled=False, rtt=0.01)
    h.send(throttled=True)
    assert h.c.rate == pytest.approx(0.7 * 6 / 2.0, rel=0.05)


def test_the_pacer_serialises_threads_through_the_controller() -> None:
    """Threads wait on one controller; a ceiling set later applies at once; a call let go
    but not made gives its slot back."""
    import time

    pacer = Pacer(ceiling=0.0, rng=random.Random(1))
    done = []

    def worker() -> None:
        for _ in range(20):
            sent = pacer.wait()
            pacer.record(sent, False, None)
            done.append(sent)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(done) == 80
    state = pacer.state()
    assert state.rate == 0.0 and state.limit == 0.0 and not state.paused
    pacer.set_ceiling(50.0)
    assert pacer.state().limit == 50.0
    started = time.monotonic()
    for _ in range(10):
        pacer.record(pacer.wait(), False, None)
    assert time.monotonic() - started >= 9 / 50 - 0.05  # the ceiling holds
    pacer.wait()
    pacer.cancel()  # not made after all: its slot in flight is given back
    assert pacer.state().limit == 50.0


def test_a_rate_not_throttled_for_long_is_dropped_and_the_next_burst_starts_cold() -> None:
    h = Host()
    for _ in range(5):
        h.send(throttled=False, rtt=0.05)
    h.send(throttled=True)
    assert h.c.rate is not None
    h.now += 301.0
    h.send(throttled=False)
    assert h.c.rate is None and h.c.limit() == 0.0
    h.c.take(h.now)
    assert h.c.ready_in(h.now) == float("inf")  # one call in flight, as at a cold start


def test_a_cold_start_waits_a_jittered_moment_once_then_again_after_a_quiet_spell() -> None:
    """`start_jitter`: the first call of a cold start waits U(0, start_jitter), so a wave of
    hosts given work at once spreads its first calls; later calls do not wait for it."""
    waits = []
    for seed in range(20):
        h = Host(seed=seed, start_jitter=1.0)
        waits.append(h.wait())
        h.send(throttled=False)
        assert h.wait() == 0.0  # once only
    assert all(0.0 <= w <= 1.0 for w in waits)
    assert max(waits) - min(waits) > 0.5  # spread, not one shared delay
    h = Host(seed=2, start_jitter=1.0)
    h.wait()
    for _ in range(5):
        h.send(throttled=False, rtt=0.05)
    h.send(throttled=True)
    h.now += 301.0
    h.send(throttled=False)  # a quiet spell dropped the rate: the next burst starts cold
    assert h.c.rate is None
    h.now += 1.0
    h.c.record(h.now, h.now, False)  # nothing in flight now
    assert 0.0 < h.c.ready_in(h.now) <= 1.0
    assert Host(seed=1).wait() == 0.0  # no jitter unless asked (`drain`, a person waiting)


def _share_a_bucket(rates: tuple[float, ...], seconds: float, bucket: float
                    ) -> list[list[tuple[float, bool]]]:
    """Hosts cut to `rates` share a token bucket of `bucket` calls/s, each sending as fast as
    its controller lets it; every call's (sent, accepted) per host."""
    hosts = []
    for i, rate in enumerate(rates):
        h = Host(seed=10 + i)
        h.c.rate, h.c._peak, h.c._cold = rate, rate, None  # as after a cut
        h.c._cut_at = h.c._grown_at = h.now
        hosts.append(h)
    tokens, at = bucket, 1000.0
    calls: list[list[tuple[float, bool]]] = [[] for _ in hosts]
    nxt = [h.now for h in hosts]
    while min(nxt) < 1000.0 + seconds:
        i = nxt.index(min(nxt))
        h = hosts[i]
        h.now = nxt[i]
        delay = h.c.ready_in(h.now)
        if delay > 0:
            nxt[i] = h.now + delay
            continue
        tokens = min(bucket, tokens + (h.now - at) * bucket)
        at = h.now
        ok = tokens >= 1.0
        tokens -= 1.0 if ok else 0.0
        calls[i].append((h.now, ok))
        h.c.take(h.now)
        h.c.record(h.now + 0.02, h.now, not ok, 1.0)
        nxt[i] = h.now + 0.02
    return calls


def test_hosts_sharing_the_account_converge_to_fair_shares() -> None:
    """Growth counts seconds, not answers: a host cut low (answers seconds apart) regrows as
    fast per second as one answered often, so a host starved by a deep cut catches up (no
    host of a fleet lags far behind) while the shared rate's throttled share stays low."""
    calls = _share_a_bucket((4.0, 0.25), seconds=400.0, bucket=4.0)
    late = [sum(ok for t, ok in host if t > 1250.0) / 150.0 for host in calls]
    assert min(late) / max(late) > 0.5, late  # fair within 2x
    every = [ok for host in calls for t, ok in host if t > 1100.0]
    assert every.count(False) / len(every) < 0.15
