"""The outbox's single-instance lock: `<outbox>.lock`, held with flock by the one process that
delivers from it, opened as hostile (the directory is shared), and who holds it."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reporter.files import UnsafeFile, open_regular, trusted_owners

__all__ = ["LockError", "lock_holder", "outbox_lock"]


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
