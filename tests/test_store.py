"""The store: bad files at the door, the hot path's indexes, pruning, checkpoints."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from reporter import config as config_mod
from reporter.delivery.relay import Relay
from reporter.emulator import Emulator
from reporter.hub.client import Hub
from reporter.outbox import BUSY_RETRIES, Outbox
from reporter.stores.contract import StoreError
from reporter.stores.sqlite import SqliteStore

from .helpers import Cli, take_in


def test_missing_corrupt_foreign_and_incomplete_files(tmp_path: Path):
    """Each unusable file is refused with a clear reason."""
    with pytest.raises(StoreError, match="no outbox database here"):
        SqliteStore.open(tmp_path / "none.db")
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match=r"cannot open as an SQLite database|not a database"):
        SqliteStore.open(tmp_path / "junk.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE customers (id INTEGER)").connection.commit()
    with pytest.raises(StoreError, match="not an mgh-reporter outbox"):
        SqliteStore.open(other)
    partial = tmp_path / "partial.db"
    conn = sqlite3.connect(partial)
    conn.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, kind TEXT)")
    conn.commit()
    with pytest.raises(StoreError, match="lacks columns migration_task_name"):
        SqliteStore.create(partial)


def test_cli_reports_bad_files_without_traceback(cli: Cli, outbox_path: Path):
    """`drain`/`status` on a corrupt or missing outbox: one line, exit 1, no traceback."""
    result = cli("status")
    assert result.returncode == 1 and f"no outbox at {outbox_path}: run `mgh-reporter" in (
        result.stderr
    ) and result.stderr.rstrip().endswith(" init`")
    outbox_path.write_bytes(b"garbage" * 1000)
    for command in ("status", "drain", "run", "init"):
        result = cli(command)
        assert result.returncode == 1, command
        assert "Traceback" not in result.stderr and str(outbox_path) in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_file_is_refused(tmp_path: Path):
    """A read-only outbox is refused by writers at open."""
    path = tmp_path / "o.db"
    SqliteStore.create(path).close()
    path.chmod(0o444)
    with pytest.raises(StoreError):
        SqliteStore.open(path)


def test_read_only_database_refused_even_as_root(tmp_path: Path):
    """Opening through a read-only mount (immutable URI here) cannot write: clear error."""
    path = tmp_path / "o.db"
    SqliteStore.create(path).close()
    store = SqliteStore.open(path)
    _insert(store, kind="task_state", migration_task_name="t", status="IN_PROGRESS")
    store.conn.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="cannot ingest rows"):
        take_in(store, 10)


def test_disk_full_is_a_store_error(tmp_path: Path):
    """SQLITE_FULL surfaces as StoreError (the daemon logs it and retries), not a crash."""
    path = tmp_path / "o.db"
    store = SqliteStore.create(path)
    page_count = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {page_count}")
    with pytest.raises(StoreError, match="full"):
        for i in range(2000):
            store.mark_stream_created("s" * 2000 + str(i))


LIST = json.dumps([1, 2, 3])
# The hot path's statements, by name as the engine runs them, and the index each must use.
HOT_PATH = [
    ("next_wakeup", {}, "mgh_tasks_due"),
    ("next_wakeup", {}, "mgh_tasks_map"),
    ("claim", {"now": 1.0, "lease": 60.0, "token": "t", "limit": 10}, "mgh_tasks_due"),
    ("backlog", {}, "mgh_rows_pending"),
    ("backlog", {}, "mgh_rows_rejected"),
    ("pending_rows", {"ids": LIST}, "mgh_rows_pending"),
    ("supersede", {"now": 1.0, "rid": "5", "tid": 1, "kind": "task_state", "seq": 5},
     "mgh_rows_pending"),
    ("due_mapping_checks", {"now": 1.0, "limit": 10}, "mgh_tasks_map"),
    ("prunable", {"before": 1.0, "chunk": 10}, "mgh_rows_finished"),
    ("prunable", {"before": 1.0, "chunk": 10}, "mgh_rows_dropped"),
    ("finished", {"since": 1.0}, "mgh_rows_finished"),
    ("finished_rejected", {"since": 1.0}, "mgh_rows_rejected"),
]


def _plan(store: SqliteStore, sql: str, args: object = ()) -> list[str]:
    return [r["detail"] for r in store.conn.execute("EXPLAIN QUERY PLAN " + sql, args)]


def _insert(store: SqliteStore, **values: object) -> int:
    cur = store.conn.execute(f"INSERT INTO outbox ({', '.join(values)})"
                             f" VALUES ({', '.join('?' * len(values))})", list(values.values()))
    return int(cur.lastrowid or 0)


@pytest.mark.parametrize(("name", "args", "index"), HOT_PATH)
def test_hot_path_queries_use_indexes(tmp_path: Path, name: str, args: dict[str, object],
                                      index: str):
    """Every hot-path statement uses an index (a scan only of a small partial index or of a
    bound list), never a table scan, so its cost follows the backlog, not history."""
    store = SqliteStore.create(tmp_path / "o.db")
    lines = _plan(store, store.sql(name), args)
    assert index in " | ".join(lines), lines
    assert all("USING" in line or _list_scan(line) for line in lines
               if line.startswith("SCAN")), lines
    inbox = _plan(store, "SELECT i.seq, i.row_id FROM mgh_inbox i LEFT JOIN outbox o"
                  " ON o.id = i.row_id WHERE i.seq > 0 ORDER BY i.seq LIMIT 10")
    assert "INTEGER PRIMARY KEY" in " | ".join(inbox), inbox


def test_prune_deletes_only_delivered_rows_past_retention(tmp_path: Path):
    """Delivered rows older than retention go (outbox too); pending and rejected stay."""
    store = SqliteStore.create(tmp_path / "o.db")
    ids = [_insert(store, kind="task_state", migration_task_name=f"t{i}", status="IN_PROGRESS")
           for i in range(4)]
    seen, _ = take_in(store, 10, rejected={ids[3]: "bad"})
    assert [r.id for r in seen] == ids
    store.conn.execute("UPDATE mgh_rows SET state='sent', finished_at=100 WHERE id IN (?, ?)",
                       (ids[0], ids[1]))
    store.conn.execute("UPDATE mgh_rows SET finished_at=200 WHERE id = ?", (ids[1],))
    assert store.prune(before=150) == 1
    left = [r[0] for r in store.conn.execute("SELECT id FROM outbox ORDER BY id")]
    assert left == ids[1:]
    # A dropped dead letter goes too, once past retention; a kept one stays.
    assert store.drop([ids[3]], None) == [ids[3]]
    assert store.counts().dropped == 1 and store.counts().dead_letters == 0
    assert store.prune(before=store.clock() - 60) == 1  # ids[1] (sent at 200), not the dropped
    assert store.prune(before=store.clock() + 1) == 1  # the dropped one, once past it
    left = [r[0] for r in store.conn.execute("SELECT id FROM outbox ORDER BY id")]
    assert left == [ids[2]]
    store.checkpoint("TRUNCATE")
    assert os.path.getsize(str(tmp_path / "o.db") + "-wal") == 0


def test_python_writer_retries_when_the_lock_outlasts_its_busy_timeout(cli: Cli, outbox_path: Path):
    """Outbox() tries again when another writer holds the lock past one busy timeout, and
    reports a clear error (nothing half-written) when it is held past every try."""

    assert cli("init").returncode == 0
    holder = sqlite3.connect(outbox_path, isolation_level=None, check_same_thread=False)
    writer = Outbox(outbox_path, busy_timeout_ms=200)
    try:
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
        release.start()
        assert writer.task_state("t1", "IN_PROGRESS") > 0
        release.join()
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreError, match="database is locked") as caught:
            writer.task_state("t2", "IN_PROGRESS")
        assert caught.value.busy
        assert time.monotonic() - started >= 0.2 * (BUSY_RETRIES + 1) - 0.05
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    names = [r[0] for r in sqlite3.connect(outbox_path).execute(
        "SELECT migration_task_name FROM outbox")]
    assert names == ["t1"]


def _queue_scan(line: str) -> bool:
    """A scan of the intake queue is fine (it holds only rows not yet taken in), and so is the
    schema's (the trigger check after a schema change), the streams' (one row per stream), and a
    bound list's."""
    return line in ("SCAN i", "SCAN mgh_inbox", "SCAN sqlite_master", "SCAN mgh_streams") or (
        _list_scan(line))


