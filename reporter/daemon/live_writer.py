"""The daemon's live-state writer: after every pass, the state `status` and the health check
read (health, backlog, last success and error, the WAL's size), written when it changes and at
least every LIVE_REFRESH_SECONDS as a heartbeat; never raises."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import structlog

from reporter import live
from reporter.daemon.shared import Shared
from reporter.daemon.store_health import StoreHealth
from reporter.files import UnsafeFile
from reporter.stores.contract import Backlog

__all__ = ["LIVE_REFRESH_SECONDS", "LiveWriter"]

LIVE_REFRESH_SECONDS = 10.0


class LiveWriter:
    """Writes the live state file of one daemon."""

    def __init__(self, shared: Shared, store_health: StoreHealth) -> None:
        self.shared, self.store_health = shared, store_health
        self.log = structlog.get_logger("reporter.daemon")
        self.backlog: Backlog | None = None  # the last counts read (by the metrics refresh)
        self.error: str | None = None
        self.path: Path | None = None
        outbox = shared.config.outbox
        try:
            self.path = live.daemon_path(outbox.live_state_path, outbox.where)
        except UnsafeFile as exc:  # delivery goes on; health stays on /healthz and in the log
            self.error = str(exc)
            self.log.error("live_state_unavailable", error=str(exc))
        self._last: live.LiveState | None = None
        self._written = 0.0

    def write(self, stopped: bool = False) -> None:
        """Publish the live state (and the WAL gauge). After a clean stop it says "stopped"
        (no daemon, and no fault)."""
        shared = self.shared
        parts, backlog = shared.parts, self.backlog
        relay = parts.relay.status()
        wal = parts.store.wal_bytes()
        shared.metrics.wal_bytes.set(wal)
        health, cause = "ok", None
        if relay.blocked is not None:
            health, cause = "blocked", relay.blocked.message
        if self.store_health.problem is not None:
            health, cause = "unusable", self.store_health.problem
        if stopped:
            health, cause, self._last = "stopped", None, None
        oldest = None if backlog is None else backlog.oldest_created_at
        pacing = parts.hub.pacer.state() if parts.hub.pacer is not None else None
        state = live.LiveState(
            health=health,
            cause=cause,
            heartbeat=time.time(),
            pid=os.getpid(),
            outbox=shared.config.outbox.where,
            interval_seconds=shared.config.publish.interval_seconds,
            pending=backlog.pending if backlog else None,
            oldest_pending_seconds=None if oldest is None
            else round(max(0.0, parts.store.clock() - oldest), 3),
            dead_letters=backlog.dead_letters if backlog else None,
            outage_backoff=relay.braking,
            last_success=relay.last_success_at,
            last_error=relay.last_failure,
            wal_bytes=wal,
            hub_differs=len(parts.relay.repairs.differing),
            send_rate=round(pacing.rate, 3) if pacing else 0.0,
            throttle_tolerated=round(pacing.tolerated, 3) if pacing else 0.0,
        )
        unchanged = replace(state, heartbeat=0.0) == self._last
        if unchanged and time.monotonic() - self._written < LIVE_REFRESH_SECONDS:
            return  # idle: the heartbeat only needs refreshing every few seconds
        if self.path is None:
            return
        try:
            live.write(self.path, state)
            self._last, self._written = replace(state, heartbeat=0.0), time.monotonic()
            self.error = None
        except OSError as exc:
            if self.error != exc.strerror:
                self.log.error("live_state_unwritable", path=str(self.path), error=exc.strerror)
            self.error = exc.strerror
