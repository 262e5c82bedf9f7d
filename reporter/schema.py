"""The outbox DDL of the contract and the daemon's own tables, as sqlite-utils migrations."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

__all__ = ["OUTBOX_COLUMNS", "OUTBOX_DDL", "REQUIRED_COLUMNS", "migrations"]

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
  artifact_description   TEXT
)
"""

REQUIRED_COLUMNS = (
    "id",
    "kind",
    "migration_task_name",
    "progress_update_stream",
    "status",
    "status_detail",
    "progress_percent",
    "next_update_seconds",
    "update_date_time",
    "resource_attributes",
    "created_at",
)
ARTIFACT_COLUMNS = ("artifact_name", "artifact_description")
OUTBOX_COLUMNS = REQUIRED_COLUMNS + ARTIFACT_COLUMNS

migrations = Migrations("mgh-reporter")


def _execute(db: Database, *statements: str) -> None:
    for statement in statements:
        db.execute(statement)


@migrations(name="0001_delivery_tables")
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
        "CREATE INDEX mgh_rows_pending ON mgh_rows(task_id, id) WHERE state = 'pending'",
        "CREATE INDEX mgh_rows_rejected ON mgh_rows(id) WHERE state = 'rejected'",
        "CREATE INDEX mgh_rows_finished ON mgh_rows(finished_at)"
        " WHERE state IN ('sent', 'superseded')",
        """CREATE TABLE mgh_streams (stream TEXT PRIMARY KEY, created_at REAL NOT NULL)""",
        """CREATE TABLE mgh_artifacts (
            task_id INTEGER NOT NULL REFERENCES mgh_tasks(id),
            arn TEXT NOT NULL,
            associated_at REAL NOT NULL,
            PRIMARY KEY (task_id, arn)
        )""",
    )
