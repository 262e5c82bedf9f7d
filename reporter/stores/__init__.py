"""The outbox's storage engines. `Engine` is the one place that decides by `[outbox] url` (an
SQLite file, or a PostgreSQL URL): it opens and creates the store, takes the single-instance
lock and builds the wake-ups. Each engine lives in its own modules (`sqlite…`, `postgres…`);
`algorithm` holds what they share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from reporter.stores.errors import StoreError

if TYPE_CHECKING:
    from reporter.config import OutboxConfig
    from reporter.stores.contract import OutboxStore

__all__ = ["LIBPQ_HINT", "Engine", "Wakeups", "is_url", "require_libpq"]

LIBPQ_HINT = (
    "the PostgreSQL outbox needs the system's libpq (Debian/Ubuntu: apt install libpq5; "
    "RHEL, Alma, Rocky, Amazon Linux: dnf install libpq)"
)


def is_url(text: str) -> bool:
    """A PostgreSQL URL (anything else names an SQLite file)."""
    return text.startswith(("postgresql://", "postgres://"))


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


@dataclass(frozen=True)
class Engine:
    """One outbox: an SQLite file (`path`) or a PostgreSQL database (`url`)."""

    path: Path
    url: str | None = None
    busy_timeout_ms: int = 5000

    @classmethod
    def of(cls, outbox: OutboxConfig) -> Engine:
        """The engine `[outbox]` names: `url` a PostgreSQL database, else the SQLite file at
        `path`."""
        return cls(outbox.path, outbox.url, outbox.busy_timeout_ms)

    @property
    def postgres(self) -> bool:
        """A shared database (replicas, leases, LISTEN) rather than a file."""
        return self.url is not None

    def open(self) -> OutboxStore:
        """Open an initialised outbox (StoreError when it is not usable)."""
        if self.url is not None:
            require_libpq()
            from reporter.stores.postgres import PostgresStore

            return PostgresStore.open(self.url)
        from reporter.stores.sqlite import SqliteStore

        return SqliteStore.open(self.path, self.busy_timeout_ms)

    def open_view(self) -> OutboxStore:
        """Open for reading only (`status`, `tasks`): never takes SQLite's write lock."""
        if self.url is not None:
            return self.open()
        from reporter.stores.sqlite import SqliteStore

        return SqliteStore.open(self.path, self.busy_timeout_ms, writable=False)

    def create(self, parents: bool = False) -> OutboxStore:
        """`init`: create (or upgrade) the outbox and the daemon's own tables; idempotent. A
        missing directory is made only with `parents`: a misspelt last directory
        (`/var/lib/mgh-reportr/outbox.db`) must not quietly become a new, unwatched outbox."""
        if self.url is not None:
            require_libpq()
            from reporter.stores.postgres import PostgresStore

            return PostgresStore.create(self.url)
        from reporter.stores.sqlite import SqliteStore

        directory = self.path.parent
        if not parents and not directory.is_dir():
            raise StoreError(
                f"no directory {directory}: `init --parents` makes it (or correct [outbox]"
                " path)"
            )
        return SqliteStore.create(self.path, self.busy_timeout_ms)

    def missing(self, init: str = "mgh-reporter init") -> str | None:
        """Why an SQLite outbox cannot be opened because it was never made (None when the
        file exists, or for PostgreSQL): the `init` command to run, `--parents` when its
        directory is missing too."""
        path = self.path
        if self.postgres or path.exists():
            return None
        if path.parent.is_dir():
            return f"no outbox at {path}: run `{init}`"
        return (
            f"no outbox at {path}, and no directory {path.parent}: run `{init} --parents` "
            "(or correct [outbox] path)"
        )

    @contextlib.contextmanager
    def instance_lock(self) -> Iterator[None]:
        """SQLite: one delivering process per file (flock). PostgreSQL: none; replicas share
        the work through leases."""
        if self.postgres:
            yield
            return
        from reporter.stores.lock import outbox_lock

        with outbox_lock(self.path):
            yield

    def privileges(self, store: OutboxStore) -> dict[str, list[str]] | None:
        """PostgreSQL: per table, the privileges the daemon's role needs and lacks (empty
        lists: all present), and under `inserters` the roles that may INSERT into the outbox
        (the tools). None for an SQLite file: its access is the file's mode and group."""
        if self.url is None:
            return None
        from reporter.stores.postgres import PostgresStore

        if not isinstance(store, PostgresStore):
            raise TypeError(f"not this engine's store: {type(store).__name__}")
        return store.privileges()

    def wakeups(self, on_change: Callable[[], None]) -> Wakeups:
        """inotify on the outbox's directory, or LISTEN on the database."""
        if self.url is not None:
            require_libpq()
            from reporter.stores.postgres_listen import Listener

            return Listener(self.url, on_change)
        from reporter.stores.sqlite_wake import Waker

        return Waker(self.path, on_change)
