"""Builds the parts a delivering process needs (store, Hub adapter, limiter, relay, membership)
from a config; shared by `run` and `drain`."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from reporter.config import Config, PublishConfig
from reporter.delivery.relay import Relay
from reporter.delivery.replicas import Budget, Membership
from reporter.hub.client import Hub, Observer
from reporter.hub.limiter import AdaptiveLimiter, RateLimiter
from reporter.hub.pacing import Pacer, PacingPolicy
from reporter.stores import Engine
from reporter.stores.contract import OutboxStore

__all__ = ["START_JITTER", "Parts", "build", "rate_limiter"]

# A daemon's first call of a burst after a cold start waits U(0, this) seconds: a wave of hosts
# whose tools all start at once then does not meet the account's rate limit in one instant
# (`benchmarks/run.py fleet`). `drain` does not wait: a person is watching it.
START_JITTER = 0.5


@dataclass
class Parts:
    """What one delivering process holds."""

    store: OutboxStore
    hub: Hub
    relay: Relay
    limiter: AdaptiveLimiter
    membership: Membership

    def beat(self) -> None:
        """Heartbeat when due, and apply a changed budget: this replica's share of the
        account's rate, and when it may start calling."""
        budget = self.membership.beat()
        if budget is not None:
            self.apply_budget(budget)

    def apply_budget(self, budget: Budget) -> None:
        """Use this share of the rate from now on."""
        self.hub.set_rate(RateLimiter(budget.rate) if budget.rate else None)
        if self.hub.pacer is not None:  # the adaptive rate stays under this share
            self.hub.pacer.set_ceiling(budget.rate)
        self.relay.hold_until = budget.ready_at


def rate_limiter(publish: PublishConfig) -> RateLimiter | None:
    """The hard rate cap, when one is configured."""
    rate = publish.max_requests_per_second
    return RateLimiter(rate) if rate else None


def build(
    config: Config, stop: threading.Event, observer: Observer | None, role: str = "run"
) -> Parts:
    """Open the outbox and wire a relay to the Hub (`observer` sees every Hub call: the
    daemon's metrics)."""
    publish = config.publish
    store = Engine.of(config.outbox).open()
    limiter = AdaptiveLimiter(publish.concurrency, publish.max_concurrency)
    hub = Hub(
        config.aws,
        config.hub.region,
        observer=observer,
        limiter=limiter,
        rate=rate_limiter(publish),
        pacer=Pacer(publish.max_requests_per_second,
                    PacingPolicy(start_jitter=START_JITTER if role == "run" else 0.0)),
    )
    relay = Relay(store, hub, config, clock=store.clock, stop=stop)
    membership = Membership(
        store, role, publish.interval_seconds, publish.max_requests_per_second
    )
    return Parts(store, hub, relay, limiter, membership)
