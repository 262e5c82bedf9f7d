"""The daemon's upkeep, on APScheduler every MAINTENANCE_SECONDS: prune delivered rows past
retention, fold the WAL back, and refresh the gauges (backlog, gate, tasks' staleness and
mapping) and systemd's STATUS line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from reporter.model import StoreError
from reporter.views import task_health

if TYPE_CHECKING:
    from reporter.daemon import Service

__all__ = ["MAINTENANCE_SECONDS", "Upkeep"]

MAINTENANCE_SECONDS = 300.0


class Upkeep:
    """Maintenance and the gauges it refreshes."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.log = structlog.get_logger("reporter.daemon")

    def maintain(self) -> None:
        """Prune delivered rows past retention, checkpoint the WAL, refresh task gauges."""
        service = self.service
        with service.lock:
            if service.store_health.damaged:
                return
            store = service.parts.store
            try:
                before = store.clock() - service.config.outbox.retention_days * 86400
                pruned = store.prune(before)
                if pruned:
                    self.log.info("pruned", rows=pruned)
                store.checkpoint("TRUNCATE" if pruned else "PASSIVE")
                self.refresh(tasks=True)
            except StoreError as exc:
                service.store_health.failed(exc, "maintain")

    def refresh(self, tasks: bool = False) -> None:
        """Read the backlog (and with `tasks`, every task's health) into the gauges."""
        service = self.service
        store, m = service.parts.store, service.metrics
        backlog, relay = store.backlog(), service.parts.relay.status()
        service.live.backlog = backlog
        m.set_backlog(backlog)
        m.blocked.set(1 if relay.blocked else 0)
        m.backoff.set(1 if relay.braking else 0)
        m.concurrency.set(service.parts.limiter.limit)
        m.hub_differs.set(len(service.parts.relay.repairs.differing))
        if relay.last_success_at:
            m.last_success.set(relay.last_success_at)
        if tasks:
            health = task_health(store.tasks(), store.clock(), service.config)
            for stream, counts in health["streams"].items():
                m.stale.labels(stream).set(counts["stale"])
                m.lapsing.labels(stream).set(counts["lapsing"])
            m.unmapped.set(health["unmapped"])
        service.supervisor.status(backlog.pending)
