"""A soak with a no-silent-loss oracle: writers, faults, kill -9 and reloads for minutes.

    python benchmarks/soak.py                 # 10 minutes (the default)
    python benchmarks/soak.py --minutes 30
    python benchmarks/soak.py --seconds 60    # the CI version
    python benchmarks/soak.py --postgres      # two replicas on a PostgreSQL outbox (pgserver)

Writers insert bursts and steady rows over hundreds of tasks (states, attribute lists, and now
and then a row the Hub would refuse) into a real outbox; the emulator (its own process)
cycles through fault windows (throttling with 5xx, latency, a full outage, a hostile network);
the daemon (`mgh-reporter run`, a real process) is killed with SIGKILL at random moments and
restarted, and sent SIGHUP now and then. With --postgres, two replicas share a PostgreSQL
outbox and a random one of them is killed each time. At the end the faults stop and the
daemon finishes.

The oracle, checked from the files and the Hub's own record:
- every row written is sent, superseded or rejected with a reason (nothing pending, nothing
  forgotten), and exactly the rows written invalid are rejected;
- each task's last state at the Hub equals its last valid row;
- no task's UpdateDateTime ever went backwards at the Hub;
- within each daemon lifetime past its warm-up, RSS stays within 10%.
Prints one JSON document of figures; exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import EmulatorProcess, backlog, emulator_process, make_outbox

TASKS = 300
WINDOWS: list[dict[str, Any]] = [
    {},
    {"throttle": 0.3, "server_error": 0.1, "retry_after": 1},
    {"latency": 0.2},
    {"outage": True},
    {"garble": 0.1, "garble_kind": "html"},
    {"throttle": 0.1},
]
CLEAR = {"throttle": 0.0, "server_error": 0.0, "latency": 0.0, "outage": False, "garble": 0.0}
WARMUP_SECONDS = 10.0


INSERT = ("INSERT INTO outbox(kind, migration_task_name, status, progress_percent, status_detail,"
          " update_date_time, resource_attributes) VALUES (?, ?, ?, ?, ?, ?, ?)")


class Target:
    """The outbox under test: an SQLite file or a PostgreSQL database (its URL)."""

    def __init__(self, db: Path | None = None, url: str | None = None) -> None:
        self.db, self.url = db, url
        self.prefix = "mgh_reporter." if url else "mgh_"

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        """One transaction; raises on a lock timeout or lost connection (the caller retries)."""
        if self.url is not None:
            import psycopg

            with psycopg.connect(self.url) as conn, conn.cursor() as cur:
                cur.executemany(INSERT.replace("?", "%s"), rows)
            return
        conn = sqlite3.connect(self.db or "", timeout=5)
        try:
            with conn:
                conn.executemany(INSERT, rows)
        finally:
            conn.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of one query (`mgh_` tables named with the engine's prefix)."""
        sql = sql.replace("mgh_", self.prefix)
        if self.url is not None:
            import psycopg

            with psycopg.connect(self.url) as conn:
                return conn.execute(sql).fetchall()
        conn = sqlite3.connect(self.db or "", timeout=5)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def backlog(self) -> int:
        """Rows not delivered or rejected yet."""
        if self.db is not None:
            return backlog(self.db)
        return int(self.query("SELECT (SELECT count(*) FROM mgh_inbox) + (SELECT count(*)"
                              " FROM mgh_rows WHERE state = 'pending')")[0][0])


