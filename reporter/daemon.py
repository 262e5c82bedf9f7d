"""`run`: the long-running service, wired from its roles (the way huey's consumer is): the
supervisor on the main thread (signals, systemd, reload), the publisher's thread (passes), the
upkeep schedule, the store's health and the live-state writer."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog

from reporter.config import Config
from reporter.livewriter import LiveWriter
from reporter.metrics import Metrics
from reporter.model import StoreError
from reporter.process import EXIT, stop_on_signals
from reporter.publisher import Publisher
from reporter.storehealth import StoreHealth
from reporter.stores import Wakeups
from reporter.supervisor import RESTART_ONLY, Supervisor
from reporter.upkeep import Upkeep
from reporter.wiring import build

__all__ = ["RESTART_ONLY", "Service", "run"]


class Service:
    """`run`: one delivering process. Its roles share the config, the parts (store, relay,
    Hub, limiter, membership; replaced when the outbox is reopened), the stop flag, and `lock`,
    held by a pass, upkeep and a reload so that they never overlap."""

    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.lock = threading.Lock()
        self.metrics = Metrics()
        self.parts = build(config, self.stop, self.metrics)
        self.waker: Wakeups | None = None
        self.store_health = StoreHealth(self)
        self.publisher = Publisher(self)
        self.live = LiveWriter(self)
        self.upkeep = Upkeep(self)
        self.supervisor = Supervisor(self)
        self.store_health.distrust(self.parts.store.integrity())

    def health(self) -> str | None:
        """None while delivering normally; else why not (exit-4 causes, a broken store, a
        publisher that died, keeps failing or is stalled)."""
        blocked = self.parts.relay.gate.blocked
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

    def rearm(self) -> None:
        """The outbox was reopened: the waker watches the new file."""
        if self.waker is not None:
            self.waker.rearm()

    def shutdown(self) -> None:
        """Stop gracefully, as SIGTERM does (for code that runs the service in-process)."""
        self.stop.set()
        self.supervisor.wake()

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT (SIGHUP reloads); exit 0 after a graceful stop."""
        with stop_on_signals(self.stop, self.reload_requested):
            return self.supervisor.serve()


def run(config: Config, config_path: Path | None = None) -> int:
    """`mgh-reporter run` (SIGHUP re-reads `config_path`)."""
    with config.outbox.engine.instance_lock():
        if not _wait_for_store(config):
            return EXIT["ok"]
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
            config.outbox.engine.open().close()
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
    engine = config.outbox.engine
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
