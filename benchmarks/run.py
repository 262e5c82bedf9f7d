"""The benchmark suite: every scenario in a fresh process, against an emulator on loopback.

    python benchmarks/run.py                  # every scenario at full size, with a verdict
    python benchmarks/run.py drain idle       # some of them
    python benchmarks/run.py --smoke          # tiny sizes: checks the suite runs (CI), no verdict
    python benchmarks/run.py --markdown F     # also write the results table to F

Each scenario runs as `python benchmarks/run.py --child NAME`, which starts its own emulator
Migration Hub process (`mgh-reporter emulator`) on 127.0.0.1, drives `mgh-reporter drain`/`run`
as real processes, and prints one JSON line of figures. The parent prints them side by side.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from figures import ORDER, documents, load, update  # benchmarks/figures.py, beside this script

STREAM = "Bench"
REGION = "us-west-2"
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": REGION}
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "drain_tasks": 600, "cli_sample": 20, "coalesce": (100, 100), "idle_seconds": 60.0,
        "memory": (2000, 100), "latency_seconds": 30.0, "impact_seconds": 8.0,
        "scale": (1000, 10000, 100000), "profile_tasks": 5000, "faults": (60, 5, 5),
        "writer_runs": 20, "pg_tasks": 10000, "verify_tasks": 10000,
        "idle_repair": (1000, 10.0, 120.0), "hostile_rows": 150,
        "fleet": (30, 20.0, 10, 3),
    },
    "smoke": {
        "drain_tasks": 30, "cli_sample": 1, "coalesce": (10, 10), "idle_seconds": 2.0,
        "memory": (50, 10), "latency_seconds": 3.0, "impact_seconds": 1.0,
        "scale": (100, 300), "profile_tasks": 100, "faults": (10, 2, 1), "writer_runs": 3,
        "pg_tasks": 200, "verify_tasks": 100, "idle_repair": (20, 1.0, 3.0),
        "hostile_rows": 6, "fleet": (3, 20.0, 2, 1),
    },
}


# -- the emulator and the processes under test -------------------------------------------------
@dataclass
class EmulatorProcess:
    """A `mgh-reporter emulator` process on 127.0.0.1 and how to reach it."""

    proc: subprocess.Popen[str]
    url: str

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ, **CREDS,
            "AWS_ENDPOINT_URL_MIGRATION_HUB": self.url,
            "AWS_ENDPOINT_URL_MIGRATIONHUB_CONFIG": self.url,
        }

    def _request(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(f"{self.url}/_emulator/{path}", data, timeout=120) as reply:
            return json.load(reply)

    def faults(self, **values: Any) -> None:
        self._request("faults", values)

    def state(self) -> dict[str, Any]:
        """The emulator's whole summary (`/_emulator/state`)."""
        return dict(self._request("state"))

    def operations(self) -> dict[str, int]:
        return dict(self._request("state")["operations"])

    def calls(self) -> int:
        return sum(self.operations().values())

    def updates(self) -> dict[str, list[dict[str, Any]]]:
        return dict(self._request("updates").get(STREAM, {}))

    def last_states(self) -> dict[str, dict[str, Any]]:
        tasks = self._request("state")["streams"].get(STREAM, {})
        return {name: t["last"] for name, t in tasks.items() if t["last"]}

    def tasks(self) -> dict[str, dict[str, Any]]:
        """Each task of the stream as the Hub holds it (last update, attribute list, ...)."""
        return dict(self._request("state")["streams"].get(STREAM, {}))

    def control(self, what: str, body: dict[str, Any]) -> bool:
        """Change the Hub behind the daemon's back (`lose-task`, `delete-stream`,
        `change-task`, `home-region`); False when the emulator refused (no such task)."""
        try:
            self._request(what, body)
        except urllib.error.HTTPError:
            return False
        return True


@contextmanager
def emulator_process(latency: float = 0.0) -> Iterator[EmulatorProcess]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reporter", "emulator", "--port", "0", "--map-delay", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    url = first.split(" on ", 1)[1].split()[0]
    hub = EmulatorProcess(proc, url)
    try:
        if latency:
            hub.faults(latency=latency)
        yield hub
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


@dataclass
class Outbox:
    """An initialised outbox and the config that points at it."""

    dir: Path
    config: Path
    db: Path

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "reporter", "--config", str(self.config), *args]


def make_outbox(
    hub: EmulatorProcess, interval: float = 2.0, url: str | None = None, **publish: Any
) -> Outbox:
    """A fresh outbox (an SQLite file, or the PostgreSQL database at `url`) and its config."""
    work = Path(tempfile.mkdtemp(prefix="mgh-bench-"))
    db = work / "outbox.db"
    extra = "".join(f"{k} = {v}\n" for k, v in publish.items())
    config = work / "config.toml"
    where = (f'url = "{url}"\nlease_seconds = 30\nfence_margin_seconds = 2\n' if url
             else f'path = "{db}"\n')
    config.write_text(
        f'[hub]\nprogress_update_stream = "{STREAM}"\nregion = "auto"\n'
        f"[outbox]\n{where}"
        f"[publish]\ninterval_seconds = {interval}\n{extra}"
        '[log]\nlevel = "warning"\n'
    )
    box = Outbox(work, config, db)
    subprocess.run(box.cmd("init"), check=True, env=hub.env, capture_output=True)
    return box


def insert_states(db: Path, rows: list[tuple[str, str, int, str]]) -> None:
    """(task, status, percent, detail) rows in one transaction, in list order."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO outbox(kind, migration_task_name, status, progress_percent, status_detail)"
        " VALUES ('task_state', ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")
    conn.close()


@dataclass
class Ran:
    """A finished process: exit code, wall seconds, CPU seconds, peak RSS in MB."""

    code: int
    wall: float
    cpu: float
    peak_mb: float


# Linux counts the parent's RSS at fork time in a child's ru_maxrss (exec records the old image's
# high-water mark): a drain started by this process, which may hold 200,000 rows, would report
# this process's size. Measured commands are therefore started by a spawner made at start-up,
# while this process is small; its own few MB sit below any figure measured through it.
SPAWNER = r"""
import json, os, subprocess, sys, time
for line in sys.stdin:
    job = json.loads(line)
    started = time.monotonic()
    with open(job["stderr"], "wb") as err:
        proc = subprocess.Popen(job["cmd"], env=job["env"], stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status), "wall": time.monotonic() - started,
                      "cpu": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}),
          flush=True)
