"""Fairness: a task written now is not held behind an intake backlog (each batch also takes the
newest queued rows), and creating new streams never holds back tasks of existing streams."""

from __future__ import annotations

import time
from typing import Any

import pytest

from reporter import config as config_mod
from reporter.delivery import intake
from reporter.delivery.relay import Relay
from reporter.emulator import Emulator
from reporter.hub.client import Hub
from reporter.rows import STATE_SPACING_SECONDS
from reporter.stores import Engine as Outbox

from .engines import Engine


def _relay(engine: Engine, **publish: Any) -> Relay:
    cfg = config_mod.parse({"hub": {"progress_update_stream": "S"},
                            "outbox": {**engine.outbox, "batch_size": 100},
                            "publish": publish, **engine.extra})
    return Relay(Outbox.of(cfg.outbox).open(), Hub(cfg.aws), cfg)


def _updates(emulator: Emulator, task: str) -> bool:
    try:
        return bool(emulator.state.task("S", task).updates)
    except KeyError:
        return False


def test_a_new_task_is_not_held_behind_an_intake_backlog(
    engine: Engine, engine_cli: Any, emulator: Emulator, aws_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
):
    """3,000 rows wait for intake and each pass has time for one batch (as behind a million
    rows): a task written after them all reaches the Hub in the very first pass."""
    assert engine_cli("init").returncode == 0
    engine.insert_many([{"kind": "task_state", "migration_task_name": f"old-{t}",
                         "status": "IN_PROGRESS", "progress_percent": r}
                        for r in range(100) for t in range(30)])
    engine.insert(kind="task_state", migration_task_name="newcomer", status="COMPLETED")
    monkeypatch.setattr(intake, "INTAKE_SECONDS", 0.0)
    relay = _relay(engine)
    try:
        relay.run_once()
        assert _updates(emulator, "newcomer")
        def last(t: int) -> Any:
            return emulator.state.task("S", f"old-{t}").updates[-1]["Task"]["ProgressPercent"]

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                _updates(emulator, f"old-{t}") and last(t) == 99 for t in range(30)):
            relay.run_once()
            time.sleep(0.02)
        assert [last(t) for t in range(30)] == [99] * 30  # each task ends at its last row
    finally:
        relay.close()
        relay.store.close()


def test_new_streams_never_hold_back_tasks_of_existing_streams(
    engine: Engine, engine_cli: Any, emulator: Emulator, aws_env: dict[str, str],
):
    """60 new streams to create (each call slow) beside a task of a stream that exists: that
    task is sent before the streams are all created, and the creations overlap."""
    assert engine_cli("init").returncode == 0
    engine.insert(kind="task_state", migration_task_name="first", status="IN_PROGRESS")
    relay = _relay(engine)
    try:
        relay.run_once()  # stream S exists now
        assert _updates(emulator, "first")
        time.sleep(STATE_SPACING_SECONDS)  # "first" may be sent again at once
        before = len(emulator.state.calls)
        for n in range(60):
            engine.insert(kind="task_state", migration_task_name=f"t{n}", status="IN_PROGRESS",
                          progress_update_stream=f"New{n}")
        engine.insert(kind="task_state", migration_task_name="first", status="COMPLETED")
        emulator.state.faults.update(latency=0.05)
        relay.run_once()
        calls = sorted(emulator.state.calls[before:], key=lambda c: c["time"])
        creations = [c for c in calls if c["operation"] == "CreateProgressUpdateStream"]
        assert len(creations) == 60
        existing = [c for c in calls if c["operation"] == "NotifyMigrationTaskState"
                    and c["stream"] == "S"]
        assert existing and existing[0]["done"] < max(c["done"] for c in creations)
        span = max(c["done"] for c in creations) - min(c["time"] for c in creations)
        assert span < 60 * 0.05 / 2  # side by side, not one after another
        assert emulator.state.task("S", "first").updates[-1]["Task"]["Status"] == "COMPLETED"
    finally:
        relay.close()
        relay.store.close()
