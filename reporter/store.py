"""The SQLite engine of `OutboxStore`: the only module with SQLite SQL (outbox, delivery tables,
claims, outcomes, views, maintenance)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any

import structlog

from reporter import schema
from reporter.model import (
    Backlog,
    ClaimedTask,
    DeadLetter,
    GateState,
    Ingested,
    LaneState,
    MappingCheck,
    NewRows,
    PendingRow,
    Replica,
    RowCounts,
    RowState,
    StoreError,
    TaskOutcome,
    TaskRecord,
    WorkLeft,
    tail_size,
)
from reporter.rows import MAX_COLUMN_BYTES, STATE_SPACING_SECONDS, Kind, OutboxRow, epoch_of
from reporter.schema import DROPPED, PENDING, REJECTED, SENT, SUPERSEDED

__all__ = ["Store", "StoreError"]

# When a (task, kind) lane may send again: its retry time, never before `now`.
# When a lane with waiting rows may send: not before its retry time, nor (the state lane) before
# STATE_SPACING_SECONDS after the task's last state was sent. Used inside UPDATE mgh_tasks.
_LANE_DUE = (
    "max(:now, coalesce((SELECT retry_at FROM mgh_lanes WHERE task_id = :id AND kind = :kind), 0),"
    f" CASE WHEN :kind = '{Kind.TASK_STATE.value}' THEN coalesce(sent_at, 0) + :spacing"
    " ELSE 0 END)"
)


# The outbox columns a row is read with (those of OutboxRow that the table has).
_ROW_COLUMNS = tuple(f.name for f in fields(OutboxRow) if f.name != "oversize")
# An oversize name is still shown: this much of its start is read (never the whole value).
_NAME_PREFIX_BYTES = 1024
_NAMES = ("kind", "migration_task_name", "progress_update_stream")
_CHUNK = 5000
BLOB_RECYCLE = 2_000  # blob handles per connection before it is swapped (see Store._recycle)


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _check_file(path: Path) -> None:
    """The outbox's directory is shared with the tools' group: refuse a symlink (it would send
    our writes, and init's chmod, to another file) or a FIFO, device or directory planted at
    its name, before SQLite opens it by path."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(
            f"{path}: the outbox is a symbolic link; refusing it (set [outbox] path to the file "
            "itself, in a directory the tools' group cannot replace it in)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path}: the outbox is not a regular file; refusing it")


def _group_writable(path: Path) -> None:
    """`init`: make (or find) the outbox file group-readable and -writable so a host tool in our
    group can share it (SQLite gives -wal and -shm the database's mode). A new file is created
    with O_EXCL; an existing one is changed through an O_PATH descriptor of the file itself
    (never chmod by a path a group member could swap; and closing an O_PATH descriptor, unlike
    any other, keeps the POSIX locks of SQLite connections this process has on the file)."""
    wanted = stat.S_IRGRP | stat.S_IWGRP
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o660)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the outbox: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
                _check_file(path)  # names what it is
            if st.st_uid == os.geteuid() and st.st_mode & wanted != wanted:
                os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode) | wanted)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(f"{path}: cannot make group-writable: {exc.strerror}") from None


