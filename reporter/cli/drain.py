"""`drain`: publish everything due now, retrying transient errors, then exit with the
contract's code (0 delivered, 3 pending at the timeout or interrupted, 4 blocked, 5 rejected),
showing progress (a bar on a terminal, a `drain_progress` event every 5 s elsewhere) and
closing with one summary on stdout (a line, or JSON)."""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import structlog

from reporter.cli.drain_tally import DrainTally, summary_line
from reporter.config import Config
from reporter.daemon.signals import stop_on_signals
from reporter.delivery.parts import Parts, build
from reporter.exits import Exit
from reporter.stores import Engine
from reporter.stores.contract import RowState, StoreError
from reporter.stores.lock import LockError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from reporter.delivery.relay import PassResult

# Between passes, at most this long without looking: other replicas' outcomes (a lease they
# hold ending) are seen this soon.
LOOK_SECONDS = 0.25
EVENT_EVERY_SECONDS = 5.0  # progress events when stderr is not a terminal
BAR_EVERY_SECONDS = 0.5  # the bar's refresh (each one reads the work left)

__all__ = ["drain"]


class _Shown:
    """How a drain shows its work: the bar on a terminal, progress events otherwise, and the
    closing summary on stdout."""

    def __init__(self, parts: Parts, tally: DrainTally, as_json: bool, started: float) -> None:
        self._parts, self._tally, self._as_json = parts, tally, as_json
        self._started = started  # the store's clock at the start: rows finished since count
        self._log = structlog.get_logger("reporter.drain")
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last = 0.0
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                # the summary's unit (rows finished: sent, superseded or rejected), in 80 columns
                BarColumn(bar_width=12),
                TextColumn("{task.fields[rows]} rows, {task.fields[tasks]} tasks left,"
                           " {task.fields[rate]}/s, {task.fields[retrying]} retrying,"
                           " ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                redirect_stderr=True,
                redirect_stdout=False,
            )
            self._task = self._bar.add_task(
                "drain", total=None, rows="counting", tasks="?", rate="0.0", retrying=0,
                eta="?"
            )

    def running(self) -> AbstractContextManager[Any]:
        """The bar is live (log lines print above it) for the body of the drain."""
        return self._bar if self._bar is not None else nullcontext()

    def update(self, pending: int, force: bool = False) -> None:
        """Refresh the bar, or log progress, when it is time."""
        now = time.monotonic()
        every = BAR_EVERY_SECONDS if self._bar is not None else EVENT_EVERY_SECONDS
        if not force and now - self._last < every:
            return
        self._last = now
        left = self._parts.store.work_left()
        finished = sum(self._parts.store.finished_since(self._started).values())
        snap = self._tally.snapshot(now, pending, left.tasks, left.retrying, finished)
        if self._bar is not None and self._task is not None:
            eta = "?" if snap.eta_seconds is None else f"{snap.eta_seconds:.0f}s"
            self._bar.update(
                self._task, completed=snap.done, total=snap.total,
                rows=f"{snap.done}/{snap.total}", tasks=snap.tasks_left,
                rate=f"{snap.calls_per_second:.1f}", retrying=snap.retrying, eta=eta,
            )
        elif not force:
            self._log.info("drain_progress", **snap.fields())

    def close(
        self, code: int, pending: int | None, finished: dict[str, int], reason: str | None
    ) -> int:
        """Print the summary on stdout; returns the exit code."""
        summary = self._tally.summary(code, time.monotonic(), pending, finished, reason)
        self._tally.summarised = True
        self._log.info("drain_finished", **summary)
        print(json.dumps(summary) if self._as_json else summary_line(summary), flush=True)
        return code


