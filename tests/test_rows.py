"""Row validation, normalisation and coalescing against every limit in the contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from reporter import hub_requests, rows
from reporter.coalesce import plan_task
from reporter.hub_requests import ArtifactAssociation, AttributesUpdate, Request, StateUpdate
from reporter.rows import OutboxRow, Problem, to_request

NOW = "2026-11-25T10:00:00.000Z"


def state(**overrides: Any) -> OutboxRow:
    values: dict[str, Any] = {
        "id": 1, "kind": "task_state", "migration_task_name": "vm-1", "status": "IN_PROGRESS",
        "created_at": NOW,
    }
    values.update(overrides)
    return OutboxRow(**values)


def attrs(items: Any, **overrides: Any) -> OutboxRow:
    text = items if isinstance(items, str) else json.dumps(items)
    return OutboxRow(id=overrides.pop("id", 2), kind="resource_attributes",
                     migration_task_name="vm-1", resource_attributes=text, created_at=NOW,
                     **overrides)


def problem(row: OutboxRow) -> Problem:
    result = to_request(row, "Tool", 3600)
    assert isinstance(result, Problem), result
    return result


def test_state_row_uses_defaults():
    """A minimal task_state row gets the config stream, NextUpdateSeconds and created_at time."""
    req = to_request(state(), "Tool", 3600)
    assert isinstance(req, StateUpdate)
    assert req.params() == {
        "ProgressUpdateStream": "Tool", "MigrationTaskName": "vm-1",
        "Task": {"Status": "IN_PROGRESS"},
        "UpdateDateTime": datetime(2026, 11, 25, 10, tzinfo=UTC), "NextUpdateSeconds": 3600,
    }


def test_state_row_explicit_values_win():
    """Explicit stream, percent, detail, next update and time are sent as given."""
    req = to_request(state(progress_update_stream="Other", progress_percent=40, status_detail="x",
                           next_update_seconds=0, update_date_time="2026-01-02T03:04:05+02:00"),
                     "Tool", 3600)
    assert isinstance(req, StateUpdate)
    p = req.params()
    assert p["ProgressUpdateStream"] == "Other"
    assert p["Task"] == {"Status": "IN_PROGRESS", "StatusDetail": "x", "ProgressPercent": 40}
    assert p["NextUpdateSeconds"] == 0
    assert p["UpdateDateTime"] == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(("stream", "ok"), [
    ("a", True), ("x" * 50, True), ("x" * 51, False), ("", False), ("a/b", False),
    ("a:b", False), ("a|b", False), ("a\tb", False), ("a\x00b", False), ("Tool Name-1.0", True),
])
def test_stream_limits(stream: str, ok: bool):
    """Stream names are 1-50 characters without / : | or control characters."""
    result = to_request(state(progress_update_stream=stream), "Tool", 1)
    assert isinstance(result, Problem) != ok
    if not ok:
        assert result.field == "progress_update_stream"  # type: ignore[union-attr]


@pytest.mark.parametrize(("task", "ok"), [
    ("t", True), ("t" * 256, True), ("t" * 257, False), ("", False), ("a:b", False),
    ("a|b", False), ("server/01 (db)", True),
])
def test_task_name_limits(task: str, ok: bool):
    """Task names are 1-256 characters without : or |."""
    result = to_request(state(migration_task_name=task), "Tool", 1)
    assert isinstance(result, Problem) != ok
    if not ok:
        assert result.field == "migration_task_name"  # type: ignore[union-attr]


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("status", "RUNNING", "must be one of"),
    ("status", None, "must be one of"),
    ("progress_percent", -1, "0..100"),
    ("progress_percent", 101, "0..100"),
    ("progress_percent", 50.5, "integer"),
    ("progress_percent", "half", "integer"),
    ("next_update_seconds", -1, "0..2147483647"),
    ("next_update_seconds", "soon", "integer"),
    ("update_date_time", "yesterday", "ISO-8601"),
    ("update_date_time", "2026-11-25T10:00:00", "ISO-8601"),
    ("status_detail", 42, "text"),
    ("kind", "task_status", "must be one of"),
])
def test_state_row_rejections_name_field_and_rule(field: str, value: Any, rule: str):
    """Each bad column is rejected with its own name and rule."""
    found = problem(state(**{field: value}))
    assert found.field == field
    assert rule in found.rule


@pytest.mark.parametrize("percent", [0, 100, 100.0])
def test_percent_bounds_accepted(percent: Any):
    """0 and 100 (and an integral REAL) are valid percentages."""
    req = to_request(state(progress_percent=percent), "Tool", 1)
    assert isinstance(req, StateUpdate)
    assert req.percent == int(percent)


def test_status_detail_is_normalised_not_rejected():
    """Line breaks become spaces and text over 2,500 characters is cut."""
    req = to_request(state(status_detail="a\r\nb\nc\rd\u2028e" + "x" * 3000), "Tool", 1)
    assert isinstance(req, StateUpdate)
    assert req.detail is not None and req.detail.startswith("a b c d e")
    assert len(req.detail) == 2500


EPOCH_NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(("overrides", "field", "rule"), [
    ({"update_date_time": "9999-12-31T23:00:00Z"}, "update_date_time", "24 h in the future"),
    ({"update_date_time": "2027-01-16T08:00:01Z"}, "update_date_time", "24 h in the future"),
    ({"update_date_time": "1999-12-31T23:59:59Z"}, "update_date_time", "2000-01-01"),
    ({"created_at": "1970-01-01T00:00:00Z"}, "created_at", "2000-01-01"),
    ({"next_update_seconds": 2_147_483_648}, "next_update_seconds", "0..2147483647"),
    ({"next_update_seconds": 10**18}, "next_update_seconds", "0..2147483647"),
])
def test_values_the_hub_cannot_hold_are_rejected_at_intake(
    overrides: dict[str, Any], field: str, rule: str
):
    """Times beyond intake + 24 h or before 2000, and NextUpdateSeconds past the Hub's Integer,
    are rejected with the rule before any call."""
    result = to_request(state(**overrides), "Tool", 1, EPOCH_NOW)
    assert isinstance(result, Problem) and result.field == field and rule in result.rule


def test_the_bounds_themselves_are_accepted():
    """Exactly intake + 24 h, 2000-01-01 and 2,147,483,647 are valid."""
    for overrides in ({"update_date_time": "2027-01-16T08:00:00Z"},
                      {"update_date_time": "2000-01-01T00:00:00Z"},
                      {"next_update_seconds": 2_147_483_647}):
        assert isinstance(to_request(state(**overrides), "Tool", 1, EPOCH_NOW), StateUpdate)


def test_created_at_fallback_must_parse():
    """Without update_date_time, an unparseable created_at names created_at."""
    assert problem(state(created_at="garbage")).field == "created_at"


GOOD = [{"Type": "IPV4_ADDRESS", "Value": "10.0.0.1"}]


@pytest.mark.parametrize(("items", "field", "rule"), [
    ("not json", "resource_attributes", "JSON"),
    ({"Type": "FQDN"}, "resource_attributes", "list"),
    ([], "resource_attributes", "1-100"),
    ([{"Type": "FQDN", "Value": "a"}] * 101, "resource_attributes", "1-100"),
    (["FQDN"], "resource_attributes[0]", "object"),
    ([{"Type": "FQDN", "Value": "a", "X": 1}], "resource_attributes[0]", "unknown keys"),
    ([{"Type": "HOSTNAME", "Value": "a"}], "resource_attributes[0].Type", "one of"),
    ([{"Type": "FQDN", "Value": ""}], "resource_attributes[0].Value", "1-256"),
    ([{"Type": "FQDN", "Value": "a" * 257}], "resource_attributes[0].Value", "1-256"),
    ([{"Type": "FQDN", "Value": "a\nb"}], "resource_attributes[0].Value", "single line"),
    ([{"Type": "IPV4_ADDRESS", "Value": "256.1.1.1"}], "resource_attributes[0].Value", "IPv4"),
    ([{"Type": "IPV4_ADDRESS", "Value": "10.0.0"}], "resource_attributes[0].Value", "IPv4"),
    ([{"Type": "IPV6_ADDRESS", "Value": "fe80::zz"}], "resource_attributes[0].Value", "IPv6"),
    ([{"Type": "MAC_ADDRESS", "Value": "00:11:22:33:44"}], "resource_attributes[0].Value", "MAC"),
    ([*GOOD, {"Type": "MAC_ADDRESS", "Value": "0011.2233.4455"}],
     "resource_attributes[1].Value", "MAC"),
    *[([{"Type": "FQDN", "Value": f"db{ch}corp"}], "resource_attributes[0].Value", "FQDN")
      for ch in "<>{}\\/?,=\x00\x1f\x7f"],
])
def test_attribute_rejections(items: Any, field: str, rule: str):
    """Every attribute limit is enforced with the attribute's position named."""
    found = problem(attrs(items))
    assert found.field == field
    assert rule in found.rule


