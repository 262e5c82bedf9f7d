"""Clocks: a wall-clock step back (NTP after a VM resume) never leaves rows waiting the hour,
and a task's UpdateDateTime never goes backwards at the Hub."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reporter import coalesce, rows
from reporter import config as config_mod
from reporter.delivery.clockstep import StepWatch
from reporter.delivery.relay import Relay
from reporter.emulator import Emulator
from reporter.hub.client import Hub
from reporter.hub_requests import StateUpdate
from reporter.stores.sqlite import SqliteStore

from .helpers import Cli, insert, row_clock


class Clock:
    """A wall clock a test can step (boot time stays real)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _sent(emulator: Emulator) -> bool:
    return emulator.state.op_count("NotifyMigrationTaskState") > 0


def test_only_a_step_back_counts():
    """Back 1 h: -3600; forward 1 h (as after a suspend): nothing; slewing 1 s a look: nothing."""
    wall, mono = Clock(1_800_000_000.0), Clock(100.0)
    watch = StepWatch(wall, mono)
    wall.now -= 3600
    assert watch.step() == -3600
    wall.now += 3600
    assert watch.step() == 0.0
    for _ in range(10):
        wall.now += 1.0
        assert watch.step() == 0.0
    mono.now += 50
    wall.now += 50
    assert watch.step() == 0.0


def test_a_time_left_null_never_goes_before_the_time_last_sent():
    """`not_before`: a row without update_date_time whose created_at is earlier than what the
    Hub has gets the time last sent; an explicit time and a later one are kept."""
    row = rows.OutboxRow(1, "task_state", "t", status="IN_PROGRESS",
                         created_at="2026-01-01T10:00:00Z")
    checked = rows.judge(row, "S", 3600)
    later = datetime(2026, 1, 1, 11, tzinfo=UTC).timestamp()
    assert isinstance(checked, StateUpdate)
    moved = coalesce.not_before(checked, later)
    assert isinstance(moved, StateUpdate) and moved.update_time.timestamp() == later
    assert coalesce.not_before(checked, later - 7200) == checked
    explicit = rows.OutboxRow(1, "task_state", "t", status="IN_PROGRESS",
                              created_at="2026-01-01T10:00:00Z",
                              update_date_time="2026-01-01T10:00:00Z")
    checked = rows.judge(explicit, "S", 3600)
    assert isinstance(checked, StateUpdate)
    assert coalesce.not_before(checked, later) == checked


def test_a_step_back_of_an_hour_does_not_hold_waiting_rows(aws_env: dict[str, str],
                                                           emulator: Emulator, tmp_path: Path):
    """A row backing off (RetryAfterSeconds 30) when the wall clock steps back an hour: once its
    30 s are over it goes out, not an hour later; the relay logs the step."""
    path = tmp_path / "o.db"
    SqliteStore.create(path).close()
    insert(path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    clock = Clock(datetime.fromisoformat(row_clock(path)).timestamp())
    cfg = config_mod.parse({"hub": {"progress_update_stream": "S"},
                            "outbox": {"path": str(path)}})
    store = SqliteStore.open(path)
    store.clock = clock
    hub = Hub(cfg.aws)
    relay = Relay(store, hub, cfg, clock=clock, rng=random.Random(1))
    try:
        hub.resolve_region()
        emulator.state.faults.update(throttle=1.0, retry_after=30)
        relay.run_once()
        assert not _sent(emulator)
        emulator.state.faults.update(throttle=0.0)
        clock.now -= 3600  # NTP steps the clock back an hour
        relay.run_once()
        assert not _sent(emulator)  # still inside its 30 s
        clock.now += 31
        relay.run_once()
        assert emulator.state.task("S", "t1").updates
    finally:
        relay.close()
        store.close()


def test_update_date_time_never_goes_backwards_at_the_hub(cli: Cli, emulator: Emulator,
                                                           outbox_path: Path):
    """A row written after the writer's clock stepped back an hour (its created_at an hour
    earlier, no update_date_time) is sent with the time already sent, not an earlier one."""
    assert cli("init").returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
           progress_percent=10)
    assert cli("drain").returncode == 0
    first = emulator.state.task("ToolA", "t1").updates[-1]["UpdateDateTime"]
    earlier = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
           progress_percent=20, created_at=earlier)
    assert cli("drain").returncode == 0
    updates = emulator.state.task("ToolA", "t1").updates
    assert updates[-1]["Task"]["ProgressPercent"] == 20
    assert updates[-1]["UpdateDateTime"] >= first
    tasks = json.loads(cli("tasks", "--json").stdout)
    assert tasks[0]["progress_percent"] == 20
    conn = sqlite3.connect(outbox_path)
    assert conn.execute("SELECT count(*) FROM mgh_rows WHERE state = 'sent'").fetchone()[0] == 2
    conn.close()
