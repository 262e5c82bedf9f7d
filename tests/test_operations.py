"""Operations: /metrics and /healthz, `check`, logs as JSON without secrets."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from reporter.emulator import Emulator
from reporter.logs import redact

from .helpers import Cli, free_port, http_get, start_daemon, wait_for


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_metrics_and_healthz(cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path):
    """Prometheus text with the contract's series; /healthz 200, then 503 with reason when blocked."""
    port = free_port()
    config = make_config("m.toml", metrics={"listen": f"127.0.0.1:{port}"})
    assert cli("init", config=config).returncode == 0
    for i in range(3):
        assert cli("notify", f"t{i}", "--status", "IN_PROGRESS", config=config).returncode == 0
    # The account's rate refuses the first two state updates: counted per operation.
    emulator.state.faults.update(throttle_next={"NotifyMigrationTaskState": 2})
    proc = start_daemon(config)
    base = f"http://127.0.0.1:{port}"
    try:
        ok_line = ('mgh_reporter_api_requests_total{operation="NotifyMigrationTaskState",'
                   'outcome="ok"} 3.0')
        wait_for(lambda: ok_line in http_get(base + "/metrics")[1])
        # The backlog gauges are refreshed once the pass has recorded what the calls did.
        wait_for(lambda: metric(http_get(base + "/metrics")[1], "mgh_reporter_pending_rows") == 0)
        status, text = http_get(base + "/metrics")
        assert status == 200
        assert metric(text, "mgh_reporter_last_success_timestamp_seconds") > 0
        assert ('mgh_reporter_throttles_total{operation="NotifyMigrationTaskState"} 2.0'
                in text)
        assert 'mgh_reporter_throttles_total{operation="ImportMigrationTask"}' not in text
        # The throttles set an adaptive send rate: a gauge, a `status` line, a JSON field.
        wait_for(lambda: metric(http_get(base + "/metrics")[1], "mgh_reporter_send_rate") > 0)
        wait_for(lambda: "throttled" in cli("status", config=config).stdout)
        shown = cli("status", config=config).stdout
        assert "the account's Migration Hub rate holds this host to" in shown
        assert json.loads(cli("status", "--json", config=config).stdout)["send_rate"] > 0
        for name in ("mgh_reporter_oldest_pending_seconds", "mgh_reporter_dead_letters",
                     "mgh_reporter_api_request_duration_seconds_bucket", "mgh_reporter_blocked",
                     "mgh_reporter_outage_backoff", "mgh_reporter_concurrency_limit"):
            assert name in text
        assert http_get(base + "/healthz") == (200, "ok\n")
        assert http_get(base + "/nope")[0] == 404
        emulator.state.faults.update(deny={"NotifyMigrationTaskState"})
        assert cli("notify", "t9", "--status", "IN_PROGRESS", config=config).returncode == 0
        wait_for(lambda: http_get(base + "/healthz")[0] == 503)
        status, body = http_get(base + "/healthz")
        assert "access denied" in body
        wait_for(lambda: metric(http_get(base + "/metrics")[1], "mgh_reporter_blocked") == 1)
        emulator.state.faults.update(deny=set())
        wait_for(lambda: http_get(base + "/healthz")[0] == 200)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_check_healthy(cli: Cli, emulator: Emulator):
    """`check` walks every step and changes nothing at the Hub."""
    assert cli("init").returncode == 0
    result = cli("check")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert [line.split("]")[1].split()[0] for line in lines[:4]] == [
        "config", "outbox", "credentials", "home"]
    assert "found via env" in result.stdout
    for op in ("CreateProgressUpdateStream", "ImportMigrationTask", "NotifyMigrationTaskState",
               "PutResourceAttributes", "AssociateCreatedArtifact", "ListDiscoveredResources"):
        assert f"mgh:{op}" in result.stdout
    assert emulator.state.streams == {}


def test_check_access_denied_names_the_iam_action(cli: Cli, emulator: Emulator):
    """A denied write fails the check with exit 4, naming the IAM action to grant."""
    assert cli("init").returncode == 0
    emulator.state.faults.update(deny={"PutResourceAttributes"})
    result = cli("check")
    assert result.returncode == 4
    assert "[FAIL] permission" in result.stdout
    assert "grant IAM action mgh:PutResourceAttributes" in result.stdout