"""
_spawner: subprocess.Popen[str] | None = None


def start_spawner() -> None:
    """Start the spawner (call first thing, while this process is small)."""
    global _spawner
    if _spawner is None:
        _spawner = subprocess.Popen([sys.executable, "-I", "-S", "-c", SPAWNER],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def run_measured(cmd: list[str], env: dict[str, str], prefix: list[str] | None = None) -> Ran:
    """Run to completion through the spawner; the child's own rusage (wait4: this child only)."""
    start_spawner()
    assert _spawner is not None and _spawner.stdin is not None and _spawner.stdout is not None
    with tempfile.NamedTemporaryFile(prefix="mgh-bench-err-") as err:
        _spawner.stdin.write(json.dumps({"cmd": [*(prefix or []), *cmd], "env": env,
                                         "stderr": err.name}) + "\n")
        _spawner.stdin.flush()
        done = json.loads(_spawner.stdout.readline())
        if done["code"] != 0:
            print(Path(err.name).read_text(errors="replace")[-2000:], file=sys.stderr)
    return Ran(done["code"], done["wall"], done["cpu"], done["peak_mb"])


def drain(box: Outbox, hub: EmulatorProcess, prefix: list[str] | None = None) -> Ran:
    ran = run_measured(box.cmd("drain", "--timeout", "3600"), hub.env, prefix)
    if ran.code != 0:
        raise SystemExit(f"drain exited {ran.code}")
    return ran


def proc_cpu(pid: int) -> float:
    """utime + stime of a running process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_ns(pid: int) -> int:
    """CPU time of a running process's live threads in nanoseconds (schedstat: exact, where
    utime + stime count 10 ms clock ticks, too coarse for an idle daemon)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
    return total


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


# -- scenarios -----------------------------------------------------------------------------------
def scenario_drain(size: dict[str, Any]) -> dict[str, Any]:
    """600 tasks x 1 row at 30 ms: drain vs a sequential boto3 loop vs the AWS CLI per update.

    The drain is the median of three (each a fresh outbox and emulator): one run lasts about
    2 s, and on a shared machine a single one varied by 15%."""
    import boto3

    n = size["drain_tasks"]
    runs = []
    for _ in range(2):
        with emulator_process(latency=0.030) as hub:
            box = make_outbox(hub)
            insert_states(box.db, [(f"t{i:05d}", "IN_PROGRESS", 50, "copying") for i in range(n)])
            runs.append(drain(box, hub).wall)
    with emulator_process(latency=0.030) as hub:
        box = make_outbox(hub)
        insert_states(box.db, [(f"t{i:05d}", "IN_PROGRESS", 50, "copying") for i in range(n)])
        ran = drain(box, hub)
        runs.append(ran.wall)
        wall = statistics.median(runs)
        reporter_calls = hub.calls()
        delivered = len(hub.last_states())

        os.environ.update({k: v for k, v in hub.env.items() if k.startswith("AWS_")})
        started = time.monotonic()
        client = boto3.session.Session().client("mgh", region_name=REGION)
        client.create_progress_update_stream(ProgressUpdateStreamName="Loop")
        for i in range(n):
            client.import_migration_task(ProgressUpdateStream="Loop", MigrationTaskName=f"t{i:05d}")
            client.notify_migration_task_state(
                ProgressUpdateStream="Loop", MigrationTaskName=f"t{i:05d}",
                Task={"Status": "IN_PROGRESS", "ProgressPercent": 50, "StatusDetail": "copying"},
                UpdateDateTime=time.time(), NextUpdateSeconds=300,
            )
        loop = time.monotonic() - started
        loop_calls = hub.calls() - reporter_calls

        sample, cli_times = size["cli_sample"] if shutil.which("aws") else 0, [0.0]
        for i in range(sample):
            started = time.monotonic()
            subprocess.run(
                ["aws", "mgh", "notify-migration-task-state", "--region", REGION,
                 "--progress-update-stream", "Loop", "--migration-task-name", f"t{i:05d}",
                 "--task", "Status=IN_PROGRESS,ProgressPercent=60",
                 "--update-date-time", str(int(time.time())), "--next-update-seconds", "300"],
                check=True, env=hub.env, capture_output=True,
            )
            cli_times.append(time.monotonic() - started)
    per_cli = statistics.mean(cli_times[1:] or cli_times)
    return {
        "tasks": n, "reporter_seconds": wall, "reporter_runs": [round(w, 2) for w in runs],
        "reporter_calls": reporter_calls,
        "delivered": delivered, "loop_seconds": loop, "loop_calls": loop_calls,
        "speedup": loop / wall, "cli_seconds_per_update": per_cli,
        "cli_seconds_projected": per_cli * n, "cli_sample": sample,
    }


