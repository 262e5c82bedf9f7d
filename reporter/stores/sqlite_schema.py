"""The SQLite outbox: the contract's DDL, the daemon's own tables as sqlite-utils migrations,
and the intake trigger."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from reporter.stores.statements import (
    GATE_COLUMNS,
    OUTBOX_COLUMNS,
    REQUIRED_COLUMNS,
    fate_view,
    literals,
)
from reporter.stores.upgrade import recover_sent

__all__ = [
    "GATE_COLUMNS",
    "INTAKE_TRIGGER",
    "INTAKE_TRIGGER_DDL",
    "OUTBOX_COLUMNS",
    "OUTBOX_DDL",
    "REQUIRED_COLUMNS",
    "apply_migrations",
    "pending_migrations",
]

OUTBOX_DDL = """
CREATE TABLE IF NOT EXISTS outbox (
  id                     INTEGER PRIMARY KEY AUTOINCREMENT,
  kind                   TEXT NOT NULL,
  migration_task_name    TEXT NOT NULL,
  progress_update_stream TEXT,
  status                 TEXT,
  status_detail          TEXT,
  progress_percent       INTEGER,
  next_update_seconds    INTEGER,
  update_date_time       TEXT,
  resource_attributes    TEXT,
  created_at             TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  artifact_name          TEXT,
  artifact_description   TEXT,
  configuration_id       TEXT,
  resource_description   TEXT,
  application_id         TEXT,
  source_resource_name   TEXT
)
"""


# The migrations, in order. sqlite-utils applies them (`init` only); opening an outbox checks
# their names with one query, so the daemon never imports sqlite-utils (and the numpy, click and
# pluggy it may pull in: ~14 MB of a 64 MiB sidecar).
MIGRATION_SET = "mgh-reporter"
MIGRATIONS_TABLE = "_sqlite_migrations"  # sqlite-utils' own record of applied migrations
_MIGRATIONS: list[tuple[str, Callable[[Any], None]]] = []


def migration(name: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register a migration under `name` (applied in registration order)."""

    def register(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        _MIGRATIONS.append((name, fn))
        return fn

    return register


def pending_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations not applied to this outbox yet (read-only, plain SQL)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
    ).fetchone()
    applied: set[str] = set()
    if exists:
        applied = {
            str(r[0])
            for r in conn.execute(
                f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ?", (MIGRATION_SET,)
            )
        }
    return [name for name, _ in _MIGRATIONS if name not in applied]


def apply_migrations(conn: sqlite3.Connection) -> None:
    """Apply the pending migrations with sqlite-utils (each in a transaction with its record)."""
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

    migrations = Migrations(MIGRATION_SET)
    for name, fn in _MIGRATIONS:
        migrations(name=name)(fn)
    migrations.apply(Database(conn))


PENDING, SENT, SUPERSEDED, REJECTED, DROPPED = literals()


def _execute(db: Any, *statements: str) -> None:
    for statement in statements:
        db.execute(statement)


@migration("0001_delivery_tables")
def _delivery_tables(db: Any) -> None:
    _execute(
        db,
        """CREATE TABLE mgh_meta (key TEXT PRIMARY KEY, value TEXT)""",
        """CREATE TABLE mgh_tasks (
            id INTEGER PRIMARY KEY,
            stream TEXT NOT NULL,
            task TEXT NOT NULL,
            due_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            imported INTEGER NOT NULL DEFAULT 0,
            last_state_row INTEGER,
            status TEXT,
            percent INTEGER,
            detail TEXT,
            update_time REAL,
            next_update_seconds INTEGER,
            sent_at REAL,
            last_attributes_row INTEGER,
            attributes_at REAL,
            mapped INTEGER,
            configuration_id TEXT,
            map_check_at REAL,
            map_checks INTEGER NOT NULL DEFAULT 0,
            unmapped_reported INTEGER NOT NULL DEFAULT 0,
            UNIQUE (stream, task)
        )""",
        "CREATE INDEX mgh_tasks_due ON mgh_tasks(due_at) WHERE due_at IS NOT NULL",
        "CREATE INDEX mgh_tasks_map ON mgh_tasks(map_check_at) WHERE map_check_at IS NOT NULL",
        """CREATE TABLE mgh_rows (
            id INTEGER PRIMARY KEY,
            task_id INTEGER NOT NULL REFERENCES mgh_tasks(id),
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            finished_at REAL,
            reason TEXT
        )""",
        f"CREATE INDEX mgh_rows_pending ON mgh_rows(task_id, id) WHERE state = {PENDING}",
        f"CREATE INDEX mgh_rows_rejected ON mgh_rows(id) WHERE state = {REJECTED}",
        "CREATE INDEX mgh_rows_finished ON mgh_rows(finished_at)"
        f" WHERE state IN ({SENT}, {SUPERSEDED})",
        """CREATE TABLE mgh_streams (stream TEXT PRIMARY KEY, created_at REAL NOT NULL)""",
        """CREATE TABLE mgh_artifacts (
            task_id INTEGER NOT NULL REFERENCES mgh_tasks(id),
            arn TEXT NOT NULL,
            associated_at REAL NOT NULL,
            PRIMARY KEY (task_id, arn)
        )""",
    )


