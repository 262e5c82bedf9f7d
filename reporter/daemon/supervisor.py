"""The daemon's supervisor, on the main thread: signals (SIGTERM/SIGINT stop, SIGHUP reloads),
the systemd notifications and watchdog, the metrics server, the upkeep schedule, and the
ordered stop that lets a pass in flight finish."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from datetime import datetime

import sdnotify
import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from reporter import config as config_mod
from reporter import logs
from reporter.config import Config, ConfigError
from reporter.daemon.live_writer import LiveWriter
from reporter.daemon.metrics import MetricsServer
from reporter.daemon.publisher import Publisher
from reporter.daemon.shared import Shared
from reporter.daemon.store_health import StoreHealth
from reporter.daemon.upkeep import MAINTENANCE_SECONDS, Upkeep
from reporter.delivery.relay import Relay
from reporter.exits import Exit
from reporter.stores import Engine, Wakeups
from reporter.stores.contract import StoreError

__all__ = ["LISTEN_RETRY_SECONDS", "RESTART_ONLY", "Supervisor", "restart_only_changes"]

LISTEN_RETRY_SECONDS = 10.0  # a listener that could not bind is tried again this often
NOTIFY_TIMEOUT = 1.0  # seconds a message to the service manager may wait for room in its queue

# Settings a reload refuses to change (the running config stays): moving the outbox or the stream
# under a running daemon would split one history in two; the Hub client is built once.
RESTART_ONLY = (
    ("outbox", "path"),
    ("outbox", "url"),
    ("hub", "progress_update_stream"),
    ("hub", "region"),
    ("aws", None),
)


class Supervisor:
    """Runs the service until it is stopped; reloads between passes."""

    def __init__(self, shared: Shared, publisher: Publisher, upkeep: Upkeep,
                 store_health: StoreHealth, live: LiveWriter,
                 health: Callable[[], str | None]) -> None:
        self.shared, self.publisher, self.upkeep = shared, publisher, upkeep
        self.store_health, self.live, self._health = store_health, live, health
        self.waker: Wakeups | None = None
        self.log = structlog.get_logger("reporter.daemon")
        self.notifier = sdnotify.SystemdNotifier()
        if self.notifier.socket is not None:  # a manager that stops reading (its queue full)
            self.notifier.socket.settimeout(NOTIFY_TIMEOUT)  # costs a message, never a hang
        self.server: MetricsServer | None = None
        self.listen_problem: str | None = None  # the listener could not bind (why)
        self.signal_fd: int | None = None  # wakes the main loop (signals, `shutdown`)

    def status(self, pending: int) -> None:
        """systemd's STATUS line."""
        blocked = self.shared.parts.relay.gate.blocked
        text = f"pending {pending}; last: {self.publisher.last_outcome}"
        if blocked is not None:
            text = f"BLOCKED ({blocked.code}); pending {pending}"
        self.notifier.notify(f"STATUS={text}")

    def start_metrics(self, at_start: bool = False) -> None:
        """(Re)start the metrics server on the configured address. A port another program
        holds is one line naming it and the key: at start in a terminal, the run ends there
        (ConfigError, exit 1); under systemd (where exiting would be a restart loop) and on a
        reload, delivery goes on without the listener, which is tried again every
        LISTEN_RETRY_SECONDS until it binds."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        address = self.shared.config.metrics.address
        if address is None:
            self.listen_problem = None
            return
        try:
            self.server = MetricsServer(address, self.shared.metrics, self._health)
        except OSError as exc:
            where = self.shared.config_path or "the config file"
            problem = (f"cannot listen on {address[0]}:{address[1]} for /metrics and /healthz:"
                       f" {exc.strerror or exc}; change [metrics] listen in {where} (\"\" turns"
                       " the listener off) or free the port")
            if at_start and not os.environ.get("NOTIFY_SOCKET"):
                raise ConfigError(problem) from None
            if problem != self.listen_problem:
                self.log.error("metrics_listen_failed", error=problem,
                               retry_in=LISTEN_RETRY_SECONDS)
            self.listen_problem = problem
            return
        if self.listen_problem is not None:
            self.log.info("metrics_listening", listen=f"{address[0]}:{address[1]}")
        self.listen_problem = None
        self.server.start()

    def retry_metrics(self) -> None:
        """The scheduler's job: bind the listener that could not bind before."""
        if self.listen_problem is not None and self.server is None:
            self.start_metrics()

    def reload(self) -> bool:
        """SIGHUP: re-read the config file and apply it between passes. An invalid file, or one
        that changes a restart-only setting, keeps the running config (logged with the reason).
        Returns True when the new config is in force."""
        shared = self.shared
        path = shared.config_path
        if path is None:
            self.log.warning("reload_ignored", reason="no config file to re-read")
            return False
        try:
            new = config_mod.load(path)
        except ConfigError as exc:
            self.log.error("reload_failed", config=str(path), error=str(exc))
            return False
        changed = restart_only_changes(shared.config, new)
        if changed:
            self.log.error("reload_refused", config=str(path), changed=changed,
                           reason="these settings need a restart; the running config stays")
            return False
        with shared.lock:  # between passes: nothing in flight
            old, shared.config = shared.config, new
            logs.configure(new.log.level, new.log.format)
            parts = shared.parts
            parts.limiter.resize(new.publish.max_concurrency)
            parts.relay.close()
            parts.relay = Relay(parts.store, parts.hub, new, clock=parts.store.clock,
                                stop=shared.stop)
            publish = new.publish
            parts.membership.settings(publish.interval_seconds, publish.max_requests_per_second)
            try:
                parts.beat()
            except StoreError as exc:
                self.store_health.failed(exc, "reload")
            if parts.membership.budget is not None:
                parts.apply_budget(parts.membership.budget)
            if new.metrics != old.metrics:
                self.start_metrics()
        self.log.info("reloaded", config=str(path))
        return True

    def serve(self) -> int:
        """Start the parts, then sleep until a signal arrives (its handler runs here, and the
        signal's wake-up byte ends the select) or the next watchdog ping is due."""
        shared = self.shared
        config = shared.config
        self.start_metrics(at_start=True)
        scheduler = BackgroundScheduler(
            executors={"default": JobExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        scheduler.add_job(self.upkeep.maintain, "interval", seconds=MAINTENANCE_SECONDS,
                          id="maintain", next_run_time=datetime.now().astimezone())
        scheduler.add_job(self.retry_metrics, "interval", seconds=LISTEN_RETRY_SECONDS,
                          id="listen")
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        watchdog = watchdog_usec / 1e6 if watchdog_usec else 0.0
        scheduler.start()
        self.publisher.start()
        waker = Engine.of(config.outbox).wakeups(self.publisher.wake)
        self.waker = waker
        waker.start()
        self.log.info("started", outbox=config.outbox.where,
                      interval=config.publish.interval_seconds, metrics=config.metrics.listen,
                      pid=os.getpid())
        self.notifier.notify("READY=1\nSTATUS=started")
        beat = watchdog / 2 if watchdog else None
        signals, wakeup = os.pipe()
        os.set_blocking(signals, False)
        os.set_blocking(wakeup, False)
        previous_fd = signal.set_wakeup_fd(wakeup)
        self.signal_fd = wakeup
        while not shared.stop.is_set():
            if shared.reload_requested.is_set():
                shared.reload_requested.clear()
                self.notifier.notify("RELOADING=1")
                self.reload()
                self.notifier.notify("READY=1")
            alive = max(self.publisher.heartbeat, shared.parts.relay.status().progress_at)
            if watchdog and time.monotonic() - alive < watchdog:
                self.notifier.notify("WATCHDOG=1")
            select.select([signals], [], [], beat)
            with contextlib.suppress(BlockingIOError):
                os.read(signals, 512)
        signal.set_wakeup_fd(previous_fd)
        self.signal_fd = None
        os.close(signals)
        os.close(wakeup)
        scheduler.shutdown(wait=False)
        waker.close()
        return self._stop()

    def rearm(self) -> None:
        """The outbox was reopened: the waker watches the new file."""
        if self.waker is not None:
            self.waker.rearm()

    def wake(self) -> None:
        """End the main loop's wait (after `stop` was set from another thread)."""
        if self.signal_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.signal_fd, b"\0")

    def _stop(self) -> int:
        """A pass in flight sees the stop flag, records what finished and returns; then the
        relay, the server and the store close, and the live state says "stopped"."""
        shared = self.shared
        self.notifier.notify("STOPPING=1\nSTATUS=stopping")
        self.log.info("stopping")
        self.publisher.wake()
        acquired = shared.lock.acquire(
            timeout=shared.config.publish.stop_timeout_seconds + 1.5)
        shared.parts.relay.close()
        if self.server is not None:
            self.server.stop()
        damaged = self.store_health.damaged
        if acquired and damaged:
            self.live.write()
            self.log.error("stopped", clean=True, error=damaged)
            logs.flush()
            os._exit(Exit.ERROR)  # no finaliser may close (and so checkpoint) the store
        if acquired:
            shared.parts.membership.leave()
            shared.parts.store.close()
            self.live.write(stopped=True)  # no daemon, and status says so (not "hung")
        died = self.publisher.died
        if died is not None:
            self.log.error("stopped", clean=acquired, error=died)
            return Exit.ERROR
        self.log.info("stopped", clean=acquired)
        return Exit.OK


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The restart-only settings `new` would change."""
    changed = []
    for section, key in RESTART_ONLY:
        before, after = getattr(old, section), getattr(new, section)
        if key is None and before != after:
            changed.append(f"[{section}]")
        elif key is not None and getattr(before, key) != getattr(after, key):
            changed.append(f"[{section}] {key}")
    return changed

