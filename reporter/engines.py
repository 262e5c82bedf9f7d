"""Which storage engine a config names (an SQLite file or a PostgreSQL URL), and the per-engine
pieces built from it: the store, `init`, the single-instance lock, wake-ups. The one place
that decides by `[outbox] url`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

from reporter.config import Config
from reporter.model import OutboxStore, StoreError
from reporter.process import outbox_lock

__all__ = [
    "Wakeups",
    "create",
    "instance_lock",
    "missing_outbox",
    "open_store",
    "require_libpq",
    "wakeups",
]

LIBPQ_HINT = (
    "the PostgreSQL outbox needs the system's libpq (Debian/Ubuntu: apt install libpq5; "
    "RHEL, Alma, Rocky, Amazon Linux: dnf install libpq)"
)


def require_libpq() -> None:
    """Before the PostgreSQL engine is imported: the packages ship plain psycopg, which loads
    the host's libpq. Without it, a StoreError that says what to install (an SQLite outbox
    never needs it)."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise StoreError(f"{LIBPQ_HINT} ({exc})") from None


class Wakeups(Protocol):
    """What the daemon needs of a waker (inotify on a file, or LISTEN on a database)."""

    mode: str | None

    def start(self) -> None:
        """Begin watching on a thread of its own."""

    def rearm(self) -> None:
        """Watch again after the outbox was replaced."""

    def close(self) -> None:
        """Stop watching."""


def open_store(config: Config, writable: bool = True) -> OutboxStore:
    """Open an initialised outbox (StoreError when it is not usable)."""
    outbox = config.outbox
    if outbox.url is not None:
        require_libpq()
        from reporter.pgstore import PgStore

        return PgStore.open(outbox.url, writable)
    from reporter.store import Store

    return Store.open(outbox.path, outbox.busy_timeout_ms, writable=writable)


def missing_outbox(config: Config, init: str = "mgh-reporter init") -> str | None:
    """Why an SQLite outbox cannot be opened because it was never made (None when the file
    exists, or for PostgreSQL): the `init` command to run, `--parents` when its directory is
    missing too."""
    path = config.outbox.path
    if config.outbox.postgres or path.exists():
        return None
    if path.parent.is_dir():
        return f"no outbox at {path}: run `{init}`"
    return (
        f"no outbox at {path}, and no directory {path.parent}: run `{init} --parents` "
        "(or correct [outbox] path)"
    )


def create(config: Config, parents: bool = False) -> OutboxStore:
    """`init`: create (or upgrade) the outbox and the daemon's own tables; idempotent. The
    outbox's directory is made when its own parent exists; a deeper missing tree only with
    `parents` (a misspelt path must not quietly become a tree of directories)."""
    outbox = config.outbox
    if outbox.url is not None:
        require_libpq()
        from reporter.pgstore import PgStore

        return PgStore.create(outbox.url)
    from reporter.store import Store

    directory = outbox.path.parent
    if not parents and not directory.is_dir() and not directory.parent.is_dir():
        raise StoreError(
            f"{directory} does not exist, nor does {directory.parent}: `init --parents` makes "
            "them (or correct [outbox] path)"
        )
    return Store.create(outbox.path, outbox.busy_timeout_ms)


@contextlib.contextmanager
def instance_lock(config: Config) -> Iterator[None]:
    """SQLite: one delivering process per file (flock). PostgreSQL: none; replicas share the
    work through leases."""
    if config.outbox.postgres:
        yield
        return
    with outbox_lock(config.outbox.path):
        yield


def wakeups(config: Config, on_change: Callable[[], None]) -> Wakeups:
    """inotify on the outbox's directory, or LISTEN on the database."""
    if config.outbox.url is not None:
        require_libpq()
        from reporter.pgstore import Listener

        return Listener(config.outbox.url, on_change)
    from reporter.wake import Waker

    return Waker(config.outbox.path, on_change)