def test_attributes_valid_list():
    """All ten types with valid values become one PutResourceAttributes."""
    items = [
        {"Type": "IPV4_ADDRESS", "Value": "255.0.0.1"}, {"Type": "IPV6_ADDRESS", "Value": "fe80::1"},
        {"Type": "MAC_ADDRESS", "Value": "00-1A-2b-3C-4D-5E"}, {"Type": "FQDN", "Value": "a.b"},
        {"Type": "VM_MANAGER_ID", "Value": "vc-1"}, {"Type": "VM_MANAGED_OBJECT_REFERENCE", "Value": "vm-1"},
        {"Type": "VM_NAME", "Value": "db"}, {"Type": "VM_PATH", "Value": "/dc/vm/db"},
        {"Type": "BIOS_ID", "Value": "b"}, {"Type": "MOTHERBOARD_SERIAL_NUMBER", "Value": "m"},
    ]
    req = to_request(attrs(items), "Tool", 1)
    assert isinstance(req, AttributesUpdate)
    assert req.params()["ResourceAttributeList"] == items


ARN = "arn:aws:ec2:us-east-1:123456789012:instance/i-0abc"


@pytest.mark.parametrize(("name", "description", "field"), [
    (None, None, "artifact_name"),
    ("i-0abc", None, "artifact_name"),
    ("arn:aws:ec2:us-east-1:12345:instance/i-1", None, "artifact_name"),
    ("arn:aws:ec2:us-east-1:123456789012:" + "x" * 1600, None, "artifact_name"),
    (ARN, "d" * 501, "artifact_description"),
    (ARN, "two\nlines", "artifact_description"),
])
def test_artifact_rejections(name: Any, description: Any, field: str):
    """Artifact names must be ARNs of 1-1600 chars; descriptions one line of <= 500."""
    row = OutboxRow(id=3, kind="created_artifact", migration_task_name="vm-1", created_at=NOW,
                    artifact_name=name, artifact_description=description)
    assert problem(row).field == field


