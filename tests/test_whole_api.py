"""The whole API a tool writes: application states (one lane per application, coalesced, never an
older state after a newer one; an application unknown to ADS is a dead letter naming it; a
missing discovery role holds application states only) and source resources (associated once
until removed, coalesced per name, restored by repair, verified), end to end on both engines."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reporter import coalesce, rows
from reporter import config as config_mod
from reporter.delivery.courier import Courier
from reporter.emulator import Emulator
from reporter.hub.errors import Failure, Outcome, classify
from reporter.hub_requests import (
    APPLICATIONS,
    ApplicationStateUpdate,
    Kind,
    SourceAssociation,
    SourceRemoval,
    decode,
    encode,
)
from reporter.outbox import Outbox, OutboxValueError
from reporter.rows import OutboxRow
from reporter.stores.contract import ClaimedRow, ClaimedTask

from .engines import Engine
from .helpers import Cli, judged, start_daemon, wait_for
from .test_delivery import FakeHub

APP = "d-application-0123456789abcd"
APP2 = "d-application-fedcba987654"
NOW = 1_800_000_000.0


def _row(rid: int, kind: str, **values: object) -> OutboxRow:
    values.setdefault("created_at", "2027-01-15T08:00:00Z")
    return OutboxRow(rid, kind, values.pop("migration_task_name", "t1"), **values)  # type: ignore[arg-type]


# -- validation and the calls rows become (pure) ----------------------------------------------
@pytest.mark.parametrize(
    ("kind", "values", "field", "rule"),
    [
        ("application_state", {"status": "IN_PROGRESS"}, "application_id", "is required"),
        ("application_state", {"application_id": "", "status": "IN_PROGRESS"},
         "application_id", "1-1600"),
        ("application_state", {"application_id": "a" * 1601, "status": "IN_PROGRESS"},
         "application_id", "1-1600"),
        ("application_state", {"application_id": "a\nb", "status": "IN_PROGRESS"},
         "application_id", "single line"),
        ("application_state", {"application_id": APP, "status": "FAILED"}, "status",
         "NOT_STARTED, IN_PROGRESS, COMPLETED"),
        ("application_state", {"application_id": APP, "status": None}, "status", "one of"),
        ("application_state", {"application_id": APP, "status": "COMPLETED",
                               "update_date_time": "yesterday"}, "update_date_time",
         "ISO-8601"),
        ("application_state", {"application_id": APP, "status": "COMPLETED",
                               "update_date_time": "1999-12-31T23:59:59Z"}, "update_date_time",
         "2000-01-01"),
        ("source_resource", {}, "source_resource_name", "is required"),
        ("source_resource", {"source_resource_name": "s" * 1601}, "source_resource_name",
         "1-1600"),
        ("source_resource", {"source_resource_name": "wave\r3"}, "source_resource_name",
         "single line"),
        ("source_resource", {"source_resource_name": "wave-3",
                             "resource_description": "x" * 501}, "resource_description",
         "at most 500"),
        ("source_resource", {"source_resource_name": "wave-3", "status_detail": 7},
         "status_detail", "text"),
        ("source_resource_removed", {"source_resource_name": 7}, "source_resource_name",
         "is required"),
        ("source_resource", {"source_resource_name": "wave-3",
                             "progress_update_stream": APPLICATIONS},
         "progress_update_stream", "must not contain"),
    ],
)
def test_each_new_kind_names_the_field_and_rule(kind: str, values: dict[str, object],
                                                field: str, rule: str):
    """The model's bounds (ApplicationId and a source's Name 1-1600 on one line, Description
    <= 500 on one line, ApplicationStatus's three values, a state's date) are checked at
    intake, the field and rule named."""
    problem = rows.judge(_row(1, kind, **values), "S", 0, NOW)
    assert isinstance(problem, rows.Problem)
    assert problem.field == field and rule in problem.rule, problem


def test_the_new_kinds_become_their_calls():
    """Each row becomes the call the model names; an application's state travels under its
    id in the APPLICATIONS pseudo-stream, whatever migration_task_name says."""
    state = rows.judge(_row(1, "application_state", migration_task_name="anything",
                            application_id=APP, status="COMPLETED",
                            update_date_time="2027-01-15T09:00:00+01:00"), "S", 0)
    assert isinstance(state, ApplicationStateUpdate)
    assert state.params() == {"ApplicationId": APP, "Status": "COMPLETED",
                              "UpdateDateTime": datetime(2027, 1, 15, 8, tzinfo=UTC)}
    assert (state.stream, state.task, state.stamped) == (APPLICATIONS, APP, False)
    stamped = rows.judge(_row(2, "application_state", application_id=APP,
                              status="NOT_STARTED"), "S", 0)
    assert isinstance(stamped, ApplicationStateUpdate) and stamped.stamped
    assert rows.key_of_row(_row(1, "application_state", application_id=APP), "S") == (
        APPLICATIONS, APP)
    assert rows.key_of_row(_row(1, "task_state", progress_update_stream=APPLICATIONS),
                           "S") != (APPLICATIONS, "t1")  # never among the applications
    source = rows.judge(_row(3, "source_resource", source_resource_name="wave-3",
                             resource_description="wave 3", status_detail="a\nb"), "S", 0)
    assert isinstance(source, SourceAssociation)
    assert source.params() == {"ProgressUpdateStream": "S", "MigrationTaskName": "t1",
                               "SourceResource": {"Name": "wave-3", "Description": "wave 3",
                                                  "StatusDetail": "a b"}}
    removal = rows.judge(_row(4, "source_resource_removed", source_resource_name="wave-3"),
                         "S", 0)
    assert isinstance(removal, SourceRemoval)
    assert removal.params()["SourceResourceName"] == "wave-3"
    for request in (state, stamped, source, removal):
        assert decode(encode(request)) == request
    assert Kind.SOURCE_RESOURCE_REMOVED.lane is Kind.SOURCE_RESOURCE


def test_application_states_coalesce_and_never_go_back():
    """An application's newest state wins; one older than the state already sent is
    superseded, never sent (as for a task's states)."""
    outbox = [_row(i, "application_state", application_id=APP, status=s)
              for i, s in ((1, "NOT_STARTED"), (2, "IN_PROGRESS"), (3, "COMPLETED"))]
    plan = coalesce.plan_task([(r.id, rows.judge(r, "S", 0)) for r in outbox], None, None, set())
    assert [r.row_id for r in plan.send] == [3]
    assert sorted(v.row for v in plan.superseded) == [1, 2]
    late = coalesce.plan_task([(2, rows.judge(outbox[1], "S", 0))], 3, None, set())
    assert not late.send and "older than the state already sent" in late.superseded[0].reason
    # a stamped state (no update_date_time) never goes back in time at the Hub
    stamped = rows.judge(outbox[0], "S", 0)
    assert isinstance(stamped, ApplicationStateUpdate)
    moved = coalesce.not_before(stamped, stamped.update_time.timestamp() + 60)
    assert moved.update_time.timestamp() == stamped.update_time.timestamp() + 60


def test_source_resources_coalesce_per_name_and_are_made_once():
    """Per name the newest association or removal wins; an association the Hub has from us
    is not made again; a removal always goes."""
    outbox = [_row(1, "source_resource", source_resource_name="wave-3"),
              _row(2, "source_resource", source_resource_name="app-a"),
              _row(3, "source_resource_removed", source_resource_name="wave-3"),
              _row(4, "source_resource", source_resource_name="app-a")]
    plan = coalesce.plan_task([(r.id, rows.judge(r, "S", 0)) for r in outbox], None, None, set(),
                          sources={"app-a"})
    assert [r.row_id for r in plan.send] == [3]
    reasons = dict(plan.superseded)
    assert reasons[1] == "superseded by row 3" and reasons[2] == "repeated by a later row"
    assert reasons[4] == "source resource already associated"


def test_the_policy_error_is_held_and_names_the_role():
    """PolicyErrorException holds only its kind of call, and says what a person must do."""
    from botocore.exceptions import ClientError

    failure = classify(ClientError({"Error": {"Code": "PolicyErrorException", "Message": "x"}},
                                   "NotifyApplicationState"))
    assert failure.outcome is Outcome.HELD
    assert "migrationhub-discovery" in failure.message


def _courier(hub: FakeHub, cfg: config_mod.Config) -> Courier:
    return Courier(hub, cfg, threading.Event(), lambda: NOW, random.Random(1))


def test_an_application_is_neither_created_nor_imported(tmp_path: Path):
    """An application's state is its one call: no stream, no import; its outcome records the
    state sent; a missing discovery role holds its lane (no row charged) until rechecked."""
    cfg = config_mod.parse({"hub": {"progress_update_stream": "S"}})
    outbox = [_row(1, "application_state", application_id=APP, status="IN_PROGRESS"),
              _row(2, "application_state", application_id=APP, status="COMPLETED")]
    task = ClaimedTask(1, APPLICATIONS, APP, "lease",
                       rows=[ClaimedRow(r.id, r.id, 0, NOW - 5, judged(r)) for r in outbox])
    hub = FakeHub()
    delivery = _courier(hub, cfg).deliver(task)
    assert hub.calls == [("NotifyApplicationState", 2)]
    out = delivery.outcome
    assert out.sent == [2] and [v.row for v in out.superseded] == [1]
    assert out.state is not None and out.state.status == "COMPLETED" and not out.imported

    held = FakeHub({"NotifyApplicationState": [Failure(
        Outcome.HELD, "PolicyErrorException", "the migrationhub-discovery role is missing")]})
    task.rows = task.rows[1:]
    delivery = _courier(held, cfg).deliver(task)
    assert not delivery.outcome.sent and not delivery.outcome.rejected
    assert delivery.outcome.failed_rows == []  # never given up for it
    lane = delivery.outcome.lanes[0]
    assert lane.kind is Kind.APPLICATION_STATE
    assert lane.retry_at is not None and lane.retry_at - NOW >= (
        0.9 * cfg.publish.blocked_recheck_seconds)
    assert delivery.blocked is None  # the gate stays open for everything else


def test_the_writer_refuses_bad_values_before_any_insert(tmp_path: Path, cli: Cli,
                                                        outbox_path: Path):
    """`Outbox` methods validate first: the field and the rule, nothing written."""
    assert cli("init").returncode == 0
    box = Outbox(outbox_path)
    with pytest.raises(OutboxValueError, match="status: must be one of NOT_STARTED"):
        box.application_state(APP, "FAILED")
    with pytest.raises(OutboxValueError, match="source_resource_name"):
        box.source_resource("t1", "")
    with pytest.raises(OutboxValueError, match="resource_description"):
        box.source_resource("t1", "wave-3", description="x\ny")
    assert box.application_state(APP, "IN_PROGRESS") > 0
    refused = cli("application-state", APP, "FAILED")
    assert refused.returncode == 2 and "FAILED" in refused.stderr


# -- end to end on both engines ------------------------------------------------------------
def _json(cli: Cli, *args: str) -> Any:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _app(engine: Engine, application: str, status: str) -> int:
    """An application_state row as a tool writes it in SQL (its id in migration_task_name
    too, which the contract's first table requires)."""
    return engine.insert(kind="application_state", migration_task_name=application,
                         application_id=application, status=status)


def test_application_states_end_to_end(engine: Engine, engine_cli: Cli, emulator: Emulator):
    """Application states written in SQL and by the shell writer; a drain sends each
    application's newest; an application ADS does not have is a dead letter naming it, sent
    once ADS has it and a person retries; `applications` lists them; other kinds are
    unaffected; `verify` finds them as sent."""
    assert engine_cli("init").returncode == 0
    emulator.state.add_application(APP)
    _app(engine, APP, "NOT_STARTED")
    _app(engine, APP, "IN_PROGRESS")
    _app(engine, APP2, "IN_PROGRESS")
    engine.insert(kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert engine_cli("drain", "--timeout", "30").returncode == 5  # APP2: a dead letter
    updates = emulator.state.application_updates
    assert [(u["ApplicationId"], u["Status"]) for u in updates] == [(APP, "IN_PROGRESS")]
    assert emulator.state.op_count("CreateProgressUpdateStream") == 1  # ToolA only
    assert emulator.state.task("ToolA", "t1").updates
    letters = _json(engine_cli, "dead-letters", "list", "--json")
    assert len(letters) == 1
    assert letters[0]["kind"] == "application_state" and letters[0]["task"] == APP2
    assert APP2 in letters[0]["reason"] and "Application Discovery Service" in (
        letters[0]["reason"])
    apps = _json(engine_cli, "applications", "--json")
    assert sorted((a["application"], a["status"], a["pending"]) for a in apps) == [
        (APP, "IN_PROGRESS", 0), (APP2, None, 0)]
    assert [t["task"] for t in _json(engine_cli, "tasks", "--json")] == ["t1"]

    emulator.state.add_application(APP2)  # a person creates it in ADS, then retries
    assert engine_cli("dead-letters", "retry", "--all").returncode == 0
    result = engine_cli("application-state", APP, "COMPLETED")
    assert result.returncode == 0 and "queued row" in result.stdout, result.stderr
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    assert emulator.state.applications[APP2]["ApplicationStatus"] == "IN_PROGRESS"
    assert emulator.state.applications[APP]["ApplicationStatus"] == "COMPLETED"
    assert _json(engine_cli, "verify", "--json")["applications"] == []


def test_ordering_holds_through_a_failure(engine: Engine, engine_cli: Cli, emulator: Emulator):
    """While NotifyApplicationState fails, newer states coalesce; once it answers, only the
    newest goes: the Hub never receives an older state after a newer one."""
    assert engine_cli("init").returncode == 0
    emulator.state.add_application(APP)
    emulator.state.faults.update(fail_operations={"NotifyApplicationState"})
    _app(engine, APP, "NOT_STARTED")
    assert engine_cli("drain", "--timeout", "1").returncode == 3
    assert emulator.state.op_count("NotifyApplicationState") >= 1  # tried, and failed
    _app(engine, APP, "IN_PROGRESS")
    _app(engine, APP, "COMPLETED")
    emulator.state.faults.update(fail_operations=set())
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    assert [u["Status"] for u in emulator.state.application_updates] == ["COMPLETED"]
    _app(engine, APP, "IN_PROGRESS")
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    times = [u["UpdateDateTime"] for u in emulator.state.application_updates]
    assert len(times) == 2 and times == sorted(times)  # a later row: a later (or equal) time


def test_a_missing_discovery_role_holds_application_states_only(
        engine: Engine, engine_cli: Cli, emulator: Emulator):
    """PolicyErrorException: application states wait (rechecked slowly, never dead letters),
    tasks keep flowing, and `status` says so naming the role; once the role exists, they go."""
    assert engine_cli("init").returncode == 0
    emulator.state.add_application(APP)
    emulator.state.faults.update(no_discovery_role=True)
    _app(engine, APP, "IN_PROGRESS")
    engine.insert(kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert engine_cli("drain", "--timeout", "3").returncode == 3  # the application still waits
    assert emulator.state.task("ToolA", "t1").updates  # the task went
    assert not emulator.state.application_updates
    status = _json(engine_cli, "status", "--json")
    assert status["applications"] == 1 and status["applications_held"] == 1
    assert "migrationhub-discovery" in status["held_reason"]
    assert status["blocked"] is None and status["dead_letters"] == 0
    shown = engine_cli("status").stdout
    assert "1 BLOCKED" in shown and "migrationhub-discovery" in shown
    apps = _json(engine_cli, "applications", "--json")
    assert apps[0]["held"] is True and apps[0]["pending"] == 1
    calls = emulator.state.op_count("NotifyApplicationState")
    assert calls <= int(3 / (0.9 * 0.5)) + 1  # held: once a recheck (0.5 s here, +-10%)

    emulator.state.faults.update(no_discovery_role=False)
    time.sleep(0.6)  # past the recheck
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    assert emulator.state.applications[APP]["ApplicationStatus"] == "IN_PROGRESS"
    assert _json(engine_cli, "status", "--json")["applications_held"] == 0


def test_source_resources_end_to_end(engine: Engine, engine_cli: Cli, emulator: Emulator):
    """Source resources associated and removed (in SQL and by the shell writers) reach the Hub
    in row order, coalesced; `tasks` shows them; an association is made once until removed;
    verify reports one lost at the Hub."""
    assert engine_cli("init").returncode == 0
    result = engine_cli("associate-source", "t1", "wave-3", "--description", "wave 3",
                        "--detail", "cut over on Friday")
    assert result.returncode == 0 and "queued row" in result.stdout, result.stderr
    for kind, name in (("source_resource", "app-a"), ("source_resource", "old")):
        engine.insert(kind=kind, migration_task_name="t1", source_resource_name=name)
    result = engine_cli("disassociate-source", "t1", "old")
    assert result.returncode == 0 and "queued row" in result.stdout, result.stderr
    engine.insert(kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    hub = emulator.state.task("ToolA", "t1")
    assert sorted(hub.sources) == ["app-a", "wave-3"]
    assert hub.sources["wave-3"] == {"Name": "wave-3", "Description": "wave 3",
                                     "StatusDetail": "cut over on Friday"}
    assert emulator.state.op_count("AssociateSourceResource") == 2  # "old" coalesced away
    assert emulator.state.op_count("DisassociateSourceResource") == 1
    assert _json(engine_cli, "tasks", "--json")[0]["source_resources"] == ["app-a", "wave-3"]

    engine.insert(kind="source_resource", migration_task_name="t1",
                  source_resource_name="app-a")  # already there: not made again
    hub.sources.pop("app-a")  # ... and meanwhile lost at the Hub behind our back
    result = engine_cli("verify", "--json")
    assert result.returncode == 6, result.stderr
    problems = json.loads(result.stdout)["tasks"][0]["problems"]
    assert {"field": "source_resource_name", "sent": ["app-a", "wave-3"],
            "hub": ["wave-3"]} in problems
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    assert emulator.state.op_count("AssociateSourceResource") == 2


def test_a_lost_task_gets_its_source_resources_back(engine: Engine, engine_cli: Cli,
                                                    emulator: Emulator,
                                                    engine_config: Callable[..., Path]):
    """The Hub loses the task: a repair imports it and sends its state and its source
    resources again (as for artifacts and mappings)."""
    config = engine_config("repair.toml", verify={"every_seconds": 0.5})
    assert engine_cli("init", config=config).returncode == 0
    engine.insert(kind="source_resource", migration_task_name="t1",
                  source_resource_name="wave-3", resource_description="w3")
    engine.insert(kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert engine_cli("drain", "--timeout", "30", config=config).returncode == 0
    emulator.state.lose_task("ToolA", "t1")
    daemon = start_daemon(config)
    try:
        def restored_sources() -> bool:
            try:
                return bool(emulator.state.task("ToolA", "t1").sources)
            except KeyError:
                return False

        wait_for(restored_sources, timeout=30)
    finally:
        daemon.terminate()
        daemon.communicate(timeout=10)
    restored = emulator.state.task("ToolA", "t1")
    assert restored.sources == {"wave-3": {"Name": "wave-3", "Description": "w3"}}
    assert restored.updates[-1]["Task"]["Status"] == "IN_PROGRESS"


def test_verify_reports_an_application_the_hub_shows_otherwise(
        engine: Engine, engine_cli: Cli, emulator: Emulator):
    """`verify --json` lists each differing application with its problems (field
    application_status) and exits 6."""
    assert engine_cli("init").returncode == 0
    emulator.state.add_application(APP)
    emulator.state.add_application(APP2)
    _app(engine, APP, "COMPLETED")
    _app(engine, APP2, "IN_PROGRESS")
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    emulator.state.applications[APP]["ApplicationStatus"] = "IN_PROGRESS"  # someone else
    result = engine_cli("verify", "--json")
    assert result.returncode == 6, result.stderr
    report = json.loads(result.stdout)
    assert report["applications"] == [{"application": APP, "problems": [
        {"field": "application_status", "sent": "COMPLETED", "hub": "IN_PROGRESS"}]}]
    assert report["applications_differing"] == 1
    text = engine_cli("verify")
    assert text.returncode == 6 and f"application {APP}: application_status sent" in text.stdout


def test_check_probes_the_new_writes_and_warns_when_missing(cli: Cli, emulator: Emulator):
    """`check` probes NotifyApplicationState and the source resource writes by DryRun (nothing
    changes at the Hub) and the new reads; a denied one, or a missing discovery role, is a
    warning naming the kind of row that needs it, not a failure."""
    assert cli("init").returncode == 0
    result = cli("check")
    assert result.returncode == 0, result.stdout
    for op in ("NotifyApplicationState", "AssociateSourceResource", "DisassociateSourceResource",
               "ListSourceResources", "ListApplicationStates"):
        assert f"[ ok ] permission   mgh:{op}" in result.stdout
    assert emulator.state.streams == {} and emulator.state.applications == {}
    emulator.state.faults.update(deny={"AssociateSourceResource"}, no_discovery_role=True)
    result = cli("check")
    assert result.returncode == 0, result.stdout
    warned = [line for line in result.stdout.splitlines() if line.startswith("[warn]")]
    assert any("mgh:AssociateSourceResource is not allowed" in line
               and "kind source_resource" in line for line in warned), warned
    assert any("mgh:NotifyApplicationState" in line and "migrationhub-discovery" in line
               and "kind application_state" in line for line in warned), warned


def test_the_iam_policy_names_every_action_the_daemon_uses():
    """The docs' IAM policy lists every write and read `check` probes."""
    from reporter.hub.client import CALL_OPERATIONS, OPTIONAL_OPERATIONS, READ_OPERATIONS

    page = (Path(__file__).parent.parent / "docs" / "aws.md").read_text()
    policy = json.loads(page.split("```json\n", 1)[1].split("```", 1)[0])
    actions = set(policy["Statement"][0]["Action"])
    for operation in (*CALL_OPERATIONS, *OPTIONAL_OPERATIONS, *READ_OPERATIONS, "GetHomeRegion"):
        assert f"mgh:{operation}" in actions, operation


@pytest.mark.parametrize(("remove", "add", "has"), [
    ({"kind": "source_resource_removed", "source_resource_name": "w"},
     {"kind": "source_resource", "source_resource_name": "w"}, "sources"),
    ({"kind": "discovered_resource_removed", "configuration_id": "w"},
     {"kind": "discovered_resource", "configuration_id": "w"}, "resources"),
    ({"kind": "created_artifact_removed",
      "artifact_name": "arn:aws:ec2:us-west-2:123456789012:instance/i-0w"},
     {"kind": "created_artifact",
      "artifact_name": "arn:aws:ec2:us-west-2:123456789012:instance/i-0w"}, "associated"),
])
def test_an_association_after_an_unrecorded_removal_is_made_again(
        remove: dict[str, str], add: dict[str, str], has: str):
    """A removal whose outcome was never recorded (a crash after the Hub took it) may have
    removed what we recorded as associated: a later association of the same key is made
    again, not judged "already associated" (the soak found the Hub left without it)."""
    key = next(v for k, v in add.items() if k != "kind")
    outbox = [_row(1, remove.pop("kind"), **remove), _row(2, add.pop("kind"), **add)]
    known = {"associated": set(), "resources": set(), "sources": set(), has: {key}}
    plan = coalesce.plan_task([(r.id, rows.judge(r, "S", 0)) for r in outbox], None, None,
                              known["associated"], None, known["resources"], known["sources"])
    assert [r.row_id for r in plan.send] == [2]
    assert dict(plan.superseded) == {1: "superseded by row 2"}
    alone = coalesce.plan_task([(2, rows.judge(outbox[1], "S", 0))], None, None,
                               known["associated"], None, known["resources"], known["sources"])
    assert not alone.send and "already associated" in alone.superseded[0].reason
