"""The two outbox engines as tests use them: a PostgreSQL server the tests start themselves
(`pgserver`, PostgreSQL 16 from PyPI), a fresh database per test, and a tool's INSERT on either
engine."""

from __future__ import annotations

import sqlite3
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from .helpers import insert as sqlite_insert

# Timings that make the PostgreSQL fence fit test leases: a call may take at most
# (1 + 2) x 1 s, plus a 1 s margin, so 4 s of lease must remain before one starts.
PG_AWS = {"connect_timeout_seconds": 1.0, "read_timeout_seconds": 2.0, "max_attempts": 1}
PG_OUTBOX = {"lease_seconds": 6.0, "fence_margin_seconds": 1.0}


class PgServer:
    """One PostgreSQL server for the session, on a Unix socket in a private directory."""

    def __init__(self) -> None:
        import pgserver

        self.dir = tempfile.mkdtemp(prefix="mghpg-", dir="/tmp")
        self._server = pgserver.get_server(self.dir, cleanup_mode="delete")
        self.uri: str = self._server.get_uri()

    def database(self) -> str:
        """A new, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def url(self, database: str, user: str = "postgres", password: str = "") -> str:
        """The URL of `database` as `user` (over the server's socket)."""
        host = self.uri.split("host=", 1)[1]
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@/{database}?host={host}"

    def pause(self) -> None:
        """Stop the server (its files stay): an outage for the clients."""
        from pgserver._commands import pg_ctl

        server = self._server
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

    def resume(self) -> None:
        """Start it again after `pause`."""
        self._server.ensure_postgres_running()

    def stop(self) -> None:
        """Stop the server and remove its files."""
        self._server.cleanup()


@dataclass
class Engine:
    """An outbox on one engine: the [outbox] config section and a tool's INSERT."""

    name: str
    outbox: dict[str, Any]
    path: Path | None = None
    url: str | None = None

    @property
    def extra(self) -> dict[str, dict[str, Any]]:
        """Config sections this engine needs beyond the defaults."""
        return {"aws": dict(PG_AWS)} if self.url else {}

    def insert(self, **values: Any) -> int:
        """INSERT one row the way a host tool would."""
        if self.path is not None:
            return sqlite_insert(self.path, **values)
        assert self.url is not None
        return pg_insert(self.url, **values)

    def insert_many(self, rows: list[dict[str, Any]]) -> None:
        """INSERT many rows (same columns) in one transaction, as a bulk-loading tool would."""
        names = list(rows[0])
        values = [[r[n] for n in names] for r in rows]
        if self.path is not None:
            conn = sqlite3.connect(self.path, timeout=5)
            with conn:
                conn.executemany(f"INSERT INTO outbox ({', '.join(names)})"
                                 f" VALUES ({', '.join('?' * len(names))})", values)
            conn.close()
            return
        assert self.url is not None
        with psycopg.connect(self.url) as conn, conn.cursor() as cur:
            cur.executemany(f"INSERT INTO outbox ({', '.join(names)})"
                            f" VALUES ({', '.join(['%s'] * len(names))})", values)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the outbox's own tables (mgh_ prefixed on SQLite, schema mgh_reporter on PG)."""
        if self.path is not None:
            conn = sqlite3.connect(self.path, timeout=5)
            try:
                return conn.execute(sql.replace("mgh_reporter.", "mgh_"), args).fetchall()
            finally:
                conn.close()
        assert self.url is not None
        with psycopg.connect(self.url) as conn:
            return conn.execute(sql.replace("?", "%s"), args).fetchall()


    def execute(self, sql: str, *args: Any) -> None:
        """Change the outbox as a tool (or an administrator) would, committed."""
        if self.path is not None:
            conn = sqlite3.connect(self.path, timeout=5)
            with conn:
                conn.execute(sql.replace("mgh_reporter.", "mgh_"), args)
            conn.close()
            return
        assert self.url is not None
        with psycopg.connect(self.url) as conn:
            conn.execute(sql.replace("?", "%s"), args)


def pg_insert(url: str, **values: Any) -> int:
    """INSERT one row into a PostgreSQL outbox (psycopg, as a Python tool would)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"INSERT INTO outbox ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))})"
            " RETURNING id",
            list(values.values()),
        ).fetchone()
    assert row is not None
    return int(row[0])