class Writers:
    """Host tools: a steady writer and a bursty one, remembering what each task should end as."""

    def __init__(self, box: Target, rng: random.Random) -> None:
        self.box, self.rng = box, rng
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.step: dict[str, int] = {}  # per task: the last valid state's percent/step
        self.last: dict[str, tuple[int, str]] = {}  # per task: (percent, detail) of last valid
        self.invalid = 0
        self.rows = 0
        self.errors: list[str] = []
        self.clock = datetime.now(UTC)

    def _rows(self, count: int) -> tuple[list[tuple[Any, ...]], dict[str, tuple[int, str]]]:
        """`count` rows and the last valid state they leave each task at (not yet remembered:
        only a committed write counts)."""
        out: list[tuple[Any, ...]] = []
        last: dict[str, tuple[int, str]] = {}
        for _ in range(count):
            task = f"s{self.rng.randrange(TASKS)}"
            if self.rng.random() < 0.02:  # a row the Hub would refuse: rejected, never sent
                out.append(("task_state", task, "IN_PROGRESS", 150, "bad percent", None, None))
                continue
            if self.rng.random() < 0.1:
                attrs = json.dumps([{"Type": "IPV4_ADDRESS",
                                     "Value": f"10.0.{self.rng.randrange(256)}.1"}])
                out.append(("resource_attributes", task, None, None, None, None, attrs))
                continue
            step = self.step.get(task, 0) + 1
            self.step[task] = step
            self.clock += timedelta(milliseconds=1)
            detail = f"step {step}"
            out.append(("task_state", task, "IN_PROGRESS", step % 101, detail,
                        self.clock.isoformat().replace("+00:00", "Z"), None))
            last[task] = (step % 101, detail)
        return out, last

    def _write(self, count: int) -> None:
        """One transaction of `count` rows. The lock spans making and committing them, so the
        writers' commit order is the order rows were made in (the order the daemon keeps)."""
        with self.lock:
            rows, last = self._rows(count)
            for attempt in range(5):
                try:
                    self.box.insert(rows)
                except Exception as exc:  # locked past the timeout, connection lost: again
                    if attempt == 4:
                        self.errors.append(str(exc))
                    time.sleep(0.1)
                    continue
                self.rows += len(rows)
                self.invalid += sum(1 for r in rows if r[3] == 150)
                self.last.update(last)
                return

    def run_steady(self) -> None:
        while not self.stop.wait(0.05):
            self._write(1)

    def run_bursts(self) -> None:
        while not self.stop.wait(self.rng.uniform(1.0, 4.0)):
            self._write(self.rng.randrange(50, 400))


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Daemon:
    """`mgh-reporter run`, restarted after every kill; RSS sampled per lifetime."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd, self.env, self.log = cmd, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.lifetimes: list[list[float]] = []
        self.kills = self.reloads = 0

    def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stderr=err,
                                         stdout=subprocess.DEVNULL)
        self.started = time.monotonic()
        self.lifetimes.append([])

    def sample(self) -> None:
        if self.proc is not None and time.monotonic() - self.started >= WARMUP_SECONDS:
            rss = rss_mb(self.proc.pid)
            if rss is not None:
                self.lifetimes[-1].append(rss)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        time.sleep(0.2)
        self.start()

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        self.reloads += 1

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def oracle(box: Target, hub: EmulatorProcess, writers: Writers) -> dict[str, Any]:
    """Every check of the module docstring; each figure with its verdict."""
    outbox = box.query("SELECT count(*) FROM outbox")[0][0]
    states = dict(box.query("SELECT state, count(*) FROM mgh_rows GROUP BY state"))
    untracked = box.query(
        "SELECT count(*) FROM outbox o LEFT JOIN mgh_rows r ON r.id = o.id WHERE r.id IS NULL"
    )[0][0]
    no_reason = box.query(
        "SELECT count(*) FROM mgh_rows WHERE state = 'rejected' AND (reason IS NULL OR"
        " reason = '')")[0][0]
    wrong_rejects = box.query(
        "SELECT count(*) FROM mgh_rows r JOIN outbox o ON o.id = r.id WHERE r.state = 'rejected'"
        " AND coalesce(o.progress_percent, -1) != 150")[0][0]
    last = {name: t["Task"] for name, t in hub.last_states().items()}
    wrong_last = sorted(
        task for task, (percent, detail) in writers.last.items()
        if (last.get(task) or {}).get("StatusDetail") != detail
        or last[task].get("ProgressPercent") != percent
    )
    backwards = 0
    for updates in hub.updates().values():
        times = [u["UpdateDateTime"] for u in updates]
        backwards += sum(1 for a, b in itertools.pairwise(times) if b < a)
    return {
        "rows_written": writers.rows,
        "outbox_rows": outbox,
        "states": states,
        "pending": states.get("pending", 0),
        "untracked_rows": untracked,
        "rejected": states.get("rejected", 0),
        "invalid_written": writers.invalid,
        "rejected_without_reason": no_reason,
        "valid_rows_rejected": wrong_rejects,
        "tasks_not_at_last_state": len(wrong_last),
        "examples_not_at_last_state": wrong_last[:5],
        "update_time_went_backwards": backwards,
        "writer_errors": len(writers.errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, help="overrides --minutes")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--postgres", action="store_true",
                        help="two replicas on a PostgreSQL outbox (a pgserver of its own)")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    rng = random.Random(args.seed)
    server = PgServer() if args.postgres else None
    try:
        return soak(seconds, rng, server)
    finally:
        if server is not None:
            server.stop()


class PgServer:
    """A PostgreSQL 16 of the soak's own (pgserver), with one database."""

    def __init__(self) -> None:
        import tempfile

        import pgserver
        import psycopg

        self._server = pgserver.get_server(tempfile.mkdtemp(prefix="mghsoak-", dir="/tmp"),
                                           cleanup_mode="delete")
        uri = self._server.get_uri()
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE DATABASE soak")
        self.url = uri.replace("/postgres?", "/soak?")

    def stop(self) -> None:
        self._server.cleanup()


