"""The PostgreSQL engine of `OutboxStore`: the only module with PostgreSQL queries (intake shared by
replicas, `SKIP LOCKED` leases, the fence, outcomes, views, replicas, `init`)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import astuple, fields
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.rows import dict_row

from reporter import pgschema
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
from reporter.pgschema import DROPPED, PENDING, REJECTED, SCHEMA, SENT, SUPERSEDED
from reporter.rows import MAX_COLUMN_BYTES, STATE_SPACING_SECONDS, Kind, OutboxRow
from reporter.schema import GATE_COLUMNS, OUTBOX_COLUMNS, REQUIRED_COLUMNS
from reporter.secrets import redact_url, remember, scrub

__all__ = ["TABLE_NEEDS", "Listener", "PgStore", "connect_kwargs"]

S = SCHEMA
NOW = "extract(epoch from clock_timestamp())::float8"  # the database's clock, in SQL
# Every session: a transaction left idle (a replica frozen between intake's read and write) is
# ended by the server so its row locks go to the others; no statement or lock wait runs away.
SESSION = {
    "idle_in_transaction_session_timeout": "30s",
    "statement_timeout": "60s",
    "lock_timeout": "10s",
}
RECONNECT_BASE, RECONNECT_MAX = 0.5, 30.0
LIVE_PERIODS = 3  # a replica is live while its heartbeat is fresher than this many periods
FORGET_REPLICAS_SECONDS = 86400.0
_TRANSIENT = (
    pgerrors.SerializationFailure,
    pgerrors.DeadlockDetected,
    pgerrors.LockNotAvailable,
    pgerrors.QueryCanceled,
    pgerrors.AdminShutdown,
    pgerrors.CannotConnectNow,
    pgerrors.TooManyConnections,
    pgerrors.IdleInTransactionSessionTimeout,
)

_LANE_DUE = (
    "greatest(%(now)s::float8,"
    f" coalesce((SELECT retry_at FROM {S}.lanes WHERE task_id = %(id)s AND kind = %(kind)s), 0),"
    f" CASE WHEN %(kind)s = '{Kind.TASK_STATE.value}'"
    " THEN coalesce(sent_at, 0) + %(spacing)s::float8 ELSE 0 END)"
)


def connect_kwargs() -> dict[str, Any]:
    """Connection settings of ours (libpq reads the rest from the URL and its environment:
    PGPASSWORD, .pgpass, PGSSLMODE...)."""
    return {"application_name": "mgh-reporter", "connect_timeout": 10}


# What `check` proves: the daemon's privileges on the outbox and on its own tables.
TABLE_NEEDS: dict[str, tuple[str, ...]] = {
    "outbox": ("SELECT", "DELETE"),
    **{
        f"{S}.{t}": ("SELECT", "INSERT", "UPDATE", "DELETE")
        for t in ("tasks", "rows", "inbox", "lanes", "gate", "streams", "artifacts", "replicas")
    },
}


# The outbox columns, read without ever fetching a value over MAX_COLUMN_BYTES: octet_length()
# of a TOASTed value reads its header, not the value; an oversize name yields only its start.
_TEXT = (
    "kind", "migration_task_name", "progress_update_stream", "status", "status_detail",
    "update_date_time", "resource_attributes", "artifact_name", "artifact_description",
)
_NAMES = ("kind", "migration_task_name", "progress_update_stream")
_ROW = ", ".join(
    ["o.id", "o.progress_percent", "o.next_update_seconds", "o.created_at"]
    + [
        f"CASE WHEN pg_catalog.octet_length(o.{n}) > {MAX_COLUMN_BYTES}"
        f" THEN {f'pg_catalog.left(o.{n}, 256)' if n in _NAMES else 'NULL'} ELSE o.{n} END AS {n},"
        f" pg_catalog.octet_length(o.{n}) AS _bytes_{n}"
        for n in _TEXT
    ]
)


def _row(r: dict[str, Any]) -> OutboxRow:
    data = {k: v for k, v in r.items() if not k.startswith("_")}
    created = data.get("created_at")
    if isinstance(created, datetime):
        data["created_at"] = created.isoformat()
    big = tuple(
        (n, int(r[f"_bytes_{n}"])) for n in _TEXT if (r.get(f"_bytes_{n}") or 0) > MAX_COLUMN_BYTES
    )
    for name, _ in big:
        if name in _NAMES:
            data[name] = f"{data[name]}…"
    return OutboxRow.from_mapping({**data, "oversize": big})


class PgStore:
    """One connection to a PostgreSQL outbox, shared by this process's threads under a lock;
    short transactions; reconnects by itself (with backoff) after the connection is lost."""

    def __init__(self, url: str, clock: Callable[[], float] | None = None) -> None:
        self.url = url
        self.where = redact_url(url)
        remember(url)
        self._local = clock or (lambda: time.time())
        self._offset = 0.0  # database clock - local clock, measured at connect
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.RLock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._intake_open = False
        self._fetched: list[int] = []
        self._places: dict[int, int] = {}
        self._lease_ends: dict[tuple[int, str], float] = {}  # monotonic, never later than the db's
        self._instance = uuid.uuid4().hex[:12]  # who claims a stream's creation
        # The outbox, qualified (set at connect: the session's search_path is pg_catalog alone).
        self.outbox_schema = "public"
        self._outbox = "public.outbox"
        self._outbox_lit = "'public.outbox'"

    # -- connection --------------------------------------------------------------------------
    def clock(self) -> float:
        """Now by the database's clock (the local clock corrected by the offset seen at
        connect; leases themselves are judged in SQL by the server's own clock)."""
        return self._local() + self._offset

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._retry_at:
            raise StoreError(
                f"{self.where}: database unreachable ({self._last_error}); reconnecting in"
                f" {self._retry_at - time.monotonic():.1f}s",
                busy=True,
                cause=self._last_error,
            )
        try:
            conn = psycopg.connect(self.url, row_factory=dict_row, **connect_kwargs())
            for name, value in SESSION.items():
                conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), value))
            self._pin_search_path(conn)
            before = self._local()
            db_now = conn.execute(f"SELECT {NOW} AS now").fetchone()
            after = self._local()
            conn.commit()
        except psycopg.Error as exc:
            self._lost(exc)
            raise StoreError(
                f"{self.where}: cannot connect: {_first_line(exc)}",
                busy=True,
                cause=self._last_error,
            ) from None
        assert db_now is not None
        self._offset = float(db_now["now"]) - (before + after) / 2
        if self._failures:
            structlog.get_logger("reporter.pgstore").info("database_reconnected", outbox=self.where)
        self._failures, self._conn = 0, conn
        self._intake_open = False
        return conn

    def _pin_search_path(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        """CVE-2018-1058: where another role can create objects in a schema on our search_path
        (public, before PostgreSQL 15 and on many managed instances), a function it plants there
        that matches better than the built-in one (`public.quote_ident(name)`) runs as us. So the
        outbox's schema is found once (the URL's search_path decides where the table is, with
        qualified calls only), then the session searches pg_catalog alone and every statement
        names the outbox with its schema."""
        row = conn.execute(
            "SELECT pg_catalog.quote_ident(n.nspname::text) AS schema FROM pg_catalog.pg_class t"
            " JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace"
            " WHERE t.oid = pg_catalog.to_regclass('outbox'::text)"
        ).fetchone() or conn.execute(
            "SELECT pg_catalog.quote_ident(pg_catalog.current_schema()::text) AS schema"
        ).fetchone()
        if row is None or row["schema"] is None:
            raise StoreError(f"{self.where}: no schema to hold the outbox (empty search_path)")
        self.outbox_schema = str(row["schema"])
        self._outbox = f"{self.outbox_schema}.outbox"
        self._outbox_lit = "'" + self._outbox.replace("'", "''") + "'"
        conn.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)")

    def _lost(self, exc: BaseException) -> None:
        """The connection is gone: forget it and retry later (exponential, capped)."""
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self._failures += 1
        delay = min(RECONNECT_MAX, RECONNECT_BASE * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        self._last_error = _first_line(exc)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _tx(self, doing: str, keep_open: bool = False) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """One transaction (committed at the end unless `keep_open`); errors become StoreError:
        a lost connection or a lock conflict is transient (`busy`)."""
        with self._lock:
            conn = self._connection()
            if self._intake_open and not keep_open:
                conn.rollback()  # an intake read whose write never came
                self._intake_open = False
            try:
                with conn.cursor() as cur:
                    yield cur
                if not keep_open:
                    conn.commit()
            except psycopg.Error as exc:
                self._intake_open = False
                if (isinstance(exc, psycopg.OperationalError) and conn.broken) or conn.closed:
                    self._lost(exc)
                    raise StoreError(
                        f"{self.where}: lost the database connection while trying to {doing}:"
                        f" {_first_line(exc)}",
                        busy=True,
                        cause=self._last_error,
                    ) from None
                try:
                    conn.rollback()
                except psycopg.Error as again:
                    self._lost(again)
                transient = isinstance(exc, _TRANSIENT)
                needs_init = isinstance(exc, pgerrors.UndefinedTable | pgerrors.InvalidSchemaName)
                message = f"{self.where}: cannot {doing}: {_first_line(exc)}"
                if needs_init:
                    message += " (run `mgh-reporter init`)"
                raise StoreError(message, transient, needs_init, cause=_first_line(exc)) from None
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                self._intake_open = False
                raise

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, url: str) -> PgStore:
        """`init`: the outbox table in the URL's search_path schema (or accept the tool's), our
        schema and tables (versioned migrations), and the intake trigger. Creating the trigger
        needs the outbox table's owner. Safe to run again, and by several processes at once."""
        store = cls(url)
        log = structlog.get_logger("reporter.pgstore")
        with store._tx("initialise") as c:
            c.execute("SELECT pg_catalog.pg_advisory_xact_lock("
                      "pg_catalog.hashtext('mgh-reporter init'::text)::bigint)")
            store._refuse_writable_schemas(c)
            c.execute(pgschema.outbox_ddl(store._outbox))
            columns = store._outbox_columns(c)
            missing = [col for col in REQUIRED_COLUMNS if col not in columns]
            if missing:
                raise StoreError(f"{store.where}: table outbox lacks columns {', '.join(missing)}")
            for column in OUTBOX_COLUMNS:
                if column not in columns:
                    c.execute(f"ALTER TABLE {store._outbox} ADD COLUMN {column} text")
            c.execute(f"CREATE SCHEMA IF NOT EXISTS {S}")
            c.execute(
                f"CREATE TABLE IF NOT EXISTS {S}.migrations"
                " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {r["name"] for r in c.execute(f"SELECT name FROM {S}.migrations")}
            for name, statements in pgschema.MIGRATIONS:
                if name in applied:
                    continue
                for statement in statements:
                    c.execute(statement)
                c.execute(f"INSERT INTO {S}.migrations(name) VALUES (%s)", (name,))
                log.info("migration_applied", migration=name)
            for statement in pgschema.trigger_ddl(store._outbox):
                c.execute(statement)
            # Rows a tool inserted before the trigger existed are taken in as new.
            c.execute(
                f"INSERT INTO {S}.inbox(row_id) SELECT o.id FROM {store._outbox} o WHERE NOT EXISTS"
                f" (SELECT 1 FROM {S}.rows r WHERE r.id = o.id) AND NOT EXISTS"
                f" (SELECT 1 FROM {S}.inbox i WHERE i.row_id = o.id) ORDER BY o.id"
            )
        return store

    @classmethod
    def open(cls, url: str, writable: bool = True) -> PgStore:
        """Connect and refuse an outbox without our (current) tables or trigger."""
        store = cls(url)
        with store._tx("open the outbox") as c:
            columns = store._outbox_columns(c)
            if not columns:
                raise StoreError(
                    f"{store.where}: no outbox table in the search_path; run `mgh-reporter init`",
                    needs_init=True,
                )
            missing = [col for col in OUTBOX_COLUMNS if col not in columns]
            if missing:
                raise StoreError(
                    f"{store.where}: table outbox lacks columns {', '.join(missing)}"
                    " (run `mgh-reporter init` to add them)",
                    needs_init=True,
                )
            names = {n for n, _ in pgschema.MIGRATIONS}
            c.execute("SELECT to_regclass(%s) AS t", (f"{S}.migrations",))
            row = c.fetchone()
            applied: set[str] = set()
            if row and row["t"]:
                applied = {r["name"] for r in c.execute(f"SELECT name FROM {S}.migrations")}
            if names - applied:
                raise StoreError(
                    f"{store.where}: delivery tables missing or old; run `mgh-reporter init`",
                    needs_init=True,
                )
            c.execute(
                "SELECT 1 FROM pg_trigger WHERE tgname = %s"
                f" AND tgrelid = to_regclass({store._outbox_lit}::text)",
                (pgschema.TRIGGER,),
            )
            if c.fetchone() is None:
                raise StoreError(
                    f"{store.where}: the outbox has no intake trigger (the table was re-created?);"
                    " run `mgh-reporter init` as the table's owner",
                    needs_init=True,
                )
        return store

    def _outbox_columns(self, c: psycopg.Cursor[dict[str, Any]]) -> list[str]:
        c.execute(
            "SELECT attname::text AS attname FROM pg_attribute"
            f" WHERE attrelid = to_regclass({self._outbox_lit}::text)"
            " AND attnum > 0 AND NOT attisdropped"
        )
        return [r["attname"] for r in c.fetchall()]

    def _refuse_writable_schemas(self, c: psycopg.Cursor[dict[str, Any]]) -> None:
        """`init` refuses while `public`, the outbox's schema or ours lets anyone but its owner
        create objects in it (PUBLIC, or another role): a role that can plant a function where
        the daemon looks could run code as the daemon (CVE-2018-1058)."""
        c.execute(
            "SELECT n.nspname::text AS schema, CASE WHEN a.grantee = 0 THEN 'PUBLIC'"
            " ELSE a.grantee::regrole::text END AS grantee FROM pg_namespace n,"
            " aclexplode(coalesce(n.nspacl, acldefault('n'::\"char\", n.nspowner))) a"
            " WHERE n.nspname::text = ANY(%s) AND a.privilege_type = 'CREATE'"
            " AND a.grantee <> n.nspowner ORDER BY 1, 2",
            (["public", self.outbox_schema.strip('"'), S],),
        )
        found = [(r["schema"], r["grantee"]) for r in c.fetchall()]
        if found:
            where = ", ".join(f"schema {schema} to {grantee}" for schema, grantee in found)
            raise StoreError(
                f"{self.where}: refusing to initialise: CREATE is granted on {where}; a role that"
                " can create objects there can plant functions that run as mgh-reporter"
                " (CVE-2018-1058). As the owner: REVOKE CREATE ON SCHEMA <schema> FROM PUBLIC"
                " (and from those roles), then run init again"
            )

    # -- the gate's record -------------------------------------------------------------------
    def load_gate(self) -> GateState:
        """The gate's persisted record (shared by the replicas)."""
        with self._tx("read gate state") as c:
            c.execute(f"SELECT {', '.join(GATE_COLUMNS)} FROM {S}.gate WHERE id = 1")
            row = c.fetchone()
        if row is None:
            return GateState()
        defaults: dict[str, Any] = {f.name: f.default for f in fields(GateState)}
        values: dict[str, Any] = {
            k: row[k] if row[k] is not None else defaults[k] for k in GATE_COLUMNS
        }
        return GateState(**values)

    def save_gate(self, state: GateState) -> None:
        """Persist the gate's record."""
        assigns = ", ".join(f"{name} = %s" for name in GATE_COLUMNS)
        with self._tx("write gate state") as c:
            c.execute(f"UPDATE {S}.gate SET {assigns} WHERE id = 1", astuple(state))

    def data_version(self) -> int:
        """Changes when rows are queued for intake, or the earliest due time or mapping check
        moves (another replica's claim, release or outcome): one indexed read."""
        with self._tx("read the outbox's version") as c:
            c.execute(
                f"SELECT (SELECT max(seq) FROM {S}.inbox) AS a,"
                f" (SELECT min(due_at) FROM {S}.tasks WHERE due_at IS NOT NULL) AS b,"
                f" (SELECT min(map_check_at) FROM {S}.tasks WHERE map_check_at IS NOT NULL) AS c"
            )
            row = c.fetchone()
        return hash(tuple((row or {}).values()))

    # -- writers -----------------------------------------------------------------------------
    def insert_row(self, values: dict[str, Any]) -> int:
        """INSERT one outbox row as a host tool would; returns its id."""
        names = list(values)
        with self._tx("insert into outbox") as c:
            c.execute(
                f"INSERT INTO {self._outbox} ({', '.join(names)})"
                f" VALUES ({', '.join(['%s'] * len(names))})"
                " RETURNING id",
                [values[n] for n in names],
            )
            row = c.fetchone()
        return int(row["id"]) if row else 0

    # -- intake ------------------------------------------------------------------------------
    def fetch_new(self, limit: int) -> NewRows:
        """Rows queued by the intake trigger, in insertion order, locked so that no other
        replica takes them in at the same time (`SKIP LOCKED`); the transaction stays open
        until `ingest` dequeues them with the judged rows."""
        with self._tx("read outbox", keep_open=True) as c:
            query = (
                f"SELECT i.seq AS _seq, i.row_id AS _row_id, {_ROW} FROM {S}.inbox i"
                f" LEFT JOIN {self._outbox} o ON o.id = i.row_id ORDER BY i.seq {{}} LIMIT %s"
                " FOR UPDATE OF i SKIP LOCKED"
            )
            c.execute(query.format("ASC"), (limit,))
            rows = c.fetchall()
            if len(rows) >= limit:  # a backlog: the newest rows come in now too (tail_size)
                head = {r["_seq"] for r in rows}
                c.execute(query.format("DESC"), (tail_size(limit),))
                rows += [r for r in c.fetchall() if r["_seq"] not in head]
                rows.sort(key=lambda r: r["_seq"])
            self._intake_open = True
        self._fetched = [r["_seq"] for r in rows]
        latest: dict[int, OutboxRow] = {}
        self._places = {}
        for r in rows:
            if r["id"] is not None:  # None: deleted by the tool before we saw it
                latest[r["id"]] = _row(r)
                self._places[r["id"]] = r["_seq"]
        return NewRows(sorted(latest.values(), key=lambda row: row.id), len(rows) >= limit)

    def ingest(self, items: Sequence[Ingested]) -> None:
        """Dequeue the fetched rows and take them into delivery state, in the transaction that
        locked them: each row is taken in exactly once, by whichever replica locked it."""
        if not self._intake_open:
            if items:
                raise StoreError(f"{self.where}: ingest without fetch_new", busy=True)
            return
        now = self.clock()
        with self._tx("ingest rows") as c:
            self._intake_open = False
            c.execute(f"DELETE FROM {S}.inbox WHERE seq = ANY(%s)", (self._fetched,))
            if not items:
                return
            row_ids = [i.row_id for i in items]
            c.execute(f"DELETE FROM {S}.rows WHERE id = ANY(%s) RETURNING state", (row_ids,))
            reused = c.fetchall()
            if reused:
                structlog.get_logger("reporter.pgstore").info(
                    "row_id_reused",
                    rows=len(reused),
                    earlier_pending=sum(r["state"] == RowState.PENDING for r in reused),
                )
            keys = sorted({(i.stream, i.task) for i in items})
            c.execute(
                f"INSERT INTO {S}.tasks(stream, task) SELECT * FROM unnest(%s::text[], %s::text[])"
                " ON CONFLICT DO NOTHING",
                ([k[0] for k in keys], [k[1] for k in keys]),
            )
            c.execute(
                f"SELECT id, stream, task FROM {S}.tasks WHERE (stream, task) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([k[0] for k in keys], [k[1] for k in keys]),
            )
            ids = {(r["stream"], r["task"]): int(r["id"]) for r in c.fetchall()}
            c.executemany(
                f"INSERT INTO {S}.rows(id, seq, task_id, kind, state, created_at, finished_at,"
                " reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        i.row_id,
                        self._places[i.row_id],
                        ids[(i.stream, i.task)],
                        i.kind,
                        RowState.REJECTED.value if i.rejected else RowState.PENDING.value,
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
                f"UPDATE {S}.rows SET state = {SUPERSEDED}, finished_at = %s,"
                " reason = 'superseded by row ' || %s WHERE task_id = %s AND kind = %s"
                f" AND state = {PENDING} AND seq < %s",
                [
                    (now, str(rid), tid, kind, self._places[rid])
                    for (tid, kind), rid in sorted(newest.items())
                ],
            )
            lanes = {(ids[(i.stream, i.task)], i.kind) for i in items if not i.rejected}
            c.executemany(
                f"UPDATE {S}.tasks SET due_at = {_LANE_DUE} WHERE id = %(id)s"
                f" AND lease_token IS NULL AND (due_at IS NULL OR due_at > {_LANE_DUE})",
                [
                    {"now": now, "id": tid, "kind": kind, "spacing": STATE_SPACING_SECONDS}
                    for tid, kind in sorted(lanes)
                ],
            )

    # -- claims ------------------------------------------------------------------------------
    def next_wakeup(self) -> float | None:
        """When the earliest task or mapping check becomes due (None: nothing scheduled)."""
        with self._tx("read due time") as c:
            c.execute(
                f"SELECT (SELECT min(due_at) FROM {S}.tasks WHERE due_at IS NOT NULL) AS a,"
                f" (SELECT min(map_check_at) FROM {S}.tasks WHERE map_check_at IS NOT NULL) AS b"
            )
            row = c.fetchone() or {}
        known = [float(t) for t in row.values() if t is not None]
        return min(known) if known else None

    def claim_due(self, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        """Lease up to `limit` due tasks no other replica holds (`FOR UPDATE SKIP LOCKED`, due
        by the database's clock); their due time moves to the lease's end."""
        lease = uuid.uuid4().hex
        started = time.monotonic()  # before the server's now: a conservative lease end
        with self._tx("claim tasks") as c:
            c.execute(
                f"WITH due AS (SELECT id FROM {S}.tasks WHERE due_at IS NOT NULL"
                f" AND due_at <= {NOW} ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                f" UPDATE {S}.tasks t SET due_at = {NOW} + %(lease)s::float8,"
                " lease_token = %(token)s FROM due WHERE t.id = due.id"
                " RETURNING t.id, t.stream, t.task, t.imported, t.last_state_seq,"
                " t.last_attributes_seq, t.update_time",
                {"limit": limit, "lease": lease_seconds, "token": lease},
            )
            tasks = c.fetchall()
            if not tasks:
                return []
            ids = [t["id"] for t in tasks]
            c.execute(
                "SELECT r.task_id AS _task_id, r.id AS _row_id, r.created_at AS _created,"
                f" r.attempts AS _attempts, r.seq AS _seq, {_ROW} FROM {S}.rows r"
                f" LEFT JOIN {self._outbox} o ON o.id = r.id WHERE r.state = {PENDING}"
                " AND r.task_id = ANY(%s) ORDER BY r.seq",
                (ids,),
            )
            rows = c.fetchall()
            c.execute(f"SELECT task_id, arn FROM {S}.artifacts WHERE task_id = ANY(%s)", (ids,))
            artifacts = c.fetchall()
            c.execute(
                f"SELECT task_id, kind, attempts, retry_at FROM {S}.lanes WHERE task_id = ANY(%s)",
                (ids,),
            )
            lanes = c.fetchall()
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
        with self._lock:
            self._lease_ends = {k: v for k, v in self._lease_ends.items() if v > started}
            for tid in claimed:
                self._lease_ends[(tid, lease)] = started + lease_seconds
        for r in rows:
            task = claimed[r["_task_id"]]
            task.bookkeeping[r["_row_id"]] = PendingRow(r["_attempts"], r["_created"], r["_seq"])
            if r["id"] is None:
                task.missing.append(r["_row_id"])
            else:
                task.rows.append(_row(r))
        for a in artifacts:
            claimed[a["task_id"]].associated.add(a["arn"])
        for lane in lanes:
            if lane["kind"] in Kind.__members__.values():
                claimed[lane["task_id"]].lanes[Kind(lane["kind"])] = LaneState(
                    lane["attempts"], lane["retry_at"]
                )
        return list(claimed.values())

    def release(self, leases: Sequence[tuple[int, str]], due_at: float) -> None:
        """Hand leased tasks back untouched, due again at `due_at`."""
        if leases:
            with self._tx("release tasks") as c:
                c.executemany(
                    f"UPDATE {S}.tasks SET due_at = %s, lease_token = NULL"
                    " WHERE id = %s AND lease_token = %s",
                    [(due_at, tid, lease) for tid, lease in leases],
                )

    def hold(self, task_id: int, lease: str, need_seconds: float, lease_seconds: float) -> bool:
        """The fence. Without a query while the lease's conservative local end (the monotonic
        clock at claim + the lease: the server's end is later) leaves `need_seconds`; else renew
        it in SQL, by the server's clock, only if it has not expired and is still ours."""
        key = (task_id, lease)
        with self._lock:
            end = self._lease_ends.get(key)
            if end is not None and end - time.monotonic() >= need_seconds:
                return True
            started = time.monotonic()
            with self._tx("renew a lease") as c:
                c.execute(
                    f"UPDATE {S}.tasks SET due_at = {NOW} + %s::float8 WHERE id = %s"
                    f" AND lease_token = %s AND due_at > {NOW} RETURNING id",
                    (lease_seconds, task_id, lease),
                )
                held = c.fetchone() is not None
            if held:
                self._lease_ends[key] = started + lease_seconds
            else:
                self._lease_ends.pop(key, None)
            return held

    # -- outcomes ----------------------------------------------------------------------------
    def record(self, outcomes: Sequence[TaskOutcome]) -> None:
        """Record a pass's outcomes in one short transaction. An outcome whose lease was lost
        (another replica holds the task now) records only facts: rows the Hub got, rows judged
        superseded or invalid, the import, the artifacts, and floors that only move forward;
        never the task's schedule or retry state, which belong to the new holder."""
        if not outcomes:
            return
        now = self.clock()
        lost: list[int] = []
        with self._tx("record outcomes") as c:
            c.execute(
                f"SELECT id, lease_token FROM {S}.tasks WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                ([o.task_id for o in outcomes],),
            )
            tokens = {r["id"]: r["lease_token"] for r in c.fetchall()}
            for o in sorted(outcomes, key=lambda o: o.task_id):
                held = tokens.get(o.task_id) == o.lease
                if not held:
                    lost.append(o.task_id)
                self._record_one(c, o, now, held)
        with self._lock:
            for o in outcomes:
                self._lease_ends.pop((o.task_id, o.lease), None)
        if lost:
            structlog.get_logger("reporter.pgstore").warning(
                "lease_lost", tasks=len(lost), task_ids=lost[:20],
                hint="another replica took these tasks over; only delivered facts were recorded",
            )

    def _record_one(
        self, c: psycopg.Cursor[dict[str, Any]], o: TaskOutcome, now: float, held: bool
    ) -> None:
        if o.sent:
            c.execute(
                f"UPDATE {S}.rows SET state = {SENT}, finished_at = %s, reason = NULL"
                f" WHERE id = ANY(%s) AND state IN ({PENDING}, {SUPERSEDED})",
                (now, o.sent),
            )
        c.executemany(
            f"UPDATE {S}.rows SET state = {SUPERSEDED}, finished_at = %s, reason = %s"
            f" WHERE id = %s AND state = {PENDING}",
            [(now, reason, rid) for rid, reason in o.superseded],
        )
        c.executemany(
            f"UPDATE {S}.rows SET state = {REJECTED}, finished_at = %s, reason = %s"
            f" WHERE id = %s AND state = {PENDING}",
            [(now, reason, rid) for rid, reason in o.rejected],
        )
        if held:
            c.executemany(
                f"UPDATE {S}.rows SET attempts = attempts + 1 WHERE id = %s",
                [(rid,) for rid in o.failed_rows],
            )
        c.executemany(
            f"INSERT INTO {S}.artifacts(task_id, arn, associated_at) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [(o.task_id, arn, now) for arn in o.artifacts],
        )
        if o.imported:
            c.execute(f"UPDATE {S}.tasks SET imported = true WHERE id = %s", (o.task_id,))
        if o.state is not None:
            s = o.state
            c.execute(
                f"UPDATE {S}.tasks SET last_state_row = %s, last_state_seq = %s, status = %s,"
                " percent = %s, detail = %s, update_time = %s, next_update_seconds = %s,"
                " sent_at = %s WHERE id = %s"
                " AND (last_state_seq IS NULL OR last_state_seq < %s)",
                (s.row, s.seq, s.status, s.percent, s.detail, s.update_time,
                 s.next_update_seconds, now, o.task_id, s.seq),
            )
        if o.attributes_row is not None:
            c.execute(
                f"UPDATE {S}.tasks SET last_attributes_row = %s, last_attributes_seq = %s,"
                " attributes_at = %s, mapped = NULL, configuration_id = NULL, map_check_at = %s,"
                " map_checks = 0, unmapped_reported = false WHERE id = %s"
                " AND (last_attributes_seq IS NULL OR last_attributes_seq < %s)",
                (o.attributes_row, o.attributes_seq, now, o.map_check_at, o.task_id,
                 o.attributes_seq),
            )
        if not held:
            return
        for lane in o.lanes:
            if lane.attempts == 0 and lane.retry_at is None:
                c.execute(
                    f"DELETE FROM {S}.lanes WHERE task_id = %s AND kind = %s",
                    (o.task_id, lane.kind.value),
                )
            else:
                c.execute(
                    f"INSERT INTO {S}.lanes(task_id, kind, attempts, retry_at, last_error)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (task_id, kind) DO UPDATE SET"
                    " attempts = excluded.attempts, retry_at = excluded.retry_at,"
                    " last_error = excluded.last_error",
                    (o.task_id, lane.kind.value, lane.attempts, lane.retry_at, lane.error),
                )
        c.execute(
            f"UPDATE {S}.tasks SET lease_token = NULL,"
            " last_error = coalesce(%(error)s, (SELECT last_error FROM"
            f"  {S}.lanes WHERE task_id = %(id)s AND last_error IS NOT NULL LIMIT 1)),"
            " due_at = (SELECT min(greatest(coalesce(l.retry_at, 0), %(now)s::float8,"
            f"  CASE WHEN k.kind = '{Kind.TASK_STATE.value}'"
            "  THEN coalesce(t2.sent_at, 0) + %(spacing)s::float8 ELSE 0 END))"
            f"  FROM (SELECT DISTINCT kind FROM {S}.rows WHERE task_id = %(id)s"
            f"  AND state = {PENDING}) AS k LEFT JOIN {S}.lanes l ON l.task_id = %(id)s"
            f"  AND l.kind = k.kind, {S}.tasks t2 WHERE t2.id = %(id)s)"
            " WHERE id = %(id)s AND lease_token = %(lease)s",
            {
                "id": o.task_id,
                "now": now,
                "lease": o.lease,
                "error": o.error,
                "spacing": STATE_SPACING_SECONDS,
            },
        )

    # -- streams -----------------------------------------------------------------------------
    def mark_stream_created(self, stream: str) -> None:
        """Remember that the Hub has this stream."""
        with self._tx("record stream") as c:
            c.execute(
                f"INSERT INTO {S}.streams(stream, created_at) VALUES (%s, %s)"
                " ON CONFLICT (stream) DO UPDATE SET created_at = excluded.created_at,"
                " claimed_by = NULL, claimed_until = NULL",
                (stream, self.clock()),
            )

    def streams(self) -> set[str]:
        """Streams known to exist at the Hub."""
        with self._tx("read streams") as c:
            c.execute(f"SELECT stream FROM {S}.streams WHERE created_at IS NOT NULL")
            return {r["stream"] for r in c.fetchall()}

    def claim_stream(self, stream: str, seconds: float) -> bool:
        """Claim the creation of `stream` unless it exists or another replica's claim is live
        (one CreateProgressUpdateStream across replicas)."""
        me = self._me()
        with self._tx("claim a stream") as c:
            c.execute(
                f"INSERT INTO {S}.streams(stream, claimed_by, claimed_until)"
                f" VALUES (%(s)s, %(me)s, {NOW} + %(secs)s::float8)"
                " ON CONFLICT (stream) DO UPDATE SET claimed_by = %(me)s,"
                f" claimed_until = {NOW} + %(secs)s::float8 WHERE streams.created_at IS NULL"
                f" AND (streams.claimed_until IS NULL OR streams.claimed_until < {NOW}"
                " OR streams.claimed_by = %(me)s) RETURNING stream",
                {"s": stream, "me": me, "secs": seconds},
            )
            return c.fetchone() is not None

    def _me(self) -> str:
        return self._instance

    # -- replicas ----------------------------------------------------------------------------
    def heartbeat(self, me: Replica) -> list[Replica]:
        """Upsert this replica's heartbeat (by the database's clock), forget replicas silent
        for a day, and return the live ones."""
        with self._tx("heartbeat") as c:
            c.execute(
                f"INSERT INTO {S}.replicas(id, host, pid, role, started_at, heartbeat_at,"
                f" every_seconds, rate) VALUES (%s, %s, %s, %s, %s, {NOW}, %s, %s)"
                f" ON CONFLICT (id) DO UPDATE SET heartbeat_at = {NOW},"
                " every_seconds = excluded.every_seconds, rate = excluded.rate",
                (me.id, me.host, me.pid, me.role, me.started_at, me.every_seconds, me.rate),
            )
            c.execute(
                f"DELETE FROM {S}.replicas WHERE heartbeat_at < {NOW} - %s",
                (FORGET_REPLICAS_SECONDS,),
            )
            return self._live(c)

    def replicas(self) -> list[Replica]:
        """The live replicas."""
        with self._tx("read replicas") as c:
            return self._live(c)

    @staticmethod
    def _live(c: psycopg.Cursor[dict[str, Any]]) -> list[Replica]:
        c.execute(
            "SELECT id, host, pid, role, started_at, heartbeat_at, every_seconds, rate"
            f" FROM {S}.replicas WHERE heartbeat_at + every_seconds * {LIVE_PERIODS} > {NOW}"
            " ORDER BY started_at, id"
        )
        return [
            Replica(r["id"], r["host"], r["pid"], r["started_at"], r["heartbeat_at"],
                    r["every_seconds"], r["rate"], r["role"])
            for r in c.fetchall()
        ]

    def leave(self, replica_id: str) -> None:
        """Drop this replica's heartbeat row (a graceful stop)."""
        with self._tx("leave") as c:
            c.execute(f"DELETE FROM {S}.replicas WHERE id = %s", (replica_id,))

    # -- mapping -----------------------------------------------------------------------------
    def due_mapping_checks(self, limit: int) -> list[MappingCheck]:
        """Tasks whose auto-mapping should be checked now; each is held for a minute so no
        other replica checks it at the same time (`record_mapping` sets the real next time)."""
        with self._tx("read mapping checks") as c:
            c.execute(
                f"WITH due AS (SELECT id FROM {S}.tasks WHERE map_check_at IS NOT NULL"
                " AND map_check_at <= %(now)s ORDER BY map_check_at LIMIT %(limit)s"
                f" FOR UPDATE SKIP LOCKED) UPDATE {S}.tasks t SET map_check_at = %(now)s + 60"
                " FROM due WHERE t.id = due.id RETURNING t.id, t.stream, t.task,"
                " t.attributes_at, t.map_checks, t.unmapped_reported",
                {"now": self.clock(), "limit": limit},
            )
            rows = c.fetchall()
        return [
            MappingCheck(r["id"], r["stream"], r["task"], r["attributes_at"], r["map_checks"],
                         bool(r["unmapped_reported"]))
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
        with self._tx("record mapping") as c:
            c.execute(
                f"UPDATE {S}.tasks SET mapped = %s, configuration_id = %s, map_check_at = %s,"
                " map_checks = map_checks + 1, unmapped_reported = %s WHERE id = %s",
                (mapped, configuration_id, next_check_at, unmapped_reported, task_id),
            )

    # -- dead letters ------------------------------------------------------------------------
    def dead_letters(self, ids: Sequence[int] | None = None) -> list[DeadLetter]:
        """Rejected rows (all, or those of `ids`) with their reasons."""
        where, args = f"r.state = {REJECTED}", []
        if ids is not None:
            where += " AND r.id = ANY(%s)"
            args = [list(ids)]
        with self._tx("read dead letters") as c:
            c.execute(
                "SELECT r.id, r.reason, r.kind, t.stream, t.task, r.attempts, r.finished_at,"
                f" o.id IS NOT NULL AS present FROM {S}.rows r JOIN {S}.tasks t"
                f" ON t.id = r.task_id LEFT JOIN {self._outbox} o ON o.id = r.id WHERE {where}"
                " ORDER BY r.id",
                args,
            )
            rows = c.fetchall()
        return [
            DeadLetter(r["id"], r["reason"] or "", r["kind"], r["stream"], r["task"],
                       r["attempts"], r["finished_at"], bool(r["present"]))
            for r in rows
        ]

    def outbox_rows(self, ids: Sequence[int]) -> list[OutboxRow]:
        """The outbox content of some rows."""
        with self._tx("read outbox") as c:
            c.execute(
                f"SELECT {_ROW} FROM {self._outbox} o WHERE o.id = ANY(%s) ORDER BY o.id",
                (list(ids),),
            )
            return [_row(r) for r in c.fetchall()]

    def drop(self, ids: Sequence[int] | None, rejected_before: float | None) -> list[int]:
        """Drop dead letters (of `ids` or all, rejected before `rejected_before` when given)."""
        where, args = f"state = {REJECTED}", list[Any]()
        if ids is not None:
            where += " AND id = ANY(%s)"
            args.append(list(ids))
        if rejected_before is not None:
            where += " AND coalesce(finished_at, 0) < %s"
            args.append(rejected_before)
        now = self.clock()
        with self._tx("drop dead letters") as c:
            c.execute(
                f"UPDATE {S}.rows SET state = {DROPPED}, finished_at = %s WHERE {where}"
                " RETURNING id",
                [now, *args],
            )
            return sorted(int(r["id"]) for r in c.fetchall())

    def requeue(self, valid: Sequence[int], invalid: Sequence[tuple[int, str]]) -> None:
        """Put dead letters back in line (valid) or reject them again with a new reason."""
        now = self.clock()
        with self._tx("requeue dead letters") as c:
            for rid in valid:
                c.execute(
                    f"UPDATE {S}.rows SET state = {PENDING}, attempts = 0, reason = NULL,"
                    f" finished_at = NULL WHERE id = %s AND state = {REJECTED}",
                    (rid,),
                )
                c.execute(
                    f"DELETE FROM {S}.lanes WHERE (task_id, kind) ="
                    f" (SELECT task_id, kind FROM {S}.rows WHERE id = %s)",
                    (rid,),
                )
                c.execute(
                    f"UPDATE {S}.tasks SET due_at = least(coalesce(due_at, %(now)s), %(now)s)"
                    f" WHERE id = (SELECT task_id FROM {S}.rows WHERE id = %(rid)s)",
                    {"now": now, "rid": rid},
                )
            c.executemany(
                f"UPDATE {S}.rows SET reason = %s, finished_at = %s WHERE id = %s",
                [(reason, now, rid) for rid, reason in invalid],
            )

    # -- views -------------------------------------------------------------------------------
    def backlog(self) -> Backlog:
        """Cheap (indexed) totals: rows not taken in, rows waiting, the oldest, dead letters."""
        with self._tx("read backlog") as c:
            c.execute(
                f"SELECT (SELECT count(*) FROM {S}.rows WHERE state = {PENDING}) AS queued,"
                f" (SELECT min(created_at) FROM {S}.rows WHERE state = {PENDING}) AS oldest,"
                f" (SELECT count(*) FROM {S}.rows WHERE state = {REJECTED}) AS dead,"
                f" (SELECT count(*) FROM {S}.inbox) AS waiting,"
                f" (SELECT extract(epoch from min(o.created_at))::float8 FROM {S}.inbox i"
                f"   JOIN {self._outbox} o ON o.id = i.row_id) AS first"
            )
            r = c.fetchone()
        assert r is not None
        times = [float(t) for t in (r["oldest"], r["first"]) if t is not None]
        return Backlog(int(r["waiting"]), int(r["queued"]), min(times) if times else None,
                       int(r["dead"]))

    def work_left(self) -> WorkLeft:
        """Tasks with pending rows, and (task, kind) lanes backing off after a failure."""
        with self._tx("read progress") as c:
            c.execute(
                f"SELECT (SELECT count(DISTINCT task_id) FROM {S}.rows WHERE state = {PENDING})"
                f" AS tasks, (SELECT count(*) FROM {S}.lanes WHERE attempts > 0) AS retrying"
            )
            r = c.fetchone()
        assert r is not None
        return WorkLeft(int(r["tasks"]), int(r["retrying"]))

    def counts(self) -> RowCounts:
        """Row totals (a row superseded by a newer row still waiting counts as pending)."""
        backlog = self.backlog()
        with self._tx("read counts") as c:
            c.execute(f"SELECT state, count(*) AS n FROM {S}.rows GROUP BY state")
            by_state = {r["state"]: int(r["n"]) for r in c.fetchall()}
            c.execute(
                f"SELECT count(*) AS n FROM {S}.rows r WHERE r.state = {SUPERSEDED} AND EXISTS"
                f" (SELECT 1 FROM {S}.rows p WHERE p.task_id = r.task_id"
                f" AND p.state = {PENDING} AND p.kind = r.kind AND p.seq > r.seq)"
            )
            overtaken = int((c.fetchone() or {"n": 0})["n"])
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
        """Rows sent, superseded or rejected at or after `since` (by any replica), by state."""
        with self._tx("read finished rows") as c:
            c.execute(
                f"SELECT state, count(*) AS n FROM {S}.rows WHERE state <> {PENDING}"
                " AND finished_at >= %s GROUP BY state",
                (since,),
            )
            return {r["state"]: int(r["n"]) for r in c.fetchall()}

    def tasks(self, stream: str | None = None) -> list[TaskRecord]:
        """One record per task: last state sent, pending count, mapping, artifacts."""
        where, args = ("WHERE t.stream = %s", [stream]) if stream else ("", [])
        with self._tx("read tasks") as c:
            c.execute(
                f"SELECT t.*, (SELECT count(*) FROM {S}.rows r WHERE r.task_id = t.id"
                f" AND r.state = {PENDING}) AS pending,"
                f" (SELECT coalesce(json_agg(arn ORDER BY arn), '[]') FROM {S}.artifacts a"
                f" WHERE a.task_id = t.id) AS artifacts FROM {S}.tasks t {where}"
                " ORDER BY t.stream, t.task",
                args,
            )
            rows = c.fetchall()
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
                pending=int(r["pending"]),
                mapped=r["mapped"],
                configuration_id=r["configuration_id"],
                artifacts=tuple(r["artifacts"] if isinstance(r["artifacts"], list)
                                else json.loads(r["artifacts"] or "[]")),
                last_error=r["last_error"],
            )
            for r in rows
        ]

    # -- maintenance -------------------------------------------------------------------------
    def prune(self, before: float, chunk: int = 2000) -> int:
        """Delete delivered rows finished before `before`, in short chunks; returns the count."""
        total = 0
        while True:
            with self._tx("prune delivered rows") as c:
                c.execute(
                    f"SELECT id FROM (SELECT id FROM {S}.rows WHERE state IN ({SENT}, {SUPERSEDED})"
                    " AND finished_at < %s LIMIT %s FOR UPDATE SKIP LOCKED) AS delivered"
                    f" UNION ALL SELECT id FROM (SELECT id FROM {S}.rows WHERE state = {DROPPED}"
                    " AND finished_at < %s LIMIT %s FOR UPDATE SKIP LOCKED) AS dropped",
                    (before, chunk, before, chunk),
                )
                ids = [r["id"] for r in c.fetchall()]
                if ids:  # never a reused id whose new row is still waiting for intake
                    c.execute(
                        f"DELETE FROM {self._outbox} x WHERE x.id = ANY(%s) AND NOT EXISTS"
                        f" (SELECT 1 FROM {S}.inbox i WHERE i.row_id = x.id)",
                        (ids,),
                    )
                    c.execute(f"DELETE FROM {S}.rows WHERE id = ANY(%s)", (ids,))
            total += len(ids)
            if len(ids) < chunk:
                return total

    def checkpoint(self, mode: str = "PASSIVE", busy_ms: int | None = None) -> bool:
        """Nothing to fold back: the server manages its own write-ahead log."""
        return True

    def wal_bytes(self) -> int:
        """No write-ahead log file of ours."""
        return 0

    def rebase(self, delta: float) -> None:
        """The local wall clock stepped; the database's did not: stored times stay, the local
        estimate of the database's clock is corrected."""
        self._offset -= delta

    def damage(self) -> str | None:
        """No file of ours to damage (the server keeps its own)."""
        return None

    def integrity(self) -> str | None:
        """The server checks its own pages."""
        return None

    def file_problem(self) -> str | None:
        """No file to lose (a lost connection is a transient StoreError instead)."""
        return None

    # -- check -------------------------------------------------------------------------------
    def privileges(self) -> dict[str, list[str]]:
        """Per table, the privileges the daemon needs and lacks (empty lists: all present);
        `inserters` lists the roles that may INSERT into the outbox (the tools)."""
        missing: dict[str, list[str]] = {}
        with self._tx("check privileges") as c:
            for table, needs in TABLE_NEEDS.items():
                lacking = []
                for priv in needs:
                    c.execute(
                        "SELECT has_table_privilege(current_user, to_regclass(%s::text), %s)"
                        " AS ok",
                        (self._outbox if table == "outbox" else table, priv),
                    )
                    row = c.fetchone()
                    if not (row and row["ok"]):
                        lacking.append(priv)
                missing[table] = lacking
            c.execute(  # the owner, and every grantee of INSERT, on the table or on columns
                "SELECT DISTINCT CASE WHEN g.grantee = 0 THEN 'PUBLIC'"
                " ELSE g.grantee::regrole::text END AS r FROM ("
                " SELECT (aclexplode(coalesce(c.relacl, acldefault('r', c.relowner)))).*"
                f" FROM pg_class c WHERE c.oid = to_regclass({self._outbox_lit}::text)"
                " UNION ALL SELECT (aclexplode(a.attacl)).* FROM pg_attribute a"
                f" WHERE a.attrelid = to_regclass({self._outbox_lit}::text)"
                " AND a.attacl IS NOT NULL) g WHERE g.privilege_type = 'INSERT' ORDER BY 1"
            )
            inserters = [row["r"] for row in c.fetchall()]
            missing["inserters"] = inserters
        return missing


class Listener:
    """Calls `on_change` when a tool commits rows to the outbox: `LISTEN` on a connection of
    its own, on its own thread, blocked on the socket between notifications (no queries). A lost
    connection is retried with backoff; after reconnecting it calls `on_change` once (a
    notification may have been missed). `waker`-compatible: start, rearm, close, mode."""

    def __init__(self, url: str, on_change: Callable[[], None]) -> None:
        self.url, self.where = url, redact_url(url)
        self._on_change = on_change
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread: threading.Thread | None = None
        self._log = structlog.get_logger("reporter.wake")
        self.mode: str | None = None

    def start(self) -> None:
        """Listen on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="listen", daemon=True)
        self._thread.start()

    def rearm(self) -> None:
        """Nothing to re-arm: the channel belongs to the database, not to a file."""

    def close(self) -> None:
        """Stop listening (the thread ends at its next wake; it never holds the process)."""
        self._stop.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **connect_kwargs()) as conn:
                    conn.execute(f"LISTEN {pgschema.CHANNEL}")
                    if self.mode is None:
                        self._log.info("wakeups", mode="listen", channel=pgschema.CHANNEL)
                    elif failures:
                        self._log.info("listen_reconnected", outbox=self.where)
                        self._on_change()  # whatever was committed while we were away
                    self.mode, failures = "listen", 0
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._on_change()
            except psycopg.Error as exc:
                failures += 1
                delay = min(RECONNECT_MAX, RECONNECT_BASE * 2 ** (failures - 1))
                if failures == 1 or failures % 10 == 0:
                    self._log.warning(
                        "listen_lost", outbox=self.where, error=_first_line(exc),
                        retry_in=round(delay, 1),
                    )
                self._stop.wait(delay)


def _first_line(exc: BaseException) -> str:
    """What libpq said, scrubbed: it quotes parts of a malformed URL (the password included)."""
    return scrub((str(exc).strip().splitlines() or [type(exc).__name__])[0])
