"""Manual mapping and undo as outbox kinds (discovered_resource, discovered_resource_removed,
created_artifact_removed): validated at intake, one ordered lane for an association and its
removal, coalesced per ARN or ConfigurationId, end to end on both engines."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from pathlib import Path

import pytest

from reporter import coalesce, rows
from reporter import config as config_mod
from reporter.delivery.courier import Courier
from reporter.emulator import Emulator
from reporter.hub.errors import Failure, Outcome
from reporter.hub_requests import ArtifactRemoval, Kind, ResourceAssociation, ResourceRemoval
from reporter.outbox import Outbox, OutboxValueError
from reporter.rows import OutboxRow
from reporter.stores.contract import ClaimedRow, ClaimedTask

from .engines import Engine
from .helpers import CONTRACT_DDL, Cli, insert, judged
from .test_delivery import FakeHub

ARN = "arn:aws:ec2:us-west-2:123456789012:instance/i-0aaa"
ARN2 = "arn:aws:ec2:us-west-2:123456789012:image/ami-0bbb"
NOW = 1_800_000_000.0
UNAVAILABLE = Failure(Outcome.TRANSIENT, "ServiceUnavailableException", "try later")


def _row(rid: int, kind: str, **values: object) -> OutboxRow:
    return OutboxRow(rid, kind, "t1", created_at="2027-01-15T08:00:00Z", **values)


@pytest.mark.parametrize(
    ("kind", "values", "field", "rule"),
    [
        ("discovered_resource", {}, "configuration_id", "is required"),
        ("discovered_resource", {"configuration_id": ""}, "configuration_id", "1-1600"),
        ("discovered_resource", {"configuration_id": "d" * 1601}, "configuration_id", "1-1600"),
        ("discovered_resource", {"configuration_id": "d-1\nd-2"}, "configuration_id",
         "single line"),
        ("discovered_resource", {"configuration_id": "d-1", "resource_description": "x" * 501},
         "resource_description", "at most 500"),
        ("discovered_resource", {"configuration_id": "d-1", "resource_description": "a\rb"},
         "resource_description", "single line"),
        ("discovered_resource_removed", {"configuration_id": 7}, "configuration_id",
         "is required"),
        ("created_artifact_removed", {}, "artifact_name", "is required"),
        ("created_artifact_removed", {"artifact_name": "arn:nope"}, "artifact_name",
         "must be an ARN"),
    ],
)
def test_each_new_kind_names_the_field_and_rule(
    kind: str, values: dict[str, object], field: str, rule: str
):
    """botocore's bounds (ConfigurationId 1-1600 on one line, Description <= 500 on one line,
    the artifact ARN's pattern) are checked at intake, the field and rule named."""
    problem = rows.judge(_row(1, kind, **values), "S", 0)
    assert isinstance(problem, rows.Problem)
    assert problem.field == field and rule in problem.rule, problem


def test_the_new_kinds_become_their_calls():
    """Each row becomes the call the model names, with its parameters."""
    assoc = rows.judge(_row(1, "discovered_resource", configuration_id="d-1",
                            resource_description="by hand"), "S", 0)
    assert isinstance(assoc, ResourceAssociation)
    assert assoc.params() == {"ProgressUpdateStream": "S", "MigrationTaskName": "t1",
                              "DiscoveredResource": {"ConfigurationId": "d-1",
                                                     "Description": "by hand"}}
    removal = rows.judge(_row(2, "discovered_resource_removed", configuration_id="d-1"), "S", 0)
    assert isinstance(removal, ResourceRemoval)
    assert removal.params()["ConfigurationId"] == "d-1"
    undo = rows.judge(_row(3, "created_artifact_removed", artifact_name=ARN), "S", 0)
    assert isinstance(undo, ArtifactRemoval)
    assert undo.params()["CreatedArtifactName"] == ARN
    assert {k.lane for k in Kind} == {Kind.TASK_STATE, Kind.RESOURCE_ATTRIBUTES,
                                      Kind.CREATED_ARTIFACT, Kind.DISCOVERED_RESOURCE,
                                      Kind.SOURCE_RESOURCE, Kind.APPLICATION_STATE}


