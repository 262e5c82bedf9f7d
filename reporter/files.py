"""Files in directories other users can write, opened as hostile: no symlinks followed, no FIFO
or device waited on, only regular files with one link, owned as expected; private directories
made and checked (pure os calls, no policy about what the files hold)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "UnsafeFile",
    "check_regular",
    "group_writable",
    "open_regular",
    "private_dir",
    "refuse_special",
    "trusted_owners",
]

# O_NONBLOCK: opening a FIFO someone planted returns at once instead of waiting for a writer.
_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeFile(Exception):
    """A path that is not the plain file we expect (a symlink, FIFO, hard link, stranger's)."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(
    path: Path, st: os.stat_result, owners: Iterable[int] | None = None, what: str = "file"
) -> None:
    """Refuse (UnsafeFile, naming the path and the rule) unless `st` is a regular file with one
    link, owned by one of `owners` (any owner when None)."""
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{path}: the {what} is {_kind(st.st_mode)}, not a regular file; "
                         "refusing to use it (remove it; mgh-reporter makes its own)")
    if st.st_nlink != 1:
        raise UnsafeFile(f"{path}: the {what} has {st.st_nlink} hard links; refusing to use it "
                         "(another name for the same file could be someone else's)")
    allowed = None if owners is None else set(owners)
    if allowed is not None and st.st_uid not in allowed:
        raise UnsafeFile(f"{path}: the {what} is owned by uid {st.st_uid}, not by a user "
                         f"mgh-reporter trusts (uids {sorted(allowed)}); refusing to use it")


def open_regular(
    path: Path, write: bool, owners: Iterable[int] | None = None, what: str = "file"
) -> tuple[int, bool]:
    """Open (creating it 0660 when `write`) a file in a shared directory: never through a
    symlink, never blocking on a FIFO, and only a regular file with one link owned by one of
    `owners`. Returns (fd, created)."""
    created = False
    fd = -1
    try:
        if write:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FLAGS, 0o660)
                created = True
            except FileExistsError:
                fd = os.open(path, os.O_RDWR | _FLAGS)
        else:
            fd = os.open(path, os.O_RDONLY | _FLAGS)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise UnsafeFile(f"{path}: the {what} is a symbolic link; refusing to follow it "
                             "(remove it; mgh-reporter makes its own)") from None
        raise
    try:
        if not created:
            check_regular(path, os.fstat(fd), owners, what)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def probe(path: Path, what: str = "outbox") -> int:
    """Open `path` ourselves before a library opens it by name: never through a symlink, never
    blocking on a FIFO, and only a regular file (UnsafeFile otherwise). The descriptor stays
    open while the library opens the name, so `opened_as` can tell whether the library got the
    same file. Returns the descriptor (the caller closes it). It is an O_PATH descriptor:
    closing it never drops the POSIX locks SQLite holds on the file (closing any ordinary
    descriptor of a file drops all of the process's locks on it)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeFile(f"{path}: cannot open the {what}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFile(f"{path}: the {what} is {_kind(st.st_mode)}; refusing it")
    return fd


def opened_as(path: Path, probed: int, resolved: str) -> None:
    """After a library opened `path` by name (SQLite, which follows symlinks): the file it
    resolved (`resolved`, e.g. SQLite's database_list) must be the name we probed, and some
    other descriptor of this process must be the very file we probed (same device and inode),
    else a swap between our look and its open gave it another file: UnsafeFile, before it
    writes anything."""
    target = os.path.join(os.path.realpath(path.parent), path.name)
    if resolved and resolved != target:
        raise UnsafeFile(f"{path}: the outbox became a link to another file while it was being"
                         " opened (another user swapped it); refusing it")
    want = os.fstat(probed)
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return  # no /proc: the resolved name's check stands alone
    for fd in fds:
        if fd == probed:
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # closed meanwhile (another thread's descriptor)
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            return
    raise UnsafeFile(f"{path}: the outbox was swapped for another file while it was being"
                     " opened (another user's doing); refusing it")


def trusted_owners(*directories: Path) -> set[int]:
    """Who may own a file we read or reuse: root, us, and the owners of these directories (the
    outbox's directory belongs to the service user; a group member cannot be its owner)."""
    owners = {0, os.geteuid()}
    for directory in directories:
        with contextlib.suppress(OSError):
            owners.add(os.stat(directory).st_uid)
    return owners


def private_dir(path: Path, create: bool) -> Path:
    """A directory only its owner (us, or root) can write: made 0755 when missing and `create`;
    refused (UnsafeFile) when it is a symlink, not a directory, someone else's, or writable by
    group or others."""
    if create:
        try:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise UnsafeFile(f"{path}: cannot create directory: {exc.strerror}") from None
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise UnsafeFile(f"{path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFile(f"{path}: is {_kind(st.st_mode)}, not a directory")
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafeFile(f"{path}: owned by uid {st.st_uid}, not by us; refusing it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFile(f"{path}: writable by group or others (mode "
                         f"{stat.S_IMODE(st.st_mode):o}); refusing it")
    return path


def refuse_special(path: Path, what: str = "outbox") -> None:
    """Before a library opens `path` by name (SQLite): refuse a symlink (it would send our
    writes, and init's chmod, to another file) or a FIFO, device or directory planted there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeFile(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{path}: the {what} is {_kind(st.st_mode)}; refusing it (set "
                         "the path to the file itself, in a directory the tools' group cannot "
                         "replace it in)")


def group_writable(path: Path, what: str = "outbox") -> None:
    """Make (or find) `path` group-readable and -writable, so a tool in our group can share it
    (SQLite gives -wal and -shm the database's mode). A new file is created with O_EXCL; an
    existing one is changed through an O_PATH descriptor of the file itself (never chmod by a
    path a group member could swap; and closing an O_PATH descriptor, unlike any other, keeps
    the POSIX locks this process's SQLite connections hold on the file)."""
    wanted = stat.S_IRGRP | stat.S_IWGRP
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o660))
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeFile(f"{path}: cannot create the {what}: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                refuse_special(path, what)  # names what it is
            if st.st_uid == os.geteuid() and st.st_mode & wanted != wanted:
                os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode) | wanted)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UnsafeFile(f"{path}: cannot make group-writable: {exc.strerror}") from None
