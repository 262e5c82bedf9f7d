"""Wake-ups: a committed INSERT is published at once (inotify on the outbox's directory), not at
the next interval; the daemon's own commits do not wake it into work; coalescing survives a
tool that reports a thousand times a second; without inotify, `PRAGMA data_version` polling
takes over and says so once."""

from __future__ import annotations

import math
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from reporter.emulator import Emulator
from reporter.rows import STATE_SPACING_SECONDS
from reporter.stores.sqlite_wake import Waker

from .helpers import Cli, insert, log_events, pending, start_daemon, stop_daemon, wait_for

# Far longer than any wait below: a row published within it was not published by the schedule.
SLOW = {"publish": {"interval_seconds": 60.0}}


def _delivered(emulator: Emulator, task: str) -> list[dict[str, Any]]:
    tasks = emulator.state.updates().get("ToolA", {})
    return list(tasks.get(task, []))


def _sent(outbox: Path, row_id: int) -> bool:
    conn = sqlite3.connect(outbox, timeout=5)
    try:
        row = conn.execute("SELECT state FROM mgh_rows WHERE id = ?", (row_id,)).fetchone()
    finally:
        conn.close()
    return row is not None and row[0] == "sent"


@pytest.fixture
def daemon_log(tmp_path: Path) -> Path:
    return tmp_path / "daemon.log"


def _start(config: Path, log: Path) -> Any:
    err = log.open("w")
    proc = start_daemon(config, stderr=err)
    wait_for(lambda: any(e["event"] == "started" for e in log_events(log)))
    return proc, err


def _stop(proc: Any, err: Any) -> None:
    stop_daemon(proc, timeout=15)
    err.close()


def test_a_committed_row_is_published_at_once_not_at_the_next_interval(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path, daemon_log: Path
):
    """With a 60 s interval, rows written after start-up are at the Hub within seconds, each
    time; the log says which wake-up mechanism is in use."""
    config = make_config(**SLOW)
    assert cli("init", config=config).returncode == 0
    proc, err = _start(config, daemon_log)
    try:
        wait_for(lambda: emulator.state.op_count("GetHomeRegion") >= 1)
        time.sleep(0.5)  # the start-up pass is over: what follows needs a wake-up
        for n in range(3):
            row = insert(outbox_path, kind="task_state", migration_task_name=f"w{n}",
                         status="IN_PROGRESS", progress_percent=n)
            wait_for(lambda row=row: _sent(outbox_path, row), timeout=5)
        assert [e.get("mode") for e in log_events(daemon_log) if e["event"] == "wakeups"] == [
            "inotify"]
    finally:
        _stop(proc, err)


def test_own_commits_and_checkpoints_do_not_keep_it_busy(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path, daemon_log: Path
):
    """After a delivery the daemon's own commits touch the WAL; the wake-ups they cause find
    nothing new (data_version unchanged) and no further pass or Hub call follows."""
    config = make_config(**SLOW, log={"level": "debug", "format": "json"})
    assert cli("init", config=config).returncode == 0
    proc, err = _start(config, daemon_log)
    try:
        row = insert(outbox_path, kind="task_state", migration_task_name="once",
                     status="IN_PROGRESS", progress_percent=5)
        wait_for(lambda: _sent(outbox_path, row), timeout=5)
        time.sleep(0.5)
        calls = len(emulator.state.calls)
        passes = sum(e["event"] == "pass" for e in log_events(daemon_log))
        time.sleep(2.0)
        assert len(emulator.state.calls) == calls
        assert sum(e["event"] == "pass" for e in log_events(daemon_log)) == passes
    finally:
        _stop(proc, err)


