"""Races and restarts: migrations serialised (inits side by side, and beside a daemon that is
re-creating its outbox), a stop while CreateProgressUpdateStream hangs hands the claimed tasks
back at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reporter.emulator import Emulator

from .helpers import ROOT, Cli, child_env, fill, pending, start_daemon, stop_daemon, wait_for


def _inits(config: Path, count: int) -> list[subprocess.CompletedProcess[str]]:
    procs = [subprocess.Popen([sys.executable, "-m", "reporter", "--config", str(config), "init"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=child_env(), cwd=ROOT) for _ in range(count)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=60), *p.communicate())
            for p in procs]


def test_inits_side_by_side_all_succeed(aws_env: dict[str, str], config_path: Path,
                                        outbox_path: Path):
    """Four `init`s on a fresh path at once: each waits its turn in one transaction that looks
    at the schema afresh; every one exits 0 and the outbox is whole."""
    for _ in range(3):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{outbox_path}{suffix}").unlink(missing_ok=True)
        results = _inits(config_path, 4)
        assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    fill(outbox_path, 3, 1)
    assert pending(outbox_path) == 3


def test_init_beside_a_daemon_reopening_a_recreated_outbox(
    cli: Cli, emulator: Emulator, config_path: Path, outbox_path: Path
):
    """The outbox deleted under `run`, then `init` at once while the daemon re-creates it too:
    `init` always succeeds (no "duplicate column name"), and delivery resumes."""
    assert cli("init").returncode == 0
    log = outbox_path.parent / "daemon.log"
    err = log.open("w")
    proc = start_daemon(config_path, stderr=err)
    try:
        wait_for(lambda: '"started"' in log.read_text())
        for round_ in range(4):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{outbox_path}{suffix}").unlink(missing_ok=True)
            results = _inits(config_path, 2)
            assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
            time.sleep(0.3 * round_)
        fill(outbox_path, 2, 1)
        wait_for(lambda: pending(outbox_path) == 0, timeout=30)
    finally:
        stop_daemon(proc, timeout=15)
        err.close()


def test_a_stop_while_stream_creation_hangs_hands_the_tasks_back(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path, tmp_path: Path
):
    """CreateProgressUpdateStream hangs at the network; SIGTERM: the daemon stops within its
    stop timeout, hands its claimed tasks back (none stays leased for lease_seconds), and a
    `drain` right after delivers everything in seconds."""
    config = make_config("hang.toml", outbox={"lease_seconds": 60.0},
                         aws={"read_timeout_seconds": 30.0})
    assert cli("init", config=config).returncode == 0
    fill(outbox_path, 5, 1)
    emulator.state.faults.update(garble=1.0, garble_kind="hang",
                                garble_only={"CreateProgressUpdateStream"})
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = start_daemon(config, stderr=err)
        wait_for(lambda: "home_region" in log.read_text(), timeout=30)
        time.sleep(1.0)  # the stream's creation is in flight, hanging
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - stopped_at < 8
    events = [json.loads(line)["event"] for line in log.read_text().splitlines() if line]
    assert "stop_during_stream_creation" in events
    emulator.state.faults.update(garble=0.0)
    started = time.monotonic()
    result = cli("drain", "--timeout", "30", config=config)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
