"""What `status` and `tasks` show: staleness arithmetic and report shapes (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from reporter.config import Config
from reporter.model import GateState, RowCounts, TaskRecord
from reporter.rows import TERMINAL_STATUSES

__all__ = ["iso", "promise_state", "status_report", "task_entries", "task_health"]


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC with Z (None stays None; a time no calendar holds, which
    only a row stored before the bounds were checked can carry, shows as its epoch number)."""
    if epoch is None:
        return None
    try:
        moment = datetime.fromtimestamp(epoch, UTC)
    except (ValueError, OverflowError, OSError):
        return f"@{epoch:.0f}"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def promise_state(
    status: str | None,
    update_time: float | None,
    next_update_seconds: int | None,
    now: float,
    warn_seconds: float,
) -> str | None:
    """`stale` once UpdateDateTime + NextUpdateSeconds has passed, `lapsing` within the warning
    window before it, `ok` otherwise; None for terminal states and tasks never reported."""
    if status is None or status in TERMINAL_STATUSES or update_time is None:
        return None
    due = update_time + (next_update_seconds or 0)
    if now >= due:
        return "stale"
    if now >= due - warn_seconds:
        return "lapsing"
    return "ok"


def task_entries(rows: Iterable[TaskRecord], now: float, config: Config) -> list[dict[str, Any]]:
    """One JSON-able entry per task (the contract's `tasks --json` fields and more)."""
    warn = config.hub.stale_warning_seconds
    entries = []
    for r in rows:
        promise = promise_state(r.status, r.update_time, r.next_update_seconds, now, warn)
        due = None
        if promise is not None and r.update_time is not None:
            due = r.update_time + (r.next_update_seconds or 0)
        entries.append(
            {
                "stream": r.stream,
                "task": r.task,
                "status": r.status,
                "progress_percent": r.percent,
                "status_detail": r.detail,
                "update_date_time": iso(r.update_time),
                "sent_at": iso(r.sent_at),
                "pending": r.pending,
                "mapped": r.mapped,
                "configuration_id": r.configuration_id,
                "artifacts": list(r.artifacts),
                "stale": promise == "stale",
                "promise": promise,
                "next_update_due": iso(due),
                "last_error": r.last_error,
            }
        )
    return entries


def task_health(rows: Iterable[TaskRecord], now: float, config: Config) -> dict[str, Any]:
    """Per-stream stale/lapsing counts and the unmapped total."""
    streams: dict[str, dict[str, int]] = {}
    unmapped = 0
    for entry in task_entries(rows, now, config):
        counts = streams.setdefault(entry["stream"], {"stale": 0, "lapsing": 0, "tasks": 0})
        counts["tasks"] += 1
        if entry["promise"] in ("stale", "lapsing"):
            counts[entry["promise"]] += 1
        if entry["mapped"] is False:
            unmapped += 1
    return {"streams": streams, "unmapped": unmapped}


def status_report(
    counts: RowCounts,
    gate: GateState,
    health: Mapping[str, Any],
    daemon_pid: int | None,
) -> dict[str, Any]:
    """The `status --json` document."""
    blocked = gate.blocked_reason
    return {
        "pending": counts.pending,
        "sent": counts.sent,
        "superseded": counts.superseded,
        "delivered": counts.delivered,
        "dead_letters": counts.dead_letters,
        "oldest_pending_seconds": counts.oldest_pending_seconds,
        "blocked": blocked,
        "blocked_code": gate.blocked_code if blocked else None,
        "blocked_since": iso(gate.blocked_since) if blocked else None,
        "home_region": gate.home_region,
        "last_success": iso(gate.last_success_at),
        "outage_backoff": gate.brake_attempts > 0,
        "daemon_pid": daemon_pid,
        "tasks": sum(s["tasks"] for s in health["streams"].values()),
        "stale_tasks": sum(s["stale"] for s in health["streams"].values()),
        "lapsing_tasks": sum(s["lapsing"] for s in health["streams"].values()),
        "unmapped_tasks": health["unmapped"],
        "streams": health["streams"],
    }