# The string meta keys of 0.1.0 that the gate's record replaces, and their columns.
_OLD_META = {
    "blocked_code": "blocked_code",
    "blocked_reason": "blocked_reason",
    "blocked_since": "blocked_since",
    "blocked_recheck_at": "recheck_at",
    "home_region": "home_region",
    "brake_attempts": "brake_attempts",
    "brake_until": "brake_until",
    "last_success_at": "last_success_at",
}


@migration("0002_gate_lanes_leases")
def _gate_lanes_leases(db: Any) -> None:
    _execute(
        db,
        """CREATE TABLE mgh_gate (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            blocked_code TEXT,
            blocked_reason TEXT,
            blocked_since REAL,
            recheck_at REAL NOT NULL DEFAULT 0,
            home_region TEXT,
            region_attempts INTEGER NOT NULL DEFAULT 0,
            region_retry_at REAL NOT NULL DEFAULT 0,
            brake_attempts INTEGER NOT NULL DEFAULT 0,
            brake_until REAL NOT NULL DEFAULT 0,
            last_success_at REAL
        )""",
        "INSERT INTO mgh_gate(id) VALUES (1)",
        """CREATE TABLE mgh_lanes (
            task_id INTEGER NOT NULL REFERENCES mgh_tasks(id),
            kind TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            retry_at REAL,
            last_error TEXT,
            PRIMARY KEY (task_id, kind)
        )""",
        "ALTER TABLE mgh_tasks ADD COLUMN lease_token TEXT",
    )
    for key, column in _OLD_META.items():
        db.execute(
            f"UPDATE mgh_gate SET {column} = (SELECT value FROM mgh_meta WHERE key = ?)"
            " WHERE EXISTS (SELECT 1 FROM mgh_meta WHERE key = ?)",
            (key, key),
        )
        db.execute("DELETE FROM mgh_meta WHERE key = ?", (key,))
    # A task's retry count now lives in its lanes (one per kind); 0.1.0 kept one per task.
    db.execute("ALTER TABLE mgh_tasks DROP COLUMN attempts")


INTAKE_TRIGGER = "mgh_outbox_intake"
# Every INSERT into the outbox, whatever its id, is queued for intake in the writer's own
# transaction: intake never depends on ids growing (no AUTOINCREMENT, deleted rows, a dropped and
# re-created table, pruning that empties it).
INTAKE_TRIGGER_DDL = f"""
CREATE TRIGGER IF NOT EXISTS {INTAKE_TRIGGER} AFTER INSERT ON outbox
BEGIN
  INSERT INTO mgh_inbox(row_id) VALUES (new.id);
END
"""


@migration("0003_inbox")
def _inbox(db: Any) -> None:
    cursor = db.execute("SELECT value FROM mgh_meta WHERE key = 'cursor'").fetchone()
    _execute(
        db,
        "CREATE TABLE mgh_inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, row_id INTEGER NOT NULL)",
        INTAKE_TRIGGER_DDL,
    )
    db.execute(
        "INSERT INTO mgh_inbox(row_id) SELECT id FROM outbox WHERE id > ? ORDER BY id",
        (int(cursor[0]) if cursor else 0,),
    )
    db.execute("DELETE FROM mgh_meta WHERE key = 'cursor'")