def test_artifact_valid():
    """A valid ARN with a description becomes AssociateCreatedArtifact."""
    row = OutboxRow(id=3, kind="created_artifact", migration_task_name="vm-1", created_at=NOW,
                    artifact_name=ARN, artifact_description="d" * 500)
    req = to_request(row, "Tool", 1)
    assert isinstance(req, ArtifactAssociation)
    assert req.params()["CreatedArtifact"] == {"Name": ARN, "Description": "d" * 500}


def test_newer_means_inserted_later_not_a_larger_id():
    """With an insertion order given (ids reused), the row inserted last wins even with a
    smaller id, and the floor is compared in the same order."""
    order = {9: 1, 2: 2}
    plan = plan_task([(9, _req(9)), (2, _req(2))], None, None, set(), order)
    assert [r.row_id for r in plan.send] == [2]
    assert plan.superseded == [(9, "superseded by row 2")]
    plan = plan_task([(2, _req(2))], 1, None, set(), {2: 2})
    assert [r.row_id for r in plan.send] == [2]
    plan = plan_task([(2, _req(2))], 3, None, set(), {2: 2})
    assert plan.send == [] and plan.superseded == [(2, "older than the state already sent")]


def _req(row_id: int, **kw: Any) -> Request:
    result = to_request(state(id=row_id, **kw), "Tool", 1)
    assert not isinstance(result, Problem)
    return result


