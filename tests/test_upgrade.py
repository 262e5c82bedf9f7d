"""An upgrade across a real schema change: an outbox made and delivered by release 0.2.0 (its
source taken from git, run as it was) is taken over by this version's daemon without anyone
running `init`; what 0.2.0 sent but did not keep is recovered from the outbox rows still
there, and `verify` says "not recorded" (never "matches") where it cannot be."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from reporter.emulator import Emulator

from .helpers import ROOT, Cli, child_env, start_daemon, stop_daemon, wait_for

RELEASE_0_2_0 = "3b35377"  # the commit the CHANGELOG dates 0.2.0 (2026-12-03)
ARN = "arn:aws:ec2:us-west-2:123456789012:instance/i-0aaa"


@pytest.fixture(scope="module")
def release_0_2_0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """0.2.0's `reporter` package, from git. A checkout without git (the source tree copied into
    the Python 3.13 and 3.14 containers) skips, saying so; in a clone, no history fails."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("release 0.2.0 comes from git history: this tree is a copy without it"
                    " (the main run, in a clone, runs this test)")
    archive = subprocess.run(["git", "archive", RELEASE_0_2_0, "reporter"], cwd=ROOT,
                             capture_output=True, check=False)
    assert archive.returncode == 0, (
        f"cannot read release 0.2.0 ({RELEASE_0_2_0}) from git: {archive.stderr.decode()}"
        " (a shallow clone? fetch the history)")
    where = tmp_path_factory.mktemp("release-0.2.0")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(where, filter="data")
    return where


def test_the_daemon_upgrades_an_outbox_of_0_2_0_and_recovers_what_it_sent(
    cli: Cli, emulator: Emulator, release_0_2_0: Path, outbox_path: Path,
    config_path: Path, make_config: Callable[..., Path],
):
    def old(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reporter", "--config", str(config_path), *args],
            capture_output=True, text=True, timeout=60, cwd=release_0_2_0,
            env=child_env({"PYTHONPATH": str(release_0_2_0)}))

    version = subprocess.run([sys.executable, "-c", "import reporter; print(reporter.__file__)"],
                             capture_output=True, text=True, cwd=release_0_2_0,
                             env=child_env({"PYTHONPATH": str(release_0_2_0)}))
    assert version.stdout.startswith(str(release_0_2_0)), version.stdout + version.stderr
    assert old("init").returncode == 0
    for task in ("t1", "t2"):
        assert old("put-attributes", task, "--attribute", f"FQDN={task}.example").returncode == 0
        assert old("notify", task, "--status", "IN_PROGRESS", "--percent", "40").returncode == 0
    assert old("associate-artifact", "t1", ARN, "--description", "target").returncode == 0
    drained = old("drain", "--timeout", "30")
    assert drained.returncode == 0, drained.stderr[-2000:]
    conn = sqlite3.connect(outbox_path)
    with conn:  # t2's attribute row pruned before the upgrade: its list cannot be recovered
        conn.execute("DELETE FROM outbox WHERE kind = 'resource_attributes'"
                     " AND migration_task_name = 't2'")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(mgh_tasks)")}
    conn.close()
    assert "attributes" not in columns  # a real schema change lies between the two

    log = outbox_path.parent / "daemon.log"
    with log.open("w") as err:
        daemon = start_daemon(config_path, stderr=err)
        try:
            assert cli("notify", "t1", "--status", "COMPLETED", "--percent", "100").returncode == 0
            wait_for(lambda: emulator.state.task("ToolA", "t1").updates[-1]["Task"].get(
                "ProgressPercent") == 100, timeout=30)
        finally:
            stop_daemon(daemon, log)
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()
              if line.startswith("{")]
    assert "outbox_upgraded" in events
    report = json.loads(cli("verify", "--json").stdout)
    by_task = {t["task"]: t for t in report["tasks"]}
    assert by_task["t1"]["ok"], by_task["t1"]  # recovered from its row: compared, and equal
    (problem,) = by_task["t2"]["problems"]
    assert problem["field"] == "resource_attributes" and problem["sent"] == "not recorded"
    assert cli("verify").returncode == 6


def test_rows_0_2_0_took_in_but_never_sent_are_delivered_after_the_upgrade(
    cli: Cli, emulator: Emulator, release_0_2_0: Path, outbox_path: Path, config_path: Path,
):
    """0.2.0 took rows in during an outage (pending, with no stored request); the new daemon,
    started on that outbox, hands them back to intake in their place (its own commit, which
    no wake-up sees) and delivers them, newest state last, within seconds."""
    def old(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reporter", "--config", str(config_path), *args],
            capture_output=True, text=True, timeout=60, cwd=release_0_2_0,
            env=child_env({"PYTHONPATH": str(release_0_2_0)}))

    assert old("init").returncode == 0
    for percent in (10, 20):
        for task in ("t1", "t2"):
            assert old("notify", task, "--status", "IN_PROGRESS", "--percent",
                       str(percent)).returncode == 0
    emulator.state.faults.update(outage=True)
    assert old("drain", "--timeout", "3").returncode == 3
    conn = sqlite3.connect(outbox_path)
    assert conn.execute("SELECT count(*) FROM mgh_rows WHERE state = 'pending'").fetchone()[0]
    conn.close()
    emulator.state.faults.update(outage=False)
    daemon = start_daemon(config_path)  # it makes the upgrade's migrations itself
    try:
        wait_for(lambda: all(
            emulator.state.streams.get("ToolA", {}).get(task) is not None
            and emulator.state.task("ToolA", task).updates
            and emulator.state.task("ToolA", task).updates[-1]["Task"]["ProgressPercent"] == 20
            for task in ("t1", "t2")), timeout=30)
        wait_for(lambda: json.loads(cli("status", "--json").stdout)["pending"] == 0, timeout=30)
    finally:
        stop_daemon(daemon)
