"""Replicas of one PostgreSQL outbox as real processes: shared work and one stream creation,
kill -9, SIGSTOP between and during calls (the fence), drain beside replicas, LISTEN wake-ups
with no idle queries, lost connections, and the shared request budget."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reporter.emulator import Emulator

from .engines import PgServer, pg_insert
from .helpers import ROOT, child_env, free_port, wait_for
from .test_postgres import _cli, _state_rows, _write_config

pytestmark = [pytest.mark.replicas, pytest.mark.timeout(240)]


def _key(name: str) -> str:
    return ("AKIA" + name.upper() + "X" * 16)[:20]


def _start(config: Path, aws_env: dict[str, str], name: str) -> subprocess.Popen[str]:
    from .helpers import start_daemon

    return start_daemon(config, env={**aws_env, "AWS_ACCESS_KEY_ID": _key(name)},
                        stderr=subprocess.DEVNULL)


def _stop(*daemons: subprocess.Popen[str]) -> None:
    for d in daemons:
        if d.poll() is None:
            os.kill(d.pid, signal.SIGCONT)
            d.send_signal(signal.SIGTERM)
    for d in daemons:
        try:
            d.wait(15)
        except subprocess.TimeoutExpired:  # pragma: no cover - reported by the assertion
            d.kill()
            raise


def _last_percent(emulator: Emulator, task: str) -> int | None:
    try:
        updates = emulator.state.task("ToolA", task).updates
    except KeyError:
        return None
    return updates[-1]["Task"].get("ProgressPercent") if updates else None


def _in_order(emulator: Emulator, tasks: int) -> None:
    for t in range(tasks):
        sent = [u["Task"]["ProgressPercent"] for u in emulator.state.task("ToolA", f"t{t}").updates]
        assert sent == sorted(sent), (t, sent)


def _calls(emulator: Emulator, caller: str, since: float = 0.0) -> list[dict[str, Any]]:
    with emulator.state.lock:
        return [c for c in emulator.state.calls if c.get("caller") == _key(caller)
                and c["time"] >= since]


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_two_replicas_share_the_work_create_the_stream_once_and_list_themselves(
    pg_url: str, tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
):
    config = _write_config(tmp_path, pg_url, publish={"concurrency": 4, "max_concurrency": 4})
    assert _cli(config, "init").returncode == 0
    emulator.state.faults.update(latency=0.01)
    a, b = _start(config, aws_env, "a"), _start(config, aws_env, "b")
    try:
        for step in range(3):
            _state_rows(pg_url, 150, start=step * 10)
            time.sleep(0.2)
        wait_for(lambda: all(_last_percent(emulator, f"t{t}") == 20 for t in range(150)), 90)
        _in_order(emulator, 150)
        assert emulator.state.op_count("CreateProgressUpdateStream") == 1
        assert _calls(emulator, "a") and _calls(emulator, "b")  # both did work
        report = json.loads(_cli(config, "status", "--json").stdout)
        assert sorted(r["pid"] for r in report["replicas"]) == sorted([a.pid, b.pid])
        assert report["pending"] == 0
        text = _cli(config, "status").stdout
        assert "replicas     2 live" in text
    finally:
        _stop(a, b)
    assert json.loads(_cli(config, "status", "--json").stdout)["replicas"] == []


def test_kill_9_of_a_replica_loses_nothing(
    pg_url: str, tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
):
    """One replica dies mid-backlog; the other finishes its tasks once its lease is over."""
    config = _write_config(tmp_path, pg_url, outbox={"batch_size": 20},
                           publish={"max_concurrency": 2, "concurrency": 2})
    assert _cli(config, "init").returncode == 0
    emulator.state.faults.update(latency=0.03)
    _state_rows(pg_url, 120)
    _state_rows(pg_url, 120, start=50)
    a, b = _start(config, aws_env, "a"), _start(config, aws_env, "b")
    try:
        wait_for(lambda: len(_calls(emulator, "a")) > 10, 60)
        a.kill()
        a.wait()
        wait_for(lambda: all(_last_percent(emulator, f"t{t}") == 50 for t in range(120)), 90)
        _in_order(emulator, 120)
        report = json.loads(_cli(config, "status", "--json").stdout)
        assert report["pending"] == 0 and report["dead_letters"] == 0
    finally:
        _stop(a, b)


def test_a_replica_frozen_between_calls_sends_nothing_once_its_lease_is_gone(
    pg_url: str, tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
):
    """SIGSTOP while waiting for the rate cap (between calls), past the lease; another replica
    takes over; on SIGCONT the frozen one makes no further call for those tasks."""
    config = _write_config(tmp_path, pg_url, publish={
        "max_requests_per_second": 2, "concurrency": 1, "max_concurrency": 1})
    other = _write_config(tmp_path, pg_url, "other.toml")
    assert _cli(config, "init").returncode == 0
    _state_rows(pg_url, 12)
    a = _start(config, aws_env, "a")
    b = None
    try:
        wait_for(lambda: len(_calls(emulator, "a")) >= 3, 30)
        os.kill(a.pid, signal.SIGSTOP)
        frozen_at = time.time()
        b = _start(other, aws_env, "b")
        wait_for(lambda: all(_last_percent(emulator, f"t{t}") == 0 for t in range(12)), 90)
        assert time.time() - frozen_at > 6.0  # a's lease had to run out first
        _state_rows(pg_url, 12, start=70)  # newer states, sent by b
        wait_for(lambda: all(_last_percent(emulator, f"t{t}") == 70 for t in range(12)), 60)
        resumed = time.time()
        os.kill(a.pid, signal.SIGCONT)
        time.sleep(3.0)
        late = [c for c in _calls(emulator, "a", resumed)
                if c["task"] and c["operation"] != "ListDiscoveredResources"]
        assert late == [], late
        assert all(_last_percent(emulator, f"t{t}") == 70 for t in range(12))
    finally:
        _stop(a, *(d for d in [b] if d))


def test_a_replica_frozen_during_a_call_makes_no_further_call(
    pg_url: str, tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
):
    """SIGSTOP while a call is at the Hub; the call completes there; after the lease another
    replica sends the newer rows; on SIGCONT the frozen one sends nothing more for the task."""
    config = _write_config(tmp_path, pg_url)
    assert _cli(config, "init").returncode == 0
    a = _start(config, aws_env, "a")
    b = None
    try:
        pg_insert(pg_url, kind="task_state", migration_task_name="t0", status="IN_PROGRESS",
                  progress_percent=1)
        wait_for(lambda: _last_percent(emulator, "t0") == 1, 30)
        emulator.state.faults.update(latency=1.5)
        started = time.time()
        pg_insert(pg_url, kind="task_state", migration_task_name="t0", status="IN_PROGRESS",
                  progress_percent=2)
        pg_insert(pg_url, kind="resource_attributes", migration_task_name="t0",
                  resource_attributes='[{"Type": "IPV4_ADDRESS", "Value": "10.0.0.1"}]')
        wait_for(lambda: emulator.state.in_flight > 0, 10, 0.01)
        os.kill(a.pid, signal.SIGSTOP)
        assert time.time() - started < 1.5
        emulator.state.faults.update(latency=0.0)
        b = _start(config, aws_env, "b")
        pg_insert(pg_url, kind="task_state", migration_task_name="t0", status="IN_PROGRESS",
                  progress_percent=3)
        wait_for(lambda: _last_percent(emulator, "t0") == 3, 60)
        wait_for(lambda: emulator.state.task("ToolA", "t0").attributes, 30)
        resumed = time.time()
        os.kill(a.pid, signal.SIGCONT)
        time.sleep(3.0)
        writes = [c for c in _calls(emulator, "a", resumed)
                  if c["task"] and c["operation"] != "ListDiscoveredResources"]
        assert writes == []
        assert _last_percent(emulator, "t0") == 3
        sent = [u["Task"]["ProgressPercent"] for u in emulator.state.task("ToolA", "t0").updates]
        assert sent == sorted(sent)
    finally:
        _stop(a, *(d for d in [b] if d))


def test_drain_beside_replicas_waits_for_their_leases_and_counts_their_rejections(
    pg_url: str, tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
):
    config = _write_config(tmp_path, pg_url)
    assert _cli(config, "init").returncode == 0
    a = _start(config, aws_env, "a")
    try:
        _state_rows(pg_url, 30)
        assert _cli(config, "drain", "--timeout", "30", env=aws_env).returncode == 0
        assert all(_last_percent(emulator, f"t{t}") == 0 for t in range(30))
        # A row rejected while the drain runs, by whichever replica takes it in: exit 5.
        emulator.state.faults.update(fail_operations={"NotifyMigrationTaskState"})
        _state_rows(pg_url, 3, start=5)
        drain = subprocess.Popen(
            ["python", "-m", "reporter", "--config", str(config), "drain", "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env=child_env(aws_env))
        time.sleep(3.0)  # the drain is running, the three rows still failing
        assert drain.poll() is None
        pg_insert(pg_url, kind="task_state", migration_task_name="bad", status="DONE")
        time.sleep(0.5)
        emulator.state.faults.update(fail_operations=set())
        assert drain.wait(60) == 5, drain.communicate()[1]
        # A frozen replica holding leases: drain cannot finish them before its timeout (3).
        emulator.state.faults.update(latency=1.0)
        _state_rows(pg_url, 4, start=9)
        wait_for(lambda: emulator.state.in_flight > 0, 10, 0.01)
        os.kill(a.pid, signal.SIGSTOP)
        emulator.state.faults.update(latency=0.0)
        held = _cli(config, "drain", "--timeout", "2", env=aws_env)
        assert held.returncode == 3 and "pending" in held.stderr
        done = _cli(config, "drain", "--timeout", "30", env=aws_env)
        assert done.returncode == 0, done.stderr  # after the lease, the drain finishes them
    finally:
        _stop(a)


def test_listen_wakes_a_replica_at_once_and_idle_it_makes_no_queries(
    pg_url: str, tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
):
    config = _write_config(tmp_path, pg_url, publish={"interval_seconds": 30.0})
    assert _cli(config, "init").returncode == 0
    a = _start(config, aws_env, "a")
    try:
        pg_insert(pg_url, kind="task_state", migration_task_name="w", status="NOT_STARTED")
        wait_for(lambda: _last_percent(emulator, "w") is None and emulator.state.op_count(
            "NotifyMigrationTaskState") == 1, 30)
        time.sleep(1.0)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            def activity() -> list[tuple[Any, ...]]:
                return conn.execute(
                    "SELECT pid, query_start, query FROM pg_stat_activity"
                    " WHERE application_name = 'mgh-reporter' AND pid <> pg_backend_pid()"
                    " ORDER BY pid").fetchall()

            before = activity()
            time.sleep(3.0)
            assert activity() == before  # no query from either connection while idle
        for i in range(10):
            inserted = time.time()
            pg_insert(pg_url, kind="task_state", migration_task_name="w", status="IN_PROGRESS",
                      progress_percent=i + 1)
            wait_for(lambda n=i + 1: _last_percent(emulator, "w") == n, 10, 0.01)
            assert time.time() - inserted < 2.0
            time.sleep(0.3)
    finally:
        _stop(a)


def test_a_lost_connection_is_transient_and_an_outage_turns_health_red(
    tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
):
    server = PgServer()  # its own server: this test stops it
    try:
        url = server.database()
        port = free_port()
        config = _write_config(tmp_path, url, outbox={"unreachable_after_seconds": 1.0},
                               metrics={"listen": f"127.0.0.1:{port}"})
        assert _cli(config, "init").returncode == 0
        a = _start(config, aws_env, "a")
        try:
            wait_for(lambda: _health(port) == 200 if _port_open(port) else False, 30)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE application_name = 'mgh-reporter'")
            pg_insert(url, kind="task_state", migration_task_name="c", status="IN_PROGRESS",
                      progress_percent=1)
            wait_for(lambda: _last_percent(emulator, "c") == 1, 30)
            assert _health(port) == 200 and a.poll() is None
            server.pause()
            wait_for(lambda: _health(port) == 503, 30)
            assert a.poll() is None  # no crash loop
            server.resume()
            pg_insert(url, kind="task_state", migration_task_name="c", status="IN_PROGRESS",
                      progress_percent=2)
            wait_for(lambda: _last_percent(emulator, "c") == 2, 60)
            wait_for(lambda: _health(port) == 200, 30)
        finally:
            _stop(a)
    finally:
        server.stop()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_replicas_share_one_request_budget(
    pg_url: str, tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
):
    """Two replicas capped at 8 calls/s (the smaller of 8 and 20) send 8/s together."""
    slow = _write_config(tmp_path, pg_url, "slow.toml", publish={"max_requests_per_second": 8})
    fast = _write_config(tmp_path, pg_url, "fast.toml", publish={"max_requests_per_second": 20})
    assert _cli(slow, "init").returncode == 0
    a = _start(slow, aws_env, "a")
    b = _start(fast, aws_env, "b")
    try:
        time.sleep(7.0)  # both counted in
        _state_rows(pg_url, 60)
        wait_for(lambda: all(_last_percent(emulator, f"t{t}") == 0 for t in range(60)), 90)
        with emulator.state.lock:
            times = sorted(c["time"] for c in emulator.state.calls if c["task"])
        span = times[-1] - times[0]
        # 120 calls (import + state per task): at 8/s with 1 s of burst, at least ~14 s.
        assert len(times) >= 120
        assert len(times) <= 8 * span + 2 * 8 + 2, (len(times), span)
        assert _calls(emulator, "a") and _calls(emulator, "b")
    finally:
        _stop(a, b)