def test_plan_sends_newest_state_and_supersedes_older():
    """Of many waiting states only the newest is sent; the rest are superseded."""
    plan = plan_task([(i, _req(i)) for i in (3, 1, 2)], None, None, set())
    assert [r.row_id for r in plan.send] == [3]
    assert sorted(i for i, _ in plan.superseded) == [1, 2]


def test_plan_never_sends_older_than_already_sent():
    """A retried row older than the last sent state is superseded, not sent."""
    plan = plan_task([(5, _req(5))], state_floor=9, attributes_floor=None, associated=set())
    assert plan.send == []
    assert plan.superseded[0][0] == 5


def test_plan_rejects_invalid_and_keeps_order():
    """Invalid rows are rejected; state, attributes and artifacts go in row order."""
    a = to_request(attrs(GOOD, id=4), "Tool", 1)
    art = to_request(OutboxRow(id=6, kind="created_artifact", migration_task_name="vm-1",
                               created_at=NOW, artifact_name=ARN), "Tool", 1)
    art_again = to_request(OutboxRow(id=7, kind="created_artifact", migration_task_name="vm-1",
                                     created_at=NOW, artifact_name=ARN), "Tool", 1)
    bad = Problem("status", "nope")
    plan = plan_task([(2, _req(2)), (4, a), (5, bad), (6, art), (7, art_again)], None, None, set())
    assert [r.row_id for r in plan.send] == [2, 4, 7]
    assert plan.rejected == [(5, bad.reason)]
    assert [i for i, _ in plan.superseded] == [6]


def test_plan_skips_artifacts_already_associated():
    """An ARN already associated for the task is not sent again."""
    art = to_request(OutboxRow(id=6, kind="created_artifact", migration_task_name="vm-1",
                               created_at=NOW, artifact_name=ARN), "Tool", 1)
    plan = plan_task([(6, art)], None, None, {ARN})
    assert plan.send == [] and plan.superseded[0][0] == 6


@pytest.mark.parametrize("row", [
    state(status_detail="copying ✓ \U0001f680", progress_percent=40, next_update_seconds=60),
    state(update_date_time="2026-11-25T10:00:00.123+02:00"),
    attrs([{"Type": "IPV4_ADDRESS", "Value": "10.0.0.1"}, {"Type": "FQDN", "Value": "a.b"}]),
    OutboxRow(id=3, kind="created_artifact", migration_task_name="vm-1",
              artifact_name="arn:aws:ec2:us-east-1:123456789012:instance/i-1",
              artifact_description="the copy"),
    OutboxRow(id=4, kind="created_artifact_removed", migration_task_name="vm-1",
              artifact_name="arn:aws:ec2:us-east-1:123456789012:instance/i-1"),
    OutboxRow(id=5, kind="discovered_resource", migration_task_name="vm-1",
              configuration_id="d-server-0123456789abc", resource_description=None),
    OutboxRow(id=6, kind="discovered_resource_removed", migration_task_name="vm-1",
              configuration_id="d-server-0123456789abc"),
], ids=lambda row: str(row.kind))
def test_a_judged_request_round_trips_through_its_stored_form(row: OutboxRow):
    """What intake stores is what delivery sends: every kind, every field, the time zone."""
    checked = rows.judge(row, "S", 3600)
    assert not isinstance(checked, Problem), checked
    assert hub_requests.decode(hub_requests.encode(checked)) == checked
    assert hub_requests.decode(hub_requests.encode(checked)).params() == checked.params()


@pytest.mark.parametrize("text", ["", "null", "[1]", '{"not": 1}', '{"kind": "nope"}',
                                  '{"kind": "task_state", "row_id": 1}',
                                  '{"kind": "task_state", "row_id": 1, "stream": "S",'
                                  ' "task": "t", "status": "X", "detail": null, "percent": null,'
                                  ' "update_time": "yesterday", "next_update_seconds": 1}'])
def test_a_stored_request_that_does_not_read_back_is_a_value_error(text: str):
    with pytest.raises(ValueError, match=r"not a stored request|Invalid isoformat"):
        hub_requests.decode(text)
