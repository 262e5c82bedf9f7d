"""Behaviour that is the same on both engines, run against each: the real CLI and daemon over
HTTP to the emulator, with a real SQLite file or a real PostgreSQL database."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reporter.emulator import Emulator

from .engines import Engine
from .helpers import Cli, attrs, start_daemon, wait_for


def _states(engine: Engine, task: str, *percents: int, stream: str | None = None) -> None:
    for pct in percents:
        engine.insert(kind="task_state", migration_task_name=task, status="IN_PROGRESS",
                      progress_percent=pct, progress_update_stream=stream)


def test_drain_delivers_in_order_rejects_bad_rows_and_reports(
    engine: Engine, engine_cli: Cli, emulator: Emulator
):
    """A mixed backlog: every task ends at its last row, bad rows are dead letters with the
    field and rule, the views agree, exit 5 says rows were rejected."""
    assert engine_cli("init").returncode == 0
    assert engine_cli("init").returncode == 0  # idempotent
    for i in range(6):
        task, stream = f"vm-{i}", None if i % 2 else "ToolB"
        engine.insert(kind="resource_attributes", migration_task_name=task,
                      progress_update_stream=stream,
                      resource_attributes=attrs(("IPV4_ADDRESS", f"10.0.0.{i}")))
        _states(engine, task, 10, 50, 90, stream=stream)
        engine.insert(kind="task_state", migration_task_name=task, status="COMPLETED",
                      progress_percent=100, progress_update_stream=stream)
    engine.insert(kind="created_artifact", migration_task_name="vm-0",
                  progress_update_stream="ToolB",
                  artifact_name="arn:aws:ec2:us-east-1:123456789012:instance/i-0abc")
    bad = engine.insert(kind="task_state", migration_task_name="vm-9", status="IN_PROGRESS",
                        progress_percent=150)
    result = engine_cli("drain", "--timeout", "60")
    assert result.returncode == 5, result.stderr
    for i in range(6):
        record = emulator.state.task("ToolA" if i % 2 else "ToolB", f"vm-{i}")
        assert record.updates[-1]["Task"] == {"Status": "COMPLETED", "ProgressPercent": 100}
        assert len(record.updates) <= 4
        percents = [u["Task"].get("ProgressPercent") for u in record.updates]
        assert percents == sorted(percents)
        assert record.attributes == [{"Type": "IPV4_ADDRESS", "Value": f"10.0.0.{i}"}]
    assert list(emulator.state.task("ToolB", "vm-0").artifacts) == [
        "arn:aws:ec2:us-east-1:123456789012:instance/i-0abc"]
    letters = json.loads(engine_cli("dead-letters", "list", "--json").stdout)
    assert [d["id"] for d in letters] == [bad]
    assert "progress_percent" in letters[0]["reason"]
    status = json.loads(engine_cli("status", "--json").stdout)
    assert status["pending"] == 0 and status["dead_letters"] == 1
    assert status["delivered"] == 6 * 5 + 1
    tasks = {t["task"]: t for t in json.loads(engine_cli("tasks", "--json").stdout)}
    assert tasks["vm-0"]["status"] == "COMPLETED" and tasks["vm-0"]["artifacts"]
    assert engine_cli("drain", "--timeout", "10").returncode == 0  # nothing new rejected


def test_dead_letter_retry_after_the_cause_is_fixed(
    engine: Engine, engine_cli: Cli, emulator: Emulator
):
    """A row the Hub refused is a dead letter; retried once the Hub accepts, it is delivered."""
    assert engine_cli("init").returncode == 0
    emulator.state.faults.update(invalid={"NotifyMigrationTaskState"})
    row = engine.insert(kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert engine_cli("drain", "--timeout", "20").returncode == 5
    emulator.state.faults.update(invalid=set())
    assert engine_cli("dead-letters", "retry", str(row)).returncode == 0
    assert engine_cli("drain", "--timeout", "20").returncode == 0
    assert emulator.state.task("ToolA", "t1").updates[-1]["Task"]["Status"] == "IN_PROGRESS"


def test_daemon_publishes_under_faults_and_stops_gracefully(
    engine: Engine, engine_cli: Cli, engine_config: Callable[..., Path], emulator: Emulator,
    aws_env: dict[str, str],
):
    """Throttling and server errors: the daemon retries until every task is at its last row,
    in order; SIGTERM stops it with exit 0."""
    assert engine_cli("init").returncode == 0
    emulator.state.faults.update(throttle=0.2, server_error=0.1, retry_after=0)
    daemon = start_daemon(engine_config(), env=aws_env)
    try:
        for step in range(5):
            for t in range(8):
                _states(engine, f"t{t}", step * 20)
            time.sleep(0.1)

        def settled() -> bool:
            try:
                return all(
                    emulator.state.task("ToolA", f"t{t}").updates[-1]["Task"]["ProgressPercent"]
                    == 80 for t in range(8))
            except (KeyError, IndexError):
                return False

        wait_for(settled, timeout=60)
        for t in range(8):
            sent = [u["Task"]["ProgressPercent"]
                    for u in emulator.state.task("ToolA", f"t{t}").updates]
            assert sent == sorted(sent), sent
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0


def test_check_proves_the_outbox(engine: Engine, engine_cli: Cli, emulator: Emulator):
    """`check` opens the outbox (and on PostgreSQL proves privileges) before the Hub steps."""
    missing = engine_cli("check")
    assert missing.returncode == 1 and "init" in missing.stdout
    assert engine_cli("init").returncode == 0
    result = engine_cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    if engine.url:
        assert "privileges" in result.stdout and "INSERT into the outbox: postgres" in result.stdout


def test_notify_cli_writes_to_either_engine(engine: Engine, engine_cli: Cli, emulator: Emulator):
    """The shell writers insert into the configured outbox; bad input names the field."""
    assert engine_cli("init").returncode == 0
    ok = engine_cli("notify", "vm-1", "--status", "IN_PROGRESS", "--percent", "5")
    assert ok.returncode == 0, ok.stderr
    bad = engine_cli("notify", "vm-1", "--status", "IN_PROGRESS", "--percent", "500")
    assert bad.returncode != 0 and "percent" in bad.stderr.lower()
    assert engine_cli("drain", "--timeout", "20").returncode == 0
    assert emulator.state.task("ToolA", "vm-1").updates[-1]["Task"]["ProgressPercent"] == 5
    counted: list[Any] = engine.query("SELECT count(*) FROM outbox")
    assert counted[0][0] == 1


def test_drop_dead_letters_prune_and_drain_summary(
    engine: Engine, engine_cli: Cli, emulator: Emulator
):
    """On both engines: `dead-letters drop` by id and by age, `status` counts what was
    dropped, and the drain's JSON summary counts sent, superseded and rejected rows."""
    assert engine_cli("init").returncode == 0
    _states(engine, "ok", 10, 20, 30)
    bad = [engine.insert(kind="task_state", migration_task_name=f"bad{i}", status="NOPE")
           for i in range(3)]
    result = engine_cli("drain", "--json")
    assert result.returncode == 5, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["superseded"], summary["rejected"]) == (1, 2, 3)
    assert summary["rejected_at_intake"] == 3 and summary["pending"] == 0
    assert engine_cli("dead-letters", "drop", str(bad[0]), "--yes").returncode == 0
    assert "no dead letters to drop" in engine_cli(
        "dead-letters", "drop", "--older-than", "1d", "--yes").stdout
    status = json.loads(engine_cli("status", "--json").stdout)
    assert (status["dead_letters"], status["dropped"]) == (2, 1)
    time.sleep(1.1)
    assert "dropped 2" in engine_cli("dead-letters", "drop", "--older-than", "1s",
                                     "--yes").stdout
    status = json.loads(engine_cli("status", "--json").stdout)
    assert (status["dead_letters"], status["dropped"]) == (0, 3)
    assert json.loads(engine_cli("dead-letters", "list", "--json").stdout) == []
