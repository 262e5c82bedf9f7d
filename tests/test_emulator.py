"""The emulator is never laxer than the service: the documented per-type formats of
resource attributes are refused with InvalidInputException, over real HTTP via boto3."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from reporter.emulator import Emulator


@pytest.mark.parametrize(("kind", "value"), [
    ("IPV4_ADDRESS", "256.0.0.1"),
    ("IPV4_ADDRESS", "10.0.0"),
    ("IPV6_ADDRESS", "fe80::zz"),
    ("MAC_ADDRESS", "0011.2233.4455"),
    ("FQDN", "db,corp"),
    ("FQDN", "a=b"),
    ("FQDN", "tab\there"),
    ("FQDN", "del\x7f"),
])
def test_bad_attribute_values_are_refused(aws_env: dict[str, str], emulator: Emulator,
                                          kind: str, value: str):
    """PutResourceAttributes with a value breaking its type's format is InvalidInputException."""
    mgh = boto3.client("mgh", region_name="us-west-2")
    mgh.create_progress_update_stream(ProgressUpdateStreamName="S")
    mgh.import_migration_task(ProgressUpdateStream="S", MigrationTaskName="t1")
    with pytest.raises(ClientError) as caught:
        mgh.put_resource_attributes(ProgressUpdateStream="S", MigrationTaskName="t1",
                                    ResourceAttributeList=[{"Type": kind, "Value": value}])
    assert caught.value.response["Error"]["Code"] == "InvalidInputException"


def test_good_attribute_values_are_accepted(aws_env: dict[str, str], emulator: Emulator):
    """Each documented format's valid values pass."""
    mgh = boto3.client("mgh", region_name="us-west-2")
    mgh.create_progress_update_stream(ProgressUpdateStreamName="S")
    mgh.import_migration_task(ProgressUpdateStream="S", MigrationTaskName="t1")
    values = [("IPV4_ADDRESS", "255.0.0.1"), ("IPV6_ADDRESS", "2001:db8::1"),
              ("MAC_ADDRESS", "00-1A-2b-3C-4D-5E"), ("FQDN", "db1.corp.example")]
    mgh.put_resource_attributes(ProgressUpdateStream="S", MigrationTaskName="t1",
                                ResourceAttributeList=[{"Type": t, "Value": v} for t, v in values])
    assert len(emulator.state.task("S", "t1").attributes) == 4


def test_the_account_rate_throttles_every_caller_past_it(aws_env: dict[str, str],
                                                         emulator: Emulator):
    """`account_rate`: one token bucket for the whole account (a second's worth banked),
    whoever calls; past it ThrottlingException with RetryAfterSeconds, and the refusals are
    counted per operation. Migration Hub Config is not part of it."""
    import time

    from botocore.config import Config

    emulator.state.faults.update(account_rate=5.0, retry_after=2)
    no_retries = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    hosts = [boto3.client("mgh", region_name="us-west-2", config=no_retries) for _ in range(2)]
    config = boto3.client("migrationhub-config", region_name="us-west-2", config=no_retries)
    accepted, refused = 0, []
    started = time.monotonic()
    for i in range(40):
        try:
            hosts[i % 2].create_progress_update_stream(ProgressUpdateStreamName=f"S{i}")
            accepted += 1
        except ClientError as err:
            refused.append(err.response)
    elapsed = time.monotonic() - started
    assert refused and all(r["Error"]["Code"] == "ThrottlingException" for r in refused)
    assert {r.get("RetryAfterSeconds") for r in refused} == {2}
    assert 5 <= accepted <= 5 + 5 * elapsed + 1, (accepted, elapsed)
    for _ in range(10):  # the home Region lookup is another service: never this bucket's
        assert config.get_home_region()["HomeRegion"] == "us-west-2"
    summary = emulator.state.summary()
    assert summary["throttled"] == {"CreateProgressUpdateStream": len(refused)}
    # `/_emulator/calls`: each call in order, with its time and error (the benchmarks' trace)
    import json
    import urllib.request
    with urllib.request.urlopen(f"{emulator.url}/_emulator/calls", timeout=10) as reply:
        calls = json.load(reply)["calls"]
    hub_calls = [c for c in calls if c["operation"] == "CreateProgressUpdateStream"]
    assert len(hub_calls) == 40
    assert sum(c["error"] == "ThrottlingException" for c in hub_calls) == len(refused)
    assert [c["time"] for c in hub_calls] == sorted(c["time"] for c in hub_calls)
    time.sleep(0.5)  # refilled at the rate: two more tokens
    hosts[0].create_progress_update_stream(ProgressUpdateStreamName="later")