def _wal_mode(conn: sqlite3.Connection, timeout: float) -> str:
    """Switch a connection to WAL. Doing so on a new file needs it alone, and SQLite answers
    "database is locked" at once, without its busy handler, while another process is making
    the same file (two `init`s, `init` beside a daemon re-creating its outbox): retry for the
    busy timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _lenient(data: bytes) -> str:
    """Text as the connection returns it: a value that is not valid UTF-8 (which a host tool can
    store) decodes with surrogate escapes, for validation to name, instead of failing the whole
    query."""
    return data.decode("utf-8", "surrogateescape")


class Store:
    """One connection to the outbox file; short explicit write transactions."""

    def __init__(
        self, path: Path, busy_timeout_ms: int = 5000, clock: Callable[[], float] | None = None
    ) -> None:
        self.path = path
        self.clock = clock or (lambda: time.time())  # looked up per call: freezegun-able
        self.busy_timeout_ms = busy_timeout_ms
        self.conn = self._connect()
        self._blobs = 0  # incremental-blob handles opened on this connection
        self._schema_version: int | None = None
        self._fetched_upto = 0
        self._fetched_tail: list[int] = []  # seqs taken from the newest end of a backlog
        self._places: dict[int, int] = {}  # row id -> insertion place, of the fetched batch
        try:
            st = os.stat(path)
        except OSError as exc:
            raise StoreError(f"{path}: cannot stat: {exc.strerror}") from None
        self._identity = (st.st_dev, st.st_ino)

    def _connect(self) -> sqlite3.Connection:
        path, busy_timeout_ms = self.path, self.busy_timeout_ms
        try:
            conn = sqlite3.connect(
                str(path),
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            conn.text_factory = _lenient
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = _wal_mode(conn, busy_timeout_ms / 1000)
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open as an SQLite database: {exc}") from None
        if mode != "wal":
            conn.close()
            raise StoreError(f"{path}: cannot switch to WAL mode (journal_mode is {mode})")
        return conn

    def _recycle(self) -> None:
        """CPython (3.11-3.13) keeps a reference to every incremental-blob handle a connection
        ever opened until the connection closes (~90 bytes each): after BLOB_RECYCLE of them,
        between transactions, swap in a fresh connection to the same file (never to a file that
        replaced it: that is the daemon's to notice)."""
        if self._blobs < BLOB_RECYCLE or self.conn.in_transaction:
            return
        try:
            fresh = self._connect()
        except StoreError:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._identity:
            fresh.close()
            return
        old, self.conn, self._blobs = self.conn, fresh, 0
        old.close()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, busy_timeout_ms: int = 5000) -> Store:
        """`init`: create the file, the outbox table (or accept the host's) and our tables."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path.parent}: cannot create directory: {exc.strerror}") from None
        _check_file(path)
        _group_writable(path)
        store = cls(path, busy_timeout_ms)
        try:
            # One write transaction (BEGIN IMMEDIATE) that looks at the schema afresh: an `init`
            # beside a daemon re-creating its outbox, or a second `init`, waits its turn and
            # finds the work done, never "duplicate column name".
            with store._write("initialise") as c:
                c.execute(schema.OUTBOX_DDL)
                columns = store._outbox_columns()
                missing = [col for col in schema.REQUIRED_COLUMNS if col not in columns]
                if missing:
                    raise StoreError(f"{path}: table outbox lacks columns {', '.join(missing)}")
                for column in schema.ARTIFACT_COLUMNS:
                    if column not in columns:
                        c.execute(f"ALTER TABLE outbox ADD COLUMN {column} TEXT")
                schema.apply_migrations(c)
            store._check_trigger()  # a re-created outbox table gets its intake trigger back
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, path: Path, busy_timeout_ms: int = 5000, writable: bool = True) -> Store:
        """Open an initialised outbox, refusing anything we cannot safely work with."""
        if not path.exists() and not path.is_symlink():
            hint = "" if path.parent.is_dir() else f" (and no directory {path.parent})"
            raise StoreError(f"{path}: no outbox database here{hint}; run `mgh-reporter init`")
        _check_file(path)
        store = cls(path, busy_timeout_ms)
        try:
            store._validate(writable)
        except BaseException:
            store.close()  # never leave a connection behind (its locks, its file)
            raise
        return store

    def _validate(self, writable: bool) -> None:
        """`open`'s checks: an initialised outbox we can write."""
        store, path = self, self.path
        with store._errors("open"):
            columns = store._outbox_columns()
            if not columns:
                raise StoreError(f"{path}: not an mgh-reporter outbox (no outbox table); run init")
            missing = [c for c in schema.OUTBOX_COLUMNS if c not in columns]
            if missing:
                raise StoreError(
                    f"{path}: table outbox lacks columns {', '.join(missing)} "
                    "(run `mgh-reporter init` to add them)",
                    needs_init=True,
                )
            if schema.pending_migrations(store.conn):
                raise StoreError(
                    f"{path}: delivery tables missing or old; run `mgh-reporter init`",
                    needs_init=True,
                )
            if writable:
                store.conn.execute("BEGIN IMMEDIATE")
                store.conn.execute("ROLLBACK")

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
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            damaged = code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
            raise StoreError(
                f"{self.path}: cannot {doing}: {exc}", code == sqlite3.SQLITE_BUSY,
                cause=str(exc), damaged=damaged,
            ) from None

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

    @contextmanager
    def _snapshot(self, doing: str) -> Iterator[sqlite3.Connection]:
        """Several reads that must agree (one read transaction)."""
        with self._errors(doing):
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")

    def _read_rows(self, ids: Sequence[int]) -> dict[int, OutboxRow]:
        """Outbox rows by id, inside the caller's transaction, never reading a value over
        MAX_COLUMN_BYTES: each text or BLOB value is sized through an incremental-blob handle
        (its header, not its content: SQLite 3.40's length() reads all of a text) and one that is
        too large is left out, named in `oversize` (of a name, only its start is read)."""
        if len(ids) > _CHUNK:  # SQLite's limit on bound variables
            found: dict[int, OutboxRow] = {}
            for start in range(0, len(ids), _CHUNK):
                found.update(self._read_rows(ids[start : start + _CHUNK]))
            return found
        if not ids:
            return {}
        c = self.conn
        columns = [name for name in _ROW_COLUMNS if name in set(self._outbox_columns())]
        marks = _marks(len(ids))
        types = c.execute(
            f"SELECT id, {', '.join(f'typeof({n})' for n in columns)} FROM outbox"
            f" WHERE id IN ({marks})",
            list(ids),
        ).fetchall()
        oversize: dict[int, list[tuple[str, int]]] = {}
        for r in types:
            for name, kind in zip(columns, tuple(r)[1:], strict=True):
                if kind in ("text", "blob"):
                    size = self._value_bytes(r[0], name)
                    if size > MAX_COLUMN_BYTES:
                        oversize.setdefault(r[0], []).append((name, size))
        plain = [r[0] for r in types if r[0] not in oversize]
        found = {}
        if plain:
            for r in c.execute(
                f"SELECT {', '.join(columns)} FROM outbox WHERE id IN ({_marks(len(plain))})",
                plain,
            ):
                found[r["id"]] = OutboxRow.from_mapping(dict(r))
        for rid, big in oversize.items():
            skip = {name for name, _ in big}
            keep = [n for n in columns if n not in skip]
            row = c.execute(f"SELECT {', '.join(keep)} FROM outbox WHERE id = ?", (rid,)).fetchone()
            data: dict[str, Any] = dict(row) if row is not None else {"id": rid}
            for name in skip & set(_NAMES):
                data[name] = self._value_prefix(rid, name)
            found[rid] = OutboxRow.from_mapping({**data, "oversize": tuple(big)})
        return found

    def _value_bytes(self, rid: int, column: str) -> int:
        self._blobs += 1
        try:
            with self.conn.blobopen("outbox", column, rid, readonly=True) as blob:
                return len(blob)
        except sqlite3.OperationalError:  # not a rowid table: measure in SQL (reads the value)
            return int(self.conn.execute(
                f"SELECT length(CAST({column} AS BLOB)) FROM outbox WHERE id = ?", (rid,)
            ).fetchone()[0] or 0)

    def _value_prefix(self, rid: int, column: str) -> str:
        self._blobs += 1
        try:
            with self.conn.blobopen("outbox", column, rid, readonly=True) as blob:
                start = blob.read(_NAME_PREFIX_BYTES)
        except sqlite3.OperationalError:
            return "?"
        return start.decode("utf-8", "replace") + "…"

    def _outbox_columns(self) -> list[str]:
        return [r["name"] for r in self.conn.execute("PRAGMA table_info(outbox)")]

    # -- the gate's record -------------------------------------------------------------------
    def load_gate(self) -> GateState:
        """The gate's persisted record."""
        with self._errors("read gate state"):
            row = self.conn.execute(
                f"SELECT {', '.join(schema.GATE_COLUMNS)} FROM mgh_gate WHERE id = 1"
            ).fetchone()
        if row is None:
            return GateState()
        types = {f.name: f.type for f in fields(GateState)}
        values: dict[str, Any] = {}
        for name in schema.GATE_COLUMNS:
            value = row[name]
            if value is not None:
                kind = types[name]
                value = int(value) if "int" in kind else float(value) if "float" in kind else value
            values[name] = value
        values["recheck_at"] = values["recheck_at"] or 0.0
        values["region_retry_at"] = values["region_retry_at"] or 0.0
        values["brake_until"] = values["brake_until"] or 0.0
        values["region_attempts"] = values["region_attempts"] or 0
        values["brake_attempts"] = values["brake_attempts"] or 0
        return GateState(**values)

    def save_gate(self, state: GateState) -> None:
        """Persist the gate's record."""
        assigns = ", ".join(f"{name} = ?" for name in schema.GATE_COLUMNS)
        with self._write("write gate state") as c:
            c.execute(f"UPDATE mgh_gate SET {assigns} WHERE id = 1", astuple(state))

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
    def _check_trigger(self) -> None:
        """After any schema change: if the intake trigger is gone (the outbox table was dropped
        and re-created), put it back and queue every row of the table we have not taken in."""
        version = int(self.conn.execute("PRAGMA schema_version").fetchone()[0])
        if version == self._schema_version:
            return
        present = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?"
        queued = None
        if not self.conn.execute(present, (schema.INTAKE_TRIGGER,)).fetchone():
            with self._write("restore the intake trigger") as c:
                if not c.execute(present, (schema.INTAKE_TRIGGER,)).fetchone():  # still gone
                    c.execute(schema.INTAKE_TRIGGER_DDL)
                    queued = c.execute(
                        "INSERT INTO mgh_inbox(row_id) SELECT o.id FROM outbox o"
                        " LEFT JOIN mgh_rows r ON r.id = o.id WHERE r.id IS NULL"
                        " OR abs(r.created_at - (julianday(o.created_at) - 2440587.5) * 86400.0)"
                        " > 0.002 ORDER BY o.id"
                    ).rowcount
        if queued is not None:
            structlog.get_logger("reporter.store").warning(
                "intake_trigger_restored",
                outbox=str(self.path),
                rows_queued=queued,
                hint="the outbox table was re-created; its rows are taken in as new",
            )
        self._schema_version = int(self.conn.execute("PRAGMA schema_version").fetchone()[0])

    def fetch_new(self, limit: int) -> NewRows:
        """Outbox rows queued by the intake trigger, in insertion order (bounded reads)."""
        with self._errors("read outbox"):
            self._recycle()
            self._check_trigger()
        with self._snapshot("read outbox") as c:
            query = (
                "SELECT i.seq, i.row_id, o.id IS NOT NULL AS present FROM mgh_inbox i"
                " LEFT JOIN outbox o ON o.id = i.row_id WHERE i.seq > ? ORDER BY i.seq {} LIMIT ?"
            )
            queued = c.execute(query.format("ASC"), (0, limit)).fetchall()
            tail = []
            if len(queued) >= limit:  # a backlog: the newest rows come in now too (tail_size)
                tail = c.execute(
                    query.format("DESC"), (queued[-1]["seq"], tail_size(limit))
                ).fetchall()
            contents = self._read_rows(
                sorted({r["row_id"] for r in (*queued, *tail) if r["present"]})
            )
        self._fetched_upto = max((r["seq"] for r in queued), default=self._fetched_upto)
        self._fetched_tail = [r["seq"] for r in tail]
        self._places = {}
        for r in sorted((*queued, *tail), key=lambda r: r["seq"]):
            if r["row_id"] in contents:  # absent: deleted by the tool before we saw it
                self._places[r["row_id"]] = r["seq"]
        return NewRows(sorted(contents.values(), key=lambda row: row.id), len(queued) >= limit)

    def ingest(self, items: Sequence[Ingested]) -> None:
        """Take the fetched rows into delivery state and dequeue them, in one transaction.

        A task becomes due when a new row arrives, unless that row's lane is backing off; a
        leased task keeps its lease (its outcome reschedules it). A reused row id replaces
        what we remembered under it: that earlier row is gone from the outbox.
        """
        now = self.clock()
        with self._write("ingest rows") as c:
            c.execute("DELETE FROM mgh_inbox WHERE seq <= ?", (self._fetched_upto,))
            c.executemany("DELETE FROM mgh_inbox WHERE seq = ?", [(q,) for q in self._fetched_tail])
            if not items:
                return
            row_ids = [i.row_id for i in items]
            reused = c.execute(
                f"SELECT id, state FROM mgh_rows WHERE id IN ({_marks(len(row_ids))})", row_ids
            ).fetchall()
            if reused:
                c.execute(
                    f"DELETE FROM mgh_rows WHERE id IN ({_marks(len(reused))})",
                    [r["id"] for r in reused],
                )
                structlog.get_logger("reporter.store").info(
                    "row_id_reused",
                    rows=len(reused),
                    earlier_pending=sum(r["state"] == RowState.PENDING for r in reused),
                )
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
                "INSERT INTO mgh_rows(id, seq, task_id, kind, state, created_at, finished_at,"
                " reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        i.row_id,
                        self._places[i.row_id],
                        ids[(i.stream, i.task)],
                        i.kind,
                        RowState.REJECTED if i.rejected else RowState.PENDING,
                        i.created_at,
                        now if i.rejected else None,
                        i.rejected,
                    )
                    for i in items
                ],
            )
            newest: dict[tuple[int, str], int] = {}
            for i in sorted(items, key=lambda i: self._places[i.row_id]):
                if i.supersedes:
                    newest[(ids[(i.stream, i.task)], i.kind)] = i.row_id
            c.executemany(
                f"UPDATE mgh_rows SET state = {SUPERSEDED}, finished_at = ?,"
                " reason = 'superseded by row ' || ? WHERE task_id = ? AND kind = ?"
                f" AND state = {PENDING} AND seq < ?",
                [
                    (now, rid, tid, kind, self._places[rid])
                    for (tid, kind), rid in newest.items()
                ],
            )
            lanes = {(ids[(i.stream, i.task)], i.kind) for i in items if not i.rejected}
            c.executemany(
                f"UPDATE mgh_tasks SET due_at = {_LANE_DUE} WHERE id = :id"
                f" AND lease_token IS NULL AND (due_at IS NULL OR due_at > {_LANE_DUE})",
                [
                    {"now": now, "id": tid, "kind": kind, "spacing": STATE_SPACING_SECONDS}
                    for tid, kind in sorted(lanes)
                ],
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
        """Lease up to `limit` due tasks: their due time moves to the lease's end and they carry
        a fresh lease token that `record` and `release` must present."""
        now = self.clock()
        lease = uuid.uuid4().hex
        self._recycle()
        with self._write("claim tasks") as c:
            tasks = c.execute(
                "SELECT id, stream, task, imported, last_state_seq, last_attributes_seq,"
                " update_time"
                " FROM mgh_tasks WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?",
                (now, limit),
            ).fetchall()
            if not tasks:
                return []
            ids = [t["id"] for t in tasks]
            c.execute(
                "UPDATE mgh_tasks SET due_at = ?, lease_token = ?"
                f" WHERE id IN ({_marks(len(ids))})",
                [now + lease_seconds, lease, *ids],
            )
            rows = c.execute(
                "SELECT r.task_id AS _task_id, r.id AS _row_id, r.created_at AS _created,"
                " r.attempts AS _attempts, r.seq AS _seq FROM mgh_rows r"
                f" WHERE r.state = {PENDING} AND r.task_id IN ({_marks(len(ids))}) ORDER BY r.seq",
                ids,
            ).fetchall()
            contents = self._read_rows([r["_row_id"] for r in rows])
            artifacts = c.execute(
                f"SELECT task_id, arn FROM mgh_artifacts WHERE task_id IN ({_marks(len(ids))})", ids
            ).fetchall()
            lanes = c.execute(
                "SELECT task_id, kind, attempts, retry_at FROM mgh_lanes"
                f" WHERE task_id IN ({_marks(len(ids))})",
                ids,
            ).fetchall()
        claimed = {
            t["id"]: ClaimedTask(
                t["id"],
                t["stream"],
                t["task"],
                lease,
                bool(t["imported"]),
                t["last_state_seq"],
                t["last_attributes_seq"],
                last_update_time=t["update_time"],
            )
            for t in tasks
        }
        for r in rows:
            task = claimed[r["_task_id"]]
            task.bookkeeping[r["_row_id"]] = PendingRow(r["_attempts"], r["_created"], r["_seq"])
            content = contents.get(r["_row_id"])
            if content is None:
                task.missing.append(r["_row_id"])
            else:
                task.rows.append(content)
        for a in artifacts:
            claimed[a["task_id"]].associated.add(a["arn"])
        for lane in lanes:
            if lane["kind"] in Kind.__members__.values():
                claimed[lane["task_id"]].lanes[Kind(lane["kind"])] = LaneState(
                    lane["attempts"], lane["retry_at"]
                )
        return list(claimed.values())

    def release(self, leases: Sequence[tuple[int, str]], due_at: float) -> None:
        """Hand leased tasks back untouched, due again at `due_at` (e.g. on a graceful stop)."""
        if leases:
            with self._write("release tasks") as c:
                c.executemany(
                    "UPDATE mgh_tasks SET due_at = ?, lease_token = NULL"
                    " WHERE id = ? AND lease_token = ?",
                    [(due_at, tid, lease) for tid, lease in leases],
                )

    def hold(self, task_id: int, lease: str, need_seconds: float, lease_seconds: float) -> bool:
        """Always held: one process owns an SQLite outbox (the instance lock), and a relay
        claims again only after every call of its last pass has returned."""
        return True

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
                f"UPDATE mgh_rows SET state = {SENT}, finished_at = ?, reason = NULL"
                f" WHERE id IN ({_marks(len(o.sent))}) AND state IN ({PENDING}, {SUPERSEDED})",
                [now, *o.sent],
            )
        c.executemany(
            f"UPDATE mgh_rows SET state = {SUPERSEDED}, finished_at = ?, reason = ?"
            f" WHERE id = ? AND state = {PENDING}",
            [(now, reason, rid) for rid, reason in o.superseded],
        )
        c.executemany(
            f"UPDATE mgh_rows SET state = {REJECTED}, finished_at = ?, reason = ? WHERE id = ?"
            f" AND state = {PENDING}",
            [(now, reason, rid) for rid, reason in o.rejected],
        )
        c.executemany(
            "UPDATE mgh_rows SET attempts = attempts + 1 WHERE id = ?",
            [(rid,) for rid in o.failed_rows],
        )
        c.executemany(
            "INSERT OR IGNORE INTO mgh_artifacts(task_id, arn, associated_at) VALUES (?, ?, ?)",
            [(o.task_id, arn, now) for arn in o.artifacts],
        )
        if o.imported:
            c.execute("UPDATE mgh_tasks SET imported = 1 WHERE id = ?", (o.task_id,))
        if o.state is not None:
            s = o.state
            c.execute(
                "UPDATE mgh_tasks SET last_state_row = ?, last_state_seq = ?, status = ?,"
                " percent = ?, detail = ?, update_time = ?, next_update_seconds = ?, sent_at = ?"
                " WHERE id = ? AND (last_state_seq IS NULL OR last_state_seq < ?)",
                (s.row, s.seq, s.status, s.percent, s.detail, s.update_time,
                 s.next_update_seconds, now, o.task_id, s.seq),
            )
        if o.attributes_row is not None:
            c.execute(
                "UPDATE mgh_tasks SET last_attributes_row = ?, last_attributes_seq = ?,"
                " attributes_at = ?, mapped = NULL, configuration_id = NULL, map_check_at = ?,"
                " map_checks = 0, unmapped_reported = 0 WHERE id = ?",
                (o.attributes_row, o.attributes_seq, now, o.map_check_at, o.task_id),
            )
        for lane in o.lanes:
            if lane.attempts == 0 and lane.retry_at is None:
                c.execute(
                    "DELETE FROM mgh_lanes WHERE task_id = ? AND kind = ?",
                    (o.task_id, lane.kind.value),
                )
            else:
                c.execute(
                    "INSERT INTO mgh_lanes(task_id, kind, attempts, retry_at, last_error)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(task_id, kind) DO UPDATE SET"
                    " attempts = excluded.attempts, retry_at = excluded.retry_at,"
                    " last_error = excluded.last_error",
                    (o.task_id, lane.kind.value, lane.attempts, lane.retry_at, lane.error),
                )
        # Due again when the earliest lane with waiting rows may send; the lease ends here.
        c.execute(
            "UPDATE mgh_tasks SET lease_token = NULL,"
            " last_error = coalesce(:error, (SELECT last_error FROM mgh_lanes"
            "  WHERE task_id = :id AND last_error IS NOT NULL)),"
            " due_at = (SELECT min(max(coalesce(l.retry_at, 0), :now,"
            f"  CASE WHEN k.kind = '{Kind.TASK_STATE.value}' THEN coalesce(sent_at, 0) + :spacing"
            "  ELSE 0 END))"
            f"  FROM (SELECT DISTINCT kind FROM mgh_rows WHERE task_id = :id AND state = {PENDING})"
            "  AS k LEFT JOIN mgh_lanes l ON l.task_id = :id AND l.kind = k.kind)"
            " WHERE id = :id AND lease_token = :lease",
            {
                "id": o.task_id,
                "now": now,
                "lease": o.lease,
                "error": o.error,
                "spacing": STATE_SPACING_SECONDS,
            },
        )

    def mark_stream_created(self, stream: str) -> None:
        """Remember that the Hub has this stream."""
        with self._write("record stream") as c:
            c.execute(
                "INSERT OR REPLACE INTO mgh_streams(stream, created_at) VALUES (?, ?)",
                (stream, self.clock()),
            )

    def streams(self) -> set[str]:
        """Streams known to exist at the Hub."""
        with self._errors("read streams"):
            return {r[0] for r in self.conn.execute("SELECT stream FROM mgh_streams")}

    def claim_stream(self, stream: str, seconds: float) -> bool:
        """Always ours: no other process delivers from this file."""
        return True

    # -- replicas (one process per SQLite outbox: nothing to share) ---------------------------
    def heartbeat(self, me: Replica) -> list[Replica]:
        """Only this process delivers; nothing is stored."""
        return [me]

    def replicas(self) -> list[Replica]:
        """No heartbeat rows on SQLite (`status` finds the one daemon by its lock)."""
        return []

    def leave(self, replica_id: str) -> None:
        """Nothing stored, nothing to drop."""

    # -- mapping ---------------------------------------------------------------------------
    def due_mapping_checks(self, limit: int) -> list[MappingCheck]:
        """Tasks whose auto-mapping should be checked now."""
        with self._errors("read mapping checks"):
            rows = self.conn.execute(
                "SELECT id, stream, task, attributes_at, map_checks, unmapped_reported"
                " FROM mgh_tasks"
                " WHERE map_check_at IS NOT NULL AND map_check_at <= ? ORDER BY map_check_at"
                " LIMIT ?",
                (self.clock(), limit),
            ).fetchall()
        return [
            MappingCheck(
                r["id"],
                r["stream"],
                r["task"],
                r["attributes_at"],
                r["map_checks"],
                bool(r["unmapped_reported"]),
            )
            for r in rows
        ]

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
    def dead_letters(self, ids: Sequence[int] | None = None) -> list[DeadLetter]:
        """Rejected rows (all, or those of `ids`) with their reasons."""
        where = f"r.state = {REJECTED}"
        args: list[Any] = []
        if ids is not None:
            where += f" AND r.id IN ({_marks(len(ids))})"
            args = list(ids)
        with self._errors("read dead letters"):
            rows = self.conn.execute(
                "SELECT r.id, r.reason, r.kind, t.stream, t.task, r.attempts, r.finished_at,"
                " o.id IS NOT NULL AS present"
                " FROM mgh_rows r JOIN mgh_tasks t ON t.id = r.task_id"
                f" LEFT JOIN outbox o ON o.id = r.id WHERE {where} ORDER BY r.id",
                args,
            ).fetchall()
        return [
            DeadLetter(r[0], r[1] or "", r[2], r[3], r[4], r[5], r[6], bool(r[7])) for r in rows
        ]

    def outbox_rows(self, ids: Sequence[int]) -> list[OutboxRow]:
        """The outbox content of some rows."""
        with self._snapshot("read outbox"):
            contents = self._read_rows(list(ids))
        return [contents[i] for i in sorted(contents)]

    def drop(self, ids: Sequence[int] | None, rejected_before: float | None) -> list[int]:
        """Drop dead letters (of `ids` or all, rejected before `rejected_before` when given)."""
        where, args = f"state = {REJECTED}", list[Any]()
        if ids is not None:
            where += f" AND id IN ({_marks(len(ids))})"
            args += list(ids)
        if rejected_before is not None:
            where += " AND coalesce(finished_at, 0) < ?"
            args.append(rejected_before)
        now = self.clock()
        with self._write("drop dead letters") as c:
            dropped = [r[0] for r in c.execute(f"SELECT id FROM mgh_rows WHERE {where}", args)]
            c.execute(
                f"UPDATE mgh_rows SET state = {DROPPED}, finished_at = ? WHERE {where}",
                [now, *args],
            )
        return sorted(dropped)

    def requeue(self, valid: Sequence[int], invalid: Sequence[tuple[int, str]]) -> None:
        """Put dead letters back in line (valid) or reject them again with a new reason."""
        now = self.clock()
        with self._write("requeue dead letters") as c:
            for rid in valid:
                c.execute(
                    f"UPDATE mgh_rows SET state = {PENDING}, attempts = 0, reason = NULL,"
                    f" finished_at = NULL WHERE id = ? AND state = {REJECTED}",
                    (rid,),
                )
                c.execute(
                    "DELETE FROM mgh_lanes WHERE (task_id, kind) ="
                    " (SELECT task_id, kind FROM mgh_rows WHERE id = ?)",
                    (rid,),
                )
                c.execute(
                    "UPDATE mgh_tasks SET due_at = min(coalesce(due_at, :now), :now)"
                    " WHERE id = (SELECT task_id FROM mgh_rows WHERE id = :rid)",
                    {"now": now, "rid": rid},
                )
            c.executemany(
                "UPDATE mgh_rows SET reason = ?, finished_at = ? WHERE id = ?",
                [(reason, now, rid) for rid, reason in invalid],
            )

    # -- views -------------------------------------------------------------------------------
    def backlog(self) -> Backlog:
        """Cheap (indexed) totals: rows not taken in, rows waiting, the oldest, dead letters."""
        with self._errors("read backlog"):
            queued, oldest = self.conn.execute(
                f"SELECT count(*), min(created_at) FROM mgh_rows WHERE state = {PENDING}"
            ).fetchone()
            dead = self.conn.execute(
                f"SELECT count(*) FROM mgh_rows WHERE state = {REJECTED}"
            ).fetchone()[0]
            waiting, first = self.conn.execute(
                "SELECT count(*), min(o.created_at) FROM mgh_inbox i"
                " LEFT JOIN outbox o ON o.id = i.row_id"
            ).fetchone()
        times = [t for t in (oldest, epoch_of(first, self.clock()) if first else None) if t]
        return Backlog(int(waiting), int(queued), min(times) if times else None, int(dead))

    def work_left(self) -> WorkLeft:
        """Tasks with pending rows, and (task, kind) lanes backing off after a failure."""
        with self._errors("read progress"):
            tasks, retrying = self.conn.execute(
                f"SELECT (SELECT count(DISTINCT task_id) FROM mgh_rows WHERE state = {PENDING}),"
                " (SELECT count(*) FROM mgh_lanes WHERE attempts > 0)"
            ).fetchone()
        return WorkLeft(int(tasks), int(retrying))

    def counts(self) -> RowCounts:
        """Row totals; a row superseded by a newer row that is still waiting counts as pending
        (its lane's content has not reached the Hub yet)."""
        backlog = self.backlog()
        with self._errors("read counts"):
            by_state = dict(
                self.conn.execute("SELECT state, count(*) FROM mgh_rows GROUP BY state").fetchall()
            )
            overtaken = self.conn.execute(
                f"SELECT count(*) FROM mgh_rows r WHERE r.state = {SUPERSEDED} AND EXISTS"
                f" (SELECT 1 FROM mgh_rows p WHERE p.task_id = r.task_id AND p.state = {PENDING}"
                " AND p.kind = r.kind AND p.seq > r.seq)"
            ).fetchone()[0]
        oldest = backlog.oldest_created_at
        return RowCounts(
            pending=backlog.pending + overtaken,
            sent=by_state.get(RowState.SENT.value, 0),
            superseded=by_state.get(RowState.SUPERSEDED.value, 0) - overtaken,
            dead_letters=backlog.dead_letters,
            oldest_pending_seconds=None
            if oldest is None
            else round(max(0.0, self.clock() - oldest), 3),
            dropped=by_state.get(RowState.DROPPED.value, 0),
        )

    def finished_since(self, since: float) -> dict[str, int]:
        """Rows sent, superseded or rejected at or after `since`, by state: two index range
        scans, no sort (a GROUP BY over the table would sort every row ever delivered)."""
        with self._errors("read finished rows"):
            sent, superseded = self.conn.execute(
                f"SELECT coalesce(sum(state = {SENT}), 0), coalesce(sum(state = {SUPERSEDED}), 0)"
                f" FROM mgh_rows WHERE state IN ({SENT}, {SUPERSEDED}) AND finished_at >= ?",
                (since,),
            ).fetchone()
            rejected = self.conn.execute(
                f"SELECT count(*) FROM mgh_rows WHERE state = {REJECTED} AND finished_at >= ?",
                (since,),
            ).fetchone()[0]
        return {
            RowState.SENT.value: int(sent),
            RowState.SUPERSEDED.value: int(superseded),
            RowState.REJECTED.value: int(rejected),
        }

    def tasks(self, stream: str | None = None) -> list[TaskRecord]:
        """One record per task: last state sent, pending count, mapping, artifacts."""
        where, args = ("WHERE t.stream = ?", [stream]) if stream else ("", [])
        with self._errors("read tasks"):
            rows = self.conn.execute(
                "SELECT t.*, (SELECT count(*) FROM mgh_rows r WHERE r.task_id = t.id"
                f" AND r.state = {PENDING}) AS pending,"
                " (SELECT json_group_array(arn) FROM mgh_artifacts a WHERE a.task_id = t.id)"
                f" AS artifacts FROM mgh_tasks t {where} ORDER BY t.stream, t.task",
                args,
            ).fetchall()
        return [
            TaskRecord(
                stream=r["stream"],
                task=r["task"],
                status=r["status"],
                percent=r["percent"],
                detail=r["detail"],
                update_time=r["update_time"],
                next_update_seconds=r["next_update_seconds"],
                sent_at=r["sent_at"],
                pending=r["pending"],
                mapped=None if r["mapped"] is None else bool(r["mapped"]),
                configuration_id=r["configuration_id"],
                artifacts=tuple(json.loads(r["artifacts"] or "[]")),
                last_error=r["last_error"],
            )
            for r in rows
        ]

    # -- maintenance -------------------------------------------------------------------------
    def prune(self, before: float, chunk: int = 2000) -> int:
        """Delete delivered rows finished before `before`, in short chunks; returns the count."""
        total = 0
        while True:
            with self._write("prune delivered rows") as c:
                ids = [
                    r[0]
                    for r in c.execute(
                        f"SELECT id FROM mgh_rows WHERE state IN ({SENT}, {SUPERSEDED})"
                        " AND finished_at < ? UNION ALL SELECT id FROM mgh_rows"
                        f" WHERE state = {DROPPED} AND finished_at < ? LIMIT ?",
                        (before, before, chunk),
                    )
                ]
                if ids:  # never a reused id whose new row is still waiting for intake
                    c.execute(
                        f"DELETE FROM outbox WHERE id IN ({_marks(len(ids))})"
                        " AND id NOT IN (SELECT row_id FROM mgh_inbox)",
                        ids,
                    )
                    c.execute(f"DELETE FROM mgh_rows WHERE id IN ({_marks(len(ids))})", ids)
            total += len(ids)
            if len(ids) < chunk:
                return total

    def checkpoint(self, mode: str = "PASSIVE", busy_ms: int | None = None) -> bool:
        """Fold the WAL back into the database so the -wal file stays small; True when every
        frame was checkpointed (False: a reader still holds part of it). `busy_ms` bounds how
        long a TRUNCATE/RESTART waits for readers (default: the store's busy timeout)."""
        with self._errors("checkpoint"):
            if busy_ms is not None:
                self.conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
            try:
                busy, _, _ = self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            finally:
                if busy_ms is not None:
                    self.conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        return not busy

    def wal_bytes(self) -> int:
        """The size of the outbox's -wal file (0 when there is none)."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def rebase(self, delta: float) -> None:
        """The wall clock stepped: shift every stored time that a wait is measured from (due
        times and leases, lane retries, state spacing, mapping checks), in one transaction."""
        with self._write("re-base stored times") as c:
            for table, column in (("mgh_tasks", "due_at"), ("mgh_tasks", "map_check_at"),
                                  ("mgh_tasks", "sent_at"), ("mgh_lanes", "retry_at")):
                c.execute(f"UPDATE {table} SET {column} = {column} + ? WHERE {column} IS NOT NULL",
                          (delta,))

    def damage(self) -> str | None:
        """The -wal file this connection writes, deleted or replaced by another file under us
        (a tool's `rm`, a restore): our frames and everyone else's would no longer meet, and a
        checkpoint from us would overwrite the database with a stale log."""
        wal = f"{self.path}-wal"
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return None  # no /proc: not judged
        for fd in fds:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target == f"{wal} (deleted)":
                return (f"{wal}: the outbox's write-ahead log was deleted while the daemon had it"
                        " open")
            if target == wal:
                try:
                    ours, theirs = os.fstat(int(fd)), os.stat(wal)
                except OSError:
                    continue
                if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino):
                    return f"{wal}: the outbox's write-ahead log was replaced by another file"
        return None

    def integrity(self) -> str | None:
        """`PRAGMA quick_check` (every page and index, no table scan against its index)."""
        try:
            found = [str(r[0]) for r in self.conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            return f"{self.path}: the database is damaged: {exc}"
        if found == ["ok"]:
            return None
        return f"{self.path}: the database is damaged: {'; '.join(found)[:500]}"

    def file_problem(self) -> str | None:
        """Why the open file is no longer the outbox at `path` (deleted or replaced), or None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"{self.path}: the outbox file was deleted while the daemon had it open"
        except OSError as exc:
            return f"{self.path}: cannot stat the outbox file: {exc.strerror}"
        if (st.st_dev, st.st_ino) != self._identity:
            return f"{self.path}: the outbox file was replaced by another file"
        return None

    def explain(self, sql: str, args: Sequence[Any] = ()) -> list[str]:
        """EXPLAIN QUERY PLAN details (for tests of the hot path)."""
        return [r["detail"] for r in self.conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
