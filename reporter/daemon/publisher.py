"""The daemon's publisher: one thread that runs a pass whenever a commit wakes it, a retry or
check falls due, or the interval passes; a backlog keeps it passing (for a bounded time), and
its own failures are caught, logged once and shown by health."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from reporter.daemon.live_writer import LiveWriter
from reporter.daemon.shared import Shared
from reporter.daemon.store_health import StoreHealth
from reporter.rows import clip
from reporter.stores.contract import StoreError

__all__ = ["BACKLOG_SECONDS", "Publisher"]

# A pass keeps going while a backlog is due (not one batch per interval), for at most this long
# before letting maintenance and the next wake-up in.
BACKLOG_SECONDS = 10.0


class Publisher:
    """Passes on a thread of its own; `tick` is one pass (never raises)."""

    def __init__(self, shared: Shared, store_health: StoreHealth, live: LiveWriter,
                 refresh: Callable[[], None], shutdown: Callable[[], None]) -> None:
        self.shared, self.store_health, self.live = shared, store_health, live
        self._refresh, self._shutdown = refresh, shutdown
        self.log = structlog.get_logger("reporter.daemon")
        self.heartbeat = time.monotonic()
        self.last_outcome = "starting"
        self._wake = threading.Event()
        self.busy = False  # the last pass had work
        self.in_pass = False  # a pass is running (the stall check applies only then)
        # Why the last pass failed (a bug, never a row: rows are judged without raising), and
        # why the thread ended, if it did.
        self.error: str | None = None
        self.died: str | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """The first pass at once, then whenever asked or due."""
        self._wake.set()
        self.thread = threading.Thread(target=self._run, name="publish", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """Ask for a pass now (a commit seen by the waker); cheap, any thread. Asks made while a
        pass runs are answered by one more pass after it."""
        self._wake.set()

    def stalled(self) -> str | None:
        """Why the publisher is not healthy: it died, keeps failing, or a pass shows no
        progress for longer than any call may take."""
        if self.died is not None:
            return f"publisher stopped: {self.died}"
        if self.error is not None:
            return f"publisher failing: {self.error}"
        idle = time.monotonic() - max(self.heartbeat, self.shared.parts.relay.status().progress_at)
        if self.thread is not None and self.in_pass and idle > self.stall_seconds():
            return f"publisher stalled: no progress for {idle:.0f} s"
        return None

    def stall_seconds(self) -> float:
        """A pass that shows no progress this long is stalled: longer than any call may take
        (timeouts x attempts) and than a few intervals."""
        config = self.shared.config
        aws, interval = config.aws, config.publish.interval_seconds
        calls = (aws.connect_timeout_seconds + aws.read_timeout_seconds) * aws.max_attempts
        return max(60.0, 3 * interval + 10.0, calls + 10.0)

    def _run(self) -> None:
        """Should the thread ever end other than by a stop, it says so and wakes the main
        thread, which exits non-zero (systemd restarts the service) rather than serve on with
        nobody delivering."""
        stop = self.shared.stop
        try:
            while not stop.is_set():
                self._wake.wait(self.until_due())
                self._wake.clear()
                if stop.is_set():
                    return
                self.tick()
        except BaseException as exc:
            self.died = f"{type(exc).__name__}: {clip(exc)}"
            self.log.critical("publisher_died", error=self.died, exc_info=True)
            self._shutdown()

    def until_due(self) -> float:
        """How long to wait for a wake-up before a pass is due anyway: until the relay's next
        retry or check (if sooner than the interval); a full interval after a pass that found
        nothing to do, so a wake-up time that cannot be served does not spin."""
        parts = self.shared.parts
        interval = self.shared.config.publish.interval_seconds
        wakeup = parts.relay.status().wakeup
        if wakeup is None:
            return interval
        left = wakeup - parts.store.clock()  # due times are on the store's clock
        if left <= 0 and not self.busy:
            return interval
        return min(interval, max(left, 0.0))

    def tick(self) -> None:
        """One pass, continued while a backlog is due (never raises: a failed pass is logged
        and tried again at the next wake-up)."""
        shared, health = self.shared, self.store_health
        self.heartbeat = time.monotonic()
        with shared.lock:
            self.in_pass = True
            try:
                if not health.usable():
                    return
                health.tend_wal()
                shared.parts.beat()
                relay = shared.parts.relay
                self.busy = False
                if relay.quiet():
                    if health.problem is not None:
                        health.ok()  # nothing to do, and no failure: a quiet spell
                    return
                until = time.monotonic() + BACKLOG_SECONDS
                while True:
                    result = relay.run_once()
                    shared.metrics.repaired.inc(result.repaired)
                    self.busy = self.busy or result.busy
                    health.ok()
                    if result.busy or result.blocked:
                        self.last_outcome = (
                            f"blocked: {result.blocked.code}" if result.blocked
                            else f"sent {result.sent}, failed {result.failed}"
                        )
                        self._refresh()
                    if not (result.busy and relay.status().backlogged) or shared.stop.is_set():
                        break
                    if time.monotonic() >= until:
                        break
                if self.error is not None:
                    self.log.info("pass_recovered", previous_error=self.error)
                    self.error = None
            except StoreError as exc:
                shared.parts.relay.invalidate()
                health.failed(exc, "publish")
            except Exception as exc:  # a bug: logged, retried next pass, shown by health
                shared.parts.relay.invalidate()
                error = f"{type(exc).__name__}: {clip(exc)}"
                if error != self.error:
                    self.log.error("pass_failed", error=error, exc_info=True)
                self.error = error
            finally:
                self.in_pass = False
                self.heartbeat = time.monotonic()
                self.live.write()
