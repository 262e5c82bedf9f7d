"""Process plumbing shared by the CLI and the daemon: exit codes, the outbox lock, signal flags."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reporter.files import UnsafeFile, open_regular, trusted_owners

__all__ = [
    "EXIT",
    "LockError",
    "hold_signals",
    "lock_holder",
    "one_malloc_arena",
    "outbox_lock",
    "stop_on_signals",
]

EXIT = {
    "ok": 0, "error": 1, "usage": 2, "pending": 3, "blocked": 4, "rejected": 5, "differs": 6,
    "hung": 7,
}


class LockError(Exception):
    """Another mgh-reporter process holds the outbox."""


def _lock_path(outbox: Path) -> Path:
    return outbox.with_name(outbox.name + ".lock")


@contextmanager
def outbox_lock(outbox: Path) -> Iterator[None]:
    """Hold `<outbox>.lock` exclusively (flock: released by the kernel if we die). The outbox's
    directory is shared with the tools' group, so the lock file is opened as hostile: a symlink,
    FIFO, hard link or a stranger's file planted there is refused at once, naming it; a file we
    did not create (root's `drain` beside the service user's lock) is locked, never truncated."""
    path = _lock_path(outbox)
    try:
        fd, created = open_regular(path, True, trusted_owners(outbox.parent), "lock file")
    except UnsafeFile as exc:
        raise LockError(str(exc)) from None
    except OSError as exc:
        raise LockError(
            f"{path}: cannot open lock file: {exc.strerror}"
            + (" (does the outbox's directory exist? run `mgh-reporter init`)"
               if exc.errno == errno.ENOENT else "")
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockError(
                f"another mgh-reporter (pid {holder}) is already delivering from {outbox} "
                f"(lock {path}); stop it first, or use `status` to watch it"
            ) from None
        if created or os.fstat(fd).st_uid == os.geteuid():
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def lock_holder(outbox: Path) -> int | None:
    """The pid of the process delivering from this outbox, or None when none is (or the lock
    file is not one we trust)."""
    path = _lock_path(outbox)
    try:
        fd, _ = open_regular(path, False, trusted_owners(outbox.parent), "lock file")
    except (OSError, UnsafeFile):
        return None
    try:
        held = _flock_held(os.fstat(fd))
        if held is None:  # no /proc/locks: probe (a moment's shared lock)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
        if not held:
            return None
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)


def _flock_held(st: os.stat_result) -> bool | None:
    """Whether some process holds an exclusive flock on this file, from /proc/locks (no lock of
    ours is taken: a probe's shared lock could make a `run` starting that instant refuse);
    None when /proc/locks cannot be read."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            table = locks.read()
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[3] == "WRITE" \
                and parts[5] == device:
            return True
    return False


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def one_malloc_arena() -> None:
    """Make glibc malloc share one arena among all threads (as MALLOC_ARENA_MAX=1 would) before
    any thread starts. By default every thread that allocates may get an arena of its own, up to
    8 per core, each fragmenting on its own: ~2.5 MB of a 64 MiB sidecar for the Hub call pool.
    Contention costs nothing here: the GIL already serialises our threads. Elsewhere (not
    glibc), a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is not None:
            mallopt(M_ARENA_MAX, 1)
    except OSError:
        pass


_held: list[int] = []  # signals received between `hold_signals` and `stop_on_signals`


def hold_signals() -> None:
    """Call first thing in a long-running command: SIGTERM/SIGINT/SIGHUP that arrive while it
    still imports and opens its files are remembered and acted on by `stop_on_signals`, rather
    than killing it by their default action (a reload sent during start-up must not kill)."""
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda signum, frame: _held.append(signum))
    one_malloc_arena()


@contextmanager
def stop_on_signals(
    stop: threading.Event, reload: threading.Event | None = None
) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop`, SIGHUP sets `reload` (or is ignored when there is none, so a
    stray hang-up never kills us); the main loop acts on the flags."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            if reload is not None:
                reload.set()
        else:
            stop.set()

    for s in previous:
        signal.signal(s, handler)
    while _held:
        handler(_held.pop(0), None)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
