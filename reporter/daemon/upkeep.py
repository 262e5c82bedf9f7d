"""The daemon's upkeep, on APScheduler every MAINTENANCE_SECONDS: prune delivered rows past
retention, fold the WAL back, and refresh the gauges (backlog, gate, tasks' staleness and
mapping) and systemd's STATUS line."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from reporter.daemon.live_writer import LiveWriter
from reporter.daemon.shared import Shared
from reporter.daemon.store_health import StoreHealth
from reporter.report import task_health
from reporter.stores.contract import StoreError

__all__ = ["MAINTENANCE_SECONDS", "Upkeep"]

MAINTENANCE_SECONDS = 300.0


class Upkeep:
    """Maintenance and the gauges it refreshes."""

    def __init__(self, shared: Shared, store_health: StoreHealth, live: LiveWriter,
                 status: Callable[[int], None]) -> None:
        self.shared, self.store_health, self.live, self._status = shared, store_health, live, status
        self.log = structlog.get_logger("reporter.daemon")

    def maintain(self) -> None:
        """Prune delivered rows past retention, checkpoint the WAL, refresh task gauges."""
        shared = self.shared
        with shared.lock:
            if self.store_health.damaged:
                return
            store = shared.parts.store
            try:
                before = store.clock() - shared.config.outbox.retention_days * 86400
                pruned = store.prune(before)
                if pruned:
                    self.log.info("pruned", rows=pruned)
                store.checkpoint("TRUNCATE" if pruned else "PASSIVE")
                self.refresh(tasks=True)
            except StoreError as exc:
                self.store_health.failed(exc, "maintain")

    def refresh(self, tasks: bool = False) -> None:
        """Read the backlog (and with `tasks`, every task's health) into the gauges."""
        parts, m = self.shared.parts, self.shared.metrics
        store = parts.store
        backlog, relay = store.backlog(), parts.relay.status()
        self.live.backlog = backlog
        m.set_backlog(backlog)
        m.blocked.set(1 if relay.blocked else 0)
        m.backoff.set(1 if relay.braking else 0)
        m.concurrency.set(parts.limiter.limit)
        if parts.hub.pacer is not None:
            m.send_rate.set(parts.hub.pacer.state().limit)
        m.hub_differs.set(len(parts.relay.repairs.differing))
        if relay.last_success_at:
            m.last_success.set(relay.last_success_at)
        if tasks:
            health = task_health(store.tasks(), store.clock(), self.shared.config)
            for stream, counts in health["streams"].items():
                m.stale.labels(stream).set(counts["stale"])
                m.lapsing.labels(stream).set(counts["lapsing"])
            m.unmapped.set(health["unmapped"])
        self._status(backlog.pending)
