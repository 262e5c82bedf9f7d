"""Reload: SIGHUP re-reads the config between passes; an invalid file or a restart-only change
keeps the running config with a clear event; nothing in flight is lost; no SIGHUP kills us.
And every line the daemon writes is one JSON object, whoever emits it."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import structlog

from reporter import logs
from reporter.emulator import Emulator
from reporter.stores.lock import lock_holder

from .helpers import ROOT, Cli, child_env, fill, insert, log_events, pending, start_daemon, wait_for


def _names(log: Path) -> list[str]:
    return [e["event"] for e in log_events(log, strict=True)]


def test_sighup_applies_a_new_config_without_losing_anything(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path, tmp_path: Path
):
    """A valid change (log level, interval) is applied between passes; rows written before and
    after the reload are all delivered; the daemon stays up and stops cleanly."""
    config = make_config("live.toml")
    assert cli("init", config=config).returncode == 0
    fill(outbox_path, 20, 2)
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = start_daemon(config, stderr=err)
        try:
            wait_for(lambda: pending(outbox_path) == 0)
            assert "row_sent" not in _names(log)  # info level: no per-row events
            text = config.read_text().replace('level = "info"', 'level = "debug"')
            config.write_text(text.replace("interval_seconds = 0.2", "interval_seconds = 0.3"))
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reloaded" in _names(log))
            insert(outbox_path, kind="task_state", migration_task_name="after", status="COMPLETED")
            wait_for(lambda: "row_sent" in _names(log))
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert pending(outbox_path) == 0
    assert emulator.state.task("ToolA", "after").updates[-1]["Task"]["Status"] == "COMPLETED"
    assert "stopped" in _names(log)


def test_an_invalid_file_keeps_the_running_config(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path, tmp_path: Path
):
    """A broken file: `reload_failed` names the exact error, delivery goes on as before."""
    config = make_config("live.toml")
    assert cli("init", config=config).returncode == 0
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = start_daemon(config, stderr=err)
        try:
            wait_for(lambda: "started" in _names(log))
            good = config.read_text()
            config.write_text(good.replace("interval_seconds = 0.2", "interval_seconds = -1"))
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload_failed" in _names(log))
            failed = next(e for e in log_events(log, strict=True) if e["event"] == "reload_failed")
            assert "[publish] interval_seconds = -1: must be > 0" in failed["error"]
            fill(outbox_path, 3, 1)
            wait_for(lambda: pending(outbox_path) == 0)
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


def test_moving_the_outbox_or_the_stream_is_refused(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path, tmp_path: Path
):
    """A reload that changes restart-only settings is refused whole, naming them; the daemon
    keeps delivering from the same outbox under the same stream."""
    config = make_config("live.toml")
    assert cli("init", config=config).returncode == 0
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = start_daemon(config, stderr=err)
        try:
            wait_for(lambda: "started" in _names(log))
            text = config.read_text().replace(str(outbox_path), str(tmp_path / "other.db"))
            config.write_text(text.replace('"ToolA"', '"ToolB"').replace('"info"', '"debug"'))
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload_refused" in _names(log))
            refused = next(e for e in log_events(log, strict=True) if e["event"] == "reload_refused")
            assert refused["changed"] == ["[outbox] path", "[hub] progress_update_stream"]
            fill(outbox_path, 2, 1)
            wait_for(lambda: pending(outbox_path) == 0)
            assert "row_sent" not in _names(log)  # the debug level was not applied either
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
    assert emulator.state.task("ToolA", "t0").updates


def test_sighup_does_not_kill_a_drain(cli: Cli, emulator: Emulator, config_path: Path,
                                      outbox_path: Path):
    """A hang-up during `drain` is ignored: it finishes with its normal exit code."""
    assert cli("init").returncode == 0
    emulator.state.faults.update(latency=0.05)
    fill(outbox_path, 30, 1)
    proc = subprocess.Popen([sys.executable, "-m", "reporter", "--config", str(config_path),
                             "drain"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(), cwd=ROOT)
    wait_for(lambda: emulator.state.op_count("NotifyMigrationTaskState") >= 1)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]


def test_other_libraries_log_json_lines_too():
    """A warning from APScheduler (or any stdlib logger) comes out as one JSON object with the
    logger name, redacted like our own events; debug chatter of libraries stays out."""
    out = io.StringIO()
    logs.configure("debug", "json", stream=out)
    try:
        logging.getLogger("apscheduler.scheduler").warning(
            "Execution of job %r skipped: maximum number of running instances reached", "tick")
        logging.getLogger("botocore.endpoint").debug("Signature=abcdef0123 sent")
        logging.getLogger("botocore.credentials").warning("found AKIAIOSFODNN7EXAMPLE")
    finally:
        logs.configure("info", "json")
        structlog.reset_defaults()
    lines = out.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["logger"] for e in events] == ["apscheduler.scheduler", "botocore.credentials"]
    assert "skipped" in events[0]["event"] and events[0]["level"] == "warning"
    assert "AKIA" not in lines[1]



def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler installed for `signum` (its SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("SigCgt:"))
    return bool(mask >> (signum - 1) & 1)


def test_signals_during_start_up_are_acted_on_not_fatal(
    cli: Cli, emulator: Emulator, config_path: Path, outbox_path: Path, tmp_path: Path
):
    """A SIGHUP (e.g. `systemctl reload`, a log rotation) that lands while the daemon still
    imports and opens its files neither kills it nor is lost: it reloads once started. A SIGTERM
    in that window stops it cleanly (exit 0), not by the default action."""
    assert cli("init").returncode == 0
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = start_daemon(config_path, stderr=err)
        try:
            wait_for(lambda: _catches(proc.pid, signal.SIGHUP), interval=0.001)
            assert lock_holder(outbox_path) is None  # still starting: the window under test
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reloaded" in _names(log))
            assert proc.poll() is None
            insert(outbox_path, kind="task_state", migration_task_name="held", status="COMPLETED")
            wait_for(lambda: pending(outbox_path) == 0)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
    with log.open("w") as err:
        proc = start_daemon(config_path, stderr=err)
        wait_for(lambda: _catches(proc.pid, signal.SIGTERM), interval=0.001)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert "stopped" in _names(log)
