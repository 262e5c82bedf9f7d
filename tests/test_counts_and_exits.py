"""Truthful counts and exits: values the Hub cannot hold, `status` that never crashes and
never counts an unsent lane as delivered, `drain`'s exit 5 and its interruption, leases handed
back on a graceful stop."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reporter.emulator import Emulator

from .engines import Engine
from .helpers import ROOT, Cli, child_env, fill, insert, start_daemon, status_json, wait_for


def test_a_time_the_hub_cannot_hold_is_rejected_before_any_call(
    cli: Cli, emulator: Emulator, outbox_path: Path
):
    """update_date_time in year 9999 and NextUpdateSeconds of 10**18 are dead-lettered with the
    rule; the task's valid rows still reach the Hub and `status`/`tasks` work."""
    assert cli("init").returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
           progress_percent=10)
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
           update_date_time="9999-12-31T23:00:00Z")
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
           next_update_seconds=10**18)
    assert cli("drain").returncode == 5
    reasons = [d["reason"] for d in json.loads(cli("dead-letters", "list", "--json").stdout)]
    assert any("update_date_time: must not be more than 24 h in the future" in r for r in reasons)
    assert any("next_update_seconds: must be 0..2147483647" in r for r in reasons)
    assert emulator.state.task("ToolA", "t1").updates[-1]["Task"]["ProgressPercent"] == 10
    assert cli("tasks", "--json").returncode == 0


def test_status_and_tasks_survive_any_stored_value(cli: Cli, emulator: Emulator,
                                                   outbox_path: Path):
    """A time no calendar holds, stored by an older version, is shown, never a crash."""
    assert cli("init").returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert cli("drain").returncode == 0
    conn = sqlite3.connect(outbox_path)
    with conn:
        conn.execute("UPDATE mgh_tasks SET update_time = 253402297200.0,"
                     " next_update_seconds = 1000000000000000000")
    conn.close()
    tasks = cli("tasks", "--json")
    assert tasks.returncode == 0, tasks.stderr
    assert json.loads(tasks.stdout)[0]["update_date_time"].startswith("9999-12-31")
    assert cli("tasks").returncode == 0
    assert status_json(cli)["tasks"] == 1
    assert cli("status").returncode == 0


def test_status_counts_a_row_overtaken_by_an_unsent_row_as_pending(
    cli: Cli, emulator: Emulator, outbox_path: Path
):
    """A row superseded by a newer row that has not reached the Hub is not 'delivered'."""
    assert cli("init").returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert cli("drain").returncode == 0
    emulator.state.home_region = None  # delivery blocked: rows are taken in, none sent
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="COMPLETED")
    assert cli("drain").returncode == 4
    report = status_json(cli, code=4)
    assert (report["pending"], report["delivered"], report["sent"]) == (2, 1, 1)
    emulator.state.home_region = "us-west-2"
    assert cli("drain").returncode == 0
    report = status_json(cli)
    assert (report["pending"], report["delivered"], report["superseded"]) == (0, 3, 1)


def test_drain_exit_5_counts_only_its_own_rejections(cli: Cli, emulator: Emulator,
                                                     outbox_path: Path):
    """An old dead letter does not turn a later clean drain into exit 5; `status` still shows
    it, and a new rejection does give 5."""
    assert cli("init").returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="BOGUS")
    assert cli("drain").returncode == 5
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert cli("drain").returncode == 0
    assert status_json(cli)["dead_letters"] == 1
    insert(outbox_path, kind="task_state", migration_task_name="t2", status="BOGUS")
    assert cli("drain").returncode == 5


