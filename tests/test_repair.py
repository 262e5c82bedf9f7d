"""Repair in the daemon (`[verify] every_seconds`): a stream or task the Hub lost comes back at
its newest state without any older one; a Hub behind us is brought up to date; a newer update
someone else wrote is reported (`hub_differs`), never overwritten."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reporter.delivery.repair_plan import plan_repair
from reporter.emulator import Emulator
from reporter.hub.client import HubTask
from reporter.hub_requests import ArtifactRemoval, StateUpdate
from reporter.stores.contract import ClaimedTask, Resend, ResendScope, SentState

from .engines import Engine
from .helpers import Cli, start_daemon, status_json, wait_for

ARN = "arn:aws:ec2:us-west-2:123456789012:instance/i-0aaa"
SENT = SentState(-1, -1, "IN_PROGRESS", 90, "copying", 1_800_000_000.0, 300)


def _repair(scope: ResendScope = ResendScope.WHOLE) -> ClaimedTask:
    return ClaimedTask(1, "S", "t1", "lease", resend=Resend(
        SENT, (("FQDN", "a.b"),), ((ARN, "vm"), ("arn:aws:ec2:us-west-2:123456789012:image/x",
                                                None)), (("d-1", None),), scope))


def _at(epoch: float, status: str = "IN_PROGRESS") -> HubTask:
    return HubTask(status, 50, epoch)


def test_a_lost_task_is_sent_everything_again_except_what_a_waiting_row_replaces():
    """The Hub lacks the task: import it, then the stored state and attribute list go again
    unless a waiting row replaces them (that newer row is sent instead), and the artifacts and
    mappings unless a waiting row removes them; negative row ids, first."""
    fix = plan_repair(_repair(), [], None, found=False)
    assert fix.import_first and fix.newer_at_hub is None and fix.superseded == []
    assert [(c.row_id, c.operation) for c in fix.calls] == [
        (-1, "NotifyMigrationTaskState"), (-2, "PutResourceAttributes"),
        (-3, "AssociateCreatedArtifact"), (-4, "AssociateCreatedArtifact"),
        (-5, "AssociateDiscoveredResource")]
    state = fix.calls[0]
    assert isinstance(state, StateUpdate) and state.percent == 90
    assert state.update_time == datetime.fromtimestamp(SENT.update_time, UTC)
    newer = StateUpdate(9, "S", "t1", "COMPLETED", None, 100,
                             datetime.fromtimestamp(SENT.update_time + 60, UTC), 0)
    removal = ArtifactRemoval(10, "S", "t1", ARN)
    kept = plan_repair(_repair(), [newer, removal], None, found=False).calls
    assert [c.operation for c in kept] == ["PutResourceAttributes", "AssociateCreatedArtifact",
                                          "AssociateDiscoveredResource"]
    assert ARN not in [getattr(c, "arn", None) for c in kept]
    assert plan_repair(ClaimedTask(1, "S", "t1", "lease"), [], None, False).calls == []


@pytest.mark.parametrize("scope", list(ResendScope)[1:])
def test_a_newer_state_at_the_hub_is_never_overwritten(scope: ResendScope):
    """Someone else's state dated later than ours: no state goes again, and a waiting state row
    older than it is superseded (a newer one still goes); it is reported (newer_at_hub)."""
    later = SENT.update_time + 5
    older = StateUpdate(9, "S", "t1", "IN_PROGRESS", None, 95,
                             datetime.fromtimestamp(later - 1, UTC), 0)
    newest = StateUpdate(10, "S", "t1", "COMPLETED", None, 100,
                              datetime.fromtimestamp(later + 1, UTC), 0)
    fix = plan_repair(_repair(scope), [older], _at(later, "COMPLETED"), found=True)
    assert "NotifyMigrationTaskState" not in [c.operation for c in fix.calls]
    assert [v.row for v in fix.superseded] == [9] and "newer state" in fix.superseded[0].reason
    assert fix.newer_at_hub == _at(later, "COMPLETED") and not fix.import_first
    fix = plan_repair(_repair(scope), [older, newest], _at(later), found=True)
    assert [v.row for v in fix.superseded] == [9]  # row 10 is newer than the Hub: it goes
    assert "NotifyMigrationTaskState" not in [c.operation for c in fix.calls]


def test_a_living_task_gets_only_a_newer_state_and_a_lost_one_everything():
    """A task the Hub still has (scope STATE): our state again when it is newer than the Hub's
    to the second, nothing when the Hub has it (the same second); the attribute list,
    artifacts and mappings (no date at the Hub) only to a task that was lost (WHOLE)."""
    behind = plan_repair(_repair(ResendScope.STATE), [], _at(SENT.update_time - 60), True)
    assert [c.operation for c in behind.calls] == ["NotifyMigrationTaskState"]
    assert behind.newer_at_hub is None and not behind.import_first
    same_second = plan_repair(_repair(ResendScope.STATE), [], _at(SENT.update_time + 0.9), True)
    assert same_second.calls == [] and same_second.newer_at_hub is None
    no_state = plan_repair(_repair(ResendScope.STATE), [], HubTask(None, None, None), True)
    assert [c.operation for c in no_state.calls] == ["NotifyMigrationTaskState"]
    reimported = plan_repair(_repair(ResendScope.WHOLE), [], _at(SENT.update_time), True)
    assert [c.operation for c in reimported.calls] == [
        "PutResourceAttributes", "AssociateCreatedArtifact", "AssociateCreatedArtifact",
        "AssociateDiscoveredResource"]


def _deliver(cli: Cli) -> None:
    assert cli("init").returncode == 0
    for task in ("t1", "t2", "t3"):
        assert cli("put-attributes", task, "--attribute", "IPV4_ADDRESS=10.0.0.7").returncode == 0
        for percent in ("10", "50", "90"):
            assert cli("notify", task, "--status", "IN_PROGRESS", "--percent",
                       percent).returncode == 0
    assert cli("associate-artifact", "t1", ARN, "--description", "target").returncode == 0
    assert cli("drain").returncode == 0


def _percents(emulator: Emulator, task: str) -> list[Any]:
    return [u["Task"].get("ProgressPercent")
            for u in emulator.state.updates().get("ToolA", {}).get(task, [])]


def test_the_daemon_repairs_a_deleted_stream_and_a_lost_task(
    cli: Cli, emulator: Emulator, make_config: Callable[..., Path]
):
    """With repair rounds on, a stream deleted behind our back is created again and each of
    its tasks imported and sent its newest state, attributes and artifacts, with no older
    state; a task the Hub lost alone likewise; `verify` then finds nothing wrong."""
    _deliver(cli)
    config = make_config("repair.toml", verify={"every_seconds": 0.2})
    daemon = start_daemon(config)
    try:
        emulator.state.delete_stream("ToolA")
        wait_for(lambda: all(_percents(emulator, t) == [90] for t in ("t1", "t2", "t3")),
                 timeout=30)
        hub = emulator.state.task("ToolA", "t1")
        wait_for(lambda: hub.artifacts == {ARN: "target"}, timeout=10)
        # Each task's repair is whole (its last call answered) before t2 is lost again, so
        # the second loss is a repair of its own rather than part of an unfinished first one.
        wait_for(lambda: all(emulator.state.task("ToolA", t).attributes
                             for t in ("t1", "t2", "t3")), timeout=10)
        assert hub.attributes == [{"Type": "IPV4_ADDRESS", "Value": "10.0.0.7"}]
        emulator.state.lose_task("ToolA", "t2")
        wait_for(lambda: _percents(emulator, "t2") == [90], timeout=30)
        wait_for(lambda: emulator.state.task("ToolA", "t2").attributes, timeout=10)
        assert cli("verify").returncode == 0
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=10)
    repaired = [json.loads(line) for line in err.splitlines()
                if '"hub_repaired"' in line]
    assert {(e["stream"], e["task"]) for e in repaired} == {
        ("ToolA", "t1"), ("ToolA", "t2"), ("ToolA", "t3")}
    assert len(repaired) == 4  # t2 twice: with its stream, then alone


def test_a_newer_update_by_another_client_is_reported_not_overwritten(
    cli: Cli, emulator: Emulator, make_config: Callable[..., Path]
):
    """Someone else's later update: `hub_differs` (log, status), no call for that task; a Hub
    behind us (an older update written over ours) is sent our newest state again."""
    _deliver(cli)
    later = datetime.now(UTC).timestamp() + 3600
    emulator.state.change_task("ToolA", "t1", {"Status": "COMPLETED", "ProgressPercent": 100},
                               update_date_time=later)
    emulator.state.change_task("ToolA", "t3", {"ProgressPercent": 5},
                               update_date_time=later - 7200)
    config = make_config("repair.toml", verify={"every_seconds": 0.2})
    daemon = start_daemon(config)
    try:
        wait_for(lambda: _percents(emulator, "t3")[-1] == 90, timeout=30)
        wait_for(lambda: status_json(cli, 0)["hub_differs"] >= 1, timeout=30)
        calls_before = len(emulator.state.calls)
        wait_for(lambda: sum(c["operation"] == "DescribeMigrationTask"
                             for c in emulator.state.calls[calls_before:]) >= 6, timeout=30)
        assert "1 differ at the Hub" in cli("status").stdout
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=10)
    assert _percents(emulator, "t1") == [90, 100]  # ours never sent over theirs
    differs = [json.loads(line) for line in err.splitlines() if '"hub_differs"' in line]
    assert [(e["task"], e["fields"]) for e in differs if e["task"] == "t1"] == [
        ("t1", ["status", "progress_percent", "update_date_time"])]
    result = cli("verify", "--json")
    assert result.returncode == 6
    assert [t["task"] for t in json.loads(result.stdout)["tasks"] if not t["ok"]] == ["t1"]


def test_repair_on_both_engines(engine: Engine, engine_cli: Cli, emulator: Emulator,
                                engine_config: Callable[..., Path]):
    """The repair round's SQL (round-robin, the resend mark, the claim that carries it) on each
    engine: a deleted stream's task comes back at its newest state, attributes and mapping."""
    assert engine_cli("init").returncode == 0
    engine.insert(kind="resource_attributes", migration_task_name="t1",
                  resource_attributes='[{"Type": "FQDN", "Value": "t1.example"}]')
    engine.insert(kind="discovered_resource", migration_task_name="t1",
                  configuration_id="d-server-000000000009", resource_description="by hand")
    for percent in (10, 60):
        engine.insert(kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
                      progress_percent=percent)
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    daemon = start_daemon(engine_config("repair.toml", verify={"every_seconds": 0.2}))
    try:
        emulator.state.delete_stream("ToolA")
        wait_for(lambda: _percents(emulator, "t1") == [60], timeout=30)
        hub = emulator.state.task("ToolA", "t1")
        wait_for(lambda: hub.discovered == {"d-server-000000000009": "by hand"}, timeout=10)
        assert hub.attributes == [{"Type": "FQDN", "Value": "t1.example"}]
    finally:
        daemon.terminate()
        daemon.communicate(timeout=10)
    assert engine_cli("verify").returncode == 0


