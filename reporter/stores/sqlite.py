"""The SQLite engine: its dialect of the shared algorithm, and what only a file has (opening and
refusing files, WAL mode, blob-sized reads, the intake trigger's repair, file identity,
checkpoints and damage)."""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import structlog

from reporter.files import UnsafeFile, group_writable, opened_as, probe, refuse_special
from reporter.rows import OutboxRow, unread
from reporter.stores import sqlite_schema as schema
from reporter.stores.algorithm import SqlStore
from reporter.stores.batches import fitting
from reporter.stores.contract import (
    Ingested,
    NewRows,
    StoreError,
    TakenIn,
)
from reporter.stores.single import SingleProcess
from reporter.stores.statements import (
    Dialect,
    sqlite_any,
)

__all__ = ["SqliteStore"]

DIALECT = Dialect(
    prefix="mgh_", greatest="max", least="min", lock="", skip="", now=":now",
    listing="(SELECT json_group_array({column}) FROM (SELECT {column} FROM {table}"
    " WHERE task_id = t.id ORDER BY {column}))",
    named=lambda text: text, any_of=sqlite_any, array=json.dumps,
    overrides={
        "waiting": "SELECT count(*) AS waiting, min(o.created_at) AS first FROM mgh_inbox i"
        " LEFT JOIN outbox o ON o.id = i.row_id",
    },
)
# The outbox columns a row is read with (those of OutboxRow that the table has).
_ROW_COLUMNS = tuple(f.name for f in fields(OutboxRow) if f.name not in ("oversize", "row_bytes"))
# An oversize name is still shown: this much of its start is read (never the whole value).
_NAME_PREFIX_BYTES = 1024
_NAMES = ("kind", "migration_task_name", "progress_update_stream", "application_id")
_CHUNK = 5000
# The page cache per connection, in KiB (SQLite's default is 2,000): the OS page cache holds
# the file anyway, and the daemon's memory budget (55 MiB at peak) has no room for more.
CACHE_KIB = 1024
BLOB_RECYCLE = 2_000  # blob handles per connection before it is swapped (see _recycle)


def _marks(n: int) -> str:
    return ",".join("?" * n)


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


def _unsafe(check: Callable[[Path], None], path: Path) -> None:
    try:
        check(path)
    except UnsafeFile as exc:
        raise StoreError(str(exc)) from None