def _plan(*outbox: OutboxRow, associated: set[str] | None = None,
          resources: set[str] | None = None) -> coalesce.Plan:
    return coalesce.plan_task([(r.id, rows.judge(r, "S", 0)) for r in outbox], None, None,
                          associated or set(), None, resources or set())


def test_coalescing_keeps_the_newest_call_per_arn_and_per_configuration_id():
    """Per ARN (or ConfigurationId) only the newest association or removal is sent; other
    keys keep their own; an association the Hub has from us is not made again, a removal is
    always sent."""
    plan = _plan(_row(1, "created_artifact", artifact_name=ARN),
                 _row(2, "created_artifact_removed", artifact_name=ARN),
                 _row(3, "created_artifact", artifact_name=ARN2),
                 _row(4, "discovered_resource", configuration_id="d-1"),
                 _row(5, "discovered_resource", configuration_id="d-1"),
                 _row(6, "discovered_resource", configuration_id="d-2"),
                 _row(7, "discovered_resource_removed", configuration_id="d-9"),
                 associated={ARN2}, resources={"d-2"})
    assert [r.row_id for r in plan.send] == [2, 5, 7]
    assert sorted(plan.superseded) == [
        (1, "superseded by row 2"), (3, "artifact already associated"),
        (4, "repeated by a later row"), (6, "discovered resource already associated")]


def test_an_association_and_its_removal_keep_their_order_through_a_failure():
    """They share one lane: while the association fails, its removal waits behind it (never
    reaching the Hub first); the other lanes go on."""
    hub = FakeHub({"AssociateCreatedArtifact": [UNAVAILABLE]})
    config = config_mod.parse({"hub": {"progress_update_stream": "S"}})
    courier = Courier(hub, config, threading.Event(), lambda: NOW, random.Random(1))
    outbox = [_row(1, "created_artifact", artifact_name=ARN),
              _row(2, "created_artifact_removed", artifact_name=ARN2),
              _row(3, "discovered_resource", configuration_id="d-1"),
              _row(4, "discovered_resource_removed", configuration_id="d-2")]
    task = ClaimedTask(1, "S", "t1", "lease", imported=True,
                       rows=[ClaimedRow(r.id, r.id, 0, NOW - 5, judged(r)) for r in outbox])
    delivery = courier.deliver(task)
    assert hub.calls == [("AssociateCreatedArtifact", 1), ("AssociateDiscoveredResource", 3),
                         ("DisassociateDiscoveredResource", 4)]
    out = delivery.outcome
    assert out.sent == [3, 4] and out.resources == [("d-1", None)] and out.resources_removed == ["d-2"]
    lanes = {lane.kind: lane.attempts for lane in out.lanes}
    assert lanes == {Kind.CREATED_ARTIFACT: 1, Kind.DISCOVERED_RESOURCE: 0}