def _writes_since(emulator: Emulator, start: int) -> list[str]:
    reads = ("Describe", "List", "GetHomeRegion")
    return [c["operation"] for c in emulator.state.calls[start:]
            if not c["operation"].startswith(reads)]


def test_a_repair_interrupted_by_a_throttle_finishes_and_goes_quiet(
    cli: Cli, emulator: Emulator, make_config: Callable[..., Path]
):
    """A lost task is re-imported and its attribute list throttled once: the next try sends
    what the Hub still lacks, the repair ends (`hub_repaired` once) and the daemon then makes
    no write at all while nothing changes (it used to resend for ever)."""
    _deliver(cli)
    daemon = start_daemon(make_config("repair.toml", verify={"every_seconds": 0.2}))
    try:
        emulator.state.faults.update(throttle_next={"PutResourceAttributes": 1,
                                                    "AssociateCreatedArtifact": 1})
        emulator.state.lose_task("ToolA", "t1")
        wait_for(lambda: "t1" in emulator.state.streams["ToolA"]
                 and emulator.state.task("ToolA", "t1").attributes
                 and emulator.state.task("ToolA", "t1").artifacts, timeout=30)
        assert not emulator.state.faults.throttle_next  # both throttles were met
        time.sleep(1.0)  # the last outcome recorded
        start = len(emulator.state.calls)
        time.sleep(3.0)  # 15 repair rounds
        assert _writes_since(emulator, start) == []
        assert _percents(emulator, "t1") == [90]
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=10)
    repaired = [json.loads(line) for line in err.splitlines() if '"hub_repaired"' in line]
    assert [e["task"] for e in repaired] == ["t1"], err[-3000:]
    assert cli("verify").returncode == 0