@contextmanager
def _closed_on_failure(conn: sqlite3.Connection, path: Path) -> Iterator[None]:
    """A connection being set up is closed if any step fails (an SQLite error named)."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path}: cannot open as an SQLite database: {exc}") from None
    except BaseException:
        conn.close()
        raise


def _unsafe_call(check: Callable[[Path], int], path: Path) -> int:
    try:
        return check(path)
    except UnsafeFile as exc:
        raise StoreError(str(exc)) from None


def _cost(sizes: dict[str, int] | None) -> int:
    """The bytes reading a measured row costs (the values `unread` leaves out cost nothing)."""
    if not sizes:
        return 0
    return sum(sizes.values()) - sum(size for _, size in unread(sizes))


def _lenient(data: bytes) -> str:
    """Text as the connection returns it: a value that is not valid UTF-8 (which a host tool can
    store) decodes with surrogate escapes, for validation to name, instead of failing the whole
    query."""
    return data.decode("utf-8", "surrogateescape")


class SqliteStore(SingleProcess, SqlStore):
    """One connection to the outbox file; short explicit transactions."""

    dialect = DIALECT

    def __init__(self, path: Path, busy_timeout_ms: int = 5000) -> None:
        super().__init__()
        self.path, self.where = path, str(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.conn = self._connect()
        self._blobs = 0  # incremental-blob handles opened on this connection
        self._schema_version: int | None = None
        try:
            st = os.stat(path)
        except OSError as exc:
            raise StoreError(f"{path}: cannot stat: {exc.strerror}") from None
        self._identity = (st.st_dev, st.st_ino)
        self._wal: tuple[int, int] | None = None  # our -wal's (device, inode), once seen

    def _connect(self) -> sqlite3.Connection:
        path, busy_timeout_ms = self.path, self.busy_timeout_ms
        # SQLite opens by name and follows symlinks (Python cannot ask for nofollow): we open
        # the file ourselves first (no symlink, no FIFO, a regular file), keep that descriptor
        # while SQLite opens the name, and check SQLite got that very file before anything is
        # written (a swap in between is refused, never written to).
        for companion in ("-wal", "-shm"):
            _unsafe(functools.partial(refuse_special, what=f"outbox's {companion} file"),
                    Path(f"{path}{companion}"))
        probed = _unsafe_call(probe, path)
        try:
            conn = self._open_checked(path, probed)
        finally:
            os.close(probed)
        with _closed_on_failure(conn, path):
            mode = _wal_mode(conn, busy_timeout_ms / 1000)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        if mode != "wal":
            conn.close()
            raise StoreError(f"{path}: cannot switch to WAL mode (journal_mode is {mode})")
        return conn

    def _open_checked(self, path: Path, probed: int) -> sqlite3.Connection:
        """SQLite's connection to `path`, once it has read the file and shown it is the one we
        probed; nothing is written before that."""
        try:
            conn = sqlite3.connect(str(path), timeout=self.busy_timeout_ms / 1000,
                                   isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open as an SQLite database: {exc}") from None
        with _closed_on_failure(conn, path):
            conn.row_factory = sqlite3.Row
            conn.text_factory = _lenient
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            resolved = next((str(r["file"]) for r in conn.execute("PRAGMA database_list")
                             if r["name"] == "main"), "")  # the file is open from here
            _unsafe(lambda p: opened_as(p, probed, resolved), path)
        return conn

    def clock(self) -> float:
        """Now (looked up per call: freezegun-able)."""
        return time.time()

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
    def create(cls, path: Path, busy_timeout_ms: int = 5000) -> SqliteStore:
        """`init`: create the file, the outbox table (or accept the host's) and our tables."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path.parent}: cannot create directory: {exc.strerror}") from None
        _unsafe(group_writable, path)
        store = cls(path, busy_timeout_ms)
        try:
            # One write transaction (BEGIN IMMEDIATE) that looks at the schema afresh: an `init`
            # beside a daemon re-creating its outbox, or a second `init`, waits its turn and
            # finds the work done, never "duplicate column name".
            with store._tx("initialise") as c:
                c.execute(schema.OUTBOX_DDL)
                for column in store._columns_to_add(store._outbox_columns(), creating=True):
                    c.execute(f"ALTER TABLE outbox ADD COLUMN {column} TEXT")
                schema.apply_migrations(c)
            store._check_trigger()  # a re-created outbox table gets its intake trigger back
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, path: Path, busy_timeout_ms: int = 5000, writable: bool = True) -> SqliteStore:
        """Open an initialised outbox, refusing anything we cannot safely work with."""
        if not path.exists() and not path.is_symlink():
            hint = "" if path.parent.is_dir() else f" (and no directory {path.parent})"
            raise StoreError(f"{path}: no outbox database here{hint}; run `mgh-reporter init`")
        _unsafe(refuse_special, path)
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
            store._columns_to_add(columns, creating=False)
            if schema.pending_migrations(store.conn):
                raise store._outdated()
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
    def _tx(
        self, doing: str, write: bool = True, snapshot: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """A writer's transaction takes the write lock up front (BEGIN IMMEDIATE), so it never
        fails half-way on a lock; reads that must agree share one `snapshot`; other reads run
        each statement on its own (no BEGIN/COMMIT round on the hot path)."""
        with self._errors(doing):
            if not (write or snapshot):
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _contents(self, c: Any, ids: Sequence[int]) -> dict[int, OutboxRow]:
        return self._read_rows(ids)

    def _read_rows(
        self, ids: Sequence[int], sizes: dict[int, dict[str, int]] | None = None
    ) -> dict[int, OutboxRow]:
        """Outbox rows by id, inside the caller's transaction, never reading a value over
        MAX_COLUMN_BYTES nor any but the small values of a row over MAX_ROW_BYTES (sized by
        `_measure`, or given its `sizes`): a value left unread is named in `oversize` (of a
        name, only its start is read)."""
        if len(ids) > _CHUNK:  # SQLite's limit on bound variables
            found: dict[int, OutboxRow] = {}
            for start in range(0, len(ids), _CHUNK):
                found.update(self._read_rows(ids[start : start + _CHUNK], sizes))
            return found
        if not ids:
            return {}
        c = self.conn
        columns = self._columns()
        sizes = sizes if sizes is not None else self._measure(ids)
        oversize = {rid: unread(measured) for rid, measured in sizes.items()}
        plain = [rid for rid in ids if rid in sizes and not oversize[rid]]
        found = {}
        if plain:
            for r in c.execute(
                f"SELECT {', '.join(columns)} FROM outbox WHERE id IN ({_marks(len(plain))})",
                plain,
            ):
                found[r["id"]] = OutboxRow.from_mapping(
                    {**dict(r), "row_bytes": sum(sizes[r["id"]].values())})
        for rid in ids:
            big = oversize.get(rid)
            if not big:
                continue
            skip = {name for name, _ in big}
            keep = [n for n in columns if n not in skip]
            row = c.execute(f"SELECT {', '.join(keep)} FROM outbox WHERE id = ?", (rid,)).fetchone()
            if row is None:
                continue  # deleted since it was measured
            data: dict[str, Any] = dict(row)
            for name in skip & set(_NAMES):
                data[name] = self._value_prefix(rid, name)
            found[rid] = OutboxRow.from_mapping(
                {**data, "oversize": big, "row_bytes": sum(sizes[rid].values())})
        return found

    def _measure(self, ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """The bytes of each text and BLOB value of some outbox rows (by id; a row that is gone
        is absent), without reading the values: each is sized through an incremental-blob
        handle (its header, not its content: SQLite 3.40's length() reads all of a text)."""
        if len(ids) > _CHUNK:
            found: dict[int, dict[str, int]] = {}
            for start in range(0, len(ids), _CHUNK):
                found.update(self._measure(ids[start : start + _CHUNK]))
            return found
        if not ids:
            return {}
        columns = self._columns()
        types = self.conn.execute(
            f"SELECT id, {', '.join(f'typeof({n})' for n in columns)} FROM outbox"
            f" WHERE id IN ({_marks(len(ids))})",
            list(ids),
        ).fetchall()
        return {
            r[0]: {name: self._value_bytes(r[0], name)
                   for name, kind in zip(columns, tuple(r)[1:], strict=True)
                   if kind in ("text", "blob")}
            for r in types
        }

    def _columns(self) -> list[str]:
        present = set(self._outbox_columns())
        return [name for name in _ROW_COLUMNS if name in present]

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

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap idle check)."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

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
            with self._tx("restore the intake trigger") as c:
                if not c.execute(present, (schema.INTAKE_TRIGGER,)).fetchone():  # still gone
                    c.execute(schema.INTAKE_TRIGGER_DDL)
                    queued = c.execute(
                        "INSERT INTO mgh_inbox(row_id) SELECT o.id FROM outbox o"
                        " LEFT JOIN mgh_rows r ON r.id = o.id WHERE r.id IS NULL"
                        " OR abs(r.created_at - (julianday(o.created_at) - 2440587.5) * 86400.0)"
                        " > 0.002 ORDER BY o.id"
                    ).rowcount
        if queued is not None:
            structlog.get_logger("reporter.stores").warning(
                "intake_trigger_restored",
                outbox=str(self.path),
                rows_queued=queued,
                hint="the outbox table was re-created; its rows are taken in as new",
            )
        self._schema_version = int(self.conn.execute("PRAGMA schema_version").fetchone()[0])

    def take_in(self, limit: int, judge: Callable[[OutboxRow], Ingested]) -> TakenIn:
        """Intake: the batch read in a snapshot (tools keep writing meanwhile), judged, then
        written in one write transaction; an entry another process took in since the read is
        left to it."""
        batch = self._read_new(limit)
        items = [judge(row) for row in batch.rows]
        with self._tx("ingest rows") as c:
            count = self._ingest(c, batch, items)
        return TakenIn(count, batch.more)

    def _read_new(self, limit: int) -> NewRows:
        """Outbox rows queued by the intake trigger, in insertion order, sized before they are
        read (blob handles) so a batch holds at most INTAKE_BATCH_BYTES of values."""
        with self._errors("read outbox"):
            self._recycle()
            self._check_trigger()
        with self._tx("read outbox", write=False, snapshot=True) as c:
            entries = self._inbox(c, limit)
            sizes = self._measure(sorted({r["row_id"] for r in entries if r["present"]}))
            taken = entries[:fitting([_cost(sizes.get(r["row_id"])) for r in entries])]
            contents = self._read_rows(
                sorted({r["row_id"] for r in taken if r["row_id"] in sizes}), sizes
            )
        places = {}
        for r in sorted(taken, key=lambda r: r["seq"]):
            if r["row_id"] in contents:  # absent: deleted by the tool before we saw it
                places[r["row_id"]] = r["seq"]
        more = len(entries) >= limit or len(taken) < len(entries)
        return NewRows(sorted(contents.values(), key=lambda row: row.id), more,
                       [r["seq"] for r in taken], places)

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
        with self._tx("re-base stored times") as c:
            for table, column in (("mgh_tasks", "due_at"), ("mgh_tasks", "map_check_at"),
                                  ("mgh_tasks", "sent_at"), ("mgh_lanes", "retry_at")):
                c.execute(f"UPDATE {table} SET {column} = {column} + ? WHERE {column} IS NOT NULL",
                          (delta,))

    def damage(self) -> str | None:
        """The -wal file this connection writes, deleted or replaced by another file under us
        (a tool's `rm`, a restore): our frames and everyone else's would no longer meet, and a
        checkpoint from us would overwrite the database with a stale log. Only our own -wal
        counts (known by its inode once seen): a connection to a file we have since left (a
        replaced outbox) may hold its old -wal a moment longer."""
        wal = f"{self.path}-wal"
        held = self._held(wal)
        try:
            st = os.stat(wal)
            there: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            there = None
        if self._wal is None and (False, there) in held:
            self._wal = there  # the -wal at the path, open here: ours
        for deleted, ident in held:
            if self._wal not in (None, ident):
                continue  # a file we have left, not ours
            if deleted:
                return (f"{wal}: the outbox's write-ahead log was deleted while the daemon had it"
                        " open")
            if there is not None and ident != there:
                return f"{wal}: the outbox's write-ahead log was replaced by another file"
        return None

    def disown(self) -> str | None:
        """Our -wal and -shm stay at the outbox's path after its file was deleted or replaced
        (SQLite leaves them: the path is no longer ours). Whatever opens a new file there (our
        reopening, `init`, a tool) would pair it with them and read our old file's pages as its
        own, and a checkpoint would write them into it: remove them while they are still the
        files we hold open."""
        for suffix in ("-wal", "-shm"):
            name = f"{self.path}{suffix}"
            ours = {ident for deleted, ident in self._held(name) if not deleted}
            try:
                st = os.lstat(name)
            except OSError:
                continue  # gone already (or unreadable: then not judged ours)
            if (st.st_dev, st.st_ino) not in ours:
                continue  # a new outbox's own file
            try:
                os.unlink(name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                return (f"{name}: cannot remove the lost outbox's {suffix[1:]} file "
                        f"({exc.strerror}); remove it before anything opens the new outbox, or "
                        "it reads the old file's pages")
        return None

    @staticmethod
    def _held(name: str) -> list[tuple[bool, tuple[int, int]]]:
        """Each descriptor of this process open on `name` (or on a deleted file of that name):
        (deleted, its (device, inode))."""
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return []  # no /proc: not judged
        held = []
        for fd in fds:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target not in (name, f"{name} (deleted)"):
                    continue
                st = os.fstat(int(fd))
            except OSError:
                continue
            held.append((target != name, (st.st_dev, st.st_ino)))
        return held

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
