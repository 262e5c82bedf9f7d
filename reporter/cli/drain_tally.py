"""A drain's tally: what its passes did, the pace and ETA, and the closing summary as a line and
as JSON (pure: times are passed in; `drain` renders it)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OUTCOMES", "DrainTally", "Snapshot", "summary_line"]

# exit code -> the word the summary uses for it
OUTCOMES = {
    0: "delivered",
    1: "error",
    3: "pending",
    4: "blocked",
    5: "rejected",
}

RATE_WINDOW_SECONDS = 10.0


@dataclass(frozen=True)
class Snapshot:
    """Where a drain stands: rows and tasks left, retries waiting, pace, ETA (None: unknown)."""

    done: int
    total: int
    pending: int
    tasks_left: int
    retrying: int
    calls_per_second: float
    eta_seconds: float | None
    elapsed: float

    def fields(self) -> dict[str, Any]:
        """The `drain_progress` event's fields."""
        return {
            "rows_done": self.done,
            "rows_pending": self.pending,
            "tasks_left": self.tasks_left,
            "retries_waiting": self.retrying,
            "calls_per_second": round(self.calls_per_second, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds),
            "elapsed_seconds": round(self.elapsed, 1),
        }


@dataclass
class DrainTally:
    """Counts one drain's passes and judges its pace; `started` is a monotonic time."""

    started: float
    sent: int = 0
    superseded: int = 0
    rejected_at_intake: int = 0
    rejected_by_hub: int = 0
    calls: int = 0
    first_pending: int | None = None
    summarised: bool = False  # the closing summary was printed
    _calls: deque[tuple[float, int]] = field(default_factory=deque)
    _rows: deque[tuple[float, int]] = field(default_factory=deque)

    def add(
        self,
        now: float,
        *,
        sent: int = 0,
        superseded: int = 0,
        rejected_at_intake: int = 0,
        rejected_by_hub: int = 0,
        calls: int = 0,
    ) -> None:
        """One pass's counts."""
        self.sent += sent
        self.superseded += superseded
        self.rejected_at_intake += rejected_at_intake
        self.rejected_by_hub += rejected_by_hub
        self.calls += calls
        self._calls.append((now, self.calls))
        self._rows.append((now, self.done))
        for window in (self._calls, self._rows):
            while len(window) > 2 and window[0][0] < now - RATE_WINDOW_SECONDS:
                window.popleft()

    @property
    def done(self) -> int:
        """Rows this drain finished (sent, superseded or rejected)."""
        return self.sent + self.superseded + self.rejected_at_intake + self.rejected_by_hub

    def snapshot(self, now: float, pending: int, tasks_left: int, retrying: int,
                 finished: int | None = None) -> Snapshot:
        """Progress as of `now`, with `pending` rows (of any replica) still to deliver and
        `finished` rows finished since the drain began, by anyone (the summary's unit: rows
        superseded at intake included; this drain's own count when not given)."""
        done = self.done if finished is None else finished
        if self.first_pending is None:
            self.first_pending = pending
        total = max(done + pending, self.first_pending)
        rows_rate = _rate(self._rows)
        eta = pending / rows_rate if pending and rows_rate > 0 else (0.0 if not pending else None)
        return Snapshot(
            done=done,
            total=total,
            pending=pending,
            tasks_left=tasks_left,
            retrying=retrying,
            calls_per_second=_rate(self._calls),
            eta_seconds=eta,
            elapsed=now - self.started,
        )

    def summary(
        self,
        code: int,
        now: float,
        pending: int | None,
        finished: dict[str, int],
        reason: str | None = None,
    ) -> dict[str, Any]:
        """The closing summary (`drain --json`). `finished` counts rows by state finished since
        the drain started, by anyone (beside replicas; the exit-5 rule counts rejections so);
        the split of rejections is this drain's own; `reason` says why it stopped early."""
        return {
            "exit_code": code,
            "outcome": OUTCOMES.get(code, "error"),
            "sent": finished.get("sent", 0),
            "superseded": finished.get("superseded", 0),
            "rejected": finished.get("rejected", 0),
            "rejected_at_intake": self.rejected_at_intake,
            "rejected_by_hub": self.rejected_by_hub,
            "pending": pending,
            "calls": self.calls,
            "seconds": round(now - self.started, 2),
            "reason": reason,
        }


def summary_line(summary: dict[str, Any]) -> str:
    """The closing summary as one line for people."""
    text = (
        f"drain {summary['outcome']}: {summary['sent']} sent, {summary['superseded']} superseded,"
        f" {summary['rejected']} rejected,"
        f" {'?' if summary['pending'] is None else summary['pending']} still pending"
        f" in {summary['seconds']:.1f} s"
    )
    if summary["reason"]:
        text += f" ({summary['reason']})"
    if summary["rejected"]:
        text += "; see `mgh-reporter dead-letters list`"
    return text


def _rate(window: deque[tuple[float, int]]) -> float:
    if len(window) < 2:
        return 0.0
    (t0, n0), (t1, n1) = window[0], window[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