def test_a_task_found_lost_by_a_normal_send_is_restored_whole(
    cli: Cli, emulator: Emulator, make_config: Callable[..., Path]
):
    """Repair rounds off: the tool's next state finds the task gone; the daemon imports it,
    sends that state, then its attribute list and artifact too, and `verify` agrees."""
    _deliver(cli)
    daemon = start_daemon(make_config("lost.toml"))
    try:
        emulator.state.lose_task("ToolA", "t1")
        assert cli("notify", "t1", "--status", "COMPLETED", "--percent", "100").returncode == 0
        wait_for(lambda: "t1" in emulator.state.streams["ToolA"]
                 and emulator.state.task("ToolA", "t1").artifacts == {ARN: "target"}, timeout=30)
        hub = emulator.state.task("ToolA", "t1")
        assert hub.attributes == [{"Type": "IPV4_ADDRESS", "Value": "10.0.0.7"}]
        assert _percents(emulator, "t1") == [100]
        wait_for(lambda: cli("verify").returncode == 0, timeout=10)
    finally:
        daemon.terminate()
        daemon.communicate(timeout=10)


def test_a_newer_hub_state_of_a_task_with_rows_waiting_is_no_difference():
    """Right after a database comes back, replica A reads a task whose newest state replica B
    sent but could not record yet (its row still pending): not `hub_differs`, not marked;
    once nothing waits, the same view is reported (once) and never sent over."""
    import threading

    from reporter.config import VerifyConfig
    from reporter.delivery.compare import Difference
    from reporter.delivery.repair import RepairRounds
    from reporter.stores.contract import TaskRecord

    rounds = RepairRounds(None, None, VerifyConfig(1.0), threading.Event(),  # type: ignore[arg-type]
                          lambda: 0.0)
    ours = 1_800_000_000.0
    waiting = TaskRecord("S", "t1", status="IN_PROGRESS", percent=40, update_time=ours,
                         pending=1, task_id=7)
    problems = [Difference("progress_percent", 40, 90),
                Difference("update_date_time", "ours", "theirs")]
    assert rounds._differs(waiting, problems, ours + 5) is False
    assert rounds.differing == {}
    settled = TaskRecord("S", "t1", status="IN_PROGRESS", percent=40, update_time=ours,
                         pending=0, task_id=7)
    assert rounds._differs(settled, problems, ours + 5) is False  # theirs is newer: reported
    assert rounds.differing == {7: ("progress_percent", "update_date_time")}
    behind = rounds._differs(settled, problems, ours - 60)  # the Hub behind us: sent again
    assert behind is True and rounds.differing == {}
