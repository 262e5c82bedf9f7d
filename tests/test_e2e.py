"""End to end: the real CLI against the emulator over HTTP, with real SQLite files."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reporter.config import AwsConfig
from reporter.emulator import Emulator
from reporter.hub.client import Hub, HubError
from reporter.hub.errors import Outcome
from reporter.outbox import Outbox

from .helpers import CONTRACT_DDL, ROOT, Cli, child_env, insert, status_json


def test_drain_delivers_mixed_backlog(cli: Cli, emulator: Emulator, outbox_path: Path):
    """Rows of both kinds, many tasks, two streams: each task ends at its last row, with defaults."""
    assert cli("init").returncode == 0
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for i in range(12):
        stream = None if i % 2 else "ToolB"
        task = f"vm-{i:02d}"
        insert(outbox_path, kind="resource_attributes", migration_task_name=task,
               progress_update_stream=stream,
               resource_attributes=json.dumps([{"Type": "IPV4_ADDRESS", "Value": f"10.1.0.{i}"}]))
        for pct in (10, 50, 90):
            insert(outbox_path, kind="task_state", migration_task_name=task,
                   progress_update_stream=stream, status="IN_PROGRESS", progress_percent=pct,
                   status_detail=f"at {pct}")
        last = {"status": "COMPLETED", "progress_percent": 100}
        if i == 3:
            last["next_update_seconds"] = 0
            last["update_date_time"] = "2026-11-25T12:00:00+01:00"
        insert(outbox_path, kind="task_state", migration_task_name=task,
               progress_update_stream=stream, **last)
        expected[(stream or "ToolA", task)] = last
    result = cli("drain", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert set(emulator.state.streams) == {"ToolA", "ToolB"}
    for (stream, task), last in expected.items():
        record = emulator.state.task(stream, task)
        final = record.updates[-1]
        assert final["Task"] == {"Status": "COMPLETED", "ProgressPercent": 100}
        assert final["NextUpdateSeconds"] == last.get("next_update_seconds", 3600)
        assert record.attributes[0]["Type"] == "IPV4_ADDRESS"
        if "update_date_time" in last:
            assert final["UpdateDateTime"] == datetime(2026, 11, 25, 11, tzinfo=UTC).timestamp()
        else:
            assert abs(final["UpdateDateTime"] - time.time()) < 60
        times = [u["UpdateDateTime"] for u in record.updates]
        assert len(record.updates) <= 4
    report = status_json(cli)
    assert report["pending"] == 0 and report["delivered"] == 12 * 5
    assert report["dead_letters"] == 0 and report["blocked"] is None
    assert report["oldest_pending_seconds"] is None
    assert emulator.state.op_count("CreateProgressUpdateStream") == 2
    assert emulator.state.op_count("ImportMigrationTask") == 12
    assert times == sorted(times)


def test_shell_writers_and_python_api(cli: Cli, emulator: Emulator, outbox_path: Path):
    """notify, put-attributes and associate-artifact queue rows that drain delivers."""
    assert cli("init").returncode == 0
    arn = "arn:aws:ec2:us-west-2:123456789012:instance/i-0123456789abcdef0"
    for args in (
        ["put-attributes", "db-1", "--attribute", "IPV4_ADDRESS=10.0.0.5",
         "--attribute", "FQDN=db1.example.com"],
        ["notify", "db-1", "--status", "IN_PROGRESS", "--percent", "30", "--detail", "copying",
         "--next-update-seconds", "120", "--stream", "Shell"],
        ["notify", "db-1", "--status", "IN_PROGRESS", "--percent", "31"],
        ["associate-artifact", "db-1", arn, "--description", "target instance"],
    ):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("queued row ")

    Outbox(outbox_path).task_state("db-2", "NOT_STARTED", detail="line1\nline2")
    assert cli("drain").returncode == 0
    shell = emulator.state.task("Shell", "db-1").updates[-1]
    assert shell["Task"] == {"Status": "IN_PROGRESS", "StatusDetail": "copying", "ProgressPercent": 30}
    assert shell["NextUpdateSeconds"] == 120
    tool = emulator.state.task("ToolA", "db-1")
    assert tool.updates[-1]["Task"]["ProgressPercent"] == 31
    assert tool.attributes == [{"Type": "IPV4_ADDRESS", "Value": "10.0.0.5"},
                               {"Type": "FQDN", "Value": "db1.example.com"}]
    assert tool.artifacts == {arn: "target instance"}
    assert emulator.state.task("ToolA", "db-2").updates[-1]["Task"]["StatusDetail"] == "line1 line2"


@pytest.mark.parametrize(("args", "needle"), [
    (["notify", "t", "--status", "DONE"], "--status"),
    (["notify", "t", "--status", "IN_PROGRESS", "--percent", "120"], "progress_percent"),
    (["notify", "a:b", "--status", "IN_PROGRESS"], "migration_task_name"),
    (["notify", "t", "--status", "IN_PROGRESS", "--stream", "x/y"], "progress_update_stream"),
    (["put-attributes", "t", "--attribute", "IP=1.2.3.4"], "TYPE=VALUE"),
    (["put-attributes", "t", "--attribute", "IPV4_ADDRESS=1.2.3"], "IPv4"),
    (["associate-artifact", "t", "i-123"], "artifact_name"),
])
def test_shell_writers_reject_bad_input(cli: Cli, args: list[str], needle: str, outbox_path: Path):
    """Bad arguments exit 2 naming the field and rule, and nothing is inserted."""
    assert cli("init").returncode == 0
    result = cli(*args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert sqlite3.connect(outbox_path).execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def test_host_created_table_is_accepted(cli: Cli, emulator: Emulator, outbox_path: Path):
    """A table the host created with the contract DDL works; init adds the later columns."""
    conn = sqlite3.connect(outbox_path)
    conn.executescript(CONTRACT_DDL)
    conn.execute("INSERT INTO outbox(kind, migration_task_name, status) VALUES "
                 "('task_state', 'old-1', 'IN_PROGRESS')")
    conn.commit()
    conn.close()
    assert cli("drain").returncode == 1  # not initialised yet: clear error
    assert cli("init").returncode == 0
    assert cli("init").returncode == 0  # idempotent
    columns = [r[1] for r in sqlite3.connect(outbox_path).execute("PRAGMA table_info(outbox)")]
    assert columns[-6:] == ["artifact_name", "artifact_description", "configuration_id",
                            "resource_description", "application_id", "source_resource_name"]
    assert cli("drain").returncode == 0
    assert emulator.state.task("ToolA", "old-1").updates[-1]["Task"]["Status"] == "IN_PROGRESS"


def test_malformed_rows_are_dead_lettered_while_valid_rows_flow(
    cli: Cli, emulator: Emulator, outbox_path: Path
):
    """Every kind of bad row is rejected with a reason; rows around them, same task too, flow."""
    assert cli("init").returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
           progress_percent=10)
    bad = [
        insert(outbox_path, kind="task_state", migration_task_name="t1", status="BOGUS"),
        insert(outbox_path, kind="resource_attributes", migration_task_name="t1",
               resource_attributes="[{]"),
        insert(outbox_path, kind="created_artifact", migration_task_name="t1",
               artifact_name="not-an-arn"),
        insert(outbox_path, kind="weird", migration_task_name="t1"),
        insert(outbox_path, kind="task_state", migration_task_name="t|2", status="IN_PROGRESS"),
    ]
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
           progress_percent=20)
    result = cli("drain")
    assert result.returncode == 5, result.stderr
    assert emulator.state.task("ToolA", "t1").updates[-1]["Task"]["ProgressPercent"] == 20
    letters = json.loads(cli("dead-letters", "list", "--json").stdout)
    assert [d["id"] for d in letters] == bad
    reasons = [d["reason"] for d in letters]
    assert reasons[0].startswith("status: must be one of")
    assert reasons[1].startswith("resource_attributes: is not valid JSON")
    assert reasons[2].startswith("artifact_name: must be an ARN")
    assert reasons[3].startswith("kind: must be one of")
    assert reasons[4].startswith("migration_task_name: must not contain")
    table = cli("dead-letters", "list")
    assert "status: must be one of" in table.stdout
    assert status_json(cli)["dead_letters"] == 5
    # A fixed row is retried and delivered; a still-invalid one is rejected again.
    conn = sqlite3.connect(outbox_path)
    conn.execute("UPDATE outbox SET artifact_name = ? WHERE id = ?",
                 ("arn:aws:ec2:us-west-2:123456789012:image/ami-1", bad[2]))
    conn.commit()
    conn.close()
    retried = cli("dead-letters", "retry", str(bad[2]), str(bad[0]))
    assert retried.returncode == 0 and "requeued 1 rows" in retried.stdout
    assert f"row {bad[0]} still rejected: status" in retried.stderr
    assert cli("drain").returncode == 0  # exit 5 counts only this drain's rejections
    assert list(emulator.state.task("ToolA", "t1").artifacts) == [
        "arn:aws:ec2:us-west-2:123456789012:image/ami-1"]
    assert cli("dead-letters", "retry").returncode == 2
    assert cli("dead-letters", "retry", "999").returncode == 1


def test_hub_refusal_is_dead_lettered(cli: Cli, emulator: Emulator, outbox_path: Path):
    """An InvalidInputException in the right region rejects that row, not the others."""
    assert cli("init").returncode == 0
    emulator.state.faults.update(invalid={"PutResourceAttributes"})
    insert(outbox_path, kind="resource_attributes", migration_task_name="t1",
           resource_attributes='[{"Type": "FQDN", "Value": "a.b"}]')
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="COMPLETED")
    assert cli("drain").returncode == 5
    letters = json.loads(cli("dead-letters", "list", "--json").stdout)
    assert "the Hub refused PutResourceAttributes" in letters[0]["reason"]
    assert emulator.state.task("ToolA", "t1").updates[-1]["Task"]["Status"] == "COMPLETED"


def test_no_home_region_exits_4_then_delivers(cli: Cli, emulator: Emulator, outbox_path: Path):
    """No home Region: exit 4 at once naming the cause, nothing lost; delivered once set."""
    assert cli("init").returncode == 0
    emulator.state.home_region = None
    assert cli("notify", "t1", "--status", "IN_PROGRESS").returncode == 0
    started = time.monotonic()
    result = cli("drain", "--timeout", "60")
    assert result.returncode == 4
    assert time.monotonic() - started < 10
    assert "home Region is not set" in result.stderr
    report = status_json(cli, code=4)  # `status` is a health check: 4 while blocked
    assert report["pending"] == 1 and "home Region is not set" in report["blocked"]
    human = cli("status")
    assert human.returncode == 4 and "BLOCKED" in human.stdout
    emulator.state.home_region = "us-west-2"
    assert cli("drain").returncode == 0
    assert status_json(cli)["blocked"] is None
    assert emulator.state.task("ToolA", "t1").updates


def test_wrong_region_exits_4_naming_home(cli: Cli, emulator: Emulator, make_config: Any):
    """An explicit region that is not the home Region blocks delivery and names the home Region."""
    config = make_config("eu.toml", hub={"region": "eu-west-1"})
    assert cli("init", config=config).returncode == 0
    assert cli("notify", "t1", "--status", "IN_PROGRESS", config=config).returncode == 0
    result = cli("drain", config=config)
    assert result.returncode == 4
    assert "home Region is us-west-2" in result.stderr


def test_home_region_moved_after_resolution_blocks(cli: Cli, emulator: Emulator):
    """InvalidInputException because the home Region changed is 'blocked', not a dead letter."""
    assert cli("init").returncode == 0
    assert cli("notify", "t1", "--status", "IN_PROGRESS").returncode == 0
    assert cli("drain").returncode == 0

    client = Hub(AwsConfig())
    client.resolve_region()
    emulator.state.home_region = "ap-south-1"
    with pytest.raises(HubError) as err:
        client.import_task("ToolA", "t1")
    assert err.value.failure.outcome is Outcome.BLOCKED
    assert "ap-south-1" in err.value.failure.message


def test_access_denied_exits_4(cli: Cli, emulator: Emulator):
    """AccessDenied on a write blocks delivery (exit 4) naming it, keeping the row pending."""
    assert cli("init").returncode == 0
    emulator.state.faults.update(deny={"NotifyMigrationTaskState"})
    assert cli("notify", "t1", "--status", "IN_PROGRESS").returncode == 0
    result = cli("drain")
    assert result.returncode == 4 and "access denied" in result.stderr
    assert status_json(cli, code=4)["pending"] == 1


def test_no_credentials_exits_4(cli: Cli, tmp_path: Path):
    """Without any credentials delivery is blocked, naming the cause."""
    assert cli("init").returncode == 0
    assert cli("notify", "t1", "--status", "IN_PROGRESS").returncode == 0
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none")}
    result = cli("drain", env=env)
    assert result.returncode == 4 and "no AWS credentials" in result.stderr


def test_stream_deleted_at_hub_is_repaired(cli: Cli, emulator: Emulator):
    """ResourceNotFound (stream gone at the Hub): re-create, re-import, send again."""
    assert cli("init").returncode == 0
    assert cli("notify", "t1", "--status", "IN_PROGRESS", "--percent", "1").returncode == 0
    assert cli("drain").returncode == 0
    del emulator.state.streams["ToolA"]
    assert cli("notify", "t1", "--status", "IN_PROGRESS", "--percent", "2").returncode == 0
    assert cli("drain").returncode == 0
    assert emulator.state.task("ToolA", "t1").updates[-1]["Task"]["ProgressPercent"] == 2
    assert emulator.state.op_count("CreateProgressUpdateStream") == 2


def test_drain_times_out_with_exit_3_during_outage(cli: Cli, emulator: Emulator):
    """A full outage leaves rows pending and drain exits 3 at its timeout."""
    assert cli("init").returncode == 0
    assert cli("notify", "t1", "--status", "IN_PROGRESS").returncode == 0
    emulator.state.faults.update(outage=True)
    result = cli("drain", "--timeout", "2")
    assert result.returncode == 3 and "still pending" in result.stderr
    emulator.state.faults.update(outage=False)
    assert cli("drain").returncode == 0


def test_fault_injection_ends_with_every_task_at_its_last_row(
    cli: Cli, emulator: Emulator, outbox_path: Path
):
    """30% throttling + 10% 5xx + some dropped connections: every task ends at its last state."""
    assert cli("init").returncode == 0
    emulator.state.faults.update(throttle=0.3, server_error=0.1, drop=0.03, retry_after=0)
    conn = sqlite3.connect(outbox_path)
    for round_ in range(5):
        for t in range(40):
            conn.execute("INSERT INTO outbox(kind, migration_task_name, status, progress_percent)"
                         " VALUES ('task_state', ?, 'IN_PROGRESS', ?)", (f"t{t}", round_ * 20))
    conn.commit()
    conn.close()
    result = cli("drain", "--timeout", "90", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for t in range(40):
        updates = emulator.state.task("ToolA", f"t{t}").updates
        assert updates[-1]["Task"]["ProgressPercent"] == 80
        assert [u["UpdateDateTime"] for u in updates] == sorted(u["UpdateDateTime"] for u in updates)
    assert emulator.state.summary()["operations"].get("NotifyMigrationTaskState", 0) >= 40


def test_demo_runs_and_its_closing_hint_works(tmp_path: Path):
    """`mgh-reporter demo` runs the whole path and exits 0; the shell lines it suggests next,
    run as printed (in a fresh directory, the emulator on port 4566), deliver a row."""
    result = subprocess.run([sys.executable, "-m", "reporter", "demo", "--tasks", "3"],
                            capture_output=True, text=True, timeout=90, env=child_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "Done in" in result.stdout and "dead letter" in result.stdout
    hint = result.stdout.split("in a shell (no AWS account):\n", 1)[1].split("\nFor AWS")[0]
    lines = [line.strip() for line in hint.splitlines()]
    assert lines[0] == "mgh-reporter emulator --port 4566 &" and len(lines) >= 6
    with socket.socket() as probe:  # a free port, not 4566 (another run may hold it)
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    lines = [line.replace("4566", port) for line in lines]
    script = "set -e\ntrap 'kill %1 2>/dev/null' EXIT\n" + "\n".join(lines) + "\n"
    env = {k: v for k, v in child_env().items() if not k.startswith("AWS_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    tried = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                           timeout=120, env=env, cwd=tmp_path)
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert "drain delivered: 1 sent" in tried.stdout
    assert "vm-1" in tried.stdout and "IN_PROGRESS" in tried.stdout
