"""Auto-mapping verification: mapped tasks record their ConfigurationId, unmapped ones are
reported once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reporter.emulator import Emulator

from .helpers import Cli, attrs, insert, start_daemon, wait_for


def test_mapping_verified_and_unmapped_reported(cli: Cli, emulator: Emulator, outbox_path: Path,
                                                config_path: Path):
    """Matching attributes map (ConfigurationId recorded); VM fields without VM_MANAGER_ID do not
    map and the task is reported unmapped; `tasks --json` matches the Hub."""
    emulator.state.add_server("d-server-0123456789ab", IPV4_ADDRESS="10.9.9.9")
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
    assert by_task["new"]["configuration_id"] == emulator.state.task("ToolA", "new").mapped_to
    assert by_task["vmonly"]["configuration_id"] is None
    for name, entry in by_task.items():
        last = emulator.state.task("ToolA", name).updates[-1]["Task"]
        assert (entry["status"], entry["progress_percent"]) == (last["Status"], last["ProgressPercent"])
        assert entry["stale"] is False and entry["pending"] == 0
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    unmapped = [e for e in events if e["event"] == "task_unmapped"]
    assert [e["task"] for e in unmapped] == ["vmonly"]
    report = json.loads(cli("status", "--json").stdout)
    assert report["unmapped_tasks"] == 1
    assert "vmonly" in cli("tasks").stdout
