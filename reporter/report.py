"""What `status` and `tasks` show: staleness arithmetic and report shapes (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from reporter.config import Config
from reporter.hub.errors import HELD_CODES, NO_HOME_REGION_CODES
from reporter.hub.view import iso
from reporter.live import LiveState, stale_after
from reporter.rows import TERMINAL_STATUSES
from reporter.stores.contract import GateState, Replica, RowCounts, TaskRecord

__all__ = [
    "StatusReport",
    "daemon_view",
    "iso",
    "promise_state",
    "replica_view",
    "status_report",
    "task_entries",
    "task_health",
]


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
                "mapped": True if r.resources else r.mapped,  # a manual mapping counts
                "configuration_id": r.configuration_id,
                "discovered_resources": list(r.resources),  # manual (discovered_resource rows)
                "source_resources": list(r.sources),
                "artifacts": list(r.artifacts),
                "stale": promise == "stale",
                "promise": promise,
                "next_update_due": iso(due),
                "last_error": r.last_error,
            }
        )
    return entries


def application_entries(rows: Iterable[TaskRecord]) -> list[dict[str, Any]]:
    """One JSON-able entry per application (`applications --json`): its id, the status last
    sent and its UpdateDateTime, rows pending, the error its states wait on, and whether a
    person must fix that error (`held`: the migrationhub-discovery role)."""
    return [
        {
            "application": r.task,
            "status": r.status,
            "update_date_time": iso(r.update_time),
            "sent_at": iso(r.sent_at),
            "pending": r.pending,
            "last_error": r.last_error,
            "held": bool(r.pending and r.last_error and held_error(r.last_error)),
        }
        for r in rows
    ]


def held_error(error: str) -> bool:
    """Whether a lane's recorded error is one only a person can fix for its kind of call."""
    return error.split(":", 1)[0] in HELD_CODES


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


def daemon_view(
    state: LiveState | None, daemon_pid: int | None, now: float
) -> dict[str, Any] | None:
    """The daemon's own word (its live state file), with how fresh it is and what it means:
    `state` is "running" (ticking, and the process holding the outbox), "stopped" (it stopped
    cleanly: no daemon, no fault), "hung" (not marked stopped, yet no heartbeat for
    `stale_after`: hung, frozen or killed) or "not running" (a fresh word from a process that no
    longer holds the outbox: killed moments ago). `daemon_pid` is the outbox lock's holder
    (SQLite), or the state's own pid where there is no lock (PostgreSQL)."""
    if daemon_pid is not None and (state is None or state.pid != daemon_pid):
        # a process holds the outbox but its live state is not where we look (no runtime
        # directory: a chroot, `runuser` without systemd, another live_state_path)
        return {
            "pid": daemon_pid if daemon_pid > 0 else None,
            "state": "running",
            "running": True,
            "health": None,
            "cause": None,
            "heartbeat": None,
            "heartbeat_age_seconds": None,
            "stale": False,
            "last_error": None,
            "live_state": False,
        }
    if state is None:
        return None
    age = max(0.0, now - state.heartbeat)
    stale = age > stale_after(state.interval_seconds)
    word = "stopped" if state.health == "stopped" else "hung" if stale else "running"
    if word == "running" and daemon_pid != state.pid:
        word = "not running"
    return {
        "pid": state.pid,
        "state": word,
        "running": word == "running",
        "health": state.health,
        "cause": state.cause,
        "heartbeat": iso(state.heartbeat),
        "heartbeat_age_seconds": round(age, 1),
        "stale": word == "hung",
        "last_error": state.last_error,
        "live_state": True,
    }


def _problems(
    daemon: Mapping[str, Any] | None, wal_bytes: int, wal_warning_bytes: int
) -> list[str]:
    warnings = []
    if wal_bytes > wal_warning_bytes:
        warnings.append(
            f"the outbox's write-ahead log is {wal_bytes / 2**20:.1f} MiB (over "
            f"{wal_warning_bytes / 2**20:.0f} MiB): a long-lived read transaction on the outbox "
            "holds checkpoints back; it shrinks once that reader ends"
        )
    if daemon is not None and not daemon["live_state"]:
        who = f"pid {daemon['pid']}" if daemon["pid"] else "its pid unknown"
        warnings.append(
            f"a daemon ({who}) holds the outbox and delivers, but its live state is not where"
            " this status looks (it has no runtime directory: no systemd, $XDG_RUNTIME_DIR"
            " unset): set [outbox] live_state_path in the config both read, or see its log and"
            " /healthz"
        )
    if daemon is not None and daemon["state"] == "hung":
        warnings.append(
            f"the daemon (pid {daemon['pid']}) has not ticked for "
            f"{daemon['heartbeat_age_seconds']:.0f}s and did not stop cleanly: it is hung, "
            "frozen or was killed"
        )
    return warnings