def soak(seconds: float, rng: random.Random, server: PgServer | None) -> int:
    """Run the soak; print the figures and the checks; 0 when every check passed."""
    with emulator_process() as hub:
        made = make_outbox(hub, interval=0.5, backoff_max_seconds=5.0,
                           outage_backoff_max_seconds=5.0,
                           **({"url": server.url} if server else {}))
        with made.config.open("a") as config:
            config.write("[aws]\nread_timeout_seconds = 5\nconnect_timeout_seconds = 2\n")
        box = Target(url=server.url) if server else Target(db=made.db)
        log = made.dir / "daemon.log"
        daemons = [Daemon(made.cmd("run"), hub.env, log) for _ in range(2 if server else 1)]
        writers = Writers(box, rng)
        for d in daemons:
            d.start()
        threads = [threading.Thread(target=writers.run_steady, daemon=True),
                   threading.Thread(target=writers.run_bursts, daemon=True)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        next_window = next_kill = next_reload = started
        windows = 0
        while time.monotonic() - started < seconds:
            now = time.monotonic()
            if now >= next_window:
                hub.faults(**{**CLEAR, **rng.choice(WINDOWS)})
                windows += 1
                next_window = now + rng.uniform(3.0, 10.0)
            if now >= next_kill:
                if now > started:
                    rng.choice(daemons).kill()
                next_kill = now + rng.uniform(5.0, 20.0)
            if now >= next_reload:
                if now > started:
                    rng.choice(daemons).reload()
                next_reload = now + rng.uniform(10.0, 30.0)
            for d in daemons:
                d.sample()
            time.sleep(0.25)
        writers.stop.set()
        for thread in threads:
            thread.join()
        hub.faults(**CLEAR)
        settle_started = time.monotonic()
        while box.backlog() and time.monotonic() - settle_started < 180:
            for d in daemons:
                d.sample()
            time.sleep(0.5)
        settle = time.monotonic() - settle_started
        code = max(d.stop() for d in daemons)
        result = oracle(box, hub, writers)
    lifetimes = [s for d in daemons for s in d.lifetimes]
    growth = [max(s) / s[0] - 1 for s in lifetimes if len(s) >= 8]
    kills, reloads = sum(d.kills for d in daemons), sum(d.reloads for d in daemons)
    result.update({
        "engine": "postgres, 2 replicas" if server else "sqlite",
        "seconds": seconds, "fault_windows": windows, "kills": kills,
        "reloads": reloads, "settle_seconds": round(settle, 1), "final_exit": code,
        "lifetimes_measured": len(growth),
        "max_rss_growth_after_warmup": round(max(growth, default=0.0), 4),
        "peak_rss_mb": round(max((max(s) for s in lifetimes if s), default=0.0), 1),
    })
    checks = {
        "nothing pending or untracked": result["pending"] == 0 and result["untracked_rows"] == 0,
        "exactly the invalid rows rejected, each with a reason": (
            result["rejected"] == result["invalid_written"]
            and result["valid_rows_rejected"] == 0 and result["rejected_without_reason"] == 0),
        "every task at its last valid row": result["tasks_not_at_last_state"] == 0,
        "UpdateDateTime never went backwards": result["update_time_went_backwards"] == 0,
        "RSS within 10% after warm-up": result["max_rss_growth_after_warmup"] <= 0.10,
        "clean final stop": code == 0,
    }
    result["checks"] = checks
    print(json.dumps(result, indent=1))
    failed = [name for name, ok in checks.items() if not ok]
    print(f"soak: {len(checks) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print(f"soak FAILED: {'; '.join(failed)} (daemon log: {log})", file=sys.stderr)
        return 1
    print(f"soak passed: {result['rows_written']} rows, {kills} kills, "
          f"{reloads} reloads, {windows} fault windows in {seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
