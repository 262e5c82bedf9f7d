"""The daemon as a real process: signals, single instance, crash safety, outages, sd_notify."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from reporter.emulator import Emulator

from .helpers import Cli, fill, pending, start_daemon, wait_for


def test_run_delivers_and_stops_gracefully_on_sigterm(cli: Cli, emulator: Emulator, config_path: Path,
                                                      outbox_path: Path):
    """SIGTERM mid-backlog: the daemon exits 0 within 10 s and nothing is lost."""
    assert cli("init").returncode == 0
    emulator.state.faults.update(latency=0.05)
    fill(outbox_path, 300, 1)
    proc = start_daemon(config_path)
    try:
        wait_for(lambda: emulator.state.op_count("NotifyMigrationTaskState") > 10)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            print(proc.communicate()[1][-3000:])
    emulator.state.faults.update(latency=0)
    assert cli("drain").returncode == 0
    for t in range(300):
        assert emulator.state.task("ToolA", f"t{t}").updates


def test_second_daemon_refuses(cli: Cli, emulator: Emulator, config_path: Path):
    """A second `run` (or `drain`) on the same outbox refuses, naming the holder; `drain
    --json` still prints its summary object, with the refusal as its reason."""
    assert cli("init").returncode == 0
    first = start_daemon(config_path)
    try:
        wait_for(lambda: json.loads(cli("status", "--json").stdout)["daemon_pid"] == first.pid)
        second = start_daemon(config_path)
        _, err = second.communicate(timeout=20)
        assert second.returncode == 1
        assert f"pid {first.pid}" in err and "already delivering" in err
        result = cli("drain")
        assert result.returncode == 1 and f"pid {first.pid}" in result.stderr
        refused = cli("drain", "--json")  # --json: its one object all the same, on stdout
        assert refused.returncode == 1 and f"pid {first.pid}" in refused.stderr
        summary = json.loads(refused.stdout)
        assert summary["exit_code"] == 1 and summary["outcome"] == "error"
        assert "already delivering" in summary["reason"] and summary["pending"] is None
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=10) == 0


def test_kill_9_with_concurrent_writer_loses_nothing_and_never_goes_back(
    cli: Cli, emulator: Emulator, config_path: Path, outbox_path: Path
):
    """Repeated kill -9 during delivery while a host tool writes: every task ends at its last
    row and per-task UpdateDateTime at the Hub never goes backwards."""
    assert cli("init").returncode == 0
    emulator.state.faults.update(latency=0.01, throttle=0.1, retry_after=0)
    stop = threading.Event()
    last: dict[str, int] = {}

    def writer() -> None:
        conn = sqlite3.connect(outbox_path, timeout=5)
        n = 0
        while not stop.is_set():
            task = f"w{n % 25}"
            when = f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}Z"
            conn.execute(
                "INSERT INTO outbox(kind, migration_task_name, status, progress_percent,"
                " update_date_time) VALUES ('task_state', ?, 'IN_PROGRESS', ?, ?)",
                (task, n % 101, when),
            )
            conn.commit()
            last[task] = n % 101
            n += 1
            time.sleep(0.004)
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(4):
            proc = start_daemon(config_path, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            proc.kill()
            proc.wait()
    finally:
        stop.set()
        thread.join()
    emulator.state.faults.update(latency=0, throttle=0)
    result = cli("drain", "--timeout", "60")
    assert result.returncode == 0, result.stderr[-2000:]
    for task, percent in last.items():
        updates = emulator.state.task("ToolA", task).updates
        assert updates[-1]["Task"]["ProgressPercent"] == percent
        times = [u["UpdateDateTime"] for u in updates]
        assert times == sorted(times), task


def test_outage_is_ridden_out_with_bounded_request_rate(cli: Cli, emulator: Emulator,
                                                        config_path: Path, outbox_path: Path):
    """During a full outage the daemon probes one request at a time at the backoff pace, then
    recovers by itself once the Hub is back."""
    assert cli("init").returncode == 0
    fill(outbox_path, 200, 1)
    emulator.state.faults.update(outage=True)
    proc = start_daemon(config_path)
    try:
        time.sleep(1.0)
        before = len(emulator.state.calls)
        time.sleep(4.0)
        during = len(emulator.state.calls) - before
        # 200 tasks, 0.2 s ticks: without the brake ~4,000 calls; with it, at most a few a second.
        assert during <= 25, during
        emulator.state.faults.update(outage=False)
        wait_for(lambda: pending(outbox_path) == 0, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert all(emulator.state.task("ToolA", f"t{t}").updates for t in range(200))


def test_blocked_daemon_resumes_by_itself(cli: Cli, emulator: Emulator, config_path: Path,
                                          outbox_path: Path):
    """Home Region unset: one error event, rows kept; set it and the daemon resumes alone."""
    assert cli("init").returncode == 0
    emulator.state.home_region = None
    fill(outbox_path, 5, 2)
    proc = start_daemon(config_path)
    try:
        wait_for(lambda: json.loads(cli("status", "--json").stdout)["blocked"])
        time.sleep(1.5)
        assert pending(outbox_path) == 5  # the older state of each task is superseded
        assert emulator.state.op_count("NotifyMigrationTaskState") == 0
        emulator.state.home_region = "us-west-2"
        wait_for(lambda: pending(outbox_path) == 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.count("delivery_blocked") == 1
    assert "delivery_resumed" in names


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, tmp: Path) -> None:
        self.path = str(tmp / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data))

    def texts(self, prefix: str) -> list[float]:
        return [t for t, m in self.messages if any(l.startswith(prefix) for l in m.splitlines())]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_sd_notify_ready_watchdog_status_stopping(cli: Cli, emulator: Emulator, config_path: Path,
                                                  tmp_path: Path, outbox_path: Path):
    """READY once serving, WATCHDOG at half WATCHDOG_USEC, STATUS lines, STOPPING on SIGTERM."""
    assert cli("init").returncode == 0
    fill(outbox_path, 3, 1)
    notify = NotifySocket(tmp_path)
    proc = start_daemon(config_path, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        wait_for(lambda: notify.texts("READY=1"))
        time.sleep(3.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        time.sleep(0.3)
    finally:
        notify.close()
    beats = notify.texts("WATCHDOG=1")
    assert 4 <= len(beats) <= 9, len(beats)
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) < 0.9
    assert notify.texts("STATUS=pending")
    assert notify.texts("STOPPING=1")


def test_a_service_manager_that_stops_reading_never_hangs_the_daemon(
        cli: Cli, emulator: Emulator, config_path: Path, tmp_path: Path, outbox_path: Path):
    """NOTIFY_SOCKET's queue full (a manager, or a container's notify proxy, that stopped
    reading): each message waits a second at most, then is dropped; the daemon delivers and
    stops on SIGTERM as always, instead of blocking for ever in a send."""
    assert cli("init").returncode == 0
    path = str(tmp_path / "deaf.sock")
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(path)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    try:
        while True:  # fill the queue until the kernel refuses more
            filler.sendto(b"STATUS=filler", path)
    except BlockingIOError:
        pass
    fill(outbox_path, 3, 1)
    proc = start_daemon(config_path, env={"NOTIFY_SOCKET": path})
    try:
        wait_for(lambda: pending(outbox_path) == 0, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        deaf.close()
        filler.close()


def test_watchdog_stops_when_publish_loop_hangs(cli: Cli, emulator: Emulator, make_config: Any,
                                                tmp_path: Path, outbox_path: Path):
    """A pass stuck in a call stops the WATCHDOG pings, so systemd restarts the service."""
    config = make_config("hang.toml", aws={"read_timeout_seconds": 30.0})
    assert cli("init", config=config).returncode == 0
    notify = NotifySocket(tmp_path)
    proc = start_daemon(config, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        wait_for(lambda: notify.texts("READY=1"))
        time.sleep(1.0)
        emulator.state.faults.update(latency=20.0)
        fill(outbox_path, 1, 1)
        time.sleep(1.0)
        hung_at = time.monotonic()
        time.sleep(3.0)
        assert not [t for t in notify.texts("WATCHDOG=1") if t > hung_at + 1.2]
    finally:
        proc.kill()
        proc.wait()
        notify.close()
        emulator.state.faults.update(latency=0)


def test_due_times_are_judged_on_the_stores_clock(aws_env: dict[str, str], config_path: Path,
                                                  cli: Cli, monkeypatch: Any):
    """The publisher waits until the next due time measured on the clock that wrote it (the
    store's: PostgreSQL's own), not this machine's: with the store an hour behind, a task due
    in 0.1 s is waited for 0.1 s, not treated as long overdue (a spin) nor an hour away."""
    from types import SimpleNamespace

    from reporter import config as config_mod
    from reporter.daemon.service import Service

    assert cli("init").returncode == 0
    service = Service(config_mod.load(config_path), config_path)
    try:
        store = service.parts.store
        monkeypatch.setattr(store, "clock", lambda: time.time() - 3600)
        monkeypatch.setattr(service.parts.relay, "status",
                            lambda: SimpleNamespace(wakeup=store.clock() + 0.1))
        service.publisher.busy = True
        assert 0.05 < service.publisher.until_due() <= 0.1  # the interval is 0.2 s
    finally:
        service.parts.relay.close()
        service.parts.store.close()


def test_a_failing_pass_is_logged_retried_and_turns_health_503(
    aws_env: dict[str, str], config_path: Path, cli: Cli, monkeypatch: Any
):
    """A pass that raises (a bug, not a row) is caught: logged once as `pass_failed`, health
    names it (so /healthz is 503), and the next good pass clears it."""
    from reporter import config as config_mod
    from reporter.daemon.service import Service

    assert cli("init").returncode == 0
    service = Service(config_mod.load(config_path), config_path)
    try:
        relay = service.parts.relay
        real = relay.run_once
        monkeypatch.setattr(relay, "quiet", lambda: False)
        monkeypatch.setattr(relay, "run_once", lambda: (_ for _ in ()).throw(KeyError("boom")))
        service.tick()
        assert service.health() == "publisher failing: KeyError: 'boom'"
        monkeypatch.setattr(relay, "run_once", real)
        service.tick()
        assert service.health() is None
    finally:
        service.parts.relay.close()
        service.parts.store.close()


def test_a_recurring_store_error_is_one_condition_not_a_flap(
    aws_env: dict[str, str], config_path: Path, cli: Cli, monkeypatch: Any
):
    """Failures that recur between good passes (an immutable file's checkpoints, a disk that
    keeps filling) keep health unhealthy throughout; it clears once a quiet spell has passed."""
    from reporter import config as config_mod
    from reporter.daemon import service as daemon
    from reporter.daemon import store_health as storehealth
    from reporter.stores.contract import StoreError

    monkeypatch.setattr(storehealth, "STORE_HOLD_SECONDS", 0.5)
    assert cli("init").returncode == 0
    service = daemon.Service(config_mod.load(config_path), config_path)
    try:
        seen = []
        for _ in range(8):
            service.store_health.failed(StoreError("o.db: attempt to write a readonly database"),
                                  "maintain")
            time.sleep(0.1)
            service.store_health.ok()
            seen.append(service.health())
        assert all(h and "readonly" in h for h in seen)
        time.sleep(0.6)
        service.store_health.ok()
        assert service.health() is None
    finally:
        service.parts.relay.close()
        service.parts.store.close()
