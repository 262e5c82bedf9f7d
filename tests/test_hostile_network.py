"""A hostile network path: a proxy's HTML 502, a 200 whose body is HTML or truncated JSON, a
connection accepted and never answered. Each is transient with backoff; a row is sent only when
the answer parses; nothing is dead-lettered; the true cause is reported."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reporter.emulator import Emulator

from .helpers import Cli, fill, insert, pending, start_daemon, status_json, stop_daemon, wait_for


@pytest.mark.parametrize("kind", ["html", "truncated", "proxy502"])
def test_garbled_answers_are_transient_never_delivered_never_blocked(
    cli: Cli, emulator: Emulator, outbox_path: Path, kind: str
):
    """While every answer is garbled, `drain` exits 3 (not 4: never "home Region not set"),
    rows stay pending and nothing is dead-lettered; once the path heals they are delivered."""
    assert cli("init").returncode == 0
    fill(outbox_path, 3, 1)
    emulator.state.faults.update(garble=1.0, garble_kind=kind)
    result = cli("drain", "--timeout", "2")
    assert result.returncode == 3, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    lookups = [e for e in events if e["event"] == "condition_started"
               and e["operation"] == "GetHomeRegion"]
    assert lookups, result.stderr[-2000:]
    expected = "GarbledResponse" if kind != "proxy502" else "502"
    assert expected in lookups[0]["error_code"]
    assert not [e for e in events if e["event"] == "delivery_blocked"]
    report = status_json(cli)
    assert (report["pending"], report["dead_letters"], report["blocked"]) == (3, 0, None)
    emulator.state.faults.update(garble=0.0)
    assert cli("drain").returncode == 0
    assert all(emulator.state.task("ToolA", f"t{t}").updates for t in range(3))


def test_a_200_html_page_is_not_counted_as_delivered(
    cli: Cli, emulator: Emulator, outbox_path: Path, make_config: Any
):
    """With the home Region known, a proxy's 200 page for NotifyMigrationTaskState leaves the row
    pending with the garbled answer as the task's error, then it is sent for real."""
    config = make_config("fast.toml")
    assert cli("init", config=config).returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert cli("drain", config=config).returncode == 0  # region known, stream made
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="COMPLETED")
    emulator.state.faults.update(garble=1.0, garble_kind="html",
                                garble_only={"NotifyMigrationTaskState"})
    assert cli("drain", "--timeout", "1.5", config=config).returncode == 3
    entry = json.loads(cli("tasks", "--json", config=config).stdout)[0]
    assert entry["status"] == "IN_PROGRESS" and entry["pending"] == 1
    assert "GarbledResponse" in entry["last_error"]
    emulator.state.faults.update(garble=0.0)
    assert cli("drain", config=config).returncode == 0
    assert emulator.state.task("ToolA", "t1").updates[-1]["Task"]["Status"] == "COMPLETED"


def test_a_hung_call_holds_only_its_task_for_the_read_timeout(
    cli: Cli, emulator: Emulator, outbox_path: Path, make_config: Any, tmp_path: Path
):
    """Calls accepted and never answered time out after the read timeout and are retried; `run`
    stays alive and delivers everything once the path heals."""
    config = make_config("hang.toml", aws={"read_timeout_seconds": 1.0,
                                           "connect_timeout_seconds": 1.0})
    assert cli("init", config=config).returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="warm", status="IN_PROGRESS")
    assert cli("drain", config=config).returncode == 0
    emulator.state.faults.update(garble=1.0, garble_kind="hang", hang_seconds=30)
    fill(outbox_path, 5, 1)
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = start_daemon(config, stderr=err)
        try:
            def timed_out() -> bool:
                return "ReadTimeoutError" in log.read_text()

            wait_for(timed_out, timeout=10)
            healer = threading.Timer(0.5, lambda: emulator.state.faults.update(garble=0.0))
            healer.start()
            started = time.monotonic()
            wait_for(lambda: pending(outbox_path) == 0, timeout=30)
            assert time.monotonic() - started < 25
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    report = json.loads(cli("status", "--json", config=config).stdout)
    assert report["dead_letters"] == 0 and report["pending"] == 0
    assert all(emulator.state.task("ToolA", f"t{t}").updates for t in range(5))


def test_a_persisting_garbled_path_shows_its_true_cause_in_status(
    cli: Cli, emulator: Emulator, config_path: Path, outbox_path: Path
):
    """With every answer a proxy's page, `run` stays up and healthy (transient), and `status`
    names the true cause (a garbled GetHomeRegion answer), not "home Region not set"."""
    assert cli("init").returncode == 0
    fill(outbox_path, 2, 1)
    emulator.state.faults.update(garble=1.0, garble_kind="html")
    proc = start_daemon(config_path)
    try:
        def last_error() -> str:
            daemon = status_json(cli)["daemon"]
            return str((daemon or {}).get("last_error") or "")

        wait_for(lambda: "GarbledResponse" in last_error())
        assert last_error().startswith("GetHomeRegion: GarbledResponse: HTTP 200")
        report = status_json(cli)
        assert report["blocked"] is None and report["daemon"]["health"] == "ok"
        emulator.state.faults.update(garble=0.0)
        wait_for(lambda: pending(outbox_path) == 0)
        wait_for(lambda: last_error() == "")
    finally:
        stop_daemon(proc)