@migration("0004_insertion_order")
def _insertion_order(db: Any) -> None:
    # "Newer" is insertion order, not id order: each row's place in it is the intake queue's
    # sequence (ids of earlier rows stand in for it; the queue continues above them).
    _execute(
        db,
        "ALTER TABLE mgh_rows ADD COLUMN seq INTEGER",
        "UPDATE mgh_rows SET seq = id",
        "ALTER TABLE mgh_tasks ADD COLUMN last_state_seq INTEGER",
        "ALTER TABLE mgh_tasks ADD COLUMN last_attributes_seq INTEGER",
        "UPDATE mgh_tasks SET last_state_seq = last_state_row,"
        " last_attributes_seq = last_attributes_row",
        "DROP INDEX mgh_rows_pending",
        f"CREATE INDEX mgh_rows_pending ON mgh_rows(task_id, seq) WHERE state = {PENDING}",
    )
    top = db.execute(
        "SELECT max(coalesce((SELECT max(id) FROM mgh_rows), 0),"
        " coalesce((SELECT max(id) FROM outbox), 0))"
    ).fetchone()[0]
    queued = db.execute("SELECT seq, row_id FROM mgh_inbox ORDER BY seq").fetchall()
    db.execute("DELETE FROM mgh_inbox")
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'mgh_inbox'")
    db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('mgh_inbox', ?)", (top,))
    db.conn.executemany("INSERT INTO mgh_inbox(row_id) VALUES (?)", [(r[1],) for r in queued])


@migration("0005_dropped_rows")
def _dropped_rows(db: Any) -> None:
    # Dead letters a person dropped are pruned like delivered rows: an index of their own,
    # so pruning never scans the table.
    _execute(
        db,
        f"CREATE INDEX mgh_rows_dropped ON mgh_rows(finished_at) WHERE state = {DROPPED}",
    )


@migration("0006_truth_to_the_hub")
def _truth_to_the_hub(db: Any) -> None:
    # The manual mappings the Hub has from us (like mgh_artifacts), the descriptions and the
    # attribute list as sent (what `verify` compares and a repair sends again), and the repair
    # schedule: when a task's Hub view is read next, and whether it must be sent again.
    _execute(
        db,
        """CREATE TABLE mgh_resources (
            task_id INTEGER NOT NULL REFERENCES mgh_tasks(id),
            configuration_id TEXT NOT NULL,
            description TEXT,
            associated_at REAL NOT NULL,
            PRIMARY KEY (task_id, configuration_id)
        )""",
        "ALTER TABLE mgh_artifacts ADD COLUMN description TEXT",
        "ALTER TABLE mgh_tasks ADD COLUMN attributes TEXT",
        "ALTER TABLE mgh_tasks ADD COLUMN verify_at REAL",
        "ALTER TABLE mgh_tasks ADD COLUMN resend INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX mgh_tasks_verify ON mgh_tasks(verify_at) WHERE verify_at IS NOT NULL",
        "UPDATE mgh_tasks SET verify_at = 0 WHERE imported = 1",
    )


@migration("0007_repair_scope")
def _repair_scope(db: Any) -> None:
    # `resend` says what a repair sends again: 0 nothing, 1 the newest state (the Hub is behind
    # us), 2 everything (the Hub lost the task). An older version marked only lost tasks.
    _execute(db, "UPDATE mgh_tasks SET resend = 2 WHERE resend <> 0")
    # what verify compares and a repair sends again, recovered from the rows still present

    def query(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in db.conn.execute(sql, params).fetchall()]

    recover_sent(query, "mgh_tasks", "mgh_rows", "outbox", "mgh_artifacts")


@migration("0008_judged_requests")
def _judged_requests(db: Any) -> None:
    # Delivery sends what intake judged (the request as JSON), never the outbox row again. Rows
    # an older version took in have none: the next claim of their task hands them back to intake
    # (under their place in the queue), which judges them as it judges new rows.
    _execute(db, "ALTER TABLE mgh_rows ADD COLUMN request TEXT")


@migration("0009_outbox_fate")
def _outbox_fate(db: Any) -> None:
    # what became of each row, for tools to SELECT (README: A row's fate)
    _execute(db, "DROP VIEW IF EXISTS outbox_fate", "CREATE VIEW outbox_fate AS " + fate_view(
        "outbox", "mgh_rows", "strftime('%Y-%m-%dT%H:%M:%fZ', r.finished_at, 'unixepoch')"))


@migration("0010_whole_api")
def _whole_api(db: Any) -> None:
    # the source resources the Hub has from us (like mgh_resources: what verify compares and a
    # repair restores); an application's states live in mgh_tasks under the APPLICATIONS
    # pseudo-stream, so they need no table of their own
    _execute(
        db,
        """CREATE TABLE mgh_sources (
            task_id INTEGER NOT NULL REFERENCES mgh_tasks(id),
            name TEXT NOT NULL,
            description TEXT,
            detail TEXT,
            associated_at REAL NOT NULL,
            PRIMARY KEY (task_id, name)
        )""",
    )
