"""The concurrency contract: tasks in parallel, each task strictly in order; AIMD; backlog pace."""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import reporter.delivery.intake as intake_mod
from reporter import config as config_mod
from reporter.delivery.relay import Relay
from reporter.emulator import Emulator
from reporter.hub.client import Hub, HubError
from reporter.hub.limiter import AdaptiveLimiter
from reporter.stores.sqlite import SqliteStore

from .helpers import Cli, fill, pending, start_daemon, wait_for

TASKS, WAVES = 40, 3


def _wave(conn: sqlite3.Connection, wave: int) -> None:
    """Per task: attributes, a state, an artifact, a newer state (row order = intended order)."""
    with conn:
        for t in range(TASKS):
            name = f"o{t:02d}"
            conn.execute(
                "INSERT INTO outbox(kind, migration_task_name, resource_attributes)"
                " VALUES ('resource_attributes', ?, ?)",
                (name, json.dumps([{"Type": "IPV4_ADDRESS", "Value": f"10.0.{wave}.{t}"}])),
            )
            for step, percent in (("a", wave * 10), ("b", wave * 10 + 5)):
                conn.execute(
                    "INSERT INTO outbox(kind, migration_task_name, status, progress_percent,"
                    " status_detail, update_date_time) VALUES ('task_state', ?, 'IN_PROGRESS',"
                    " ?, ?, ?)",
                    (name, percent, f"wave {wave}{step}",
                     f"2026-11-25T10:{wave:02d}:{0 if step == 'a' else 30:02d}Z"),
                )
                if step == "a":
                    conn.execute(
                        "INSERT INTO outbox(kind, migration_task_name, artifact_name)"
                        " VALUES ('created_artifact', ?, ?)",
                        (name, f"arn:aws:ec2:us-west-2:123456789012:instance/i-{wave}{t:015d}"),
                    )


def test_tasks_run_concurrently_but_each_task_strictly_in_order(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """With a 16-wide pool and random per-call latency, calls for different tasks overlap while
    each task's calls reach the Hub one at a time: stream, import, then its rows in row order,
    newest state last, and UpdateDateTime never goes back."""
    path = tmp_path / "outbox.db"
    SqliteStore.create(path).close()
    cfg = config_mod.parse({
        "hub": {"progress_update_stream": "Order"}, "outbox": {"path": str(path)},
        "publish": {"concurrency": 16, "max_concurrency": 16},
        "mapping": {"check_after_seconds": 3600},
    })
    emulator.state.faults.update(jitter=0.02)
    store = SqliteStore.open(path)
    relay = Relay(store, Hub(cfg.aws, limiter=AdaptiveLimiter(16, 16)), cfg)
    conn = sqlite3.connect(path, timeout=5)
    try:
        for wave in range(1, WAVES + 1):
            _wave(conn, wave)
            for _ in range(10):
                if not relay.run_once().claimed:
                    break
    finally:
        conn.close()
        relay.close()
        store.close()

    assert emulator.state.peak_in_flight >= 8, "the pool did not run tasks concurrently"
    calls = sorted((c for c in emulator.state.calls if c["operation"] != "ListDiscoveredResources"),
                   key=lambda c: c["time"])
    created = [c for c in calls if c["operation"] == "CreateProgressUpdateStream"]
    assert len(created) == 1
    per_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in calls:
        if c["task"]:
            per_task[c["task"]].append(c)
    assert len(per_task) == TASKS
    expected = ["ImportMigrationTask"] + [
        "PutResourceAttributes", "AssociateCreatedArtifact", "NotifyMigrationTaskState"
    ] * WAVES
    for name, seq in per_task.items():
        assert [c["operation"] for c in seq] == expected, name
        assert seq[0]["time"] >= created[0]["done"]
        for before, after in itertools.pairwise(seq):
            assert after["time"] >= before["done"], f"{name}: two calls in flight at once"
        record = emulator.state.task("Order", name)
        times = [u["UpdateDateTime"] for u in record.updates]
        assert times == sorted(times) and len(times) == WAVES
        assert record.updates[-1]["Task"]["StatusDetail"] == f"wave {WAVES}b"


def test_adaptive_limiter_shrinks_under_throttling_and_recovers(
    emulator: Emulator, aws_env: dict[str, str]
) -> None:
    """Over real HTTP: Hub throttling halves the concurrency limit; success grows it back."""
    cfg = config_mod.parse({"hub": {"progress_update_stream": "Aimd"}})
    limiter = AdaptiveLimiter(16, 32)
    client = Hub(cfg.aws, limiter=limiter)
    client.create_stream("Aimd")

    def burst(n: int) -> int:
        failures = 0
        lock = threading.Lock()

        def one(i: int) -> None:
            nonlocal failures
            try:
                client.import_task("Aimd", f"a{i}")
            except HubError:
                with lock:
                    failures += 1

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return failures

    emulator.state.faults.update(throttle=1.0)
    for _ in range(4):
        assert burst(16) == 16
    shrunk = limiter.limit
    assert shrunk <= 2
    emulator.state.faults.update(throttle=0.0)
    assert burst(200) == 0
    assert limiter.limit > shrunk + 3


def test_backlog_is_drained_in_one_tick_not_one_batch_per_interval(
    cli: Cli, emulator: Emulator, make_config: Any, tmp_path: Path
) -> None:
    """A backlog of 12 batches is delivered at once, not one batch per (30 s) interval."""
    config = make_config("backlog.toml", publish={"interval_seconds": 30.0},
                         outbox={"batch_size": 25})
    outbox = tmp_path / "outbox.db"
    assert cli("init", config=config).returncode == 0
    fill(outbox, 300, 2)
    proc = start_daemon(config)
    try:
        wait_for(lambda: pending(outbox) == 0, timeout=25)
        assert emulator.state.op_count("NotifyMigrationTaskState") <= 600
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize("scenario", ["coalesce", "drain"])
def test_benchmark_smoke(scenario: str) -> None:
    """The benchmark suite runs (tiny sizes): it must not rot between benchmark runs."""

    root = Path(__file__).resolve().parent.parent
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "run.py"), "--smoke", scenario],
        capture_output=True, text=True, timeout=120, cwd=root,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line for line in result.stdout.splitlines() if line.startswith(scenario)]
    assert time.monotonic() - started < 120


def test_rows_left_behind_by_a_bounded_intake_are_taken_in_without_new_commits(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a pass's intake stops at its time budget, the next passes carry on even though no
    other process commits anything (the idle check must not call that quiet)."""

    monkeypatch.setattr(intake_mod, "INTAKE_SECONDS", 0.0)  # one batch per pass
    path = tmp_path / "outbox.db"
    SqliteStore.create(path).close()
    fill(path, 35, 1)
    cfg = config_mod.parse({"hub": {"progress_update_stream": "Behind"},
                            "outbox": {"path": str(path), "batch_size": 10}})
    store = SqliteStore.open(path)
    relay = Relay(store, Hub(cfg.aws), cfg)
    try:
        passes = 0
        while not relay.quiet() and passes < 20:
            relay.run_once()
            passes += 1
        assert passes >= 4
        assert len(emulator.state.streams["Behind"]) == 35
        assert pending(path) == 0
    finally:
        relay.close()
        store.close()
