"""Artifacts, auto-mapping verification, staleness, the per-task view; durable backoff."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from reporter import config as config_mod
from reporter.config import Config
from reporter.emulator import Emulator
from reporter.hub import Hub
from reporter.relay import Relay
from reporter.store import Store
from reporter.views import promise_state

from .conftest import Cli
from .test_e2e import insert

ARN = "arn:aws:ec2:us-west-2:123456789012:instance/i-0aaa"


def attrs(*pairs: tuple[str, str]) -> str:
    return json.dumps([{"Type": t, "Value": v} for t, v in pairs])


def test_artifacts_delivered_once_and_bad_arns_rejected(cli: Cli, hub: Emulator, outbox_path: Path):
    """Each (stream, task, ARN) is associated once however often repeated; bad ARNs dead-letter."""
    assert cli("init").returncode == 0
    for _ in range(3):
        assert cli("associate-artifact", "t1", ARN).returncode == 0
    insert(outbox_path, kind="created_artifact", migration_task_name="t1", artifact_name="arn:bad")
    assert cli("drain").returncode == 5
    assert cli("associate-artifact", "t1", ARN, "--description", "again").returncode == 0
    assert cli("drain").returncode == 5
    assert hub.state.op_count("AssociateCreatedArtifact") == 1
    assert list(hub.state.task("ToolA", "t1").artifacts) == [ARN]
    tasks = json.loads(cli("tasks", "--json").stdout)
    assert tasks[0]["artifacts"] == [ARN]


def test_mapping_verified_and_unmapped_reported(cli: Cli, hub: Emulator, outbox_path: Path,
                                                config_path: Path):
    """Matching attributes map (ConfigurationId recorded); VM fields without VM_MANAGER_ID do not
    map and the task is reported unmapped; `tasks --json` matches the Hub."""
    hub.state.add_server("d-server-0123456789ab", IPV4_ADDRESS="10.9.9.9")
    assert cli("init").returncode == 0
    insert(outbox_path, kind="resource_attributes", migration_task_name="known",
           resource_attributes=attrs(("IPV4_ADDRESS", "10.9.9.9")))
    insert(outbox_path, kind="resource_attributes", migration_task_name="new",
           resource_attributes=attrs(("FQDN", "new.example.com")))
    insert(outbox_path, kind="resource_attributes", migration_task_name="vmonly",
           resource_attributes=attrs(("VM_NAME", "db"), ("VM_PATH", "/dc/vm/db")))
    for task in ("known", "new", "vmonly"):
        insert(outbox_path, kind="task_state", migration_task_name=task, status="IN_PROGRESS",
               progress_percent=5)
    assert cli("drain").returncode == 0
    from .conftest import start_daemon, wait_for

    proc = start_daemon(config_path)
    try:
        def entries() -> dict[str, Any]:
            return {e["task"]: e for e in json.loads(cli("tasks", "--json").stdout)}

        wait_for(lambda: entries()["vmonly"]["mapped"] is False, timeout=30)
        wait_for(lambda: entries()["new"]["mapped"] is True, timeout=30)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    by_task = entries()
    assert by_task["known"]["mapped"] is True
    assert by_task["known"]["configuration_id"] == "d-server-0123456789ab"
    assert by_task["new"]["configuration_id"] == hub.state.task("ToolA", "new").mapped_to
    assert by_task["vmonly"]["configuration_id"] is None
    for name, entry in by_task.items():
        last = hub.state.task("ToolA", name).updates[-1]["Task"]
        assert (entry["status"], entry["progress_percent"]) == (last["Status"], last["ProgressPercent"])
        assert entry["stale"] is False and entry["pending"] == 0
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    unmapped = [e for e in events if e["event"] == "task_unmapped"]
    assert [e["task"] for e in unmapped] == ["vmonly"]
    report = json.loads(cli("status", "--json").stdout)
    assert report["unmapped_tasks"] == 1
    assert "vmonly" in cli("tasks").stdout


@pytest.mark.parametrize(("status", "offset", "expected"), [
    ("IN_PROGRESS", 0, "ok"),
    ("IN_PROGRESS", 3600 - 301, "ok"),
    ("IN_PROGRESS", 3600 - 300, "lapsing"),
    ("IN_PROGRESS", 3599, "lapsing"),
    ("IN_PROGRESS", 3600, "stale"),
    ("NOT_STARTED", 99999, "stale"),
    ("COMPLETED", 99999, None),
    ("FAILED", 99999, None),
    (None, 0, None),
])
def test_promise_lapses_at_update_time_plus_next_update_seconds(
    status: str | None, offset: int, expected: str | None
):
    """A promise lapses at UpdateDateTime + NextUpdateSeconds; terminal states are exempt."""
    with freeze_time("2026-11-25 12:00:00") as frozen:
        update_time = time.time()
        frozen.tick(offset)
        assert promise_state(status, update_time, 3600, time.time(), 300) == expected


def test_tasks_show_stale_after_the_promise(cli: Cli, hub: Emulator, outbox_path: Path):
    """A task whose promised next update has passed is shown stale in tasks and status."""
    assert cli("init").returncode == 0
    assert cli("notify", "quiet", "--status", "IN_PROGRESS", "--next-update-seconds", "0").returncode == 0
    assert cli("notify", "done", "--status", "COMPLETED", "--next-update-seconds", "0").returncode == 0
    assert cli("drain").returncode == 0
    entries = {e["task"]: e for e in json.loads(cli("tasks", "--json").stdout)}
    assert entries["quiet"]["stale"] is True and entries["done"]["stale"] is False
    assert json.loads(cli("status", "--json").stdout)["stale_tasks"] == 1


def _relay(path: Path, seed: int) -> tuple[Store, Relay]:
    cfg: Config = config_mod.parse(
        {"hub": {"progress_update_stream": "S"}, "outbox": {"path": str(path)},
         "publish": {"backoff_base_seconds": 2.0, "backoff_max_seconds": 60.0}})
    store = Store.open(path)
    relay = Relay(store, Hub(cfg.aws), cfg, rng=random.Random(seed))
    relay._brake_attempts, relay._brake_until = 0, 0.0  # isolate per-task backoff
    return store, relay


def _resolve(relay: Relay, hub: Emulator) -> None:
    throttle = hub.state.faults.throttle
    hub.state.faults.update(throttle=0.0)
    relay.hub.resolve_region()
    hub.state.faults.update(throttle=throttle)


def test_backoff_schedule_is_durable_across_restarts(aws_env: dict[str, str], hub: Emulator,
                                                     tmp_path: Path):
    """Attempt counts and next-attempt times survive a restart; each delay respects the
    jitter ceiling of its attempt, the cap and the RetryAfterSeconds floor."""
    path = tmp_path / "o.db"
    Store.create(path).close()
    insert(path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    hub.state.faults.update(throttle=1.0, retry_after=0)
    with freeze_time("2026-11-25 12:00:00") as frozen:
        for attempt in range(1, 8):
            store, relay = _relay(path, seed=attempt)  # a fresh process each time
            _resolve(relay, hub)
            before = time.time()
            relay.run_once()
            row = store.conn.execute("SELECT attempts, due_at FROM mgh_tasks").fetchone()
            assert row["attempts"] == attempt
            delay = row["due_at"] - before
            assert 0 <= delay <= min(60.0, 2.0 * 2 ** (attempt - 1)) + 1e-6
            relay.close()
            store.close()
            frozen.tick(delay + 0.001)
        hub.state.faults.update(retry_after=45)
        store, relay = _relay(path, seed=99)
        _resolve(relay, hub)
        before = time.time()
        relay.run_once()
        due = store.conn.execute("SELECT due_at FROM mgh_tasks").fetchone()[0]
        assert due - before >= 45
        hub.state.faults.update(throttle=0.0)
        frozen.tick(61)
        relay._brake_attempts, relay._brake_until = 0, 0.0
        relay.run_once()
        row = store.conn.execute("SELECT attempts, due_at, status FROM mgh_tasks").fetchone()
        assert (row["attempts"], row["due_at"], row["status"]) == (0, None, "IN_PROGRESS")
        assert sqlite3.connect(path).execute(
            "SELECT attempts FROM mgh_rows").fetchone()[0] == 8
        relay.close()
        store.close()


def test_home_region_lookup_backs_off_while_the_config_service_fails(
    aws_env: dict[str, str], hub: Emulator, tmp_path: Path
):
    """A failing GetHomeRegion is retried on the backoff schedule, not on every pass; delivery
    starts on the first lookup that succeeds."""
    path = tmp_path / "o.db"
    Store.create(path).close()
    insert(path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    hub.state.faults.update(outage=True)
    with freeze_time("2026-11-25 12:00:00") as frozen:
        store, relay = _relay(path, seed=3)
        lookups = []
        for _ in range(6):
            for _ in range(10):  # ten passes in the same instant: one lookup
                relay.run_once()
            lookups.append(hub.state.op_count("GetHomeRegion"))
            assert relay.wakeup is not None and relay.wakeup > time.time()
            assert relay.quiet() or relay.wakeup > time.time()
            frozen.tick(relay.wakeup - time.time() + 0.001)
        assert lookups == [1, 2, 3, 4, 5, 6]
        hub.state.faults.update(outage=False)
        relay.run_once()
        assert hub.state.task("S", "t1").updates
        assert relay._region_attempts == 0
        relay.close()
        store.close()