def _drain(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "reporter", "--config", str(config), "drain",
                             "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env(), cwd=ROOT)


def test_an_interrupted_drain_exits_3_and_says_so(cli: Cli, emulator: Emulator,
                                                  config_path: Path, outbox_path: Path):
    """SIGINT during a drain (an outage keeps it retrying) exits 3 naming the interruption,
    not the timeout."""
    assert cli("init").returncode == 0
    fill(outbox_path, 3, 1)
    emulator.state.faults.update(fail_operations={"NotifyMigrationTaskState"})
    proc = _drain(config_path)
    try:
        wait_for(lambda: emulator.state.op_count("NotifyMigrationTaskState") >= 3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3
    assert "interrupted: 3 rows still pending" in err and "at the timeout" not in err


def test_a_graceful_stop_hands_back_what_it_did_not_start(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path
):
    """After SIGTERM of `run` mid-backlog, tasks it never started are due at once: a drain right
    after the stop finishes long before the 60 s lease would have run out."""
    config = make_config("lease.toml", outbox={"lease_seconds": 60.0},
                         publish={"concurrency": 2, "max_concurrency": 2})
    assert cli("init", config=config).returncode == 0
    emulator.state.faults.update(latency=0.2)
    fill(outbox_path, 40, 1)
    proc = start_daemon(config)
    try:
        wait_for(lambda: emulator.state.op_count("NotifyMigrationTaskState") >= 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    emulator.state.faults.update(latency=0)
    started = time.monotonic()
    result = cli("drain", "--timeout", "20", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - started < 15
    assert all(emulator.state.task("ToolA", f"t{t}").updates for t in range(40))


def test_a_tool_learns_what_became_of_each_row(engine: Engine, engine_cli: Cli,
                                               emulator: Emulator):
    """On both engines: `rows ID... --json` and the `outbox_fate` view a tool may SELECT say
    of each row pending, sent, superseded or dead (with the reason) and when; a row never
    written is unknown to `rows` and absent from the view."""
    assert engine_cli("init").returncode == 0
    old = engine.insert(kind="task_state", migration_task_name="t", status="IN_PROGRESS",
                        progress_percent=10)
    new = engine.insert(kind="task_state", migration_task_name="t", status="COMPLETED",
                        progress_percent=100)
    bad = engine.insert(kind="task_state", migration_task_name="u", status="BOGUS")
    assert engine_cli("drain", "--timeout", "60").returncode == 5
    waiting = engine.insert(kind="task_state", migration_task_name="v", status="IN_PROGRESS")
    result = engine_cli("rows", str(old), str(new), str(bad), str(waiting), "999999", "--json")
    assert result.returncode == 0, result.stderr
    fates = {f["id"]: f for f in json.loads(result.stdout)}
    assert [f["id"] for f in json.loads(result.stdout)] == [old, new, bad, waiting, 999999]
    assert {i: f["state"] for i, f in fates.items()} == {
        old: "superseded", new: "sent", bad: "dead", waiting: "pending", 999999: "unknown"}
    assert fates[bad]["reason"].startswith("status") and fates[bad]["task"] == "u"
    assert fates[new]["at"].endswith("Z") and fates[new]["stream"] == "ToolA"
    assert fates[waiting]["at"] is None and fates[999999]["reason"] is None
    human = engine_cli("rows", str(bad), str(new)).stdout.splitlines()
    assert human[0].startswith(f"row {bad}: dead at ") and "status" in human[0]
    assert human[1].startswith(f"row {new}: sent at ") and "(task t, stream ToolA)" in human[1]
    view = {r[0]: r[1:] for r in engine.query("SELECT id, state, reason, at FROM outbox_fate")}
    assert set(view) == {old, new, bad, waiting}
    assert view[new][0] == "sent" and view[new][2].startswith(fates[new]["at"][:19])
    assert view[old][0] == "superseded" and view[bad][0] == "dead" and view[waiting][0] == "pending"
    assert view[bad][1] == fates[bad]["reason"]
    dropped = engine_cli("dead-letters", "drop", str(bad), "--yes")
    assert dropped.returncode == 0, dropped.stderr
    (gone,) = json.loads(engine_cli("rows", str(bad), "--json").stdout)
    assert gone["state"] == "dead" and gone["reason"].startswith("dropped by a person")
    assert engine_cli("rows").returncode == 2  # IDS are required


def test_tasks_says_rows_wait_to_be_taken_in_rather_than_no_tasks(cli: Cli, outbox_path: Path):
    """Rows written while no daemon runs: `status` counts them pending, and `tasks` says they
    wait to be taken in, not just "no tasks yet"."""
    assert cli("init").returncode == 0
    for i in range(5):
        insert(outbox_path, kind="task_state", migration_task_name=f"t{i}", status="IN_PROGRESS")
    report = json.loads(cli("status", "--json").stdout)
    assert report["pending"] == 5
    shown = cli("tasks")
    assert shown.returncode == 0
    assert shown.stdout.startswith("no tasks yet; 5 rows are waiting to be taken in"), shown.stdout


def test_rows_an_older_version_took_in_are_delivered_after_an_upgrade(
        engine: Engine, engine_cli: Cli, emulator: Emulator):
    """On both engines: pending rows taken in by a version that stored no request (as after
    a package upgrade with rows waiting) go back to intake, in their place, and `drain`
    delivers them in order: the task's newest state is the Hub's."""
    assert engine_cli("init").returncode == 0
    for percent in (10, 20, 30):
        engine.insert(kind="task_state", migration_task_name="t", status="IN_PROGRESS",
                      progress_percent=percent)
    engine.insert(kind="task_state", migration_task_name="u", status="COMPLETED",
                  progress_percent=100)
    emulator.state.faults.update(outage=True)  # taken in, never sent
    assert engine_cli("drain", "--timeout", "3").returncode == 3
    engine.execute("UPDATE mgh_reporter.rows SET request = NULL")  # the older version's rows
    emulator.state.faults.update(outage=False)
    result = engine_cli("drain", "--timeout", "60")
    assert result.returncode == 0, result.stderr[-2000:]
    assert emulator.state.task("ToolA", "t").updates[-1]["Task"]["ProgressPercent"] == 30
    assert emulator.state.task("ToolA", "u").updates[-1]["Task"]["Status"] == "COMPLETED"
    assert json.loads(engine_cli("status", "--json").stdout)["pending"] == 0