def drain(config: Config, timeout: float, as_json: bool = False) -> int:
    """Publish everything due now, retrying transient errors, then exit with the contract's code.

    Exit 5 counts only rows rejected since this drain started (by any replica); a stop signal
    exits 3 and says so. Beside running replicas (PostgreSQL) a drain is one more replica: it
    exits 0 only once nothing is pending or leased by anyone, and 3 if leases remain at the
    timeout.
    """
    tally = DrainTally(time.monotonic())
    try:
        return _drain(config, timeout, as_json, tally)
    except (LockError, StoreError) as exc:
        if as_json and not tally.summarised:  # --json: its one object, whatever happened
            summary = tally.summary(Exit.ERROR, time.monotonic(), None, {}, str(exc))
            print(json.dumps(summary), flush=True)
        raise


def _drain(config: Config, timeout: float, as_json: bool, tally: DrainTally) -> int:
    stop = threading.Event()
    begun = tally.started
    deadline = begun + timeout
    with Engine.of(config.outbox).instance_lock(), stop_on_signals(stop):
        parts = build(config, stop, None, role="drain")
        parts.relay.summaries = False  # its progress and summary say it
        started = parts.store.clock()
        shown = _Shown(parts, tally, as_json, started)
        parts.relay.gate.recheck_now()  # a person may have fixed what blocked the last run
        try:
            with shown.running():
                code, pending, reason = _loop(parts, tally, shown, stop, deadline, timeout)
        except StoreError as exc:
            shown.close(Exit.ERROR, None, {}, str(exc))
            raise
        finally:
            parts.membership.leave()
            parts.relay.close()
        try:
            finished = parts.store.finished_since(started)
        finally:
            parts.store.close()
        if code == Exit.OK and finished.get(RowState.REJECTED.value):
            code = Exit.REJECTED
        return shown.close(code, pending, finished, reason)


def _loop(
    parts: Parts,
    tally: DrainTally,
    shown: _Shown,
    stop: threading.Event,
    deadline: float,
    timeout: float,
) -> tuple[int, int, str | None]:
    """Passes until done, blocked, out of time or stopped: (exit code, pending, why)."""
    log = structlog.get_logger("reporter.drain")
    pending = parts.store.backlog().pending
    while True:
        try:
            parts.beat()
            result = parts.relay.run_once()
        except StoreError as exc:
            if not exc.busy:
                raise
            # A lock conflict or a lost database connection: transient, try again.
            log.warning("store_busy", error=str(exc))
            parts.relay.invalidate()
            if time.monotonic() >= deadline or stop.is_set():
                print(f"outbox unavailable at the timeout: {exc}", file=sys.stderr)
                return Exit.PENDING, pending, f"outbox unavailable: {exc}"
            stop.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            continue
        _count(tally, result)
        if result.blocked is not None:
            log.error(
                "drain_blocked", error_code=result.blocked.code, reason=result.blocked.message
            )
            print(f"delivery blocked: {result.blocked.message}", file=sys.stderr)
            return Exit.BLOCKED, parts.store.backlog().pending, "blocked"
        pending = parts.store.backlog().pending
        shown.update(pending)
        if pending == 0:
            shown.update(pending, force=True)
            return Exit.OK, 0, None
        if stop.is_set():
            log.warning("drain_interrupted", pending=pending)
            print(f"interrupted: {pending} rows still pending", file=sys.stderr)
            return Exit.PENDING, pending, "interrupted"
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("drain_timeout", pending=pending, timeout=timeout)
            print(f"{pending} rows still pending at the timeout", file=sys.stderr)
            return Exit.PENDING, pending, f"timeout after {timeout:g} s"
        status = parts.relay.status()
        if result.busy and status.backlogged:
            continue
        now = parts.relay.clock()
        wait = 0.05 if status.wakeup is None else status.wakeup - now
        stop.wait(min(max(wait, 0.05), left, LOOK_SECONDS))


def _count(tally: DrainTally, result: PassResult) -> None:
    tally.add(
        time.monotonic(),
        sent=result.sent,
        superseded=result.superseded,
        rejected_at_intake=result.rejected_at_intake,
        rejected_by_hub=result.rejected,
        calls=result.calls,
    )
