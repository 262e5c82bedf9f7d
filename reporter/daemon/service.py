"""`run`: the long-running service, wired from its roles (the way huey's consumer is): the
supervisor on the main thread (signals, systemd, reload), the publisher's thread (passes), the
upkeep schedule, the store's health and the live-state writer."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog

from reporter.config import Config
from reporter.daemon.live_writer import LiveWriter
from reporter.daemon.metrics import Metrics
from reporter.daemon.publisher import Publisher
from reporter.daemon.shared import Shared
from reporter.daemon.signals import stop_on_signals
from reporter.daemon.store_health import StoreHealth
from reporter.daemon.supervisor import RESTART_ONLY, Supervisor
from reporter.daemon.upkeep import Upkeep
from reporter.delivery.parts import Parts, build
from reporter.exits import Exit
from reporter.stores import Engine
from reporter.stores.contract import StoreError

__all__ = ["RESTART_ONLY", "Service", "run"]


class Service:
    """`run`: one delivering process, built from its roles as huey's consumer builds its
    workers: each role gets the shared state (`Shared`: config, parts, metrics, flags, lock)
    and the sibling roles or callbacks it uses, never the service."""

    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        stop = threading.Event()
        metrics = Metrics()
        parts = build(config, stop, metrics.observe_call)
        self.shared = shared = Shared(config, config_path, parts, metrics, stop)
        self.store_health = StoreHealth(shared, on_reopen=lambda: self.supervisor.rearm())
        self.live = LiveWriter(shared, self.store_health)
        self.upkeep = Upkeep(shared, self.store_health, self.live,
                             status=lambda pending: self.supervisor.status(pending))
        self.publisher = Publisher(shared, self.store_health, self.live,
                                   refresh=lambda: self.upkeep.refresh(), shutdown=self.shutdown)
        self.supervisor = Supervisor(shared, self.publisher, self.upkeep, self.store_health,
                                     self.live, self.health)
        self.store_health.distrust(shared.parts.store.integrity())

    @property
    def config(self) -> Config:
        """The config in force (a reload replaces it)."""
        return self.shared.config

    @property
    def parts(self) -> Parts:
        """The delivering parts (replaced when the outbox is reopened)."""
        return self.shared.parts

    def health(self) -> str | None:
        """None while delivering normally; else why not (exit-4 causes, a broken store, a
        publisher that died, keeps failing or is stalled)."""
        blocked = self.shared.parts.relay.gate.blocked
        if blocked is not None:
            return blocked.message
        if self.store_health.problem is not None:
            return self.store_health.problem
        return self.publisher.stalled()

    def tick(self) -> None:
        """One pass now, on the calling thread (never raises)."""
        self.publisher.tick()

    def maintain(self) -> None:
        """Upkeep now: prune, checkpoint, refresh the gauges."""
        self.upkeep.maintain()

    def refresh(self) -> None:
        """The backlog gauges and systemd's STATUS, after a pass that did something."""
        self.upkeep.refresh()

    def reload(self) -> bool:
        """Re-read the config file (as SIGHUP does); True when the new one is in force."""
        return self.supervisor.reload()

    def shutdown(self) -> None:
        """Stop gracefully, as SIGTERM does (for code that runs the service in-process)."""
        self.shared.stop.set()
        self.supervisor.wake()

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT (SIGHUP reloads); exit 0 after a graceful stop."""
        with stop_on_signals(self.shared.stop, self.shared.reload_requested):
            return self.supervisor.serve()


def run(config: Config, config_path: Path | None = None) -> int:
    """`mgh-reporter run` (SIGHUP re-reads `config_path`)."""
    with Engine.of(config.outbox).instance_lock():
        if not _wait_for_store(config):
            return Exit.OK
        return Service(config, config_path).serve()


def _wait_for_store(config: Config) -> bool:
    """An unreachable database at start is waited for (backoff up to 30 s, logged), not a
    crash loop; False when stopped meanwhile. Any other store problem raises."""
    log = structlog.get_logger("reporter.daemon")
    stop, reload = threading.Event(), threading.Event()
    delay = 0.5
    refused: str | None = None
    while True:
        try:
            Engine.of(config.outbox).open().close()
            return True
        except StoreError as exc:
            if exc.needs_init:
                refused = _upgrade(config, log, refused)
                if refused is None:
                    continue
                delay = max(delay, 5.0)
            elif not exc.busy:
                raise
            else:
                log.warning("store_unreachable", error=str(exc), retry_in=delay)
        with stop_on_signals(stop, reload):  # a SIGHUP here changes nothing: config is fresh
            if stop.wait(delay):
                return False
        delay = min(30.0, delay * 2)


def _upgrade(config: Config, log: Any, refused: str | None) -> str | None:
    """An outbox made by an older version (a package upgrade): migrate it as `init` would, so
    delivery goes on without a person. None when done; else why not (a PostgreSQL role that
    may not change the schema), logged once as a blocked cause naming `init`. An SQLite file
    that is missing is never made here (`init` does that, and a misspelt path must not become
    a new outbox)."""
    engine = Engine.of(config.outbox)
    if not engine.postgres and not engine.path.exists():
        raise StoreError(engine.missing() or f"no outbox at {engine.path}")
    try:
        engine.create().close()
    except StoreError as exc:
        if exc.busy:
            return refused or "busy"
        reason = (f"the outbox needs an upgrade this role may not make ({exc}): run"
                  " `mgh-reporter init` as the outbox's owner; delivery starts once it is done")
        if reason != refused:
            log.error("outbox_upgrade_refused", error=str(exc), hint=reason)
        return reason
    log.info("outbox_upgraded", outbox=config.outbox.where)
    return None
