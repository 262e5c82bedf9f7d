"""The PostgreSQL engine: its dialect of the shared algorithm, and what only a shared database
has (reconnecting, the pinned search_path, intake locked across replicas, the fence, stream
claims, heartbeats, `init` and `check`'s privileges)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.rows import dict_row

from reporter.rows import (
    MAX_COLUMN_BYTES,
    MAX_ROW_BYTES,
    SMALL_VALUE_BYTES,
    OutboxRow,
    unread,
)
from reporter.secrets import redact_url, remember, scrub
from reporter.stores import postgres_schema as pgschema
from reporter.stores.algorithm import SqlStore
from reporter.stores.batches import fitting
from reporter.stores.contract import (
    Ingested,
    NewRows,
    Replica,
    StoreError,
    TakenIn,
    TaskOutcome,
)
from reporter.stores.postgres_schema import SCHEMA
from reporter.stores.statements import STATEMENTS, Dialect, postgres_named

__all__ = ["PostgresStore", "connect_kwargs", "first_line"]

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

DIALECT = Dialect(
    prefix=f"{S}.", greatest="greatest", least="least", lock=" FOR UPDATE",
    skip=" FOR UPDATE SKIP LOCKED", now=NOW,
    listing="(SELECT coalesce(json_agg({column} ORDER BY {column}), '[]') FROM {table} a"
    " WHERE a.task_id = t.id)",
    named=postgres_named, any_of=lambda name: f"= ANY(:{name})", array=list,
    overrides={
        **{name: STATEMENTS[name].replace("(seq, row_id)", "(seq, row_id) OVERRIDING SYSTEM VALUE")
           for name in ("unjudged_to_inbox", "requeue")},
        "waiting": f"SELECT (SELECT count(*) FROM {S}.inbox) AS waiting,"
        f" (SELECT extract(epoch from min(o.created_at))::float8 FROM {S}.inbox i"
        " JOIN {outbox} o ON o.id = i.row_id) AS first",
        "mark_stream": f"INSERT INTO {S}.streams(stream, created_at) VALUES (:stream, :now)"
        " ON CONFLICT (stream) DO UPDATE SET created_at = excluded.created_at,"
        " claimed_by = NULL, claimed_until = NULL",
    },
)


def connect_kwargs() -> dict[str, Any]:
    """Connection settings of ours (libpq reads the rest from the URL and its environment:
    PGPASSWORD, .pgpass, PGSSLMODE...)."""
    return {"application_name": "mgh-reporter", "connect_timeout": 10}


# The outbox columns, read without fetching a value `unread` leaves out (over MAX_COLUMN_BYTES,
# or not small in a row over MAX_ROW_BYTES): octet_length() of a TOASTed value reads its header,
# not the value; such a name yields only its start.
_TEXT = (
    "kind", "migration_task_name", "progress_update_stream", "status", "status_detail",
    "update_date_time", "resource_attributes", "artifact_name", "artifact_description",
    "configuration_id", "resource_description", "application_id", "source_resource_name",
)
_NAMES = ("kind", "migration_task_name", "progress_update_stream", "application_id")
_SIZES = ", ".join(f"pg_catalog.octet_length(o.{n}) AS _bytes_{n}" for n in _TEXT)
_TOTAL = " + ".join(f"coalesce(pg_catalog.octet_length(o.{n}), 0)" for n in _TEXT)
_ROW = ", ".join(
    ["o.id", "o.progress_percent", "o.next_update_seconds", "o.created_at", _SIZES]
    + [
        f"CASE WHEN pg_catalog.octet_length(o.{n}) > {MAX_COLUMN_BYTES}"
        f" OR (({_TOTAL}) > {MAX_ROW_BYTES}"
        f" AND pg_catalog.octet_length(o.{n}) > {SMALL_VALUE_BYTES})"
        f" THEN {f'pg_catalog.left(o.{n}, 256)' if n in _NAMES else 'NULL'} ELSE o.{n} END AS {n}"
        for n in _TEXT
    ]
)


def _sizes(r: dict[str, Any]) -> dict[str, int]:
    """The measured bytes of a row's non-NULL text values (its `_bytes_` columns)."""
    return {n: int(r[f"_bytes_{n}"]) for n in _TEXT if r.get(f"_bytes_{n}") is not None}