def replica_view(replica: Replica, now: float) -> dict[str, Any]:
    """One live replica as `status --json` lists it."""
    return {
        "id": replica.id,
        "host": replica.host,
        "pid": replica.pid,
        "role": replica.role,
        "started": iso(replica.started_at),
        "up_seconds": round(max(0.0, now - replica.started_at), 1),
        "heartbeat_age_seconds": round(max(0.0, now - replica.heartbeat_at), 1),
        "max_requests_per_second": replica.rate or None,
    }


@dataclass
class StatusReport:
    """What `status` reports (`--json` prints it as one object; `replicas` only with a
    PostgreSQL outbox)."""

    pending: int | None
    sent: int | None
    superseded: int | None
    delivered: int | None
    dead_letters: int | None
    dropped: int | None
    oldest_pending_seconds: float | None
    blocked: str | None
    blocked_code: str | None
    blocked_since: str | None
    outbox_unusable: str | None
    home_region: str | None
    last_success: str | None
    outage_backoff: bool
    daemon_pid: int | None
    daemon: dict[str, Any] | None
    daemon_state: str
    wal_bytes: int
    warnings: list[str]
    tasks: int
    stale_tasks: int
    lapsing_tasks: int
    unmapped_tasks: int
    streams: dict[str, Any]
    replicas: list[dict[str, Any]] | None = None
    hub_differs: int = 0  # tasks whose Hub view differs (the running daemon's repair rounds)
    applications: int = 0  # applications rows named (application_state)
    applications_held: int = 0  # ... whose states wait for a person (`held_reason`)
    held_reason: str | None = None
    send_rate: float = 0.0  # calls/s the account's throttling holds the daemon to (0: none)
    throttle_tolerated: float = 0.0  # the throttled share it sends through regardless

    def to_json(self) -> dict[str, Any]:
        """The `status --json` document."""
        document = asdict(self)
        if self.replicas is None:
            del document["replicas"]
        return document


def status_report(
    counts: RowCounts | None,
    gate: GateState | None,
    health: Mapping[str, Any] | None,
    daemon_pid: int | None,
    state: LiveState | None,
    now: float,
    wal: tuple[int, int],
    outbox_error: str | None = None,
    wall_now: float | None = None,
) -> StatusReport:
    """The `status --json` document: the outbox's view merged with the daemon's live state.

    `wal` is (bytes of the -wal file, the warning threshold); `outbox_error` is why the outbox
    itself could not be read (then the counts are null); `wall_now` is this machine's clock,
    which the daemon's heartbeat is judged by (`now` is the store's).
    """
    # The live state's heartbeat is the daemon's wall clock; `now` may be the database's.
    daemon = daemon_view(state, daemon_pid, now if wall_now is None else wall_now)
    live_word = daemon is not None and daemon["running"] and not daemon["stale"]
    unusable = outbox_error
    if unusable is None and live_word and state is not None and state.health == "unusable":
        unusable = state.cause
    blocked = gate.blocked_reason if gate else None
    if blocked is None and live_word and state is not None and state.health == "blocked":
        blocked = state.cause
    streams = health["streams"] if health else {}
    return StatusReport(
        pending=counts.pending if counts else None,
        sent=counts.sent if counts else None,
        superseded=counts.superseded if counts else None,
        delivered=counts.delivered if counts else None,
        dead_letters=counts.dead_letters if counts else None,
        dropped=counts.dropped if counts else None,
        oldest_pending_seconds=counts.oldest_pending_seconds if counts else None,
        blocked=blocked,
        blocked_code=gate.blocked_code if gate and gate.blocked_reason else None,
        blocked_since=iso(gate.blocked_since) if gate and gate.blocked_reason else None,
        outbox_unusable=unusable,
        # A block saying there is no home Region outranks a Region learnt before it.
        home_region=gate.home_region if gate and gate.blocked_code not in NO_HOME_REGION_CODES
        else None,
        last_success=iso(gate.last_success_at if gate else None),
        outage_backoff=bool(gate and gate.brake_attempts > 0),
        daemon_pid=daemon_pid,
        daemon=daemon,
        daemon_state=daemon["state"] if daemon else "not running",
        wal_bytes=wal[0],
        warnings=_problems(daemon, *wal),
        tasks=sum(s["tasks"] for s in streams.values()),
        stale_tasks=sum(s["stale"] for s in streams.values()),
        lapsing_tasks=sum(s["lapsing"] for s in streams.values()),
        unmapped_tasks=health["unmapped"] if health else 0,
        streams=streams,
        hub_differs=state.hub_differs if live_word and state is not None else 0,
        send_rate=state.send_rate if live_word and state is not None else 0.0,
        throttle_tolerated=state.throttle_tolerated if live_word and state is not None else 0.0,
    )