def test_check_no_home_region(cli: Cli, emulator: Emulator):
    """No home Region: the check stops at that step with exit 4."""
    assert cli("init").returncode == 0
    emulator.state.home_region = None
    result = cli("check")
    assert result.returncode == 4
    assert "[FAIL] home region" in result.stdout and "permission" not in result.stdout


def test_check_bad_config_and_uninitialised_outbox(cli: Cli, tmp_path: Path):
    """Config errors and a missing outbox are the first failing steps (exit 1)."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[hub]\nprogress_update_stream = 'a|b'\n")
    result = cli("check", config=bad)
    assert result.returncode == 1 and "[FAIL] config" in result.stdout
    result = cli("check")
    assert result.returncode == 1 and "[FAIL] outbox" in result.stdout


def test_logs_are_json_and_never_carry_secrets(cli: Cli, emulator: Emulator, make_config: Any,
                                               aws_env: dict[str, str]):
    """At debug level every stderr line is a JSON event; no key id or secret appears."""
    config = make_config("debug.toml", log={"level": "debug", "format": "json"})
    assert cli("init", config=config).returncode == 0
    assert cli("notify", "t1", "--status", "IN_PROGRESS", config=config).returncode == 0
    emulator.state.faults.update(throttle=0.5, retry_after=0)
    result = cli("drain", config=config)
    assert result.returncode == 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines
    events = [json.loads(line) for line in lines]
    assert all({"event", "level", "timestamp"} <= set(e) for e in events)
    assert any(e["event"] == "row_sent" and e["task"] == "t1" for e in events)
    for secret in (aws_env["AWS_ACCESS_KEY_ID"], aws_env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in result.stderr


def test_redact_processor_scrubs_values_and_keys():
    """Secret-looking keys are dropped and key ids / signatures in text are scrubbed."""

    event = redact(None, "info", {
        "event": "x", "aws_secret_access_key": "abc", "session_token": "t",
        "error": "Credential=AKIAIOSFODNN7EXAMPLE/2026/us-west-2 Signature=abcdef0123",
        "note": "key AKIAIOSFODNN7EXAMPLE used",
    })
    assert event["aws_secret_access_key"] == "[REDACTED]" and event["session_token"] == "[REDACTED]"
    assert "AKIA" not in event["error"] and "abcdef0123" not in event["error"]
    assert "AKIA" not in event["note"]


@pytest.mark.parametrize("fmt", ["console"])
def test_console_log_format(cli: Cli, make_config: Any, fmt: str):
    """The console format is for people: not JSON, still one event per line with fields."""
    config = make_config("c.toml", log={"format": fmt, "level": "debug"})
    assert cli("init", config=config).returncode == 0
    assert cli("notify", "t1", "--status", "IN_PROGRESS", config=config).returncode == 0
    result = cli("drain", config=config)
    assert result.returncode == 0
    assert "pass" in result.stderr and not result.stderr.lstrip().startswith("{")


def test_outbox_lock_held_by_writers_is_transient_not_unhealthy(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path
):
    """When host writers hold the write lock past the daemon's busy timeout, the pass is retried
    on the next tick: a `store_busy` warning, /healthz stays 200, and the row is delivered once
    the lock is free."""
    port = free_port()
    config = make_config("busy.toml", metrics={"listen": f"127.0.0.1:{port}"},
                         outbox={"busy_timeout_ms": 100}, publish={"interval_seconds": 0.2})
    assert cli("init", config=config).returncode == 0
    proc = start_daemon(config)
    base = f"http://127.0.0.1:{port}"
    holder = sqlite3.connect(outbox_path, isolation_level=None)
    try:
        wait_for(lambda: http_get(base + "/healthz")[0] == 200)
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO outbox(kind, migration_task_name, status)"
                       " VALUES ('task_state', 'held', 'IN_PROGRESS')")
        holder.execute("COMMIT")
        holder.execute("BEGIN IMMEDIATE")  # a writer that keeps the lock for a while
        time.sleep(1.5)
        assert http_get(base + "/healthz") == (200, "ok\n")
        holder.execute("COMMIT")
        wait_for(lambda: getattr(emulator.state.streams.get("ToolA", {}).get("held"), "updates", None))
    finally:
        holder.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    events = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    assert "store_busy" in names
    assert "store_error" not in names, [e for e in events if e.get("event") == "store_error"]