def _cost(r: dict[str, Any]) -> int:
    """The bytes reading a row costs (what `unread` leaves out costs nothing)."""
    sizes = _sizes(r)
    return sum(sizes.values()) - sum(size for _, size in unread(sizes))


def _row(r: dict[str, Any]) -> OutboxRow:
    data = {k: v for k, v in r.items() if not k.startswith("_")}
    created = data.get("created_at")
    if isinstance(created, datetime):
        data["created_at"] = created.isoformat()
    sizes = _sizes(r)
    big = unread(sizes)
    for name, _ in big:
        if name in _NAMES:
            data[name] = f"{data[name]}…"
    return OutboxRow.from_mapping({**data, "oversize": big, "row_bytes": sum(sizes.values())})


class PostgresStore(SqlStore):
    """One connection to a PostgreSQL outbox, shared by this process's threads under a lock;
    short transactions; reconnects by itself (with backoff) after the connection is lost."""

    dialect = DIALECT

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.where = redact_url(url)
        remember(url)
        self._offset = 0.0  # database clock - local clock, measured at connect
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.RLock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
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
        return time.time() + self._offset

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
            before = time.time()
            db_now = conn.execute(f"SELECT {NOW} AS now").fetchone()
            after = time.time()
            conn.commit()
        except psycopg.Error as exc:
            self._lost(exc)
            raise StoreError(
                f"{self.where}: cannot connect: {first_line(exc)}",
                busy=True,
                cause=self._last_error,
            ) from None
        assert db_now is not None
        self._offset = float(db_now["now"]) - (before + after) / 2
        if self._failures:
            structlog.get_logger("reporter.stores").info("database_reconnected", outbox=self.where)
        self._failures, self._conn = 0, conn
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
        self._last_error = first_line(exc)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _tx(
        self, doing: str, write: bool = True, snapshot: bool = False
    ) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """One transaction, reads or writes, committed at the end; errors become StoreError: a
        lost connection or a lock conflict is transient (`busy`)."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    yield cur
                conn.commit()
            except psycopg.Error as exc:
                if (isinstance(exc, psycopg.OperationalError) and conn.broken) or conn.closed:
                    self._lost(exc)
                    raise StoreError(
                        f"{self.where}: lost the database connection while trying to {doing}:"
                        f" {first_line(exc)}",
                        busy=True,
                        cause=self._last_error,
                    ) from None
                try:
                    conn.rollback()
                except psycopg.Error as again:
                    self._lost(again)
                transient = isinstance(exc, _TRANSIENT)
                needs_init = isinstance(exc, pgerrors.UndefinedTable | pgerrors.InvalidSchemaName)
                message = f"{self.where}: cannot {doing}: {first_line(exc)}"
                if needs_init:
                    message += " (run `mgh-reporter init`)"
                raise StoreError(message, transient, needs_init, cause=first_line(exc)) from None
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, url: str) -> PostgresStore:
        """`init`: the outbox table in the URL's search_path schema (or accept the tool's), our
        schema and tables (versioned migrations), and the intake trigger. Creating the trigger
        needs the outbox table's owner. Safe to run again, and by several processes at once."""
        store = cls(url)
        log = structlog.get_logger("reporter.stores")
        with store._tx("initialise") as c:
            c.execute("SELECT pg_catalog.pg_advisory_xact_lock("
                      "pg_catalog.hashtext('mgh-reporter init'::text)::bigint)")
            store._refuse_writable_schemas(c)
            c.execute(pgschema.outbox_ddl(store._outbox))
            for column in store._columns_to_add(store._outbox_columns(c), creating=True):
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
                    if callable(statement):
                        statement(c, store._outbox)
                    else:
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
    def open(cls, url: str) -> PostgresStore:
        """Connect and refuse an outbox without our (current) tables or trigger."""
        store = cls(url)
        with store._tx("open the outbox") as c:
            columns = store._outbox_columns(c)
            if not columns:
                raise StoreError(
                    f"{store.where}: no outbox table in the search_path; run `mgh-reporter init`",
                    needs_init=True,
                )
            store._columns_to_add(columns, creating=False)
            names = {n for n, _ in pgschema.MIGRATIONS}
            c.execute("SELECT to_regclass(%s) AS t", (f"{S}.migrations",))
            row = c.fetchone()
            applied: set[str] = set()
            if row and row["t"]:
                applied = {r["name"] for r in c.execute(f"SELECT name FROM {S}.migrations")}
            if names - applied:
                raise store._outdated()
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

    def insert_row(self, values: dict[str, Any]) -> int:
        """INSERT one outbox row as a tool would (the `Outbox` writer); returns its id."""
        names = list(values)
        with self._tx("insert into outbox") as c:
            c.execute(
                f"INSERT INTO {self._outbox} ({', '.join(names)})"
                f" VALUES ({', '.join(['%s'] * len(names))}) RETURNING id",
                [values[n] for n in names],
            )
            row = c.fetchone()
        return int(row["id"]) if row else 0

    # -- intake ------------------------------------------------------------------------------
    def take_in(self, limit: int, judge: Callable[[OutboxRow], Ingested]) -> TakenIn:
        """Intake in one transaction: the queue's entries locked so that no other replica
        takes them in at the same time (`SKIP LOCKED`), sized first so a batch reads at most
        INTAKE_BATCH_BYTES of values, judged, and written before the locks go."""
        with self._tx("take rows in") as c:
            entries = self._inbox(c, limit, sizes=", " + _SIZES,
                                  hold=" FOR UPDATE OF i SKIP LOCKED")
            taken = entries[:fitting([_cost(r) for r in entries])]
            contents = self._contents(
                c, sorted({r["row_id"] for r in taken if r["present"]}))
            places: dict[int, int] = {}
            for r in sorted(taken, key=lambda r: r["seq"]):
                if r["row_id"] in contents:  # absent: deleted by the tool before we saw it
                    places[r["row_id"]] = r["seq"]
            batch = NewRows(sorted(contents.values(), key=lambda row: row.id),
                            len(entries) >= limit or len(taken) < len(entries),
                            [r["seq"] for r in taken], places)
            count = self._ingest(c, batch, [judge(row) for row in batch.rows])
        return TakenIn(count, batch.more)

    def _contents(self, c: Any, ids: Sequence[int]) -> dict[int, OutboxRow]:
        if not ids:
            return {}
        c.execute(f"SELECT {_ROW} FROM {self._outbox} o WHERE o.id = ANY(%s)", (list(ids),))
        return {r["id"]: _row(r) for r in c.fetchall()}

    def _leased(self, ids: Sequence[int], token: str, ends: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._lease_ends = {k: v for k, v in self._lease_ends.items() if v > now}
            for tid in ids:
                self._lease_ends[(tid, token)] = ends

    def _ended(self, outcomes: Sequence[TaskOutcome]) -> None:
        with self._lock:
            for o in outcomes:
                self._lease_ends.pop((o.task_id, o.lease), None)

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

    # -- streams -----------------------------------------------------------------------------
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

    # -- a server keeps its own log and files: nothing of ours to tend or lose ---------------
    def checkpoint(self, mode: str = "PASSIVE", busy_ms: int | None = None) -> bool:
        """The server checkpoints its own log: all of it is folded back, as far as we know."""
        return True

    def wal_bytes(self) -> int:
        """No log file of ours (the server's WAL is its administrator's)."""
        return 0

    def damage(self) -> str | None:
        """No file of ours to be damaged under us."""
        return None

    def integrity(self) -> str | None:
        """The server checks its own pages."""
        return None

    def file_problem(self) -> str | None:
        """No file of ours that could be deleted or replaced."""
        return None

    def disown(self) -> str | None:
        """No companion files of ours to remove."""
        return None

    def rebase(self, delta: float) -> None:
        """The local wall clock stepped; the database's did not: stored times stay, the local
        estimate of the database's clock is corrected."""
        self._offset -= delta


    def privileges(self) -> dict[str, list[str]]:
        """Per table, the privileges the daemon needs and lacks (empty lists: all present);
        `inserters` lists the roles that may INSERT into the outbox (the tools)."""
        missing: dict[str, list[str]] = {}
        with self._tx("check privileges") as c:
            for table, needs in pgschema.TABLE_NEEDS.items():
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


def first_line(exc: BaseException) -> str:
    """What libpq said, scrubbed: it quotes parts of a malformed URL (the password included)."""
    return scrub((str(exc).strip().splitlines() or [type(exc).__name__])[0])
