"""Repeated failures logged as conditions, not calls: one warning when a kind of failure starts,
a summary every N seconds while it lasts, one line when it clears; rejected rows past a burst
folded into the summary too; and what the daemon delivered, one line per period. The trackers
are the pure decisions; `Conditions` logs them."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from reporter.hub.errors import Failure

__all__ = ["REJECTIONS_PER_WINDOW", "ActivityTracker", "ConditionTracker", "Conditions", "Line"]

# Rejected rows logged one by one per summary window; the rest are counted in one line.
REJECTIONS_PER_WINDOW = 20


@dataclass(frozen=True)
class Line:
    """One event to log: level, name and fields."""

    level: str
    event: str
    fields: dict[str, Any]


@dataclass
class _Condition:
    name: str
    started: float
    last_failure: float
    reported: float  # when the last line about it was written
    total: int = 1
    since_report: int = 0
    operations: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    worst_delay: float = 0.0
    recovered: bool = False  # a call succeeded after its last failure


class ConditionTracker:
    """Decides what to log about repeated failures; every method takes `now` and returns the
    lines to write (pure: no clock, no logger, no lock).

    A condition is a kind of failure (`Failure.condition`: throttling, server_errors, timeouts,
    network, ...). Its first failure is logged in full; while it lasts, one summary per
    `summary_seconds` (failures, operations, error codes, the worst delay); it clears once a
    call has succeeded after its last failure and none of that kind came for `summary_seconds`.
    """

    def __init__(self, summary_seconds: float) -> None:
        self.summary_seconds = summary_seconds
        self._active: dict[str, _Condition] = {}
        self._window_start: float | None = None
        self._rejected_logged = 0
        self._rejected_folded: Counter[str] = Counter()

    @property
    def active(self) -> list[str]:
        """The conditions that have not cleared."""
        return sorted(self._active)

    def failed(
        self, now: float, failure: Failure, operation: str, delay: float, **context: Any
    ) -> list[Line]:
        """A transient failure of one call; `context` (task, stream, attempt) goes into the
        starting line only."""
        lines = self.tick(now)
        name = failure.condition
        cond = self._active.get(name)
        if cond is None:
            cond = self._active[name] = _Condition(name, now, now, now)
            lines.append(Line("warning", "condition_started", {
                "condition": name,
                **context,
                "operation": operation,
                "error_code": failure.code,
                "error": failure.message[:300],
                "delay": round(delay, 3),
                "hint": f"further {name} failures are summarised every "
                f"{self.summary_seconds:g}s while it lasts (each call at debug level)",
            }))
        else:  # counted into the next summary (the starting line told of the first)
            cond.total += 1
            cond.since_report += 1
            cond.operations[operation] += 1
            cond.codes[failure.code] += 1
            cond.worst_delay = max(cond.worst_delay, delay)
        cond.last_failure, cond.recovered = now, False
        return lines

    def succeeded(self, now: float) -> None:
        """A call succeeded: every active condition has seen a recovery."""
        for cond in self._active.values():
            if now >= cond.last_failure:
                cond.recovered = True

    def rejected(self, now: float, reason: str, fields: dict[str, Any]) -> list[Line]:
        """A row rejected (at intake or by the Hub): logged in full up to a burst per window,
        then counted by reason into the window's summary."""
        lines = self.tick(now)
        if self._window_start is None:
            self._window_start = now
        if self._rejected_logged < REJECTIONS_PER_WINDOW:
            self._rejected_logged += 1
            lines.append(Line("warning", "row_rejected", {**fields, "reason": reason}))
        else:
            self._rejected_folded[reason.split(":", 1)[0][:80]] += 1
        return lines

    def tick(self, now: float) -> list[Line]:
        """The summaries and clearings due by now."""
        lines: list[Line] = []
        for name in sorted(self._active):
            cond = self._active[name]
            if cond.recovered and now - cond.last_failure >= self.summary_seconds:
                del self._active[name]
                lines.append(self._cleared(cond))
            elif now - cond.reported >= self.summary_seconds and cond.since_report:
                lines.append(self._summary(cond, now))
        if self._window_start is not None and now - self._window_start >= self.summary_seconds:
            if self._rejected_folded:
                lines.append(self._rejections_line())
            self._window_start, self._rejected_logged = None, 0
            self._rejected_folded.clear()
        return lines

    def finish(self, now: float) -> list[Line]:
        """At exit: what is still unreported (a condition that has not cleared says so)."""
        lines: list[Line] = []
        for name in sorted(self._active):
            cond = self._active[name]
            if cond.recovered:  # calls succeeded after its last failure: it ended with them
                if cond.since_report:
                    lines.append(self._summary(cond, now))
                lines.append(self._cleared(cond))
            else:
                lines.append(self._summary(cond, now, ongoing_at_exit=True))
        self._active.clear()
        if self._rejected_folded:
            lines.append(self._rejections_line())
            self._rejected_folded.clear()
        return lines

    @staticmethod
    def _cleared(cond: _Condition) -> Line:
        return Line("info", "condition_cleared", {
            "condition": cond.name,
            "failures": cond.total,
            "seconds": round(cond.last_failure - cond.started, 1),
        })

    @staticmethod
    def _summary(cond: _Condition, now: float, ongoing_at_exit: bool = False) -> Line:
        line = Line("warning", "condition_ongoing", {
            "condition": cond.name,
            "failures": cond.since_report,
            "failures_total": cond.total,
            "seconds": round(now - cond.started, 1),
            "operations": dict(cond.operations),
            "error_codes": dict(cond.codes),
            "worst_delay": round(cond.worst_delay, 3),
            **({"ongoing_at_exit": True} if ongoing_at_exit else {}),
        })
        cond.reported, cond.since_report, cond.worst_delay = now, 0, 0.0
        cond.operations.clear()
        cond.codes.clear()
        return line

    def _rejections_line(self) -> Line:
        return Line("warning", "rows_rejected", {
            "rows": sum(self._rejected_folded.values()),
            "by_rule": dict(self._rejected_folded.most_common(20)),
            "hint": "`mgh-reporter dead-letters list` names each row and its reason",
        })


