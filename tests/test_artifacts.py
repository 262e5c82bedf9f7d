"""Created artifacts: each (stream, task, ARN) associated once; bad ARNs dead-lettered."""

from __future__ import annotations

import json
from pathlib import Path

from reporter.emulator import Emulator

from .helpers import Cli, insert

ARN = "arn:aws:ec2:us-west-2:123456789012:instance/i-0aaa"


def test_artifacts_delivered_once_and_bad_arns_rejected(cli: Cli, emulator: Emulator, outbox_path: Path):
    """Each (stream, task, ARN) is associated once however often repeated; bad ARNs dead-letter."""
    assert cli("init").returncode == 0
    for _ in range(3):
        assert cli("associate-artifact", "t1", ARN).returncode == 0
    insert(outbox_path, kind="created_artifact", migration_task_name="t1", artifact_name="arn:bad")
    assert cli("drain").returncode == 5
    assert cli("associate-artifact", "t1", ARN, "--description", "again").returncode == 0
    assert cli("drain").returncode == 0  # exit 5 counts only this drain's rejections
    assert emulator.state.op_count("AssociateCreatedArtifact") == 1
    assert list(emulator.state.task("ToolA", "t1").artifacts) == [ARN]
    tasks = json.loads(cli("tasks", "--json").stdout)
    assert tasks[0]["artifacts"] == [ARN]