def test_a_thousand_rows_a_second_for_one_task_cost_a_handful_of_calls(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path, daemon_log: Path
):
    """1,000 INSERTs (one transaction each) for one task over about a second end in at most
    1 + span / STATE_SPACING_SECONDS + 1 NotifyMigrationTaskState calls (5 for one second), and
    the Hub ends at the last row."""
    config = make_config(**SLOW)
    assert cli("init", config=config).returncode == 0
    proc, err = _start(config, daemon_log)
    try:
        conn = sqlite3.connect(outbox_path, timeout=5, isolation_level=None)
        conn.execute("PRAGMA synchronous = NORMAL")
        started = time.monotonic()
        for n in range(1000):
            time.sleep(max(0.0, started + n / 1000 - time.monotonic()))
            conn.execute(
                "INSERT INTO outbox(kind, migration_task_name, status, progress_percent,"
                " status_detail) VALUES ('task_state', 'busy', 'IN_PROGRESS', ?, ?)",
                (n // 10, f"row {n}"),
            )
        span = time.monotonic() - started
        conn.close()
        wait_for(lambda: pending(outbox_path) == 0, timeout=10)
        updates = _delivered(emulator, "busy")
        assert updates[-1]["Task"]["StatusDetail"] == "row 999"
        bound = 1 + math.ceil(span / STATE_SPACING_SECONDS)
        assert len(updates) <= bound, (len(updates), span)
        if span <= 1.0:
            assert len(updates) <= 5
        details = [int(u["Task"]["StatusDetail"].split()[1]) for u in updates]
        assert details == sorted(details)
    finally:
        _stop(proc, err)


def test_rows_are_still_noticed_after_the_outbox_is_replaced(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path, daemon_log: Path,
    tmp_path: Path,
):
    """The watch is on the directory, re-armed when the outbox is reopened: after the file is
    replaced by a fresh one (init), a new row is published without waiting for the interval."""
    config = make_config(**SLOW, outbox={"path": str(outbox_path)})
    assert cli("init", config=config).returncode == 0
    proc, err = _start(config, daemon_log)
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{outbox_path}{suffix}").unlink(missing_ok=True)
        assert cli("init", config=config).returncode == 0
        wait_for(lambda: any(e["event"] == "outbox_reopened" for e in log_events(daemon_log)),
                 timeout=20)
        row = insert(outbox_path, kind="task_state", migration_task_name="after",
                     status="COMPLETED")
        wait_for(lambda: _sent(outbox_path, row), timeout=5)
    finally:
        _stop(proc, err)


# -- the Waker itself -------------------------------------------------------------------------
def _outbox(tmp_path: Path) -> Path:
    path = tmp_path / "box.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    return path


def _write(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()


def test_waker_fires_for_the_outbox_only(tmp_path: Path):
    """Writes to the outbox's files wake; another file in the same directory does not."""
    path = _outbox(tmp_path)
    fired = threading.Event()
    waker = Waker(path, fired.set)
    waker.start()
    try:
        wait_for(lambda: waker.mode == "inotify")
        (tmp_path / "other.txt").write_text("noise")
        (tmp_path / "box.db.live.json").write_text("{}")
        assert not fired.wait(0.5)
        _write(path)
        assert fired.wait(2.0)
    finally:
        waker.close()


def test_waker_falls_back_to_data_version_polling(tmp_path: Path, monkeypatch: Any):
    """Without inotify the waker polls `PRAGMA data_version`, says so once, and still wakes on
    another connection's commit."""
    monkeypatch.setitem(sys.modules, "inotify_simple", None)  # as on a system without it
    path = _outbox(tmp_path)
    fired = threading.Event()
    waker = Waker(path, fired.set, poll=0.05)
    with structlog.testing.capture_logs() as logs:
        waker.start()
        try:
            wait_for(lambda: waker.mode == "poll")
            time.sleep(0.2)
            assert not fired.is_set()
            _write(path)
            assert fired.wait(2.0)
        finally:
            waker.close()
    polling = [e for e in logs if e["event"] == "wakeups_polling"]
    assert len(polling) == 1 and "inotify" in polling[0]["reason"]
