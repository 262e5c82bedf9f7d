"""Staleness: a task's promise (UpdateDateTime + NextUpdateSeconds) and how views show it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from freezegun import freeze_time

from reporter.emulator import Emulator
from reporter.report import promise_state

from .helpers import Cli


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


def test_tasks_show_stale_after_the_promise(cli: Cli, emulator: Emulator, outbox_path: Path):
    """A task whose promised next update has passed is shown stale in tasks and status."""
    assert cli("init").returncode == 0
    assert cli("notify", "quiet", "--status", "IN_PROGRESS", "--next-update-seconds", "0").returncode == 0
    assert cli("notify", "done", "--status", "COMPLETED", "--next-update-seconds", "0").returncode == 0
    assert cli("drain").returncode == 0
    entries = {e["task"]: e for e in json.loads(cli("tasks", "--json").stdout)}
    assert entries["quiet"]["stale"] is True and entries["done"]["stale"] is False
    assert json.loads(cli("status", "--json").stdout)["stale_tasks"] == 1
