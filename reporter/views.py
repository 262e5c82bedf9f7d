"""What `status` and `tasks` show: staleness arithmetic and report shapes (pure)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from reporter.config import Config
from reporter.rows import TERMINAL_STATUSES

__all__ = ["iso", "promise_state", "status_report", "task_entries", "task_health"]


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC with Z (None stays None)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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


def _mapped(value: Any) -> bool | None:
    return None if value is None else bool(value)


def task_entries(
    rows: Iterable[Mapping[str, Any]], now: float, config: Config
) -> list[dict[str, Any]]:
    """One JSON-able entry per task (the contract's `tasks --json` fields and more)."""
    warn = config.hub.stale_warning_seconds
    entries = []
    for r in rows:
        promise = promise_state(r["status"], r["update_time"], r["next_update_seconds"], now, warn)
        due = None
        if promise is not None:
            due = r["update_time"] + (r["next_update_seconds"] or 0)
        entries.append(
            {
                "stream": r["stream"],
                "task": r["task"],
                "status": r["status"],
                "progress_percent": r["percent"],
                "status_detail": r["detail"],
                "update_date_time": iso(r["update_time"]),
                "sent_at": iso(r["sent_at"]),
                "pending": r["pending"],
                "mapped": _mapped(r["mapped"]),
                "configuration_id": r["configuration_id"],
                "artifacts": json.loads(r["artifacts"] or "[]"),
                "stale": promise == "stale",
                "promise": promise,
                "next_update_due": iso(due),
                "last_error": r["last_error"],
            }
        )
    return entries


def task_health(rows: Iterable[Mapping[str, Any]], now: float, config: Config) -> dict[str, Any]:
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
    counts: Mapping[str, Any],
    meta: Mapping[str, str | None],
    health: Mapping[str, Any],
    daemon_pid: int | None,
) -> dict[str, Any]:
    """The `status --json` document."""
    blocked = meta.get("blocked_reason")
    since = meta.get("blocked_since")
    last = meta.get("last_success_at")
    return {
        **counts,
        "blocked": blocked,
        "blocked_code": meta.get("blocked_code") if blocked else None,
        "blocked_since": iso(float(since)) if blocked and since else None,
        "home_region": meta.get("home_region"),
        "last_success": iso(float(last)) if last else None,
        "outage_backoff": bool(meta.get("brake_attempts")),
        "daemon_pid": daemon_pid,
        "tasks": sum(s["tasks"] for s in health["streams"].values()),
        "stale_tasks": sum(s["stale"] for s in health["streams"].values()),
        "lapsing_tasks": sum(s["lapsing"] for s in health["streams"].values()),
        "unmapped_tasks": health["unmapped"],
        "streams": health["streams"],
    }
