"""The account's rate budget shared by replicas (pure), heartbeats as `Membership` keeps them,
and a replica's share as the ceiling of its adaptive send rate."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from reporter.config import load
from reporter.delivery.parts import build
from reporter.delivery.replicas import (
    HEARTBEAT_MIN_SECONDS,
    SEEN_SLACK_SECONDS,
    Budget,
    heartbeat_every,
    share,
)
from reporter.stores.contract import Replica

from .helpers import Cli


def _r(name: str, rate: float, beat: float, every: float = 5.0, started: float = 0.0) -> Replica:
    return Replica(name, "h", 1, started, beat, every, rate)


def test_the_smallest_live_cap_is_divided_by_the_live_replicas():
    me = _r("a", 30.0, 100.0)
    assert share([me], me, 0.0).rate == 30.0
    live = [me, _r("b", 10.0, 100.0), _r("c", 0.0, 100.0)]
    assert share(live, me, 0.0).rate == 10.0 / 3
    assert share([me, _r("b", 0.0, 100.0)], _r("a", 0.0, 100.0), 0.0).rate == 0.0  # no cap


def test_my_own_setting_counts_even_before_my_row_is_read_back():
    me = _r("a", 8.0, 0.0)
    assert share([_r("b", 0.0, 50.0)], me, 0.0).rate == 4.0


def test_a_newcomer_waits_until_every_other_replica_has_counted_it():
    joined = 100.0
    me = _r("new", 10.0, joined)
    old = _r("old", 10.0, 98.0, every=5.0)
    budget = share([me, old], me, joined)
    assert budget.rate == 5.0
    assert budget.ready_at == 98.0 + 5.0 + SEEN_SLACK_SECONDS
    seen = _r("old", 10.0, joined + SEEN_SLACK_SECONDS + 0.1)
    assert share([me, seen], me, joined).ready_at == 0.0


def test_without_a_cap_nobody_waits():
    me = _r("new", 0.0, 100.0)
    assert share([me, _r("old", 0.0, 1.0)], me, 100.0).ready_at == 0.0


def test_heartbeat_period_is_the_interval_but_never_below_the_floor():
    assert heartbeat_every(0.2) == HEARTBEAT_MIN_SECONDS
    assert heartbeat_every(60.0) == 60.0


def test_a_replicas_share_caps_its_adaptive_send_rate(cli: Cli, make_config: Any) -> None:
    """`apply_budget` caps the pacer as well as the hard limiter: the rate the pacer adapts
    stays under this replica's share of the account, and what it learnt is kept when the
    share changes."""
    path: Path = make_config(publish={"max_requests_per_second": 10})
    assert cli("init", config=path).returncode == 0
    parts = build(load(path), threading.Event(), None)
    pacer = parts.hub.pacer
    assert pacer is not None
    try:
        assert pacer.state().limit == 10.0  # the configured ceiling
        parts.apply_budget(Budget(rate=2.5))
        assert pacer.state().limit == 2.5 and parts.hub._rate is not None
        pacer.record(pacer.wait(), True, 1.0)  # throttled: the account's rate is learnt
        learnt = pacer.state()
        assert learnt.cuts == 1 and 0 < learnt.limit < 2.5
        parts.apply_budget(Budget(rate=5.0))  # a replica left: a larger share
        assert pacer.state().limit == learnt.limit  # the learnt rate still holds
        parts.apply_budget(Budget(rate=0.2))  # many replicas: the share is below it
        assert pacer.state().limit == 0.2
    finally:
        parts.store.close()
