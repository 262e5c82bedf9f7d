"""The daemon's view of its outbox's health: transient and lasting store failures as one
condition, a file that can no longer be trusted, an outbox file lost and reopened, and the
SQLite write-ahead log tended between passes (through the engine's checkpoint and WAL size;
both are no-ops on PostgreSQL, which has no file of ours)."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from reporter.daemon.shared import Shared
from reporter.delivery.parts import build
from reporter.stores import Engine
from reporter.stores.contract import StoreError

__all__ = ["StoreHealth"]

# A store problem is over once no failure came for this long (two WAL checks and a bit).
STORE_HOLD_SECONDS = 12.0
# The WAL: checked every WAL_SECONDS; past WAL_TRUNCATE_BYTES it is truncated back, waiting at
# most CHECKPOINT_BUSY_MS for readers, so a reader that held checkpoints back costs nothing once
# it is gone.
WAL_SECONDS = 5.0
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


class StoreHealth:
    """Whether the outbox can be used, and why not; one event per distinct cause."""

    def __init__(self, shared: Shared, on_reopen: Callable[[], None]) -> None:
        self.shared, self._on_reopen = shared, on_reopen
        self.log = structlog.get_logger("reporter.daemon")
        self.problem: str | None = None
        # Set once the outbox file cannot be trusted (corrupt, not a database, its -wal gone or
        # replaced): from then on the store is never touched again, not even closed (closing
        # the last connection would checkpoint a stale log into the file).
        self.damaged: str | None = None
        self._cause: str | None = None
        self._busy_since: float | None = None  # monotonic: when transient failures began
        self._failed_at = 0.0  # monotonic: the last failure (see ok)
        self._lost = False
        self._left: str | None = None  # why a file of ours stays at a lost outbox's path
        self._wal_warned = False
        self._next_wal_check = 0.0

    def usable(self) -> bool:
        """Before a pass: False while the file is damaged or lost (a replaced outbox is
        reopened; its old -wal is no damage). The -wal is looked at before the file: a tool
        removing the outbox and then its -wal between the two looks must read as the outbox
        lost, never as a damaged one (which only a restart ends)."""
        if self.damaged:
            return False
        store = self.shared.parts.store
        damage = store.damage()
        if self._outbox_lost():
            return False
        if self.shared.parts.store is not store:  # reopened: the new file is the one to judge
            damage = self.shared.parts.store.damage()
        return not self.distrust(damage)

    def distrust(self, problem: str | None) -> bool:
        """The outbox cannot be trusted any more (said once, loudly): unusable until a restart;
        True when it is so."""
        if problem is None:
            return self.damaged is not None
        if self.damaged is None:
            self.damaged = problem
            self.problem = problem
            self.log.critical("outbox_damaged", error=problem, hint=DAMAGED_HINT)
        return True

    def ok(self) -> None:
        """A pass went through. A problem is over once no failure came for STORE_HOLD_SECONDS:
        an error that recurs between good passes (an immutable file whose checkpoints fail, a
        disk that fills again) stays one condition, not a flapping /healthz."""
        if self.problem is not None:
            if time.monotonic() - self._failed_at < STORE_HOLD_SECONDS:
                return
            self.log.info("store_recovered", previous_error=self.problem)
        self.problem = self._cause = self._busy_since = None

    def failed(self, exc: StoreError, job: str) -> None:
        """A busy lock or a lost database connection is transient (the next pass retries, the
        store reconnects with backoff) until it has lasted [outbox] unreachable_after_seconds;
        a damaged file is distrusted for good (with what quick_check finds); anything else makes
        us unhealthy at once."""
        if exc.damaged:
            found = self.shared.parts.store.integrity()
            self.distrust(f"{exc}" + (f" ({found})" if found else ""))
            return
        if exc.busy:
            now = time.monotonic()
            if self._busy_since is None:
                self._busy_since = now
            if now - self._busy_since < self.shared.config.outbox.unreachable_after_seconds:
                if self._cause != exc.cause:
                    self.log.warning("store_busy", job=job, error=str(exc))
                self._cause = exc.cause
                return
        if self._cause != exc.cause:
            self.log.error("store_error", job=job, error=str(exc))
        self._cause = exc.cause
        self.problem = str(exc)
        self._failed_at = time.monotonic()

    def _outbox_lost(self) -> bool:
        """Each pass (one stat): is the open file still the outbox at its path? If it was deleted
        or replaced, say so once, stop writing to it, and reopen once a valid outbox is back (the
        waker wakes us when the directory changes)."""
        store = self.shared.parts.store
        problem = store.file_problem()
        if problem is None:
            return False
        if not self._lost:  # one loud event per loss, however it changes until it is back
            self._lost = True
            self.log.error("outbox_lost", error=problem, hint=OUTBOX_LOST_HINT)
        self.problem = problem
        left = store.disown()  # our -wal must not meet the new file, ours or anyone's
        if left is not None:
            if left != self._left:
                self.log.error("outbox_files_left", error=left)
            self._left = self.problem = left
            return True
        self._left = None
        return not self._reopen()

    def _reopen(self) -> bool:
        shared = self.shared
        config = shared.config
        if not config.outbox.path.exists():
            return False
        try:
            parts = build(config, shared.stop, shared.metrics.observe_call)
        except StoreError as exc:
            if not exc.needs_init:
                return False
            try:
                Engine.of(config.outbox).create().close()
                parts = build(config, shared.stop, shared.metrics.observe_call)
            except StoreError:
                return False
        old, shared.parts = shared.parts, parts
        old.relay.close()
        old.store.close()
        self._lost = False
        self._failed_at = 0.0  # a new file: the old one's troubles are not its own
        self.ok()
        self._on_reopen()
        self.log.warning("outbox_reopened", outbox=str(config.outbox.path))
        return True

    def tend_wal(self) -> None:
        """Every few seconds: warn while the WAL grows past the threshold; truncate it back when
        readers allow (between passes; a reader is waited for at most CHECKPOINT_BUSY_MS)."""
        now = time.monotonic()
        if now < self._next_wal_check:
            return
        self._next_wal_check = now + WAL_SECONDS
        store = self.shared.parts.store
        size = store.wal_bytes()
        self.shared.metrics.wal_bytes.set(size)
        if size > self.shared.config.outbox.wal_warning_bytes and not self._wal_warned:
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