def verdict_drain(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `drain`."""
    return [
        (f"{r['tasks']} tasks: drain {r['reporter_seconds']:.2f} s (median of 3), sequential "
         f"boto3 loop {r['loop_seconds']:.2f} s ({r['speedup']:.1f}x); " + (
             f"AWS CLI per update {r['cli_seconds_per_update']:.2f} s each, "
             f"{r['cli_seconds_projected']:.0f} s projected" if r["cli_sample"]
             else "AWS CLI not installed"),
         ">= 18x the loop", r["speedup"] >= 18 and r["delivered"] == r["tasks"]),
    ]


def scenario_coalesce(size: dict[str, Any]) -> dict[str, Any]:
    """100 tasks x 100 rows waiting: one NotifyMigrationTaskState per task, each at its last row."""
    tasks, per_task = size["coalesce"]
    rows, last = [], {}
    for k in range(per_task):
        for t in range(tasks):
            status = "COMPLETED" if k == per_task - 1 else "IN_PROGRESS"
            row = (f"c{t:04d}", status, min(100, k), f"step {k}")
            rows.append(row)
            last[row[0]] = row
    with emulator_process() as hub:
        box = make_outbox(hub)
        insert_states(box.db, rows)
        ran = drain(box, hub)
        ops = hub.operations()
        states = hub.last_states()
    wrong = [
        name for name, (_, status, pct, detail) in last.items()
        if (states.get(name) or {}).get("Task")
        != {"Status": status, "ProgressPercent": pct, "StatusDetail": detail}
    ]
    return {
        "tasks": tasks, "rows": len(rows), "notify_calls": ops.get("NotifyMigrationTaskState", 0),
        "tasks_not_at_last_state": len(wrong), "seconds": ran.wall,
    }


def verdict_coalesce(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `coalesce`."""
    return [(f"{r['rows']} rows: {r['notify_calls']} Notify calls, "
             f"{r['tasks_not_at_last_state']} tasks not at their last state",
             f"<= {r['tasks']} calls, all at last state",
             r["notify_calls"] <= r["tasks"] and r["tasks_not_at_last_state"] == 0)]


def scenario_idle(size: dict[str, Any]) -> dict[str, Any]:
    """`run` on an empty outbox at the default interval: CPU used and Hub calls made over the
    window after start-up."""
    seconds = size["idle_seconds"]
    with emulator_process() as hub:
        box = make_outbox(hub)
        proc = subprocess.Popen(box.cmd("run"), env=hub.env, stderr=subprocess.DEVNULL)
        try:
            # Start-up (imports, the first pass, GetHomeRegion and the clients) is over first.
            wait_until(lambda: hub.operations().get("GetHomeRegion", 0) >= 1, 60, "start-up")
            time.sleep(5.0)
            before, started, calls_before = threads_cpu_ns(proc.pid), time.monotonic(), hub.calls()
            ticks_before = proc_cpu(proc.pid)
            time.sleep(seconds)
            used, elapsed = (threads_cpu_ns(proc.pid) - before) / 1e9, time.monotonic() - started
            ticks = proc_cpu(proc.pid) - ticks_before
            calls = hub.calls() - calls_before
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    return {
        "seconds": elapsed, "cpu_seconds": used, "cpu_percent": 100 * used / elapsed,
        "cpu_percent_by_clock_ticks": 100 * ticks / elapsed, "hub_calls": calls,
        "clock_ticks_per_second": os.sysconf("SC_CLK_TCK"),
    }


def verdict_idle(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `idle`."""
    return [(f"{r['cpu_percent']:.3f}% of a core over {r['seconds']:.0f} s at the default "
             f"interval (schedstat), {r['hub_calls']} Hub calls after start-up",
             "<= 0.1%, no Hub call", r["cpu_percent"] <= 0.1 and r["hub_calls"] == 0)]


def scenario_verify(size: dict[str, Any]) -> dict[str, Any]:
    """`verify` over N delivered tasks (a state and an attribute list each: two reads, its
    description and its update history): Hub calls, seconds, CPU and peak RSS; then one task
    changed at the Hub, which it must find."""
    tasks = size["verify_tasks"]
    with emulator_process() as hub:
        box = make_outbox(hub)
        insert_states(box.db, [(f"v{t:05d}", "IN_PROGRESS", 40, "copying") for t in range(tasks)])
        drain(box, hub)
        before = hub.calls()
        clean = run_measured(box.cmd("verify"), hub.env)
        calls = hub.calls() - before
        hub._request("change-task", {"stream": STREAM, "task": "v00007",
                                     "task_fields": {"ProgressPercent": 99}})
        found = subprocess.run(box.cmd("verify", "--json"), env=hub.env, capture_output=True,
                               text=True)
        differing = [t["task"] for t in json.loads(found.stdout)["tasks"] if not t["ok"]]
    return {"tasks": tasks, "exit_code": clean.code, "calls": calls, "seconds": clean.wall,
            "cpu_seconds": clean.cpu, "peak_mb": clean.peak_mb,
            "calls_per_second": calls / clean.wall, "changed_exit_code": found.returncode,
            "changed_found": differing}


def verdict_verify(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `verify`."""
    return [(f"{r['tasks']:,} tasks read back in {r['seconds']:.1f} s with {r['calls']:,} Hub "
             f"calls ({r['calls_per_second']:,.0f}/s), peak RSS {r['peak_mb']:.1f} MiB; one "
             f"changed task found (exit {r['changed_exit_code']})",
             "at most 3 reads per task (+2), <= 55 MiB, the change found",
             r["exit_code"] == 0 and r["calls"] <= 3 * r["tasks"] + 2 and r["peak_mb"] <= 55
             and r["changed_exit_code"] == 6 and r["changed_found"] == ["v00007"])]


def scenario_idle_repair(size: dict[str, Any]) -> dict[str, Any]:
    """`run` with repair rounds on (`[verify] every_seconds`) over N delivered tasks and nothing
    new to send: CPU used and Hub calls per second over the window after start-up."""
    tasks, every, seconds = size["idle_repair"]
    with emulator_process() as hub:
        box = make_outbox(hub)
        box.config.write_text(box.config.read_text() + f"[verify]\nevery_seconds = {every}\n")
        insert_states(box.db, [(f"r{t:05d}", "IN_PROGRESS", 40, "copying") for t in range(tasks)])
        drain(box, hub)
        proc = subprocess.Popen(box.cmd("run"), env=hub.env, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: hub.operations().get("DescribeMigrationTask", 0) >= 5, 60,
                       "the first repair round")
            time.sleep(2.0)
            before, started, calls_before = threads_cpu_ns(proc.pid), time.monotonic(), hub.calls()
            time.sleep(seconds)
            used, elapsed = (threads_cpu_ns(proc.pid) - before) / 1e9, time.monotonic() - started
            calls = hub.calls() - calls_before
            ops = hub.operations()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    return {"tasks": tasks, "every_seconds": every, "seconds": elapsed, "cpu_seconds": used,
            "cpu_percent": 100 * used / elapsed, "hub_calls": calls,
            "calls_per_second": calls / elapsed,
            "calls_per_second_per_1000_tasks": 1000 * calls / elapsed / tasks,
            "writes": sum(v for k, v in ops.items() if k in (
                "NotifyMigrationTaskState", "PutResourceAttributes", "ImportMigrationTask",
                "CreateProgressUpdateStream")) - 2 * tasks - 1}


def verdict_idle_repair(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `idle-repair`."""
    return [(f"{r['cpu_percent']:.3f}% of a core, {r['calls_per_second']:.2f} Hub calls/s "
             f"({r['calls_per_second_per_1000_tasks']:.2f}/s per 1,000 tasks) with repair "
             f"rounds every {r['every_seconds']:g} s over {r['tasks']:,} tasks, "
             f"{r['writes']} writes", "<= 0.5%, < 1 call/s per 1,000 tasks, no write",
             r["cpu_percent"] <= 0.5 and r["calls_per_second_per_1000_tasks"] < 1
             and r["writes"] == 0)]


def vm_hwm_mb(pid: int) -> float:
    """The peak RSS of a live process so far (VmHWM: its own image only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmHWM for pid {pid}")


def scenario_memory(size: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of a drain of N tasks x 1 row vs N tasks x 100 rows, and of `run` delivering the
    larger backlog (its VmHWM read once everything is delivered)."""
    tasks, per_task = size["memory"]
    out: dict[str, Any] = {"tasks": tasks}
    for label, k in (("small", 1), ("large", per_task)):
        rows = [(f"m{t:05d}", "IN_PROGRESS", min(100, j), f"step {j}")
                for j in range(k) for t in range(tasks)]
        with emulator_process() as hub:
            box = make_outbox(hub)
            insert_states(box.db, rows)
            ran = drain(box, hub)
            out[f"{label}_notify_calls"] = hub.operations().get("NotifyMigrationTaskState", 0)
        out[f"{label}_rows"], out[f"{label}_peak_mb"] = len(rows), ran.peak_mb
        out[f"{label}_seconds"] = ran.wall
    with emulator_process() as hub:
        box = make_outbox(hub)
        insert_states(box.db, rows)
        proc = subprocess.Popen(box.cmd("run"), env=hub.env, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: hub.operations().get("NotifyMigrationTaskState", 0) >= tasks
                       and backlog(box.db) == 0, 600, "run to deliver the backlog")
            out["run_peak_mb"] = vm_hwm_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    out["ratio"] = out["large_peak_mb"] / out["small_peak_mb"]
    return out


def verdict_memory(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `memory`."""
    return [(f"drain peak RSS {r['small_peak_mb']:.1f} MiB ({r['small_rows']} rows) vs "
             f"{r['large_peak_mb']:.1f} MiB ({r['large_rows']} rows): {r['ratio']:.2f}x; "
             f"`run` through the {r['large_rows']} rows {r['run_peak_mb']:.1f} MiB",
             "<= 1.1x, both <= 55 MiB",
             r["ratio"] <= 1.1 and max(r["large_peak_mb"], r["run_peak_mb"]) <= 55)]


# The outbox's text columns a tool can fill (11 of them), and the batches of rows no tool should
# write but any can: each column just under the 1 MiB column bound (the row far over the 1 MiB
# row bound: read as sizes only; dead letters), one column just under the row bound (read whole;
# delivered, the detail clipped to the Hub's 2,500 characters), and 11 columns that together
# stay just under it (read whole, 11 values each; dead letters).
WIDE_COLUMNS = ("kind", "migration_task_name", "progress_update_stream", "status",
                "status_detail", "update_date_time", "resource_attributes", "artifact_name",
                "artifact_description", "configuration_id", "resource_description")
MIB = 1024 * 1024
# name -> (row i's values, drain's exit code: 5 when every row is a dead letter)
HOSTILE_BATCHES: dict[str, tuple[Callable[[int], dict[str, str]], int]] = {
    "wide": (lambda i: {c: f"{i:08d}{c}".ljust(MIB - 1, "x") for c in WIDE_COLUMNS}, 5),
    "tall": (lambda i: {"kind": "task_state", "migration_task_name": f"t{i}",
                        "status": "IN_PROGRESS", "status_detail": "d" * (MIB - 200)}, 0),
    "spread": (lambda i: {c: f"{i:08d}{c}".ljust(MIB // 11 - 64, "y") for c in WIDE_COLUMNS},
               5),
}


def insert_hostile(db: Path, rows: int, make: Callable[[int], dict[str, str]]) -> None:
    """`rows` rows of `make(i)`, a few at a time (each transaction holds no more than ~24 MiB
    of values, so the benchmark itself stays small)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for start in range(0, rows, 2):
            conn.execute("BEGIN IMMEDIATE")
            for i in range(start, min(rows, start + 2)):
                values = make(i)
                conn.execute(f"INSERT INTO outbox({', '.join(values)})"
                             f" VALUES ({', '.join('?' * len(values))})", list(values.values()))
            conn.execute("COMMIT")
    finally:
        conn.close()


def scenario_hostile_memory(size: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of `drain` and of `run` over each hostile batch, read in batches bounded in bytes
    (CONTRACT §1: 1 MiB per column and per row); `run`'s once it has no backlog left."""
    rows = size["hostile_rows"]
    out: dict[str, Any] = {"rows": rows}
    for name, (make, code) in HOSTILE_BATCHES.items():
        with emulator_process() as hub:
            box = make_outbox(hub)
            insert_hostile(box.db, rows, make)
            out[f"{name}_mb"] = box.db.stat().st_size / MIB
            ran = run_measured(box.cmd("drain", "--timeout", "3600"), hub.env)
            if ran.code != code:
                raise SystemExit(f"drain over {name} rows exited {ran.code}, not {code}")
            out[f"{name}_drain_peak_mb"], out[f"{name}_drain_seconds"] = ran.peak_mb, ran.wall
            shutil.rmtree(box.dir, ignore_errors=True)
        with emulator_process() as hub:
            box = make_outbox(hub)
            insert_hostile(box.db, rows, make)
            proc = subprocess.Popen(box.cmd("run"), env=hub.env, stderr=subprocess.DEVNULL)
            try:
                wait_until(functools.partial(lambda db: backlog(db) == 0, box.db), 1800,
                           f"run through the {name} rows")
                out[f"{name}_run_peak_mb"] = vm_hwm_mb(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
        shutil.rmtree(box.dir, ignore_errors=True)
    out["peak_mb"] = max(v for k, v in out.items() if k.endswith("_peak_mb"))
    return out


def verdict_hostile_memory(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `hostile-memory`."""
    return [(f"{r['rows']} rows {name} ({r[f'{name}_mb']:,.0f} MiB of outbox): drain "
             f"{r[f'{name}_drain_peak_mb']:.1f} MiB, run {r[f'{name}_run_peak_mb']:.1f} MiB",
             "both < 80 MiB", max(r[f"{name}_drain_peak_mb"], r[f"{name}_run_peak_mb"]) < 80)
            for name in HOSTILE_BATCHES]


def scenario_budget(size: dict[str, Any]) -> dict[str, Any]:
    """The daemon's memory stage by stage (benchmarks/budget.py), over the 200k-row backlog."""
    tasks, per_task = size["memory"]
    rows = [(f"m{t:05d}", "IN_PROGRESS", min(100, j), f"step {j}")
            for j in range(per_task) for t in range(tasks)]
    with emulator_process() as hub:
        box = make_outbox(hub)
        insert_states(box.db, rows)
        del rows
        done = subprocess.run([sys.executable, str(Path(__file__).with_name("budget.py")),
                               str(box.config)], env=hub.env, capture_output=True, text=True,
                              check=True)
    stages = [json.loads(line) for line in done.stdout.splitlines()]
    return {"rows": tasks * per_task, "stages": stages}


def verdict_budget(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `budget`."""
    stages = "; ".join(f"{x['stage']} {x['rss']:.1f}" for x in r["stages"])
    return [(f"RSS MB by stage ({r['rows']} rows): {stages}; high-water "
             f"{r['stages'][-1]['hwm']:.1f}", "(measured)", True)]


def backlog(db: Path) -> int:
    """Rows not delivered or rejected yet (waiting for intake, or pending)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        waiting = conn.execute("SELECT count(*) FROM mgh_inbox").fetchone()[0]
        queued = conn.execute("SELECT count(*) FROM mgh_rows WHERE state = 'pending'").fetchone()
        return int(waiting) + int(queued[0])
    finally:
        conn.close()


def scenario_latency(size: dict[str, Any]) -> dict[str, Any]:
    """A steady 20 rows/s into a running daemon (0.5 s interval): INSERT-to-Hub latency."""
    return insert_to_hub(size, interval=0.5)


def verdict_latency(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `latency`."""
    return [(f"{r['rows']} rows at {r['rate']:.0f}/s: p50 {r['p50']:.3f} s, p99 "
             f"{r['p99']:.3f} s, max {r['max']:.3f} s", "p99 < 1.0 s", r["p99"] < 1.0)]


def scenario_wakeup(size: dict[str, Any]) -> dict[str, Any]:
    """At the default interval (2 s): INSERT-to-Hub latency of a steady 20 rows/s (published on
    wake-ups, not on the schedule), and 1,000 INSERTs for one task within a second (coalescing
    under wake-ups: NotifyMigrationTaskState calls they cost)."""
    out = insert_to_hub(size, interval=None)
    with emulator_process(latency=0.030) as hub:
        box = make_outbox(hub)
        proc = subprocess.Popen(box.cmd("run"), env=hub.env, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3.0)
            conn = sqlite3.connect(box.db, isolation_level=None, timeout=5)
            conn.execute("PRAGMA synchronous = NORMAL")
            start = time.monotonic()
            for n in range(1000):
                time.sleep(max(0.0, start + n / 1000 - time.monotonic()))
                conn.execute(
                    "INSERT INTO outbox(kind, migration_task_name, status, progress_percent,"
                    " status_detail) VALUES ('task_state', 'burst', 'IN_PROGRESS', ?, ?)",
                    (n // 10, f"row {n}"),
                )
            span = time.monotonic() - start
            conn.close()

            def last() -> bool:
                task = hub.last_states().get("burst") or {}
                return bool(task.get("Task", {}).get("StatusDetail") == "row 999")

            wait_until(last, 30, "the burst's last row")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        out["burst_rows"], out["burst_seconds"] = 1000, span
        out["burst_notify_calls"] = len(hub.updates().get("burst", []))
    return out


def verdict_wakeup(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `wakeup`."""
    return [
        (f"{r['rows']} rows at {r['rate']:.0f}/s, {r['interval']:.0f} s interval: p50 "
         f"{r['p50']:.3f} s, p99 {r['p99']:.3f} s, max {r['max']:.3f} s", "p99 <= 0.25 s",
         r["p99"] <= 0.25),
        (f"{r['burst_rows']} INSERTs for one task in {r['burst_seconds']:.2f} s: "
         f"{r['burst_notify_calls']} NotifyMigrationTaskState calls", "<= 5",
         r["burst_notify_calls"] <= 5),
    ]


def insert_to_hub(
    size: dict[str, Any], interval: float | None, url: str | None = None
) -> dict[str, Any]:
    """A steady 20 rows/s over 20 tasks into a running daemon with a 30 ms Hub: each row's time
    from its INSERT's commit to the first arrival at the Hub of it or a newer row of its task.
    `interval` None: the default. `url`: a PostgreSQL outbox (LISTEN/NOTIFY wake-ups)."""
    seconds, rate, tasks = size["latency_seconds"], 20.0, 20
    inserted: dict[tuple[str, int], float] = {}
    with emulator_process(latency=0.030) as hub:
        box = make_outbox(hub, url=url) if interval is None else make_outbox(
            hub, interval=interval, url=url)
        proc = subprocess.Popen(box.cmd("run"), env=hub.env, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3.0)
            conn: Any
            if url:
                import psycopg

                conn = psycopg.connect(url, autocommit=True)
                sql = INSERT_STATE.replace("?", "%s")
            else:
                conn = sqlite3.connect(box.db, isolation_level=None, timeout=5)
                sql = INSERT_STATE
            start, n = time.monotonic(), 0
            while n < seconds * rate:
                time.sleep(max(0.0, start + n / rate - time.monotonic()))
                task = f"l{n % tasks:02d}"
                conn.execute(sql, (task, min(100, n // tasks), f"seq {n}"))
                inserted[(task, n)] = time.time()
                n += 1
            conn.close()
            last = {f"l{i:02d}": f"seq {n - tasks + i}" for i in range(tasks)}

            def done() -> bool:
                states = hub.last_states()
                return all((states.get(t) or {}).get("Task", {}).get("StatusDetail") == d
                           for t, d in last.items())

            wait_until(done, 30, "the last rows to reach the emulator")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        updates = hub.updates()
    latencies = []
    for (task, seq), at in inserted.items():
        arrivals = [u["ReceivedAt"] for u in updates.get(task, [])
                    if int(u["Task"]["StatusDetail"].split()[1]) >= seq]
        latencies.append(min(arrivals) - at)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {
        "interval": interval or 2.0, "rows": len(inserted), "rate": rate, "p50": pick(0.50),
        "p99": pick(0.99), "max": latencies[-1],
        "notify_calls": sum(len(v) for v in updates.values()),
    }


INSERT_STATE = ("INSERT INTO outbox(kind, migration_task_name, status, progress_percent,"
                " status_detail) VALUES ('task_state', ?, 'IN_PROGRESS', ?, ?)")


# -- PostgreSQL: replicas ------------------------------------------------------------------------
@contextmanager
def pg_database() -> Iterator[str]:
    """A PostgreSQL 16 server of the scenario's own (pgserver) with one empty database."""
    import pgserver
    import psycopg

    server = pgserver.get_server(tempfile.mkdtemp(prefix="mghpg-", dir="/tmp"),
                                 cleanup_mode="delete")
    try:
        uri = server.get_uri()
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        yield uri.replace("/postgres?", "/bench?")
    finally:
        server.cleanup()


def scenario_pg_drain(size: dict[str, Any]) -> dict[str, Any]:
    """10,000 tasks x 1 row on a PostgreSQL outbox at a 30 ms Hub: one `drain` replica, then two
    side by side (each one more replica; done when both exit 0). Best of two runs each."""
    import psycopg

    n = size["pg_tasks"]
    out: dict[str, Any] = {"tasks": n}
    for replicas in (1, 2):
        walls = []
        for _ in range(2):
            with pg_database() as url, emulator_process(latency=0.030) as hub:
                box = make_outbox(hub, url=url)
                with psycopg.connect(url) as conn, conn.cursor() as cur:
                    cur.executemany(INSERT_STATE.replace("?", "%s"),
                                    [(f"p{i:06d}", 10, "x") for i in range(n)])
                started = time.monotonic()
                procs = [subprocess.Popen(box.cmd("drain", "--timeout", "3600"), env=hub.env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                         for _ in range(replicas)]
                codes = [p.wait() for p in procs]
                walls.append(time.monotonic() - started)
                if codes != [0] * replicas:
                    raise SystemExit(f"drain exited {codes}")
                states = hub.last_states()
                if len(states) != n:
                    raise SystemExit(f"{len(states)} of {n} tasks reached the emulator")
                calls = hub.calls()
        out[f"replicas_{replicas}"] = {"seconds": min(walls), "runs": [round(w, 2) for w in walls],
                                       "calls": calls, "calls_per_second": calls / min(walls)}
    out["speedup"] = out["replicas_1"]["seconds"] / out["replicas_2"]["seconds"]
    return out


def verdict_pg_drain(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `pg-drain`."""
    one, two = r["replicas_1"], r["replicas_2"]
    return [(f"{r['tasks']} tasks at a 30 ms Hub on PostgreSQL: 1 replica "
             f"{one['seconds']:.1f} s ({one['calls_per_second']:.0f} calls/s), 2 replicas "
             f"{two['seconds']:.1f} s ({two['calls_per_second']:.0f} calls/s): "
             f"{r['speedup']:.2f}x", ">= 1.5x", r["speedup"] >= 1.5)]


def scenario_pg_latency(size: dict[str, Any]) -> dict[str, Any]:
    """INSERT-to-Hub latency on a PostgreSQL outbox with LISTEN/NOTIFY, `interval_seconds` 5."""
    with pg_database() as url:
        return insert_to_hub(size, interval=5.0, url=url)


def verdict_pg_latency(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `pg-latency`."""
    return [(f"PostgreSQL, LISTEN/NOTIFY, {r['interval']:.0f} s interval: {r['rows']} rows at "
             f"{r['rate']:.0f}/s: p50 {r['p50']:.3f} s, p99 {r['p99']:.3f} s, max "
             f"{r['max']:.3f} s", "p99 < 0.3 s", r["p99"] < 0.3)]


def _writer(path: str, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """A host tool at full speed, as the README asks: busy timeout 5 s, one row per transaction,
    and a retry when SQLITE_BUSY outlasts the timeout (SQLite's lock is not fair: two writers in
    tight loops can starve each other past any timeout, with or without the daemon)."""
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    n, retries, errors = 0, 0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO outbox(kind, migration_task_name, status, progress_percent)"
                         " VALUES ('task_state', ?, 'IN_PROGRESS', ?)", (f"w{n % 500}", n % 101))
            conn.execute("COMMIT")
            n += 1
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                retries += 1
            else:
                errors.append(f"{exc} ({exc.sqlite_errorname})")
        except sqlite3.Error as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    out.put((n, retries, errors))


def _writers(db: Path, seconds: float) -> tuple[float, int, list[str]]:
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [mp.Process(target=_writer, args=(str(db), seconds, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return (sum(r[0] for r in results) / seconds, sum(r[1] for r in results),
            [e for r in results for e in r[2]])


def scenario_impact(size: dict[str, Any]) -> dict[str, Any]:
    """Two writers inserting single-row transactions at full speed, alone and beside the daemon."""
    seconds = size["impact_seconds"]
    with emulator_process() as hub:
        box = make_outbox(hub, interval=0.5)
        alone, busy_alone, errors_alone = _writers(box.db, seconds)
        proc = subprocess.Popen(box.cmd("run"), env=hub.env, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2.0)
            beside, busy_beside, errors_beside = _writers(box.db, seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        calls = hub.operations().get("NotifyMigrationTaskState", 0)
    return {
        "alone_per_second": alone, "alone_errors": len(errors_alone),
        "alone_busy_retries": busy_alone, "beside_per_second": beside,
        "beside_errors": len(errors_beside), "beside_busy_retries": busy_beside,
        "error_messages": sorted(set(errors_alone + errors_beside)),
        "ratio": beside / alone, "notify_calls": calls,
    }


def verdict_impact(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `impact`."""
    return [(f"{r['alone_per_second']:.0f}/s alone, {r['beside_per_second']:.0f}/s beside "
             f"the daemon ({r['ratio']:.2f}x); errors {r['alone_errors']} alone, "
             f"{r['beside_errors']} beside; busy-timeout retries {r['alone_busy_retries']} "
             f"alone, {r['beside_busy_retries']} beside",
             ">= 0.7x, zero errors", r["ratio"] >= 0.7 and r["beside_errors"] == 0)]


def scenario_scale(size: dict[str, Any]) -> dict[str, Any]:
    """Drains of 1k, 10k and 100k distinct tasks, no latency: calls per second.

    Rate = Hub calls / (drain wall time - start-up), start-up being an empty drain's wall time
    (imports, config, GetHomeRegion). Sizes up to 10k run three times and report the median, as
    a few seconds' run is at the mercy of a noisy neighbour.
    """
    out: dict[str, Any] = {}
    with emulator_process() as hub:
        startup = statistics.median(drain(make_outbox(hub), hub).wall for _ in range(3))
    out["startup_seconds"] = startup
    rates = []
    for n in size["scale"]:
        runs = []
        for _ in range(3 if n <= 10_000 else 1):
            with emulator_process() as hub:
                box = make_outbox(hub)
                insert_states(box.db, [(f"s{i:06d}", "IN_PROGRESS", 10, "x") for i in range(n)])
                ran = drain(box, hub)
                calls = hub.calls()
            runs.append((calls / (ran.wall - startup), calls, ran))
        rate, calls, ran = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        rates.append(rate)
        out[str(n)] = {"calls": calls, "seconds": ran.wall, "calls_per_second": rate,
                       "runs": [round(r[0]) for r in runs], "peak_mb": ran.peak_mb,
                       "cpu_seconds": ran.cpu}
    out["spread"] = max(rates) / min(rates) - 1
    return out


def verdict_scale(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `scale`."""
    parts = ", ".join(f"{k}: {v['calls_per_second']:.0f} calls/s" for k, v in r.items()
                      if isinstance(v, dict))
    return [(f"{parts} (spread {100 * r['spread']:.0f}%)", "within 25%", r["spread"] <= 0.25)]


def scenario_faults(size: dict[str, Any]) -> dict[str, Any]:
    """60 tasks x 5 rows under 30% throttling (RetryAfter 1 s) + 10% 5xx at random, 5 runs:
    the bounded fault tail (every run drained, the slowest under 90 s)."""
    tasks, rows_per_task, runs = size["faults"]
    seconds, calls, lagging = [], [], 0
    for run in range(runs):
        with emulator_process() as hub:
            hub.faults(throttle=0.3, server_error=0.1, retry_after=1)
            box = make_outbox(hub)
            for r in range(rows_per_task):
                insert_states(box.db, [(f"f{t}", "IN_PROGRESS", 10 * r, f"run {run} row {r}")
                                       for t in range(tasks)])
            ran = run_measured(box.cmd("drain", "--timeout", "90"), hub.env)
            if ran.code != 0:
                raise SystemExit(f"drain exited {ran.code} in run {run + 1}")
            last = hub.last_states()
            final = 10 * (rows_per_task - 1)
            lagging += sum(1 for t in range(tasks)
                           if last.get(f"f{t}", {}).get("Task", {}).get("ProgressPercent") != final)
            seconds.append(ran.wall)
            calls.append(hub.calls())
    return {"tasks": tasks, "rows": tasks * rows_per_task, "runs": runs, "seconds": seconds,
            "slowest": max(seconds), "median": statistics.median(seconds),
            "calls_median": statistics.median(calls), "tasks_not_at_last_state": lagging}


def verdict_faults(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `faults`."""
    runs = ", ".join(f"{x:.1f}" for x in r["seconds"])
    return [(f"{r['rows']} rows under 30% throttle + 10% 5xx, {r['runs']} runs: {runs} s "
             f"(slowest {r['slowest']:.1f} s, median {r['median']:.1f} s); "
             f"{r['tasks_not_at_last_state']} tasks not at their last state",
             "every run < 90 s, most well under 30 s",
             r["slowest"] < 90 and r["median"] < 30 and r["tasks_not_at_last_state"] == 0)]


def scenario_fleet(size: dict[str, Any]) -> dict[str, Any]:
    """30 daemons (processes, real outboxes) of one account against the stand-in's account
    rate of 20 calls/s, each host's tool writing 10 tasks x 3 states at once (fleet.py), 3
    runs: the share of calls throttled, the fleet's time against the time the account's rate
    needs for the calls the work requires, the last host against the median."""
    from fleet import run_fleet  # benchmarks/fleet.py, beside this script

    hosts, rate, tasks, runs = size["fleet"]
    results = [run_fleet(hosts, rate, tasks) for _ in range(runs)]
    keys = ("throttled_share", "time_ratio", "spread", "seconds", "ideal_seconds", "calls",
            "throttled")
    return {"hosts": hosts, "rate": rate, "tasks": tasks, "runs": [
        {k: round(r[k], 3) if isinstance(r[k], float) else r[k] for k in keys}
        for r in results]}


def verdict_fleet(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `fleet`: every run within the targets."""
    runs = r["runs"]
    shares = ", ".join(f"{100 * x['throttled_share']:.1f}%" for x in runs)
    ratios = ", ".join(f"{x['time_ratio']:.2f}x" for x in runs)
    spreads = ", ".join(f"{x['spread']:.2f}" for x in runs)
    return [
        (f"{r['hosts']} hosts at {r['rate']:g} calls/s, {r['tasks']} tasks x 3 states each, "
         f"{len(runs)} runs: throttled {shares}", "<= 15% of all calls",
         all(x["throttled_share"] <= 0.15 for x in runs)),
        (f"fleet time / the account's time for the work: {ratios}", "<= 1.35x",
         all(x["time_ratio"] <= 1.35 for x in runs)),
        (f"last host / median host: {spreads}", "<= 2", all(x["spread"] <= 2 for x in runs)),
    ]


def scenario_writer(size: dict[str, Any]) -> dict[str, Any]:
    """A shell tool's `mgh-reporter notify`: wall time per call (the installed console script of
    this interpreter, warm cache), median of N."""
    script = Path(sys.executable).parent / "mgh-reporter"
    with emulator_process() as hub:
        box = make_outbox(hub)
        cmd = [str(script), "--config", str(box.config), "notify", "w1", "--status",
               "IN_PROGRESS", "--percent", "5"]
        subprocess.run(cmd, check=True, env=hub.env, capture_output=True)  # warm the cache
        times = []
        for _ in range(size["writer_runs"]):
            started = time.monotonic()
            subprocess.run(cmd, check=True, env=hub.env, capture_output=True)
            times.append(time.monotonic() - started)
    return {"runs": len(times), "median": statistics.median(times), "max": max(times),
            "script": str(script)}


def verdict_writer(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `writer`."""
    return [(f"`notify` median {r['median']:.3f} s, max {r['max']:.3f} s over {r['runs']} "
             "runs", "<= 0.1 s", r["median"] <= 0.1)]


def scenario_profile(size: dict[str, Any]) -> dict[str, Any]:
    """Where a drain's CPU goes per call: our code, botocore & co, SQLite; and the emulator's.

    CPU per call comes from plain drains (an empty drain's start-up subtracted); the shares
    from a second drain of the same backlog under py-spy (`--gil`: samples of the thread
    holding the GIL, i.e. Python CPU time, charged to the innermost frame's package).
    """
    n = size["profile_tasks"]
    rows = [(f"p{i:06d}", "IN_PROGRESS", 10, "x") for i in range(n)]
    with emulator_process() as hub:
        startup = drain(make_outbox(hub), hub).cpu
        box = make_outbox(hub)
        insert_states(box.db, rows)
        calls_before, hub_before = hub.calls(), proc_cpu(hub.proc.pid)
        ran = drain(box, hub)
        hub_cpu, calls = proc_cpu(hub.proc.pid) - hub_before, hub.calls() - calls_before
    with emulator_process() as hub:
        box = make_outbox(hub)
        insert_states(box.db, rows)
        raw = box.dir / "profile.txt"
        drain(box, hub, prefix=["py-spy", "record", "--gil", "-r", "200", "-f", "raw",
                                "-o", str(raw), "--"])
    buckets = attribute(raw.read_text())
    total = sum(buckets.values()) or 1
    return {
        "tasks": n, "calls": calls, "wall_seconds": ran.wall, "drain_cpu_seconds": ran.cpu,
        "startup_cpu_seconds": startup, "calls_per_second": calls / ran.wall,
        "drain_cpu_us_per_call": 1e6 * (ran.cpu - startup) / calls,
        "stand_in_cpu_us_per_call": 1e6 * hub_cpu / calls,
        "shares": {k: v / total for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])},
    }


def verdict_profile(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) of `profile`."""
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["shares"].items())
    return [(f"{r['tasks']} tasks, {r['calls_per_second']:.0f} calls/s: "
             f"{r['drain_cpu_us_per_call']:.0f} us CPU per call in the drain ({shares}); "
             f"emulator {r['stand_in_cpu_us_per_call']:.0f} us per call", "(measured)", True)]


def attribute(raw: str) -> dict[str, int]:
    """Charge each py-spy sample to the innermost frame's owner."""
    owners = (
        ("reporter/", "mgh-reporter"), ("botocore/", "botocore (serialise, sign, parse)"),
        ("boto3/", "botocore (serialise, sign, parse)"),
        ("urllib3/", "HTTP (urllib3, http.client, socket)"),
        ("http/client", "HTTP (urllib3, http.client, socket)"),
        ("socket.py", "HTTP (urllib3, http.client, socket)"),
        ("ssl.py", "HTTP (urllib3, http.client, socket)"),
        ("sqlite_utils/", "SQLite"), ("sqlite3/", "SQLite"),
        ("structlog/", "logging"), ("logging/", "logging"),
        ("json/", "JSON"), ("concurrent/", "threads"), ("threading.py", "threads"),
        ("queue.py", "threads"),
    )
    buckets: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        owner = "Python runtime, imports, other"
        for frame in reversed(frames):
            hit = next((name for key, name in owners if key in frame), None)
            if hit is not None:
                # Our own SQL shows up as a reporter/stores/ frame calling sqlite3 (C).
                owner = "SQLite" if hit == "mgh-reporter" and "/stores/" in frame else hit
                break
        buckets[owner] = buckets.get(owner, 0) + int(count)
    return buckets


# Each scenario, and beside it in this file the verdict on what it measured.
SCENARIOS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    name: globals()["scenario_" + name.replace("-", "_")] for name in ORDER
}
VERDICTS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str, bool]]]] = {
    name: globals()["verdict_" + name.replace("-", "_")] for name in ORDER
}


RESULTS = Path(__file__).with_name("results.json")
DOCS = documents(Path(__file__).resolve().parent.parent)


def write_results(new: dict[str, Any], names: list[str]) -> None:
    """Merge this run's scenarios into results.json (with where and when they ran) and bring
    the figures the READMEs quote up to date with it."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(new)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=RESULTS.parent).stdout.strip() or "unknown"
    full = names == list(SCENARIOS)
    previous = results.get("_meta", {})
    results["_meta"] = {
        "machine": machine(),
        "commit": commit if full else previous.get("commit", "unknown"),
        "date": time.strftime("%Y-%m-%d") if full else previous.get("date", "unknown"),
        "command": "python benchmarks/run.py",
        "since": {} if full else {
            **previous.get("since", {}),
            **{name: f"{commit} {time.strftime('%Y-%m-%d')}" for name in names},
        },
    }
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    merged = load(RESULTS.parent)
    for doc in DOCS:
        doc.write_text(update(doc.read_text(), merged))


def machine() -> str:
    cores = os.cpu_count()
    return (f"{cores} cores, Python {platform.python_version()}, SQLite "
            f"{sqlite3.sqlite_version}, {platform.system()} {platform.release()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; no verdict")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--markdown", type=Path, help="write the results table here too")
    parser.add_argument("--no-write", action="store_true",
                        help="do not update results.json and the READMEs (full runs do)")
    args = parser.parse_args()
    # Measured processes run from compiled bytecode, as an installed package does: with
    # PYTHONDONTWRITEBYTECODE set (this machine sets it), every start would compile each of
    # the package's modules again.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    size = SIZES["smoke" if args.smoke else "full"]
    if args.child:
        start_spawner()
        print(json.dumps(SCENARIOS[args.child](size)))
        return 0
    names = args.scenarios or list(SCENARIOS)
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    lines = [f"Machine: {machine()}", "",
             "| scenario | measured | target | met |", "|---|---|---|---|"]
    print(lines[0], flush=True)
    failed, results = [], {}
    for name in names:
        started = time.monotonic()
        child = subprocess.run(
            [sys.executable, __file__, "--child", name, *(["--smoke"] if args.smoke else [])],
            capture_output=True, text=True,
        )
        if child.returncode != 0:
            print(child.stderr[-3000:], file=sys.stderr)
            failed.append(name)
            lines.append(f"| {name} | crashed (exit {child.returncode}) | | no |")
            continue
        result = json.loads(child.stdout.strip().splitlines()[-1])
        results[name] = result
        for figure, target, met in VERDICTS[name](result):
            ok = met or args.smoke
            failed += [] if ok else [name]
            lines.append(f"| {name} | {figure} | {target} | {'yes' if met else 'NO'} |")
            print(f"{name:9} {'ok ' if met else 'MISS'} {figure}  [{target}]  "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    print(json.dumps(results, indent=1), file=sys.stderr)
    if not args.smoke and not args.no_write and results:
        write_results(results, names)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if failed:
        print(f"targets missed or scenarios crashed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
