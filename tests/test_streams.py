"""`streams list` and `streams delete` on both engines against the stand-in: the Hub's streams
beside the outbox's; a deletion asked for, refused without --yes off a terminal and while a
daemon delivers, waited for while the Hub deletes, then forgotten by the outbox so later rows
create the stream and import their tasks again, and no repair brings back what was deleted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from reporter.emulator import Emulator

from .engines import Engine
from .helpers import Cli, start_daemon, stop_daemon


def test_streams_list_shows_the_hub_beside_the_outbox(engine: Engine, engine_cli: Cli,
                                                      emulator: Emulator):
    assert engine_cli("init").returncode == 0
    engine.insert(kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    engine.insert(kind="task_state", migration_task_name="t2", status="IN_PROGRESS",
                  progress_update_stream="Other")
    assert engine_cli("drain", "--timeout", "60").returncode == 0
    emulator.state.streams["SomeoneElses"] = {}
    emulator.state.delete_stream("Other")
    listed = engine_cli("streams", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {"stream": "Other", "at_hub": False, "tasks": 1, "pending": 0},
        {"stream": "SomeoneElses", "at_hub": True, "tasks": 0, "pending": 0},
        {"stream": "ToolA", "at_hub": True, "tasks": 1, "pending": 0}]
    human = " ".join(engine_cli("streams", "list").stdout.split())
    assert "Other NO 1 0" in human and "ToolA yes 1 0" in human


def test_streams_delete_waits_for_the_hub_then_the_outbox_forgets(
        engine: Engine, engine_cli: Cli, emulator: Emulator, tmp_path: Path):
    """Off a terminal --yes is required (exit 2, nothing deleted); the Hub takes a while to
    delete (writes refused meanwhile) and the command waits; the outbox then forgets the
    stream: `verify` has nothing to check there, and a later row creates the stream and
    imports its task again, with only that row's state at the Hub."""
    assert engine_cli("init").returncode == 0
    for percent in (10, 90):
        engine.insert(kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
                      progress_percent=percent)
    engine.insert(kind="resource_attributes", migration_task_name="t1",
                  resource_attributes='[{"Type": "IPV4_ADDRESS", "Value": "10.0.0.1"}]')
    assert engine_cli("drain", "--timeout", "60").returncode == 0
    refused = engine_cli("streams", "delete", "ToolA")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert "ToolA" in emulator.state.streams
    emulator.state.faults.update(delete_seconds=1.5)
    deleted = engine_cli("streams", "delete", "ToolA", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert "1 tasks" in deleted.stdout and "ToolA" not in emulator.state.streams
    assert not emulator.state.deleting
    verified = json.loads(engine_cli("verify", "--json").stdout)
    assert verified["checked"] == 0, verified  # nothing the Hub should still have
    creates = emulator.state.op_count("CreateProgressUpdateStream")
    engine.insert(kind="task_state", migration_task_name="t1", status="COMPLETED",
                  progress_percent=100)
    assert engine_cli("drain", "--timeout", "60").returncode == 0
    assert emulator.state.op_count("CreateProgressUpdateStream") == creates + 1
    hub = emulator.state.task("ToolA", "t1")
    assert [u["Task"]["ProgressPercent"] for u in hub.updates] == [100]
    assert hub.attributes == []  # deleted with the stream, and not restored
    again = engine_cli("streams", "delete", "Gone", "--yes")  # not at the Hub: nothing to do
    assert again.returncode == 0, again.stderr


def test_streams_delete_refuses_while_a_daemon_delivers(
        cli: Cli, emulator: Emulator, make_config: Callable[..., Path]):
    """A daemon holding the outbox could send into the stream while the Hub deletes it: the
    command refuses and names it (exit 1), unless --force; a deletion still under way at
    --timeout exits 3 and forgets nothing."""
    config = make_config(publish={"interval_seconds": 0.2})
    assert cli("init", config=config).returncode == 0
    assert cli("notify", "t1", "--status", "IN_PROGRESS", config=config).returncode == 0
    assert cli("drain", config=config).returncode == 0
    daemon = start_daemon(config)
    try:
        from .helpers import wait_for
        wait_for(lambda: json.loads(cli("status", "--json", config=config).stdout)[
            "daemon_state"] == "running", timeout=20)
        refused = cli("streams", "delete", "ToolA", "--yes", config=config)
        assert refused.returncode == 1 and f"pid {daemon.pid}" in refused.stderr
        assert "ToolA" in emulator.state.streams
        emulator.state.faults.update(delete_seconds=30)
        slow = cli("streams", "delete", "ToolA", "--yes", "--force", "--timeout", "1",
                   config=config)
        assert slow.returncode == 3 and "still deleting" in slow.stderr
    finally:
        stop_daemon(daemon)
    emulator.state.faults.update(delete_seconds=0)
    emulator.state.deleting.clear()
