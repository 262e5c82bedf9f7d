"""The fleet scenario: many daemons (processes, real outboxes) of one account against the
stand-in with an account-wide rate (a token bucket, ThrottlingException with RetryAfterSeconds
past it), each host's tool writing a burst at once. Measures the share of calls throttled, the
fleet's time against the time the account's rate needs for the calls the work requires (a
stream, an import and a state per task), and how far the last host lags the median.

The daemons are started first and the bursts written once every one said READY=1 (as a wave
migration starts its tools on hosts whose services already run): 30 Python processes starting
on this machine's 2 cores take several seconds of CPU that hosts of a real fleet do not share,
and would otherwise be measured as the fleet's time.

`python benchmarks/fleet.py --hosts 30 --rate 20 --tasks 10` runs it alone (prototyping);
`python benchmarks/run.py fleet` records it."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CREDS = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
         "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
         "AWS_REGION": "us-west-2", "AWS_EC2_METADATA_DISABLED": "true"}
STATES = ((10, "IN_PROGRESS"), (50, "IN_PROGRESS"), (100, "COMPLETED"))


def _get(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(f"{url}/_emulator/{path}", data, timeout=60) as reply:
        return json.load(reply)


def _host(work: Path, index: int, env: dict[str, str]) -> tuple[Path, str]:
    """One host: its config and its (empty) outbox."""
    home = work / f"host{index:02d}"
    home.mkdir()
    stream = f"Fleet{index:02d}"
    config = home / "config.toml"
    config.write_text(f'[outbox]\npath = "{home / "outbox.db"}"\n'
                      f'[hub]\nprogress_update_stream = "{stream}"\n'
                      '[log]\nlevel = "warning"\n')
    subprocess.run([sys.executable, "-m", "reporter", "--config", str(config), "init"],
                   env=env, check=True, capture_output=True)
    return config, stream


def _burst(config: Path, tasks: int) -> None:
    """The host's tool writes every state of every task at once."""
    conn = sqlite3.connect(config.parent / "outbox.db")
    with conn:
        for percent, status in STATES:
            conn.executemany(
                "INSERT INTO outbox(kind, migration_task_name, status, progress_percent)"
                " VALUES ('task_state', ?, ?, ?)",
                [(f"vm-{t:03d}", status, percent) for t in range(tasks)])
    conn.close()


def _await_ready(sock: socket.socket, hosts: int, timeout: float) -> None:
    """Until `hosts` daemons said READY=1 on the notify socket (as to systemd)."""
    deadline = time.monotonic() + timeout
    ready = 0
    while ready < hosts:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            raise SystemExit(
                f"fleet: {hosts - ready} daemons not ready in {timeout:.0f} s") from None
        ready += "READY=1" in message.splitlines()


def run_fleet(hosts: int, rate: float, tasks: int, timeout: float = 600.0) -> dict[str, Any]:
    """Start `hosts` daemons at once against an account of `rate` calls/s; wait until every
    host's tasks are at their last state."""
    emulator = subprocess.Popen(
        [sys.executable, "-m", "reporter", "emulator", "--port", "0", "--map-delay", "0"],
        stdout=subprocess.PIPE, text=True)
    assert emulator.stdout is not None
    url = emulator.stdout.readline().split(" on ", 1)[1].split()[0]
    env = {**os.environ, **CREDS, "AWS_ENDPOINT_URL_MIGRATION_HUB": url,
           "AWS_ENDPOINT_URL_MIGRATIONHUB_CONFIG": url}
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        _get(url, "faults", {"account_rate": rate, "retry_after": 1})
        work = Path(tempfile.mkdtemp(prefix="mgh-fleet-"))
        configs = [_host(work, i, env) for i in range(hosts)]
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(work / "notify.sock"))
        for config, _ in configs:
            daemons.append(subprocess.Popen(
                [sys.executable, "-m", "reporter", "--config", str(config), "run"],
                env={**env, "NOTIFY_SOCKET": str(work / "notify.sock")},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _await_ready(notify, hosts, timeout)
        notify.close()
        started = time.time()
        for config, _ in configs:
            _burst(config, tasks)
        done: dict[str, float] = {}
        while len(done) < hosts:
            if time.time() - started > timeout:
                raise SystemExit(f"fleet: {hosts - len(done)} hosts not done in {timeout:.0f} s")
            state = _get(url, "state")
            for _, stream in configs:
                held = state["streams"].get(stream, {})
                if stream not in done and len(held) == tasks and all(
                        (t["last"] or {}).get("Task", {}).get("Status") == "COMPLETED"
                        for t in held.values()):
                    done[stream] = time.time()
            time.sleep(0.2)
        state = _get(url, "state")
        Path("/tmp/fleet-calls.json").write_text(json.dumps(_get(url, "calls")))
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(timeout=10)
    hub_ops = {k: v for k, v in state["operations"].items()
               if k not in ("GetHomeRegion", "CreateHomeRegionControl",
                            "DescribeHomeRegionControls")}
    calls = sum(hub_ops.values())
    throttled = sum(state["throttled"].values())
    needed = hosts * (1 + 2 * tasks)
    seconds = max(done.values()) - started
    per_host = sorted(t - started for t in done.values())
    ideal = needed / rate
    return {
        "hosts": hosts, "rate": rate, "tasks": tasks, "calls": calls, "throttled": throttled,
        "accepted": calls - throttled, "needed": needed,
        "throttled_share": throttled / calls if calls else 0.0,
        "seconds": seconds, "ideal_seconds": ideal, "time_ratio": seconds / ideal,
        "first_host_seconds": per_host[0], "median_host_seconds": statistics.median(per_host),
        "last_host_seconds": per_host[-1],
        "spread": per_host[-1] / statistics.median(per_host),
        "throttled_by_operation": state["throttled"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=30)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--tasks", type=int, default=10)
    args = parser.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    result = run_fleet(args.hosts, args.rate, args.tasks)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
