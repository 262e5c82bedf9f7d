"""Intake never depends on row ids only growing: a host table without AUTOINCREMENT, rows the
tool deleted, a table dropped and re-created, pruning that empties the table."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from reporter.emulator import Emulator
from reporter.stores.sqlite import SqliteStore
from reporter.stores.sqlite_schema import OUTBOX_DDL

from .helpers import CONTRACT_DDL, Cli, insert

PLAIN_DDL = CONTRACT_DDL.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER PRIMARY KEY")


def _create(path: Path, ddl: str) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(ddl)
    conn.close()


def _last(emulator: Emulator, task: str) -> str:
    return str(emulator.state.task("ToolA", task).updates[-1]["Task"]["StatusDetail"])


def _prune_all(path: Path) -> int:
    store = SqliteStore.open(path)
    try:
        return store.prune(before=time.time() + 1)
    finally:
        store.close()


def test_a_table_without_autoincrement_emptied_by_pruning(
    cli: Cli, emulator: Emulator, outbox_path: Path
):
    """Pruning empties a plain INTEGER PRIMARY KEY table, so the next row reuses id 1: it is
    still taken in and delivered (the Hub shows the new state, drain does not lie)."""
    _create(outbox_path, PLAIN_DDL)
    assert cli("init").returncode == 0
    for detail in ("zeroth", "first"):  # the newest state sent was row 2
        insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
               status_detail=detail)
        assert cli("drain").returncode == 0
    assert _prune_all(outbox_path) == 2
    rid = insert(outbox_path, kind="task_state", migration_task_name="t1", status="COMPLETED",
                 status_detail="second")
    assert rid == 1
    assert cli("drain").returncode == 0
    assert _last(emulator, "t1") == "second"
    report = json.loads(cli("status", "--json").stdout)
    assert report["pending"] == 0 and report["dead_letters"] == 0


def test_an_id_freed_by_the_tool_is_reused(cli: Cli, emulator: Emulator, outbox_path: Path):
    """The tool deletes its newest row before intake; the next row gets the same id and is
    delivered, and the deleted row is simply gone."""
    _create(outbox_path, PLAIN_DDL)
    assert cli("init").returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
           status_detail="kept")
    assert cli("drain").returncode == 0
    gone = insert(outbox_path, kind="task_state", migration_task_name="t2", status="IN_PROGRESS",
                  status_detail="deleted")
    conn = sqlite3.connect(outbox_path)
    with conn:
        conn.execute("DELETE FROM outbox WHERE id = ?", (gone,))
    conn.close()
    again = insert(outbox_path, kind="task_state", migration_task_name="t3",
                   status="IN_PROGRESS", status_detail="reused")
    assert again == gone
    assert cli("drain").returncode == 0
    assert _last(emulator, "t3") == "reused"
    assert "t2" not in emulator.state.streams.get("ToolA", {})


def test_a_delivered_id_reused_after_the_tool_deleted_it(
    cli: Cli, emulator: Emulator, outbox_path: Path
):
    """A delivered row deleted by the tool and its id reused by a new row: the new row replaces
    what was remembered under that id and is delivered."""
    _create(outbox_path, PLAIN_DDL)
    assert cli("init").returncode == 0
    first = insert(outbox_path, kind="task_state", migration_task_name="t1",
                   status="IN_PROGRESS", status_detail="one")
    assert cli("drain").returncode == 0
    conn = sqlite3.connect(outbox_path)
    with conn:
        conn.execute("DELETE FROM outbox")
    conn.close()
    assert insert(outbox_path, kind="task_state", migration_task_name="t1", status="COMPLETED",
                  status_detail="two") == first
    assert cli("drain").returncode == 0
    assert _last(emulator, "t1") == "two"


def test_a_table_dropped_and_recreated(cli: Cli, emulator: Emulator, outbox_path: Path):
    """DROP TABLE outbox and CREATE it again (ids restart at 1): the daemon restores its intake
    trigger and takes every row of the new table in."""
    assert cli("init").returncode == 0
    for detail in ("a", "b", "c"):
        insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
               status_detail=detail)
    assert cli("drain").returncode == 0
    conn = sqlite3.connect(outbox_path)
    conn.execute("DROP TABLE outbox")
    conn.executescript(OUTBOX_DDL)  # the contract's table with the artifact columns
    conn.execute("INSERT INTO outbox(kind, migration_task_name, status, status_detail)"
                 " VALUES ('task_state', 't1', 'COMPLETED', 'after the re-create')")
    conn.commit()
    conn.close()
    result = cli("drain")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "intake_trigger_restored" in result.stderr
    assert _last(emulator, "t1") == "after the re-create"
    insert(outbox_path, kind="task_state", migration_task_name="t9", status="IN_PROGRESS",
           status_detail="later")
    assert cli("drain").returncode == 0
    assert _last(emulator, "t9") == "later"
