"""The emulator is never laxer than the service: the documented per-type formats of
resource attributes are refused with InvalidInputException, over real HTTP via boto3."""

from __future__ import annotations

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
    time.sleep(0.5)  # refilled at the rate: two more tokens
    hosts[0].create_progress_update_stream(ProgressUpdateStreamName="later")
