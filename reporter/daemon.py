"""The long-running service and `drain`: the schedule, the backlog loop, sd_notify, health."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import sdnotify
import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from reporter.config import Config
from reporter.hub import Hub
from reporter.limiter import AdaptiveLimiter, RateLimiter
from reporter.metrics import Metrics, MetricsServer
from reporter.process import EXIT, outbox_lock, stop_on_signals
from reporter.relay import Relay
from reporter.store import Store, StoreError
from reporter.views import task_health

__all__ = ["Service", "drain", "run"]

MAINTENANCE_SECONDS = 300.0
# A tick keeps passing while a backlog is due (not one batch per interval), for at most this long
# before letting maintenance and the next tick in.
BACKLOG_SECONDS = 10.0


@dataclass
class _Parts:
    store: Store
    hub: Hub
    relay: Relay
    limiter: AdaptiveLimiter


def _build(config: Config, stop: threading.Event, metrics: Metrics | None) -> _Parts:
    publish = config.publish
    store = Store.open(config.outbox.path, config.outbox.busy_timeout_ms)
    limiter = AdaptiveLimiter(publish.concurrency, publish.max_concurrency)
    rate = RateLimiter(publish.max_requests_per_second) if publish.max_requests_per_second else None
    hub = Hub(
        config.aws,
        config.hub.region,
        observer=metrics.observe_call if metrics else None,
        limiter=limiter,
        rate=rate,
    )
    relay = Relay(store, hub, config, stop=stop)
    return _Parts(store, hub, relay, limiter)


def drain(config: Config, timeout: float) -> int:
    """Publish everything due now, retrying transient errors, then exit with the contract's code.

    Exit 5 counts only rows rejected since this drain started; a stop signal exits 3 and says so.
    """
    log = structlog.get_logger("reporter.drain")
    stop = threading.Event()
    deadline = time.monotonic() + timeout
    with outbox_lock(config.outbox.path), stop_on_signals(stop):
        parts = _build(config, stop, None)
        started = parts.relay.clock()
        parts.relay.recheck_now()  # a person may have fixed what blocked the last run
        try:
            while True:
                result = parts.relay.run_once()
                if result.blocked is not None:
                    log.error(
                        "drain_blocked",
                        error_code=result.blocked.code,
                        reason=result.blocked.message,
                    )
                    print(f"delivery blocked: {result.blocked.message}", file=sys.stderr)
                    return EXIT["blocked"]
                pending = parts.store.backlog().pending
                if pending == 0:
                    rejected = parts.store.rejected_since(started)
                    return EXIT["rejected"] if rejected else EXIT["ok"]
                if stop.is_set():
                    log.warning("drain_interrupted", pending=pending)
                    print(f"interrupted: {pending} rows still pending", file=sys.stderr)
                    return EXIT["pending"]
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("drain_timeout", pending=pending, timeout=timeout)
                    print(f"{pending} rows still pending at the timeout", file=sys.stderr)
                    return EXIT["pending"]
                status = parts.relay.status()
                if result.busy and status.backlogged:
                    continue
                now = parts.relay.clock()
                wait = 0.05 if status.wakeup is None else status.wakeup - now
                stop.wait(min(max(wait, 0.05), left))
        finally:
            parts.relay.close()
            parts.store.close()


class Service:
    """`run`: a scheduled relay with health, metrics and systemd notifications."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.log = structlog.get_logger("reporter.daemon")
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.parts = _build(config, self.stop, self.metrics)
        self.notifier = sdnotify.SystemdNotifier()
        self.heartbeat = time.monotonic()
        self.store_problem: str | None = None
        self.last_outcome = "starting"
        self._lock = threading.Lock()

    def health(self) -> str | None:
        """None while delivering normally; else why not (exit-4 causes, a broken store)."""
        blocked = self.parts.relay.gate.blocked
        return blocked.message if blocked is not None else self.store_problem

    def tick(self) -> None:
        """One scheduled pass (never raises: a failed pass is logged and retried next tick)."""
        relay = self.parts.relay
        self.heartbeat = time.monotonic()
        with self._lock:
            try:
                if relay.quiet():
                    return
                until = time.monotonic() + BACKLOG_SECONDS
                while True:
                    result = relay.run_once()
                    self.store_problem = None
                    if result.busy or result.blocked:
                        self.last_outcome = (
                            f"blocked: {result.blocked.code}"
                            if result.blocked
                            else f"sent {result.sent}, failed {result.failed}"
                        )
                        self._refresh()
                    if not (result.busy and relay.status().backlogged) or self.stop.is_set():
                        break
                    if time.monotonic() >= until:
                        break
            except StoreError as exc:
                relay.invalidate()
                self._store_failed(exc, "publish")
            finally:
                self.heartbeat = time.monotonic()

    def maintain(self) -> None:
        """Prune delivered rows past retention, checkpoint the WAL, refresh task gauges."""
        with self._lock:
            store = self.parts.store
            try:
                before = time.time() - self.config.outbox.retention_days * 86400
                pruned = store.prune(before)
                if pruned:
                    self.log.info("pruned", rows=pruned)
                store.checkpoint("TRUNCATE" if pruned else "PASSIVE")
                self._refresh(tasks=True)
            except StoreError as exc:
                self._store_failed(exc, "maintain")

    def _store_failed(self, exc: StoreError, job: str) -> None:
        """A busy lock is transient (next run retries); anything else makes us unhealthy."""
        if exc.busy:
            self.log.warning("store_busy", job=job, error=str(exc))
            return
        if self.store_problem != str(exc):
            self.log.error("store_error", job=job, error=str(exc))
        self.store_problem = str(exc)

    def _refresh(self, tasks: bool = False) -> None:
        store, m = self.parts.store, self.metrics
        backlog, relay = store.backlog(), self.parts.relay.status()
        m.set_backlog(backlog)
        m.blocked.set(1 if relay.blocked else 0)
        m.backoff.set(1 if relay.braking else 0)
        m.concurrency.set(self.parts.limiter.limit)
        if relay.last_success_at:
            m.last_success.set(relay.last_success_at)
        if tasks:
            health = task_health(store.tasks(), time.time(), self.config)
            for stream, counts in health["streams"].items():
                m.stale.labels(stream).set(counts["stale"])
                m.lapsing.labels(stream).set(counts["lapsing"])
            m.unmapped.set(health["unmapped"])
        self._status(backlog.pending)

    def _status(self, pending: int) -> None:
        blocked = self.parts.relay.gate.blocked
        text = f"pending {pending}; last: {self.last_outcome}"
        if blocked is not None:
            text = f"BLOCKED ({blocked.code}); pending {pending}"
        self.notifier.notify(f"STATUS={text}")

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; exit 0 after a graceful stop."""
        with stop_on_signals(self.stop):
            return self._serve()

    def _serve(self) -> int:
        config = self.config
        server = None
        address = config.metrics.address
        if address is not None:
            server = MetricsServer(address, self.metrics, self.health)
            server.start()
        scheduler = BackgroundScheduler(
            executors={"default": JobExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=config.publish.interval_seconds,
            id="publish",
            next_run_time=_now(),
        )
        scheduler.add_job(
            self.maintain,
            "interval",
            seconds=MAINTENANCE_SECONDS,
            id="maintain",
            next_run_time=_now(),
        )
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        watchdog = watchdog_usec / 1e6 if watchdog_usec else 0.0
        scheduler.start()
        self.log.info(
            "started",
            outbox=str(config.outbox.path),
            interval=config.publish.interval_seconds,
            metrics=config.metrics.listen,
            pid=os.getpid(),
        )
        self.notifier.notify("READY=1\nSTATUS=started")
        beat = watchdog / 2 if watchdog else 1.0
        while not self.stop.wait(min(beat, 1.0)):
            alive = max(self.heartbeat, self.parts.relay.status().progress_at)
            if watchdog and time.monotonic() - alive < watchdog:
                self.notifier.notify("WATCHDOG=1")
        self.notifier.notify("STOPPING=1\nSTATUS=stopping")
        self.log.info("stopping")
        scheduler.shutdown(wait=False)
        # A pass in flight sees the stop flag, records what finished and returns.
        acquired = self._lock.acquire(timeout=config.publish.stop_timeout_seconds + 1.5)
        self.parts.relay.close()
        if server is not None:
            server.stop()
        if acquired:
            self.parts.store.close()
        self.log.info("stopped", clean=acquired)
        return EXIT["ok"]


def _now() -> Any:
    from datetime import datetime

    return datetime.now().astimezone()


def run(config: Config) -> int:
    """`mgh-reporter run`."""
    with outbox_lock(config.outbox.path):
        return Service(config).serve()
