"""The only module with SQL: the outbox, the daemon's delivery tables, claims, outcomes, stats."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from reporter import schema
from reporter.rows import OutboxRow, epoch_of

__all__ = ["ClaimedTask", "Ingested", "Store", "StoreError", "TaskOutcome"]

PENDING, SENT, SUPERSEDED, REJECTED = "pending", "sent", "superseded", "rejected"


class StoreError(Exception):
    """The outbox file cannot be used; the message says which file and why.

    `busy` is True when the only problem was the write lock staying taken past the busy
    timeout (other writers): transient, the next pass tries again.
    """

    def __init__(self, message: str, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


@dataclass(frozen=True)
class Ingested:
    """A new outbox row as the relay judged it at intake."""

    row_id: int
    stream: str
    task: str
    kind: str
    created_at: float
    rejected: str | None = None
    supersedes: bool = False


@dataclass
class ClaimedTask:
    """A task leased for one pass, with its waiting rows and what the Hub already has."""

    id: int
    stream: str
    task: str
    imported: bool
    attempts: int
    last_state_row: int | None
    last_attributes_row: int | None
    oldest_created_at: float
    rows: list[OutboxRow] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    associated: set[str] = field(default_factory=set)


@dataclass
class TaskOutcome:
    """What happened to one claimed task, to record in one statement batch."""

    task_id: int
    sent: list[int] = field(default_factory=list)
    superseded: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    imported: bool = False
    state: dict[str, Any] | None = None
    attributes_row: int | None = None
    map_check_at: float | None = None
    artifacts: list[str] = field(default_factory=list)
    retry_at: float | None = None
    error: str | None = None
    charge_attempt: bool = False
    give_up: str | None = None


def _marks(n: int) -> str:
    return ",".join("?" * n)


class Store:
    """One connection to the outbox file; short explicit write transactions."""

    def __init__(
        self, path: Path, busy_timeout_ms: int = 5000, clock: Callable[[], float] | None = None
    ) -> None:
        self.path = path
        self.clock = clock or (lambda: time.time())  # looked up per call: freezegun-able
        try:
            self.conn = sqlite3.connect(
                str(path),
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open as an SQLite database: {exc}") from None
        if mode != "wal":
            raise StoreError(f"{path}: cannot switch to WAL mode (journal_mode is {mode})")
        self.db = Database(self.conn)

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, busy_timeout_ms: int = 5000) -> Store:
        """`init`: create the file, the outbox table (or accept the host's) and our tables."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path.parent}: cannot create directory: {exc.strerror}") from None
        store = cls(path, busy_timeout_ms)
        with store._errors("initialise"):
            store.conn.execute(schema.OUTBOX_DDL)
            columns = store._outbox_columns()
            missing = [c for c in schema.REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise StoreError(f"{path}: table outbox lacks columns {', '.join(missing)}")
            for column in schema.ARTIFACT_COLUMNS:
                if column not in columns:
                    store.conn.execute(f"ALTER TABLE outbox ADD COLUMN {column} TEXT")
            schema.migrations.apply(store.db)
        # SQLite creates files 0644 (less the umask) and gives -wal/-shm the database's mode:
        # make it group-writable so a host tool in our group can share it.
        try:
            os.chmod(path, path.stat().st_mode | stat.S_IRGRP | stat.S_IWGRP)
        except OSError as exc:
            raise StoreError(f"{path}: cannot make group-writable: {exc.strerror}") from None
        return store

    @classmethod
    def open(cls, path: Path, busy_timeout_ms: int = 5000, writable: bool = True) -> Store:
        """Open an initialised outbox, refusing anything we cannot safely work with."""
        if not path.exists():
            raise StoreError(f"{path}: no outbox database here (run `mgh-reporter init`)")
        store = cls(path, busy_timeout_ms)
        with store._errors("open"):
            columns = store._outbox_columns()
            if not columns:
                raise StoreError(f"{path}: not an mgh-reporter outbox (no outbox table); run init")
            missing = [c for c in schema.OUTBOX_COLUMNS if c not in columns]
            if missing:
                raise StoreError(
                    f"{path}: table outbox lacks columns {', '.join(missing)} "
                    "(run `mgh-reporter init` to add them)"
                )
            if schema.migrations.pending(store.db):
                raise StoreError(f"{path}: delivery tables missing or old; run `mgh-reporter init`")
            if writable:
                store.conn.execute("BEGIN IMMEDIATE")
                store.conn.execute("ROLLBACK")
        return store

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            raise StoreError(f"{self.path}: cannot {doing}: {exc}", busy) from None

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._errors(doing):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _outbox_columns(self) -> list[str]:
        return [r["name"] for r in self.conn.execute("PRAGMA table_info(outbox)")]

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """A value from our key/value table."""
        with self._errors("read meta"):
            row = self.conn.execute("SELECT value FROM mgh_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, **values: str | float | int | None) -> None:
        """Set (or with None, delete) several keys in one transaction."""
        with self._write("write meta") as c:
            for key, value in values.items():
                if value is None:
                    c.execute("DELETE FROM mgh_meta WHERE key = ?", (key,))
                else:
                    c.execute(
                        "INSERT INTO mgh_meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, str(value)),
                    )

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap idle check)."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    # -- writers (host-side API) ---------------------------------------------------------------
    def insert_row(self, values: dict[str, Any]) -> int:
        """INSERT one outbox row as a host tool would; returns its id."""
        names = list(values)
        with self._write("insert into outbox") as c:
            cur = c.execute(
                f"INSERT INTO outbox ({', '.join(names)}) VALUES ({_marks(len(names))})",
                [values[n] for n in names],
            )
        return int(cur.lastrowid or 0)

    # -- intake ------------------------------------------------------------------------------
    def fetch_new(self, limit: int) -> list[OutboxRow]:
        """Outbox rows past our cursor, oldest first."""
        with self._errors("read outbox"):
            cursor = int(self.get_meta("cursor") or 0)
            rows = self.conn.execute(
                "SELECT * FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (cursor, limit)
            ).fetchall()
        return [OutboxRow.from_mapping(dict(r)) for r in rows]

    def ingest(self, items: Sequence[Ingested]) -> None:
        """Take new rows into delivery state and advance the cursor, in one transaction."""
        if not items:
            return
        now = self.clock()
        with self._write("ingest rows") as c:
            keys = sorted({(i.stream, i.task) for i in items})
            c.executemany(
                "INSERT INTO mgh_tasks(stream, task) VALUES (?, ?) ON CONFLICT DO NOTHING", keys
            )
            ids: dict[tuple[str, str], int] = {}
            for stream, task in keys:
                ids[(stream, task)] = c.execute(
                    "SELECT id FROM mgh_tasks WHERE stream = ? AND task = ?", (stream, task)
                ).fetchone()[0]
            c.executemany(
                "INSERT OR IGNORE INTO mgh_rows(id, task_id, kind, state, created_at, finished_at,"
                " reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        i.row_id,
                        ids[(i.stream, i.task)],
                        i.kind,
                        REJECTED if i.rejected else PENDING,
                        i.created_at,
                        now if i.rejected else None,
                        i.rejected,
                    )
                    for i in items
                ],
            )
            newest: dict[tuple[int, str], int] = {}
            for i in items:
                if i.supersedes:
                    newest[(ids[(i.stream, i.task)], i.kind)] = i.row_id
            c.executemany(
                "UPDATE mgh_rows SET state = 'superseded', finished_at = ?,"
                " reason = 'superseded by row ' || ? WHERE task_id = ? AND kind = ?"
                " AND state = 'pending' AND id < ?",
                [(now, rid, tid, kind, rid) for (tid, kind), rid in newest.items()],
            )
            pending_tasks = {ids[(i.stream, i.task)] for i in items if not i.rejected}
            c.executemany(
                "UPDATE mgh_tasks SET due_at = ? WHERE id = ? AND due_at IS NULL",
                [(now, t) for t in pending_tasks],
            )
            c.execute(
                "INSERT INTO mgh_meta(key, value) VALUES ('cursor', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(max(i.row_id for i in items)),),
            )

    # -- claims ------------------------------------------------------------------------------
    def next_wakeup(self) -> float | None:
        """When the earliest task or mapping check becomes due (None: nothing scheduled)."""
        with self._errors("read due time"):
            times = [
                self.conn.execute(
                    f"SELECT min({column}) FROM mgh_tasks WHERE {column} IS NOT NULL"
                ).fetchone()[0]
                for column in ("due_at", "map_check_at")
            ]
        known = [float(t) for t in times if t is not None]
        return min(known) if known else None

    def claim_due(self, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        """Lease up to `limit` due tasks (the lease is their due time pushed forward)."""
        now = self.clock()
        with self._write("claim tasks") as c:
            tasks = c.execute(
                "SELECT * FROM mgh_tasks WHERE due_at IS NOT NULL AND due_at <= ?"
                " ORDER BY due_at LIMIT ?",
                (now, limit),
            ).fetchall()
            if not tasks:
                return []
            ids = [t["id"] for t in tasks]
            c.execute(
                f"UPDATE mgh_tasks SET due_at = ? WHERE id IN ({_marks(len(ids))})",
                [now + lease_seconds, *ids],
            )
            rows = c.execute(
                "SELECT r.task_id AS _task_id, r.id AS _row_id, r.created_at AS _created, o.*"
                " FROM mgh_rows r LEFT JOIN outbox o ON o.id = r.id"
                f" WHERE r.state = 'pending' AND r.task_id IN ({_marks(len(ids))}) ORDER BY r.id",
                ids,
            ).fetchall()
            artifacts = c.execute(
                f"SELECT task_id, arn FROM mgh_artifacts WHERE task_id IN ({_marks(len(ids))})", ids
            ).fetchall()
        claimed = {
            t["id"]: ClaimedTask(
                t["id"],
                t["stream"],
                t["task"],
                bool(t["imported"]),
                t["attempts"],
                t["last_state_row"],
                t["last_attributes_row"],
                now,
            )
            for t in tasks
        }
        for r in rows:
            task = claimed[r["_task_id"]]
            task.oldest_created_at = min(task.oldest_created_at, r["_created"])
            if r["id"] is None:
                task.missing.append(r["_row_id"])
            else:
                task.rows.append(OutboxRow.from_mapping(dict(r)))
        for a in artifacts:
            claimed[a["task_id"]].associated.add(a["arn"])
        return list(claimed.values())

    def release(self, task_ids: Iterable[int], due_at: float) -> None:
        """Give leased tasks back untouched (e.g. delivery blocked), due again at `due_at`."""
        ids = list(task_ids)
        if ids:
            with self._write("release tasks") as c:
                c.execute(
                    f"UPDATE mgh_tasks SET due_at = ? WHERE id IN ({_marks(len(ids))})",
                    [due_at, *ids],
                )

    # -- outcomes ----------------------------------------------------------------------------
    def record(self, outcomes: Sequence[TaskOutcome]) -> None:
        """Record a pass's outcomes in one short transaction."""
        if not outcomes:
            return
        now = self.clock()
        with self._write("record outcomes") as c:
            for o in outcomes:
                self._record_one(c, o, now)

    def _record_one(self, c: sqlite3.Connection, o: TaskOutcome, now: float) -> None:
        if o.sent:
            c.execute(
                f"UPDATE mgh_rows SET state = 'sent', finished_at = ?, reason = NULL"
                f" WHERE id IN ({_marks(len(o.sent))})",
                [now, *o.sent],
            )
        c.executemany(
            "UPDATE mgh_rows SET state = 'superseded', finished_at = ?, reason = ?"
            " WHERE id = ? AND state = 'pending'",
            [(now, reason, rid) for rid, reason in o.superseded],
        )
        c.executemany(
            "UPDATE mgh_rows SET state = 'rejected', finished_at = ?, reason = ? WHERE id = ?",
            [(now, reason, rid) for rid, reason in o.rejected],
        )
        c.executemany(
            "INSERT OR IGNORE INTO mgh_artifacts(task_id, arn, associated_at) VALUES (?, ?, ?)",
            [(o.task_id, arn, now) for arn in o.artifacts],
        )
        if o.imported:
            c.execute("UPDATE mgh_tasks SET imported = 1 WHERE id = ?", (o.task_id,))
        if o.state is not None:
            c.execute(
                "UPDATE mgh_tasks SET last_state_row = :row, status = :status, percent = :percent,"
                " detail = :detail, update_time = :update_time,"
                " next_update_seconds = :next_update_seconds, sent_at = :now WHERE id = :id",
                {**o.state, "now": now, "id": o.task_id},
            )
        if o.attributes_row is not None:
            c.execute(
                "UPDATE mgh_tasks SET last_attributes_row = ?, attributes_at = ?, mapped = NULL,"
                " configuration_id = NULL, map_check_at = ?, map_checks = 0,"
                " unmapped_reported = 0 WHERE id = ?",
                (o.attributes_row, now, o.map_check_at, o.task_id),
            )
        if o.give_up is not None:
            c.execute(
                "UPDATE mgh_rows SET state = 'rejected', finished_at = ?, reason = ?"
                " WHERE task_id = ? AND state = 'pending'",
                (now, o.give_up, o.task_id),
            )
            c.execute(
                "UPDATE mgh_tasks SET attempts = 0, last_error = ?, due_at = NULL WHERE id = ?",
                (o.error, o.task_id),
            )
        elif o.retry_at is not None:
            if o.charge_attempt:
                c.execute(
                    "UPDATE mgh_rows SET attempts = attempts + 1"
                    " WHERE task_id = ? AND state = 'pending'",
                    (o.task_id,),
                )
            c.execute(
                "UPDATE mgh_tasks SET attempts = attempts + ?, last_error = ?, due_at = ?"
                " WHERE id = ?",
                (1 if o.charge_attempt else 0, o.error, o.retry_at, o.task_id),
            )
        else:
            c.execute(
                "UPDATE mgh_tasks SET attempts = 0, last_error = NULL, due_at = CASE WHEN EXISTS"
                " (SELECT 1 FROM mgh_rows WHERE task_id = :id AND state = 'pending')"
                " THEN :now ELSE NULL END WHERE id = :id",
                {"id": o.task_id, "now": now},
            )

    def mark_stream_created(self, stream: str) -> None:
        """Remember that the Hub has this stream."""
        with self._write("record stream") as c:
            c.execute(
                "INSERT OR REPLACE INTO mgh_streams(stream, created_at) VALUES (?, ?)",
                (stream, self.clock()),
            )

    def forget_stream(self, stream: str) -> None:
        """The Hub lost the stream: forget it and every import under it."""
        with self._write("forget stream") as c:
            c.execute("DELETE FROM mgh_streams WHERE stream = ?", (stream,))
            c.execute("UPDATE mgh_tasks SET imported = 0 WHERE stream = ?", (stream,))

    def streams(self) -> set[str]:
        """Streams known to exist at the Hub."""
        with self._errors("read streams"):
            return {r[0] for r in self.conn.execute("SELECT stream FROM mgh_streams")}

    # -- mapping ---------------------------------------------------------------------------
    def due_mapping_checks(self, limit: int) -> list[sqlite3.Row]:
        """Tasks whose auto-mapping should be checked now."""
        with self._errors("read mapping checks"):
            return self.conn.execute(
                "SELECT id, stream, task, attributes_at, map_checks, unmapped_reported"
                " FROM mgh_tasks"
                " WHERE map_check_at IS NOT NULL AND map_check_at <= ? ORDER BY map_check_at"
                " LIMIT ?",
                (self.clock(), limit),
            ).fetchall()

    def record_mapping(
        self,
        task_id: int,
        mapped: bool | None,
        configuration_id: str | None,
        next_check_at: float | None,
        unmapped_reported: bool,
    ) -> None:
        """Store the result of one ListDiscoveredResources check."""
        with self._write("record mapping") as c:
            c.execute(
                "UPDATE mgh_tasks SET mapped = ?, configuration_id = ?, map_check_at = ?,"
                " map_checks = map_checks + 1, unmapped_reported = ? WHERE id = ?",
                (mapped, configuration_id, next_check_at, int(unmapped_reported), task_id),
            )

    # -- dead letters ------------------------------------------------------------------------
    def dead_letters(self, ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Rejected rows (all, or those of `ids`) with their reasons and outbox content."""
        where = "r.state = 'rejected'"
        args: list[Any] = []
        if ids is not None:
            where += f" AND r.id IN ({_marks(len(ids))})"
            args = list(ids)
        with self._errors("read dead letters"):
            rows = self.conn.execute(
                "SELECT r.id AS id, r.reason AS reason, r.kind AS kind, t.stream AS stream,"
                " t.task AS task, r.attempts AS attempts, r.finished_at AS rejected_at,"
                " o.id IS NOT NULL AS present"
                " FROM mgh_rows r JOIN mgh_tasks t ON t.id = r.task_id"
                f" LEFT JOIN outbox o ON o.id = r.id WHERE {where} ORDER BY r.id",
                args,
            ).fetchall()
        return [dict(r) for r in rows]

    def outbox_rows(self, ids: Sequence[int]) -> list[OutboxRow]:
        """The outbox content of some rows."""
        with self._errors("read outbox"):
            rows = self.conn.execute(
                f"SELECT * FROM outbox WHERE id IN ({_marks(len(ids))}) ORDER BY id", list(ids)
            ).fetchall()
        return [OutboxRow.from_mapping(dict(r)) for r in rows]

    def requeue(self, valid: Sequence[int], invalid: Sequence[tuple[int, str]]) -> None:
        """Put dead letters back in line (valid) or reject them again with a new reason."""
        now = self.clock()
        with self._write("requeue dead letters") as c:
            for rid in valid:
                c.execute(
                    "UPDATE mgh_rows SET state = 'pending', attempts = 0, reason = NULL,"
                    " finished_at = NULL WHERE id = ? AND state = 'rejected'",
                    (rid,),
                )
                c.execute(
                    "UPDATE mgh_tasks SET due_at = ?, attempts = 0"
                    " WHERE id = (SELECT task_id FROM mgh_rows WHERE id = ?)",
                    (now, rid),
                )
            c.executemany(
                "UPDATE mgh_rows SET reason = ?, finished_at = ? WHERE id = ?",
                [(reason, now, rid) for rid, reason in invalid],
            )

    # -- views -------------------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        """Row counts by delivery state, the oldest pending age and our task total."""
        now = self.clock()
        with self._errors("read counts"):
            cursor = int(self.get_meta("cursor") or 0)
            by_state = dict(
                self.conn.execute("SELECT state, count(*) FROM mgh_rows GROUP BY state").fetchall()
            )
            waiting = self.conn.execute(
                "SELECT count(*), min(created_at) FROM outbox WHERE id > ?", (cursor,)
            ).fetchone()
            oldest = self.conn.execute(
                "SELECT min(created_at) FROM mgh_rows WHERE state = 'pending'"
            ).fetchone()[0]
        oldest_times = [t for t in (oldest, epoch_of(waiting[1], now) if waiting[1] else None) if t]
        return {
            "pending": by_state.get(PENDING, 0) + waiting[0],
            "sent": by_state.get(SENT, 0),
            "superseded": by_state.get(SUPERSEDED, 0),
            "delivered": by_state.get(SENT, 0) + by_state.get(SUPERSEDED, 0),
            "dead_letters": by_state.get(REJECTED, 0),
            "oldest_pending_seconds": round(max(0.0, now - min(oldest_times)), 3)
            if oldest_times
            else None,
        }

    def pending_summary(self) -> tuple[int, float | None, int]:
        """Cheap (indexed) pending count, oldest pending created_at, dead-letter count."""
        with self._errors("read pending"):
            row = self.conn.execute(
                "SELECT count(*), min(created_at) FROM mgh_rows WHERE state = 'pending'"
            ).fetchone()
            dead = self.conn.execute(
                "SELECT count(*) FROM mgh_rows WHERE state = 'rejected'"
            ).fetchone()[0]
        return int(row[0]), row[1], int(dead)

    def waiting_count(self) -> int:
        """Outbox rows not yet taken in (past our cursor); a primary-key range count."""
        with self._errors("read outbox"):
            cursor = int(self.get_meta("cursor") or 0)
            return int(
                self.conn.execute("SELECT count(*) FROM outbox WHERE id > ?", (cursor,)).fetchone()[
                    0
                ]
            )

    def tasks(self, stream: str | None = None) -> list[dict[str, Any]]:
        """One dict per task: last state sent, pending count, mapping, artifacts."""
        where, args = ("WHERE t.stream = ?", [stream]) if stream else ("", [])
        with self._errors("read tasks"):
            rows = self.conn.execute(
                "SELECT t.*, (SELECT count(*) FROM mgh_rows r WHERE r.task_id = t.id"
                " AND r.state = 'pending') AS pending,"
                " (SELECT json_group_array(arn) FROM mgh_artifacts a WHERE a.task_id = t.id)"
                f" AS artifacts FROM mgh_tasks t {where} ORDER BY t.stream, t.task",
                args,
            ).fetchall()
        return [dict(r) for r in rows]

    # -- maintenance -------------------------------------------------------------------------
    def prune(self, before: float, chunk: int = 2000) -> int:
        """Delete delivered rows finished before `before`, in short chunks; returns the count."""
        total = 0
        while True:
            with self._write("prune delivered rows") as c:
                ids = [
                    r[0]
                    for r in c.execute(
                        "SELECT id FROM mgh_rows WHERE state IN ('sent', 'superseded')"
                        " AND finished_at < ? LIMIT ?",
                        (before, chunk),
                    )
                ]
                if ids:
                    c.execute(f"DELETE FROM outbox WHERE id IN ({_marks(len(ids))})", ids)
                    c.execute(f"DELETE FROM mgh_rows WHERE id IN ({_marks(len(ids))})", ids)
            total += len(ids)
            if len(ids) < chunk:
                return total

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        """Fold the WAL back into the database so the -wal file stays small."""
        with self._errors("checkpoint"):
            self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()

    def explain(self, sql: str, args: Sequence[Any] = ()) -> list[str]:
        """EXPLAIN QUERY PLAN details (for tests of the hot path)."""
        return [r["detail"] for r in self.conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
