"""`run`: the long-running service: the schedule, the backlog loop, reload, sd_notify, health."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import sdnotify
import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from reporter import config as config_mod
from reporter import live, logs
from reporter.config import Config, ConfigError
from reporter.files import UnsafeFile
from reporter.metrics import Metrics, MetricsServer
from reporter.model import Backlog, StoreError
from reporter.process import EXIT, stop_on_signals
from reporter.relay import Relay
from reporter.rows import clip
from reporter.stores import Wakeups
from reporter.views import task_health
from reporter.wiring import build

__all__ = ["RESTART_ONLY", "Service", "run"]

MAINTENANCE_SECONDS = 300.0
# A store problem is over once no failure came for this long (two WAL checks and a bit).
STORE_HOLD_SECONDS = 12.0
# Settings a reload refuses to change (the running config stays): moving the outbox or the stream
# under a running daemon would split one history in two; the Hub client is built once.
RESTART_ONLY = (
    ("outbox", "path"),
    ("outbox", "url"),
    ("hub", "progress_update_stream"),
    ("hub", "region"),
    ("aws", None),
)
# A tick keeps passing while a backlog is due (not one batch per interval), for at most this long
# before letting maintenance and the next tick in.
BACKLOG_SECONDS = 10.0
# The WAL: checked every WAL_SECONDS; past WAL_TRUNCATE_BYTES it is truncated back, waiting at
# most CHECKPOINT_BUSY_MS for readers, so a reader that held checkpoints back costs nothing once
# it is gone.
WAL_SECONDS = 5.0
# The live state file is rewritten when it changes, and at least this often (its heartbeat).
LIVE_REFRESH_SECONDS = 10.0
WAL_TRUNCATE_BYTES = 4 * 1024 * 1024
CHECKPOINT_BUSY_MS = 200
DAMAGED_HINT = (
    "the daemon no longer writes to the outbox nor checkpoints it, so nothing a reader can still "
    "read is overwritten: copy the file with its -wal, check it (sqlite3 FILE 'PRAGMA "
    "integrity_check'), then restart the daemon"
)
OUTBOX_LOST_HINT = (
    "restore the file, or run `mgh-reporter init` for a new one; delivery resumes by itself "
    "once a valid outbox is back at this path (rows in the lost file are not in the new one)"
)


class Service:
    """`run`: a scheduled relay with health, metrics and systemd notifications."""

    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.log = structlog.get_logger("reporter.daemon")
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.metrics = Metrics()
        self.parts = build(config, self.stop, self.metrics)
        self._scheduler: BackgroundScheduler | None = None
        self._server: MetricsServer | None = None
        self.notifier = sdnotify.SystemdNotifier()
        self.heartbeat = time.monotonic()
        self.store_problem: str | None = None
        self.last_outcome = "starting"
        self._lock = threading.Lock()
        self._backlog: Backlog | None = None
        self._live_error: str | None = None
        self._live_path: Path | None = None
        try:
            self._live_path = live.daemon_path(config.outbox.live_state_path, config.outbox.where)
        except UnsafeFile as exc:  # delivery goes on; health stays on /healthz and in the log
            self._live_error = str(exc)
            self.log.error("live_state_unavailable", error=str(exc))
        self._live_last: live.LiveState | None = None
        self._live_written = 0.0
        self._wal_warned = False
        self._next_wal_check = 0.0
        self._problem_cause: str | None = None
        self._lost = False
        # Passes run on one publisher thread: every interval (its own timed wait), on a wake-up
        # (a commit to the outbox), and when the next retry or check falls due. APScheduler
        # runs only maintenance.
        self._wake = threading.Event()
        self._waker: Wakeups | None = None
        self._busy_since: float | None = None  # monotonic: when transient failures began
        self._signal_fd: int | None = None  # wakes the main loop (signals, `shutdown`)
        self._busy = False
        self._busy_pass = False  # a pass is running (the stall check applies only then)
        # The publisher's own health: why its last pass failed (a bug, never a row: rows are
        # judged without raising), and whether its thread ended.
        self.pass_error: str | None = None
        self.publisher_died: str | None = None
        self._publisher: threading.Thread | None = None
        # Set once the outbox file cannot be trusted (corrupt, not a database, its -wal gone or
        # replaced): from then on the store is never touched again, not even closed (closing
        # the last connection would checkpoint a stale log into the file).
        self.damaged: str | None = None
        self._failed_at = 0.0  # monotonic: the last store failure (see _store_ok)
        self._distrust(self.parts.store.integrity())

    def health(self) -> str | None:
        """None while delivering normally; else why not (exit-4 causes, a broken store, a
        publisher that died, keeps failing or is stalled)."""
        blocked = self.parts.relay.gate.blocked
        if blocked is not None:
            return blocked.message
        if self.store_problem is not None:
            return self.store_problem
        if self.publisher_died is not None:
            return f"publisher stopped: {self.publisher_died}"
        if self.pass_error is not None:
            return f"publisher failing: {self.pass_error}"
        idle = time.monotonic() - max(self.heartbeat, self.parts.relay.status().progress_at)
        if self._publisher is not None and self._busy_pass and idle > self.stall_seconds():
            return f"publisher stalled: no progress for {idle:.0f} s"
        return None

    def stall_seconds(self) -> float:
        """A pass that shows no progress this long is stalled: longer than any call may take
        (timeouts x attempts) and than a few intervals."""
        aws, interval = self.config.aws, self.config.publish.interval_seconds
        calls = (aws.connect_timeout_seconds + aws.read_timeout_seconds) * aws.max_attempts
        return max(60.0, 3 * interval + 10.0, calls + 10.0)

    def tick(self) -> None:
        """One scheduled pass (never raises: a failed pass is logged and retried next tick)."""
        self.heartbeat = time.monotonic()
        with self._lock:
            self._busy_pass = True
            try:
                if self.damaged or self._outbox_lost():
                    return  # (a replaced outbox is reopened; its old -wal is no damage)
                if self._distrust(self.parts.store.damage()):
                    return
                self._tend_wal()
                self.parts.beat()
                relay = self.parts.relay
                self._busy = False
                if relay.quiet():
                    if self.store_problem is not None:
                        self._store_ok()  # nothing to do, and no failure: a quiet spell
                    return
                until = time.monotonic() + BACKLOG_SECONDS
                while True:
                    result = relay.run_once()
                    self._busy = self._busy or result.busy
                    self._store_ok()
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
                if self.pass_error is not None:
                    self.log.info("pass_recovered", previous_error=self.pass_error)
                    self.pass_error = None
            except StoreError as exc:
                self.parts.relay.invalidate()
                self._store_failed(exc, "publish")
            except Exception as exc:  # a bug: logged, retried next pass, shown by health
                self.parts.relay.invalidate()
                error = f"{type(exc).__name__}: {clip(exc)}"
                if error != self.pass_error:
                    self.log.error("pass_failed", error=error, exc_info=True)
                self.pass_error = error
            finally:
                self._busy_pass = False
                self.heartbeat = time.monotonic()
                self._write_live()

    def shutdown(self) -> None:
        """Stop gracefully, as SIGTERM does (for code that runs the service in-process)."""
        self.stop.set()
        if self._signal_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._signal_fd, b"\0")

    def wake(self) -> None:
        """Ask for a pass now (a commit seen by the waker); cheap, any thread. Asks made while a
        pass runs are answered by one more pass after it."""
        self._wake.set()

    def _publish(self) -> None:
        """The publisher thread: a pass whenever asked or due, until stopped. Should it ever
        end otherwise, it says so and wakes the main thread, which exits non-zero (systemd
        restarts the service) rather than serve on with nobody delivering."""
        try:
            while not self.stop.is_set():
                self._wake.wait(self._until_due())
                self._wake.clear()
                if self.stop.is_set():
                    return
                self.tick()
        except BaseException as exc:
            self.publisher_died = f"{type(exc).__name__}: {clip(exc)}"
            self.log.critical("publisher_died", error=self.publisher_died, exc_info=True)
            self.shutdown()

    def _until_due(self) -> float:
        """How long to wait for a wake-up before a pass is due anyway: until the relay's next
        retry or check (if sooner than the next scheduled tick); a full interval after a pass
        that found nothing to do, so a wake-up time that cannot be served does not spin."""
        interval = self.config.publish.interval_seconds
        wakeup = self.parts.relay.status().wakeup
        if wakeup is None:
            return interval
        left = wakeup - self.parts.store.clock()  # due times are on the store's clock
        if left <= 0 and not self._busy:
            return interval  # due, yet the last pass had nothing to do: wait for the schedule
        return min(interval, max(left, 0.0))

    def _distrust(self, problem: str | None) -> bool:
        """The outbox cannot be trusted any more (said once, loudly): unusable until a restart;
        True when it is so."""
        if problem is None:
            return self.damaged is not None
        if self.damaged is None:
            self.damaged = problem
            self.store_problem = problem
            self.log.critical("outbox_damaged", error=problem, hint=DAMAGED_HINT)
        return True

    def _outbox_lost(self) -> bool:
        """Each pass (one stat): is the open file still the outbox at its path? If it was deleted
        or replaced, say so once, stop writing to it, and reopen once a valid outbox is back (the
        waker wakes us when the directory changes)."""
        problem = self.parts.store.file_problem()
        if problem is None:
            return False
        if not self._lost:  # one loud event per loss, however it changes until it is back
            self._lost = True
            self.log.error("outbox_lost", error=problem, hint=OUTBOX_LOST_HINT)
        self.store_problem = problem
        return not self._reopen()

    def _reopen(self) -> bool:
        path = self.config.outbox.path
        if not path.exists():
            return False
        try:
            parts = build(self.config, self.stop, self.metrics)
        except StoreError as exc:
            if not exc.needs_init:
                return False
            try:
                self.config.outbox.engine.create().close()
                parts = build(self.config, self.stop, self.metrics)
            except StoreError:
                return False
        old, self.parts = self.parts, parts
        old.relay.close()
        old.store.close()
        self._lost = False
        self._failed_at = 0.0  # a new file: the old one's troubles are not its own
        self._store_ok()
        if self._waker is not None:
            self._waker.rearm()
        self.log.warning("outbox_reopened", outbox=str(path))
        return True

    def _write_live(self, stopped: bool = False) -> None:
        """Publish the live state outside the outbox (and the WAL gauge); never raises. After a
        clean stop it says "stopped" (no daemon, and no fault)."""
        relay, backlog = self.parts.relay.status(), self._backlog
        wal = self.parts.store.wal_bytes()
        self.metrics.wal_bytes.set(wal)
        health, cause = "ok", None
        if relay.blocked is not None:
            health, cause = "blocked", relay.blocked.message
        if self.store_problem is not None:
            health, cause = "unusable", self.store_problem
        if stopped:
            health, cause = "stopped", None
        state = live.LiveState(
            health=health,
            cause=cause,
            heartbeat=time.time(),
            pid=os.getpid(),
            outbox=self.config.outbox.where,
            interval_seconds=self.config.publish.interval_seconds,
            pending=backlog.pending if backlog else None,
            oldest_pending_seconds=None
            if backlog is None or backlog.oldest_created_at is None
            else round(max(0.0, self.parts.store.clock() - backlog.oldest_created_at), 3),
            dead_letters=backlog.dead_letters if backlog else None,
            outage_backoff=relay.braking,
            last_success=relay.last_success_at,
            last_error=relay.last_failure,
            wal_bytes=wal,
        )
        unchanged = replace(state, heartbeat=0.0) == self._live_last
        if unchanged and time.monotonic() - self._live_written < LIVE_REFRESH_SECONDS:
            return  # idle: the heartbeat only needs refreshing every few seconds
        if self._live_path is None:
            return
        try:
            live.write(self._live_path, state)
            self._live_last, self._live_written = replace(state, heartbeat=0.0), time.monotonic()
            self._live_error = None
        except OSError as exc:
            if self._live_error != exc.strerror:
                self.log.error("live_state_unwritable", path=str(self._live_path),
                               error=exc.strerror)
            self._live_error = exc.strerror

    def _tend_wal(self) -> None:
        """Every few seconds: warn while the WAL grows past the threshold; truncate it back when
        readers allow (between passes; a reader is waited for at most CHECKPOINT_BUSY_MS)."""
        now = time.monotonic()
        if now < self._next_wal_check:
            return
        self._next_wal_check = now + WAL_SECONDS
        store = self.parts.store
        size = store.wal_bytes()
        self.metrics.wal_bytes.set(size)
        if size > self.config.outbox.wal_warning_bytes and not self._wal_warned:
            self._wal_warned = True
            self.log.warning(
                "wal_growing",
                wal_bytes=size,
                hint="a long-lived read transaction on the outbox (a tool or sqlite3 shell) "
                "holds checkpoints back; it is truncated once that reader ends",
            )
        if size > WAL_TRUNCATE_BYTES and store.checkpoint("TRUNCATE", busy_ms=CHECKPOINT_BUSY_MS):
            self._wal_warned = False
            self.log.info("wal_truncated", wal_bytes_before=size, wal_bytes=store.wal_bytes())

    def maintain(self) -> None:
        """Prune delivered rows past retention, checkpoint the WAL, refresh task gauges."""
        with self._lock:
            if self.damaged:
                return
            store = self.parts.store
            try:
                before = store.clock() - self.config.outbox.retention_days * 86400
                pruned = store.prune(before)
                if pruned:
                    self.log.info("pruned", rows=pruned)
                store.checkpoint("TRUNCATE" if pruned else "PASSIVE")
                self._refresh(tasks=True)
            except StoreError as exc:
                self._store_failed(exc, "maintain")

    def _store_ok(self) -> None:
        """A pass went through. A problem is over once no failure came for STORE_HOLD_SECONDS:
        an error that recurs between good passes (an immutable file whose checkpoints fail, a
        disk that fills again) stays one condition, not a flapping /healthz."""
        if self.store_problem is not None:
            if time.monotonic() - self._failed_at < STORE_HOLD_SECONDS:
                return
            self.log.info("store_recovered", previous_error=self.store_problem)
        self.store_problem = self._problem_cause = self._busy_since = None

    def _store_failed(self, exc: StoreError, job: str) -> None:
        """A busy lock or a lost database connection is transient (the next pass retries, the
        store reconnects with backoff) until it has lasted [outbox] unreachable_after_seconds;
        a damaged file is distrusted for good (with what quick_check finds); anything else makes
        us unhealthy at once."""
        if exc.damaged:
            found = self.parts.store.integrity()
            self._distrust(f"{exc}" + (f" ({found})" if found else ""))
            return
        if exc.busy:
            now = time.monotonic()
            if self._busy_since is None:
                self._busy_since = now
            if now - self._busy_since < self.config.outbox.unreachable_after_seconds:
                if self._problem_cause != exc.cause:
                    self.log.warning("store_busy", job=job, error=str(exc))
                self._problem_cause = exc.cause
                return
        if self._problem_cause != exc.cause:
            self.log.error("store_error", job=job, error=str(exc))
        self._problem_cause = exc.cause
        self.store_problem = str(exc)
        self._failed_at = time.monotonic()

    def _refresh(self, tasks: bool = False) -> None:
        store, m = self.parts.store, self.metrics
        backlog, relay = store.backlog(), self.parts.relay.status()
        self._backlog = backlog
        m.set_backlog(backlog)
        m.blocked.set(1 if relay.blocked else 0)
        m.backoff.set(1 if relay.braking else 0)
        m.concurrency.set(self.parts.limiter.limit)
        if relay.last_success_at:
            m.last_success.set(relay.last_success_at)
        if tasks:
            health = task_health(store.tasks(), store.clock(), self.config)
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

    def reload(self) -> bool:
        """SIGHUP: re-read the config file and apply it between passes. An invalid file, or one
        that changes a restart-only setting, keeps the running config (logged with the reason).
        Returns True when the new config is in force."""
        if self.config_path is None:
            self.log.warning("reload_ignored", reason="no config file to re-read")
            return False
        try:
            new = config_mod.load(self.config_path)
        except ConfigError as exc:
            self.log.error("reload_failed", config=str(self.config_path), error=str(exc))
            return False
        changed = _restart_only_changes(self.config, new)
        if changed:
            self.log.error(
                "reload_refused",
                config=str(self.config_path),
                changed=changed,
                reason="these settings need a restart; the running config stays",
            )
            return False
        with self._lock:  # between passes: nothing in flight
            old, self.config = self.config, new
            logs.configure(new.log.level, new.log.format)
            parts = self.parts
            parts.limiter.resize(new.publish.max_concurrency)
            parts.relay.close()
            parts.relay = Relay(parts.store, parts.hub, new, clock=parts.store.clock,
                                stop=self.stop)
            publish = new.publish
            parts.membership.settings(publish.interval_seconds, publish.max_requests_per_second)
            try:
                parts.beat()
            except StoreError as exc:
                self._store_failed(exc, "reload")
            if parts.membership.budget is not None:
                parts.apply_budget(parts.membership.budget)
            if new.metrics != old.metrics:
                self._start_metrics()
        self.log.info("reloaded", config=str(self.config_path))
        return True

    def _start_metrics(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        address = self.config.metrics.address
        if address is not None:
            self._server = MetricsServer(address, self.metrics, self.health)
            self._server.start()

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT (SIGHUP reloads); exit 0 after a graceful stop."""
        with stop_on_signals(self.stop, self.reload_requested):
            return self._serve()

    def _serve(self) -> int:
        config = self.config
        self._start_metrics()
        scheduler = self._scheduler = BackgroundScheduler(
            executors={"default": JobExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
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
        self._wake.set()  # the first pass at once
        publisher = threading.Thread(target=self._publish, name="publish", daemon=True)
        self._publisher = publisher
        publisher.start()
        self._waker = config.outbox.engine.wakeups(self.wake)
        self._waker.start()
        self.log.info(
            "started",
            outbox=config.outbox.where,
            interval=config.publish.interval_seconds,
            metrics=config.metrics.listen,
            pid=os.getpid(),
        )
        self.notifier.notify("READY=1\nSTATUS=started")
        # The main thread sleeps until a signal arrives (its handler runs here, and the signal's
        # wake-up byte ends the select) or the next watchdog ping is due: nothing else wakes it.
        beat = watchdog / 2 if watchdog else None
        signals, wakeup = os.pipe()
        os.set_blocking(signals, False)
        os.set_blocking(wakeup, False)
        previous_fd = signal.set_wakeup_fd(wakeup)
        self._signal_fd = wakeup
        while not self.stop.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.notifier.notify("RELOADING=1")
                self.reload()
                self.notifier.notify("READY=1")
            alive = max(self.heartbeat, self.parts.relay.status().progress_at)
            if watchdog and time.monotonic() - alive < watchdog:
                self.notifier.notify("WATCHDOG=1")
            select.select([signals], [], [], beat)
            with contextlib.suppress(BlockingIOError):
                os.read(signals, 512)
        signal.set_wakeup_fd(previous_fd)
        self._signal_fd = None
        os.close(signals)
        os.close(wakeup)
        self.notifier.notify("STOPPING=1\nSTATUS=stopping")
        self.log.info("stopping")
        scheduler.shutdown(wait=False)
        self._waker.close()
        self._wake.set()
        # A pass in flight sees the stop flag, records what finished and returns.
        acquired = self._lock.acquire(timeout=config.publish.stop_timeout_seconds + 1.5)
        self.parts.relay.close()
        if self._server is not None:
            self._server.stop()
        if acquired and self.damaged:
            self._write_live()
            self.log.error("stopped", clean=True, error=self.damaged)
            logs.flush()
            os._exit(EXIT["error"])  # no finaliser may close (and so checkpoint) the store
        if acquired:
            self.parts.membership.leave()
            self.parts.store.close()
            self._live_last = None
            self._write_live(stopped=True)  # no daemon, and status says so (not "hung")
        if self.publisher_died is not None:
            self.log.error("stopped", clean=acquired, error=self.publisher_died)
            return EXIT["error"]
        self.log.info("stopped", clean=acquired)
        return EXIT["ok"]


def _now() -> datetime:
    return datetime.now().astimezone()


def _restart_only_changes(old: Config, new: Config) -> list[str]:
    changed = []
    for section, key in RESTART_ONLY:
        before, after = getattr(old, section), getattr(new, section)
        if key is None and before != after:
            changed.append(f"[{section}]")
        elif key is not None and getattr(before, key) != getattr(after, key):
            changed.append(f"[{section}] {key}")
    return changed


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
    while True:
        try:
            config.outbox.engine.open().close()
            return True
        except StoreError as exc:
            if not exc.busy:
                raise
            log.warning("store_unreachable", error=str(exc), retry_in=delay)
        with stop_on_signals(stop, reload):  # a SIGHUP here changes nothing: config is fresh
            if stop.wait(delay):
                return False
        delay = min(30.0, delay * 2)