class ActivityTracker:
    """What passes delivered, summed into one `delivered` line per `summary_seconds` (none
    while nothing happens): the daemon's sign of work at info level, `pass` being debug."""

    FIELDS = ("sent", "superseded", "rejected_at_intake", "rejected_by_hub", "failed_lanes")

    def __init__(self, summary_seconds: float) -> None:
        self.summary_seconds = summary_seconds
        self._since: float | None = None
        self._counts: Counter[str] = Counter()

    def add(self, now: float, **counts: int) -> list[Line]:
        """One pass's counts; the period's line when it is due."""
        if self._since is None:
            self._since = now
        self._counts.update({k: v for k, v in counts.items() if v})
        if now - self._since < self.summary_seconds:
            return []
        lines = []
        if self._counts:
            lines.append(Line("info", "delivered", {
                **{k: self._counts.get(k, 0) for k in self.FIELDS},
                "seconds": round(now - self._since, 1),
            }))
        self._since, self._counts = now, Counter()
        return lines


class Conditions:
    """The tracker behind a lock (calls fail on worker threads), writing its lines to the log;
    every call also goes to the debug log in full."""

    def __init__(self, summary_seconds: float, clock: Callable[[], float]) -> None:
        self._tracker = ConditionTracker(summary_seconds)
        self._activity = ActivityTracker(summary_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._log = structlog.get_logger("reporter.conditions")

    def failed(self, failure: Failure, operation: str, delay: float, **context: Any) -> None:
        """One transient failure (logged in full at debug level)."""
        self._log.debug(
            "call_failed", operation=operation, error_code=failure.code,
            error=failure.message[:300], delay=round(delay, 3), **context,
        )
        with self._lock:
            self._write(self._tracker.failed(self._clock(), failure, operation, delay, **context))

    def succeeded(self) -> None:
        """At least one call succeeded."""
        with self._lock:
            self._tracker.succeeded(self._clock())

    def rejected(self, reason: str, **fields: Any) -> None:
        """One row rejected (intake or Hub)."""
        with self._lock:
            self._write(self._tracker.rejected(self._clock(), reason, fields))

    def delivered(self, **counts: int) -> None:
        """One pass's deliveries (a `delivered` line per period)."""
        with self._lock:
            self._write(self._activity.add(self._clock(), **counts))

    def tick(self) -> None:
        """Write the summaries, clearings and delivery lines due now (also between passes)."""
        with self._lock:
            now = self._clock()
            self._write(self._tracker.tick(now) + self._activity.add(now))

    def finish(self) -> None:
        """Write what is still unreported (at exit)."""
        with self._lock:
            self._write(self._tracker.finish(self._clock()))

    @property
    def active(self) -> list[str]:
        """The conditions that have not cleared."""
        with self._lock:
            return self._tracker.active

    def _write(self, lines: list[Line]) -> None:
        for line in lines:
            getattr(self._log, line.level)(line.event, **line.fields)