def test_the_whole_api_the_model_has(aws_env: dict[str, str], emulator: Emulator):
    """Every one of the model's 21 operations is answered, with its shapes, paging and errors:
    application states (an application Application Discovery Service lacks, the missing
    discovery role, DryRun), source resources (pages of at most 10), a task's update history
    (every state, newest received first: a reader must judge by UpdateDateTime) and a stream
    deletion that takes a while (writes refused meanwhile, a new empty stream after)."""
    import time

    import botocore.session
    from botocore.config import Config

    mgh = boto3.client("mgh", region_name="us-west-2",
                       config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
    model = botocore.session.get_session().get_service_model("mgh")
    simulated = {name.removeprefix("_op_") for name in dir(emulator.operations)
                 if name.startswith("_op_")}
    assert simulated == set(model.operation_names) and len(simulated) == 21

    def code(call: Any, **kwargs: Any) -> str:
        with pytest.raises(ClientError) as caught:
            call(**kwargs)
        return str(caught.value.response["Error"]["Code"])

    assert code(mgh.notify_application_state, ApplicationId="app-1",
                Status="IN_PROGRESS") == "ResourceNotFoundException"
    emulator.state.add_application("app-1")
    emulator.state.add_application("app-2")
    assert code(mgh.notify_application_state, ApplicationId="app-1", Status="IN_PROGRESS",
                DryRun=True) == "DryRunOperation"
    mgh.notify_application_state(ApplicationId="app-1", Status="IN_PROGRESS",
                                 UpdateDateTime=1_800_000_000)
    mgh.notify_application_state(ApplicationId="app-2", Status="COMPLETED")
    described = mgh.describe_application_state(ApplicationId="app-1")
    assert described["ApplicationStatus"] == "IN_PROGRESS"
    assert described["LastUpdatedTime"].timestamp() == 1_800_000_000
    first = mgh.list_application_states(ApplicationIds=["app-1", "app-2"], MaxResults=1)
    rest = mgh.list_application_states(ApplicationIds=["app-1", "app-2"], MaxResults=1,
                                       NextToken=first["NextToken"])
    assert [s["ApplicationId"] for s in first["ApplicationStateList"] +
            rest["ApplicationStateList"]] == ["app-1", "app-2"] and "NextToken" not in rest
    emulator.state.faults.update(no_discovery_role=True)
    assert code(mgh.notify_application_state, ApplicationId="app-1",
                Status="COMPLETED") == "PolicyErrorException"
    assert code(mgh.describe_application_state, ApplicationId="app-1") == "PolicyErrorException"
    emulator.state.faults.update(no_discovery_role=False)

    mgh.create_progress_update_stream(ProgressUpdateStreamName="S")
    mgh.import_migration_task(ProgressUpdateStream="S", MigrationTaskName="t")
    for n in range(12):
        mgh.associate_source_resource(ProgressUpdateStream="S", MigrationTaskName="t",
                                      SourceResource={"Name": f"server-{n:02d}",
                                                      "StatusDetail": "copying"})
    mgh.disassociate_source_resource(ProgressUpdateStream="S", MigrationTaskName="t",
                                     SourceResourceName="server-00")
    page1 = mgh.list_source_resources(ProgressUpdateStream="S", MigrationTaskName="t")
    page2 = mgh.list_source_resources(ProgressUpdateStream="S", MigrationTaskName="t",
                                      NextToken=page1["NextToken"])
    names = [r["Name"] for r in page1["SourceResourceList"] + page2["SourceResourceList"]]
    assert len(page1["SourceResourceList"]) == 10 and names == [f"server-{n:02d}"
                                                                for n in range(1, 12)]
    for when, percent in ((1_800_000_100, 10), (1_800_000_200, 50)):
        mgh.notify_migration_task_state(
            ProgressUpdateStream="S", MigrationTaskName="t",
            Task={"Status": "IN_PROGRESS", "ProgressPercent": percent},
            UpdateDateTime=when, NextUpdateSeconds=60)
    history = mgh.list_migration_task_updates(ProgressUpdateStream="S",
                                              MigrationTaskName="t")["MigrationTaskUpdateList"]
    assert [(u["MigrationTaskState"]["ProgressPercent"], u["UpdateType"]) for u in history] == [
        (50, "MIGRATION_TASK_STATE_UPDATED"), (10, "MIGRATION_TASK_STATE_UPDATED")]

    emulator.state.faults.update(delete_seconds=0.5)
    mgh.delete_progress_update_stream(ProgressUpdateStreamName="S")
    assert code(mgh.import_migration_task, ProgressUpdateStream="S",
                MigrationTaskName="u") == "InvalidInputException"
    assert code(mgh.create_progress_update_stream,
                ProgressUpdateStreamName="S") == "InvalidInputException"
    time.sleep(0.6)
    mgh.create_progress_update_stream(ProgressUpdateStreamName="S")  # a new, empty stream
    assert code(mgh.describe_migration_task, ProgressUpdateStream="S",
                MigrationTaskName="t") == "ResourceNotFoundException"
