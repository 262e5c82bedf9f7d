"""The daemon's live state outside the outbox: a small JSON file, written atomically after a pass,
that `status` merges and a shell health check reads (no second Python, nothing from the outbox,
so it still speaks when the outbox is full, replaced or gone)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from reporter.files import UnsafeFile, open_regular, private_dir

__all__ = [
    "LiveState",
    "candidates",
    "daemon_path",
    "file_name",
    "read",
    "read_freshest",
    "runtime_dirs",
    "stale_after",
    "write",
]

SYSTEMD_RUNTIME = Path("/run/mgh-reporter")
MAX_LIVE_BYTES = 64 * 1024  # a live state file is ~600 bytes; anything larger is not ours

@dataclass(frozen=True)
class LiveState:
    """What the running daemon says about itself (times in epoch seconds).

    `health` is "ok" (delivering, also through transient outages), "blocked" (only a person can
    fix it: `cause` says what), "unusable" (the outbox cannot be used: disk full, replaced or
    gone) or "stopped" (the daemon stopped cleanly: nobody is delivering, and that is no fault).
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
    hub_differs: int = 0  # tasks whose Hub view differs from what was sent (repair rounds)
    send_rate: float = 0.0  # calls/s the account's throttling holds this host to (0: none)
    throttle_tolerated: float = 0.0  # the throttled share learnt to come whatever it sends


def stale_after(interval_seconds: float) -> float:
    """A heartbeat older than this means the daemon is not ticking (hung, stopped or killed)."""
    return max(30.0, 3 * interval_seconds + 10.0)


def file_name(where: str) -> str:
    """The live state's file name for one outbox (its path or redacted URL): one file per
    outbox in a runtime directory several daemons may share."""
    return f"live-{hashlib.sha256(where.encode()).hexdigest()[:16]}.json"


def runtime_dirs() -> list[Path]:
    """Where live states live, in the order the daemon chooses: systemd's $RUNTIME_DIRECTORY
    (the image sets it too), /run/mgh-reporter as root, $XDG_RUNTIME_DIR/mgh-reporter
    otherwise. Never the outbox's shared directory, never a guessable /tmp name."""
    dirs = []
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        dirs.append(Path(runtime))
    dirs.append(SYSTEMD_RUNTIME)
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg:
        dirs.append(Path(xdg) / "mgh-reporter")
    return list(dict.fromkeys(dirs))


def daemon_path(configured: Path | None, where: str) -> Path:
    """Where the daemon writes: `[outbox] live_state_path`, else its file in the first runtime
    directory it may use (made and checked: ours, writable by nobody else). UnsafeFile names
    why none is usable."""
    if configured is not None:
        return configured
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:  # systemd made it for us (or the image did)
        return private_dir(Path(runtime), create=False) / file_name(where)
    if os.geteuid() == 0:
        return private_dir(SYSTEMD_RUNTIME, create=True) / file_name(where)
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if not xdg:
        raise UnsafeFile(
            "no runtime directory for the live state ($RUNTIME_DIRECTORY and $XDG_RUNTIME_DIR "
            "unset, not root): set [outbox] live_state_path to a file in a directory only this "
            "user can write"
        )
    return private_dir(Path(xdg) / "mgh-reporter", create=True) / file_name(where)


def candidates(configured: Path | None, where: str) -> list[Path]:
    """Where `status` looks (an operator's shell has no $RUNTIME_DIRECTORY of the service)."""
    if configured is not None:
        return [configured]
    return [d / file_name(where) for d in runtime_dirs()]


def write(path: Path, state: LiveState) -> None:
    """Replace the file atomically (a reader sees the old or the new state, never half): a new
    temporary file (O_EXCL), its mode set on the descriptor (never chmod by path: a planted
    name could be swapped in between), renamed over the old one (a symlink planted there is
    replaced, never followed)."""
    data = json.dumps(asdict(state), indent=1) + "\n"  # one key per line: grep-able from sh
    fd, tmp = tempfile.mkstemp(prefix=".live-", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path, owners: set[int] | None = None) -> LiveState | None:
    """The state in `path`, or None when there is none, or it is not a small regular file owned
    by a trusted user (root, us, the directory's owner when nobody else can write there, or
    one of `owners`): a forged or planted file is never believed."""
    try:
        fd, _ = open_regular(path, False, None, "live state file")
    except (OSError, UnsafeFile):
        return None
    try:
        st = os.fstat(fd)
        trusted = {0, os.geteuid(), *(owners or ())}
        with contextlib.suppress(OSError):
            parent = os.stat(path.parent)
            if not parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                trusted.add(parent.st_uid)
        if st.st_uid not in trusted or st.st_size > MAX_LIVE_BYTES:
            return None
        raw = os.read(fd, MAX_LIVE_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    names = {f.name for f in fields(LiveState)}
    try:
        return LiveState(**{k: v for k, v in data.items() if k in names})
    except TypeError:
        return None


def read_freshest(paths: list[Path], owners: set[int] | None = None) -> LiveState | None:
    """The state with the newest heartbeat among `paths`."""
    states = [s for s in (read(p, owners) for p in paths) if s is not None]
    return max(states, key=lambda s: s.heartbeat, default=None)