def _list_scan(line: str) -> bool:
    """json_each over a bound JSON list (SQLite's `= ANY`), or a SELECT of scalar subqueries."""
    return line.startswith("SCAN json_each VIRTUAL TABLE") or line in (
        "SCAN CONSTANT ROW", "SCAN delivered", "SCAN dropped")  # and the subqueries of prune


def test_every_statement_of_real_passes_is_an_index_search(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path
):
    """Trace every SQL statement the relay and the daemon's refresh run (busy passes, then idle
    ones, over a history of delivered and rejected rows) and EXPLAIN each: none may scan a
    table, so a pass costs what is due, not what was ever delivered."""
    path = tmp_path / "o.db"
    SqliteStore.create(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT INTO outbox(kind, migration_task_name, status) VALUES"
                         " ('task_state', ?, 'IN_PROGRESS')", [(f"t{i % 150}",) for i in range(300)])
        conn.execute("INSERT INTO outbox(kind, migration_task_name, resource_attributes) VALUES"
                     " ('resource_attributes', 't1', '[{\"Type\": \"FQDN\", \"Value\": \"a.b\"}]')")
        conn.execute("INSERT INTO outbox(kind, migration_task_name, artifact_name) VALUES"
                     " ('created_artifact', 't2', 'arn:aws:ec2:us-west-2:123456789012:instance/i-1')")
        conn.execute("INSERT INTO outbox(kind, migration_task_name, status) VALUES"
                     " ('task_state', 'bad', 'NOPE')")
    conn.close()
    cfg = config_mod.parse({"hub": {"progress_update_stream": "S"}, "outbox": {"path": str(path)},
                            "mapping": {"check_after_seconds": 0}})
    store = SqliteStore.open(path)
    relay = Relay(store, Hub(cfg.aws), cfg)
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    try:
        for _ in range(6):  # busy passes, mapping checks, then idle ones
            if not relay.quiet():
                relay.run_once()
            store.backlog()
        store.conn.set_trace_callback(None)
        assert emulator.state.op_count("NotifyMigrationTaskState") == 150
        shapes = {re.sub(r"'[^']*'|\b\d+(\.\d+)?\b", "?", s): s for s in seen
                  if s.split()[0].upper() in ("SELECT", "UPDATE", "DELETE", "INSERT")}
        assert len(shapes) >= 10
        for shape, statement in shapes.items():
            plan = _plan(store, statement)
            assert not [line for line in plan if line.startswith("SCAN") and "USING" not in line
                        and not _queue_scan(line)], (shape, plan)
    finally:
        relay.close()
        store.close()