def test_new_kinds_end_to_end_on_both_engines(engine: Engine, engine_cli: Cli, emulator: Emulator):
    """The shell writers queue each kind; a drain makes the calls in row order; `tasks` shows
    the manual mapping; an ARN associated again after its removal is associated again; bad
    values are dead letters naming the field."""
    assert engine_cli("init").returncode == 0
    emulator.state.add_server("d-server-000000000001", IPV4_ADDRESS="10.9.9.9")
    for args in (("associate-artifact", "t1", ARN), ("associate-artifact", "t1", ARN2),
                 ("associate-resource", "t1", "d-server-000000000001", "--description", "db"),
                 ("associate-resource", "t1", "d-server-000000000002")):
        result = engine_cli(*args)
        assert result.returncode == 0 and "queued row" in result.stdout, result.stderr
    bad = [engine.insert(kind="discovered_resource", migration_task_name="t1",
                         configuration_id="x" * 1601),
           engine.insert(kind="discovered_resource_removed", migration_task_name="t1"),
           engine.insert(kind="created_artifact_removed", migration_task_name="t1",
                         artifact_name="i-0abc")]
    assert engine_cli("drain", "--timeout", "30").returncode == 5
    hub = emulator.state.task("ToolA", "t1")
    assert sorted(hub.artifacts) == sorted([ARN, ARN2])
    assert hub.discovered == {"d-server-000000000001": "db", "d-server-000000000002": None}
    letters = json.loads(engine_cli("dead-letters", "list", "--json").stdout)
    assert [(d["id"], d["kind"]) for d in letters] == list(zip(bad, [
        "discovered_resource", "discovered_resource_removed", "created_artifact_removed"],
        strict=True))
    assert [d["reason"].split(":")[0] for d in letters] == [
        "configuration_id", "configuration_id", "artifact_name"]
    task = json.loads(engine_cli("tasks", "--json").stdout)[0]
    assert task["discovered_resources"] == ["d-server-000000000001", "d-server-000000000002"]
    assert task["mapped"] is True
    assert "manual: d-server-000000000001" in engine_cli("tasks").stdout

    assert engine_cli("disassociate-artifact", "t1", ARN).returncode == 0
    assert engine_cli("disassociate-resource", "t1", "d-server-000000000002").returncode == 0
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    assert list(hub.artifacts) == [ARN2]
    assert list(hub.discovered) == ["d-server-000000000001"]
    task = json.loads(engine_cli("tasks", "--json").stdout)[0]
    assert task["artifacts"] == [ARN2]
    assert task["discovered_resources"] == ["d-server-000000000001"]
    assert engine_cli("associate-artifact", "t1", ARN).returncode == 0  # after its removal
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    assert sorted(hub.artifacts) == sorted([ARN, ARN2])
    calls = [c["operation"] for c in emulator.state.calls
             if c["operation"] in ("AssociateCreatedArtifact", "DisassociateCreatedArtifact")]
    assert calls == ["AssociateCreatedArtifact"] * 2 + ["DisassociateCreatedArtifact",
                                                        "AssociateCreatedArtifact"]


def test_an_older_table_gets_the_new_columns_and_keeps_working(tmp_path: Path, cli: Cli,
                                                               outbox_path: Path,
                                                               emulator: Emulator):
    """A host's table made with the contract's first DDL keeps working; `init` adds the
    nullable columns; the writer says to run init when they are missing."""
    conn = sqlite3.connect(outbox_path)
    conn.executescript(CONTRACT_DDL)
    conn.close()
    with pytest.raises(Exception, match="run `mgh-reporter init` to add the column"):
        Outbox(outbox_path).discovered_resource("t1", "d-1")
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert cli("init").returncode == 0
    conn = sqlite3.connect(outbox_path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(outbox)")]
    conn.close()
    assert columns[-4:-2] == ["configuration_id", "resource_description"]
    Outbox(outbox_path).discovered_resource("t1", "d-1")
    assert cli("drain").returncode == 0
    assert emulator.state.task("ToolA", "t1").discovered == {"d-1": None}
    assert emulator.state.task("ToolA", "t1").updates


def test_the_writer_refuses_bad_values_before_any_insert(outbox_path: Path, cli: Cli):
    """`Outbox` methods validate first: the field and the rule, nothing written."""
    assert cli("init").returncode == 0
    box = Outbox(outbox_path)
    with pytest.raises(OutboxValueError, match="configuration_id"):
        box.discovered_resource("t1", "")
    with pytest.raises(OutboxValueError, match="resource_description"):
        box.discovered_resource("t1", "d-1", description="x" * 501)
    with pytest.raises(OutboxValueError, match="artifact_name"):
        box.created_artifact_removed("t1", "not-an-arn")
    conn = sqlite3.connect(outbox_path)
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    conn.close()
