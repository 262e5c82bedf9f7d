"""Builds the parts a delivering process needs (store, Hub adapter, limiter, relay) from a
config; shared by `run` and `drain`."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from reporter.config import Config, PublishConfig
from reporter.hub import Hub
from reporter.limiter import AdaptiveLimiter, RateLimiter
from reporter.metrics import Metrics
from reporter.relay import Relay
from reporter.store import Store

__all__ = ["Parts", "build", "rate_limiter"]


@dataclass
class Parts:
    """What one delivering process holds."""

    store: Store
    hub: Hub
    relay: Relay
    limiter: AdaptiveLimiter


def rate_limiter(publish: PublishConfig) -> RateLimiter | None:
    """The hard rate cap, when one is configured."""
    rate = publish.max_requests_per_second
    return RateLimiter(rate) if rate else None


def build(config: Config, stop: threading.Event, metrics: Metrics | None) -> Parts:
    """Open the outbox and wire a relay to the Hub."""
    publish = config.publish
    store = Store.open(config.outbox.path, config.outbox.busy_timeout_ms)
    limiter = AdaptiveLimiter(publish.concurrency, publish.max_concurrency)
    hub = Hub(
        config.aws,
        config.hub.region,
        observer=metrics.observe_call if metrics else None,
        limiter=limiter,
        rate=rate_limiter(publish),
    )
    return Parts(store, hub, Relay(store, hub, config, stop=stop), limiter)
