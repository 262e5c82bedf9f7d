"""The daemon's live state outside the outbox: a small JSON file, written atomically every tick,
that `status` merges and a shell health check reads (no second Python, nothing from the outbox,
so it still speaks when the outbox is full, replaced or gone)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = [
    "LIVE_FILE",
    "LiveState",
    "candidates",
    "daemon_path",
    "read",
    "read_freshest",
    "stale_after",
    "write",
]

LIVE_FILE = "live.json"
SYSTEMD_RUNTIME = Path("/run/mgh-reporter")


@dataclass(frozen=True)
class LiveState:
    """What the running daemon says about itself (times in epoch seconds).

    `health` is "ok" (delivering, also through transient outages), "blocked" (only a person can
    fix it: `cause` says what) or "unusable" (the outbox cannot be used: disk full, replaced or
    gone).
    """

    health: str
    cause: str | None
    heartbeat: float
    pid: int
    outbox: str
    interval_seconds: float
    pending: int | None = None
    oldest_pending_seconds: float | None = None
    dead_letters: int | None = None
    outage_backoff: bool = False
    last_success: float | None = None
    last_error: str | None = None
    wal_bytes: int | None = None


def stale_after(interval_seconds: float) -> float:
    """A heartbeat older than this means the daemon is not ticking (hung, stopped or killed)."""
    return max(30.0, 3 * interval_seconds + 10.0)


def daemon_path(configured: Path | None, outbox: Path) -> Path:
    """Where the daemon writes: the configured path, else systemd's runtime directory (a tmpfs,
    so a full disk cannot silence it), else next to the outbox."""
    if configured is not None:
        return configured
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / LIVE_FILE
    return outbox.with_name(outbox.name + ".live.json")


def candidates(configured: Path | None, outbox: Path) -> list[Path]:
    """Where `status` looks (an operator's shell has no $RUNTIME_DIRECTORY)."""
    if configured is not None:
        return [configured]
    paths = [daemon_path(None, outbox), SYSTEMD_RUNTIME / LIVE_FILE]
    return list(dict.fromkeys([*paths, outbox.with_name(outbox.name + ".live.json")]))


def write(path: Path, state: LiveState) -> None:
    """Replace the file atomically (a reader sees the old or the new state, never half)."""
    data = json.dumps(asdict(state), indent=1) + "\n"  # one key per line: grep-able from sh
    fd, tmp = tempfile.mkstemp(prefix=".live-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path) -> LiveState | None:
    """The state in `path`, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    names = {f.name for f in fields(LiveState)}
    try:
        return LiveState(**{k: v for k, v in data.items() if k in names})
    except TypeError:
        return None


def read_freshest(paths: list[Path]) -> LiveState | None:
    """The state with the newest heartbeat among `paths`."""
    states = [s for s in (read(p) for p in paths) if s is not None]
    return max(states, key=lambda s: s.heartbeat, default=None)
