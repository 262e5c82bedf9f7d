"""A soak with a no-silent-loss oracle: writers, faults, kill -9 and reloads for minutes.

    python benchmarks/soak.py                 # 10 minutes (the default)
    python benchmarks/soak.py --minutes 30
    python benchmarks/soak.py --seconds 60    # the CI version
    python benchmarks/soak.py --postgres      # two replicas on a PostgreSQL outbox (pgserver)

Writers insert bursts and steady rows over hundreds of tasks (states, attribute lists, source
resources associated and removed, and now and then a row the Hub would refuse) and the states
of a few applications into a real outbox; the emulator (its own process)
cycles through fault windows, each kind once per cycle in a random order (throttling with
5xx, latency, a full outage, a hostile network, an account rate);
the daemon (`mgh-reporter run`, a real process) is killed with SIGKILL at random moments and
restarted, and sent SIGHUP now and then, once it has said READY=1 (as systemd reloads).
The Hub itself changes behind the daemon's back
(repair rounds are on): a delivered task is lost, the stream is deleted once, another client
writes a newer state to a task (which the tools then leave alone), and the account's home
Region is unset for a few seconds, then set again. With --postgres, two replicas share a
PostgreSQL outbox and a random one of them is killed each time. At the end the faults stop
and the daemon finishes.

The oracle, checked from the files and the Hub's own record:
- every row written is sent, superseded or rejected with a reason (nothing pending, nothing
  forgotten), and exactly the rows written invalid are rejected;
- each task's last state at the Hub equals its last valid row;
- each task's attribute list at the Hub is its last one (a lost task restored whole);
- each task's source resources at the Hub are those its rows left associated (restored too);
- each application's state at the Hub is its last row's, and no application's UpdateDateTime
  ever went backwards at the Hub;
- no task's UpdateDateTime ever went backwards at the Hub;
- no update of ours followed another client's newer one (never overwritten);
- a task whose Hub state is another client's newer one was reported (`hub_differs`), and
  `verify` finds no other difference;
- in a quiet window at the end (nothing to send) the daemon makes no Hub write at all;
- GetHomeRegion calls stay within a budget: one per process start, one per blocked recheck
  (plus the calls in flight when the block came), one per backoff base second otherwise;
- within each daemon lifetime past its warm-up, RSS stays within 10%;
- in the windows where the account takes only ACCOUNT_RATE calls/s (a token bucket, as a fleet
  of hosts shares), fewer than two of our Migration Hub calls are refused for each one
  accepted (plus 5 a window, the refusals that teach the host the limit): the adaptive rate
  paces them instead of hammering the limit (without it, 98% were refused). It may accept up
  to about half refused here by design: the random-throttling windows teach it to tolerate
  a share, which a window of the account's rate then inherits.
Prints one JSON document of figures; exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import STREAM, EmulatorProcess, backlog, emulator_process, make_outbox

TASKS = 300
ACCOUNT_RATE = 4.0  # calls/s the account takes in its windows (a token bucket, as many hosts')
PACED_SHARE = 2 / 3  # ... of which less than this share of our calls there is refused, plus
FIRST_REFUSALS = 5  # this many per window (the refusals that teach the host the limit);
#                     unpaced, 98% of them were refused
APPLICATIONS = [f"d-application-soak{i:02d}" for i in range(8)]
APPLICATION_STATUSES = ("NOT_STARTED", "IN_PROGRESS", "COMPLETED")
SOURCES = ("wave-1", "wave-2", "app-erp", "dc-east")
WINDOWS: list[dict[str, Any]] = [
    {},
    {"throttle": 0.3, "server_error": 0.1, "retry_after": 1},
    {"latency": 0.2},
    {"outage": True},
    {"garble": 0.1, "garble_kind": "html"},
    {"throttle": 0.1},
    {"account_rate": ACCOUNT_RATE, "retry_after": 1},
]
CLEAR = {"throttle": 0.0, "server_error": 0.0, "latency": 0.0, "outage": False, "garble": 0.0,
         "account_rate": 0.0}
WARMUP_SECONDS = 10.0
REPAIR_EVERY = 0.5  # [verify] every_seconds: rounds of 5 tasks, all 300 read within a minute
BLOCKED_RECHECK = 3.0  # [publish] blocked_recheck_seconds
BLOCKED_SECONDS = 6.0  # how long the home Region stays unset
BACKOFF_BASE = 0.5  # [publish] backoff_base_seconds
MAX_CONCURRENCY = 8  # [publish] max_concurrency: calls in flight when a block comes
QUIET_SECONDS = 5.0
READS = ("Describe", "List", "GetHomeRegion")
CONFIG_OPERATIONS = ("GetHomeRegion", "CreateHomeRegionControl", "DescribeHomeRegionControls")


INSERT = ("INSERT INTO outbox(kind, migration_task_name, status, progress_percent, status_detail,"
          " update_date_time, resource_attributes, application_id, source_resource_name)"
          " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


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
        self.attributes: dict[str, str] = {}  # per task: the address of its last attribute list
        self.frozen: set[str] = set()  # tasks another client took over: no more rows for them
        self.applications: dict[str, str] = {}  # per application: its last state's status
        self.app_step: dict[str, int] = {}
        self.sources: dict[str, set[str]] = {}  # per task: the source resources left associated
        self.invalid = 0
        self.rows = 0
        self.errors: list[str] = []
        self.clock = datetime.now(UTC)

    def _rows(self, count: int) -> tuple[list[tuple[Any, ...]], dict[str, tuple[int, str]],
                                         dict[str, str], dict[str, str],
                                         dict[str, set[str]]]:
        """`count` rows and the last valid state, attribute list, application state and
        source resources they leave each task (and application) at (not yet remembered: only a
        committed write counts)."""
        out: list[tuple[Any, ...]] = []
        last: dict[str, tuple[int, str]] = {}
        addresses: dict[str, str] = {}
        apps: dict[str, str] = {}
        sources: dict[str, set[str]] = {}
        for _ in range(count):
            task = f"s{self.rng.randrange(TASKS)}"
            roll = self.rng.random()
            if roll < 0.03:  # an application's state (the tool reports its wave)
                app = self.rng.choice(APPLICATIONS)
                step = self.app_step.get(app, 0) + 1
                self.app_step[app] = step
                self.clock += timedelta(milliseconds=1)
                status = APPLICATION_STATUSES[step % 3]
                out.append(("application_state", app, status, None, None,
                            self.clock.isoformat().replace("+00:00", "Z"), None, app, None))
                apps[app] = status
                continue
            if task in self.frozen:
                continue
            if roll < 0.05:  # a row the Hub would refuse: rejected, never sent
                out.append(("task_state", task, "IN_PROGRESS", 150, "bad percent", None, None,
                            None, None))
                continue
            if roll < 0.10:  # a source resource associated, or removed
                name = self.rng.choice(SOURCES)
                held = sources.setdefault(task, set(self.sources.get(task, set())))
                removing = name in held and self.rng.random() < 0.4
                kind = "source_resource_removed" if removing else "source_resource"
                out.append((kind, task, None, None, None, None, None, None, name))
                (held.discard if removing else held.add)(name)
                continue
            if roll < 0.20:
                address = f"10.0.{self.rng.randrange(256)}.1"
                attrs = json.dumps([{"Type": "IPV4_ADDRESS", "Value": address}])
                out.append(("resource_attributes", task, None, None, None, None, attrs, None,
                            None))
                addresses[task] = address
                continue
            step = self.step.get(task, 0) + 1
            self.step[task] = step
            self.clock += timedelta(milliseconds=1)
            detail = f"step {step}"
            out.append(("task_state", task, "IN_PROGRESS", step % 101, detail,
                        self.clock.isoformat().replace("+00:00", "Z"), None, None, None))
            last[task] = (step % 101, detail)
        return out, last, addresses, apps, sources

    def _write(self, count: int) -> None:
        """One transaction of `count` rows. The lock spans making and committing them, so the
        writers' commit order is the order rows were made in (the order the daemon keeps)."""
        with self.lock:
            rows, last, addresses, apps, sources = self._rows(count)
            if not rows:
                return
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
                self.attributes.update(addresses)
                self.applications.update(apps)
                self.sources.update(sources)
                return

    def run_steady(self) -> None:
        while not self.stop.wait(0.05):
            self._write(1)

    def run_bursts(self) -> None:
        while not self.stop.wait(self.rng.uniform(1.0, 4.0)):
            self._write(self.rng.randrange(50, 400))


class HubEvents:
    """The Hub changed behind the daemon's back, one event at a time: a delivered task lost,
    the stream deleted, another client's newer state on a task the tools then leave alone, the
    home Region unset for BLOCKED_SECONDS."""

    def __init__(self, hub: EmulatorProcess, box: Target, writers: Writers,
                 rng: random.Random) -> None:
        self.hub, self.box, self.writers, self.rng = hub, box, writers, rng
        self.lost = self.streams_deleted = self.blocked_windows = 0
        self.foreign: set[str] = set()
        self.unblock_at: float | None = None

    def tick(self, now: float) -> None:
        """Set the home Region again once its window is over."""
        if self.unblock_at is not None and now >= self.unblock_at:
            self.hub.control("home-region", {"region": "us-west-2"})
            self.unblock_at = None

    def plan(self, seconds: float) -> list[tuple[float, str]]:
        """Every run has each kind of event (a longer run more of them): the stream deleted,
        then the rest in a random order, spread evenly between 5 s and 10 s before the end:
        (offset, kind)."""
        per_minute = ["lose", "lose", "foreign", "foreign", "block"]
        kinds = per_minute * max(1, int(seconds // 60))
        self.rng.shuffle(kinds)
        kinds.insert(0, "stream")  # first: a deletion later would erase the foreign states
        span = max(1.0, seconds - 15.0)
        return [(5.0 + span * i / len(kinds), kind) for i, kind in enumerate(kinds)]

    def happen(self, now: float, kind: str) -> bool:
        """One event of `kind` (a block waits for the one before it to end); False when the
        stream to delete is not there yet (tried again later)."""
        delivered = sorted(set(self.hub.last_states()) - self.writers.frozen)
        if kind == "stream":
            if not self.hub.control("delete-stream", {"stream": STREAM}):
                return False
            self.streams_deleted += 1
        elif kind == "block" and self.unblock_at is None:
            self.hub.control("home-region", {"region": None})
            self.blocked_windows += 1
            self.unblock_at = now + BLOCKED_SECONDS
        elif kind == "foreign" and delivered:
            self._foreign(self.rng.choice(delivered))
        elif kind == "lose" and delivered and self.hub.control(
                "lose-task", {"stream": STREAM, "task": self.rng.choice(delivered)}):
            self.lost += 1
        return True

    def _foreign(self, task: str) -> None:
        """Another client's state dated an hour ahead, once nothing of ours for the task is in
        flight (its rows delivered, no repair under way): anything of ours after it would be an
        overwrite."""
        self.writers.frozen.add(task)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            busy = self.box.query(
                "SELECT (SELECT count(*) FROM outbox o LEFT JOIN mgh_rows r ON r.id = o.id"
                f" WHERE o.migration_task_name = '{task}' AND (r.id IS NULL OR r.state ="
                f" 'pending')) + (SELECT count(*) FROM mgh_tasks WHERE task = '{task}'"
                " AND resend <> 0)")[0][0]
            if not busy:
                break
            time.sleep(0.1)
        else:
            return
        if self.hub.control("change-task", {
                "stream": STREAM, "task": task, "update_date_time": time.time() + 3600,
                "task_fields": {"Status": "COMPLETED", "ProgressPercent": 100,
                                "StatusDetail": "by another tool"}}):
            self.foreign.add(task)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Daemon:
    """`mgh-reporter run`, restarted after every kill; RSS sampled per lifetime. It tells its
    readiness on a notify socket, as to systemd, which reloads a unit only once it is ready:
    a SIGHUP that came before Python installed any handler would kill it by default."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd, self.env, self.log = cmd, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.lifetimes: list[list[float]] = []
        self.kills = self.reloads = 0
        self.ready = False
        self.notify_path = log.parent / f"notify-{id(self)}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)

    def start(self) -> None:
        self._messages()  # the last lifetime's, if any
        self.ready = False
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                self.cmd, env={**self.env, "NOTIFY_SOCKET": str(self.notify_path)},
                stderr=err, stdout=subprocess.DEVNULL)
        self.started = time.monotonic()
        self.lifetimes.append([])

    def _messages(self) -> list[str]:
        """What the daemon told its service manager since the last look (read every tick, as
        systemd does: a queue left full would make each message wait)."""
        found = []
        while True:
            try:
                found.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                return found

    def _look(self) -> None:
        self.ready = self.ready or any("READY=1" in m.splitlines() for m in self._messages())

    def sample(self) -> None:
        self._look()
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

    def reload(self) -> bool:
        """SIGHUP, once the daemon has said READY=1 since its start; False: not yet."""
        assert self.proc is not None
        self._look()
        if not self.ready:
            return False
        self.proc.send_signal(signal.SIGHUP)
        self.reloads += 1
        return True

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.notify.close()
        return code


def foreign_now(hub: EmulatorProcess) -> set[str]:
    """Tasks whose newest state at the Hub is another client's."""
    return {name for name, last in hub.last_states().items() if last.get("ReceivedAt") is None}


def hub_lags(hub: EmulatorProcess, writers: Writers) -> tuple[list[str], list[str]]:
    """Tasks (not another client's now) whose Hub state is not their last valid row, and
    tasks whose Hub attribute list (or source resources) is not their last one."""
    tasks = hub.tasks()
    last = {name: (t["last"] or {}).get("Task", {}) for name, t in tasks.items()}
    foreign = foreign_now(hub)
    wrong_last = sorted(
        task for task, (percent, detail) in writers.last.items()
        if task not in foreign and ((last.get(task) or {}).get("StatusDetail") != detail
                                    or last[task].get("ProgressPercent") != percent))
    wrong_attributes = sorted(
        task for task, address in writers.attributes.items()
        if (tasks.get(task) or {}).get("attributes") != [
            {"Type": "IPV4_ADDRESS", "Value": address}])
    wrong_attributes += sorted(
        f"{task} (source resources)" for task, names in writers.sources.items()
        if sorted((tasks.get(task) or {}).get("sources") or []) != sorted(names))
    return wrong_last, wrong_attributes


def application_lags(hub: EmulatorProcess, writers: Writers) -> tuple[list[str], int]:
    """Applications whose Hub state is not their last row's, and how many times an
    application's UpdateDateTime went backwards at the Hub."""
    state = hub.state()
    shown = state.get("applications", {})
    wrong = sorted(app for app, status in writers.applications.items()
                   if (shown.get(app) or {}).get("ApplicationStatus") != status)
    times: dict[str, list[float]] = {}
    for update in state.get("application_updates", []):
        times.setdefault(update["ApplicationId"], []).append(update["UpdateDateTime"])
    backwards = sum(1 for seen in times.values()
                    for a, b in itertools.pairwise(seen) if b < a)
    return wrong, backwards


def reported_differs(log: Path) -> set[str]:
    """Tasks the daemon logged `hub_differs` for."""
    found = set()
    for line in log.read_text(errors="replace").splitlines():
        if '"hub_differs"' in line:
            try:
                found.add(str(json.loads(line).get("task")))
            except ValueError:
                continue
    return found


def settled(box: Target, hub: EmulatorProcess, writers: Writers, log: Path) -> bool:
    """Nothing left to send, the Hub at every task's last rows, every task another client
    holds reported."""
    if box.backlog():
        return False
    wrong_last, wrong_attributes = hub_lags(hub, writers)
    return (not wrong_last and not wrong_attributes and not application_lags(hub, writers)[0]
            and foreign_now(hub) <= reported_differs(log))


def account_rate_calls(hub: EmulatorProcess, windows: list[tuple[float, float]]
                       ) -> tuple[int, int]:
    """(calls, throttled) of Migration Hub calls made in the account-rate windows."""
    calls = [c for c in hub._request("calls")["calls"]
             if not c["operation"].startswith(CONFIG_OPERATIONS)
             and any(a <= c["time"] < b for a, b in windows)]
    return len(calls), sum(c["error"] == "ThrottlingException" for c in calls)


def oracle(box: Target, hub: EmulatorProcess, writers: Writers, log: Path) -> dict[str, Any]:
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
    wrong_last, wrong_attributes = hub_lags(hub, writers)
    wrong_apps, apps_backwards = application_lags(hub, writers)
    foreign = foreign_now(hub)
    reported = reported_differs(log)
    backwards = overwritten = 0
    for updates in hub.updates().values():
        times = [u["UpdateDateTime"] for u in updates]
        backwards += sum(1 for a, b in itertools.pairwise(times) if b < a)
        for i, theirs in enumerate(updates):  # another client's (ReceivedAt: None)
            if theirs.get("ReceivedAt") is None:
                overwritten += sum(1 for ours in updates[i + 1:]
                                   if ours.get("ReceivedAt") is not None
                                   and ours["UpdateDateTime"] < theirs["UpdateDateTime"])
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
        "tasks_not_at_last_attributes": len(wrong_attributes),
        "examples_not_at_last_attributes": wrong_attributes[:5],
        "update_time_went_backwards": backwards,
        "applications_written": len(writers.applications),
        "applications_not_at_last_state": wrong_apps,
        "application_update_time_went_backwards": apps_backwards,
        "tasks_with_source_resources": sum(1 for n in writers.sources.values() if n),
        "foreign_updates_overwritten": overwritten,
        "tasks_foreign_at_end": len(foreign),
        "foreign_not_reported": sorted(foreign - reported),
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
                           outage_backoff_max_seconds=5.0, backoff_base_seconds=BACKOFF_BASE,
                           blocked_recheck_seconds=BLOCKED_RECHECK,
                           max_concurrency=MAX_CONCURRENCY,
                           **({"url": server.url} if server else {}))
        with made.config.open("a") as config:
            config.write("[aws]\nread_timeout_seconds = 5\nconnect_timeout_seconds = 2\n"
                         f"[verify]\nevery_seconds = {REPAIR_EVERY}\n")
        box = Target(url=server.url) if server else Target(db=made.db)
        log = made.dir / "daemon.log"
        daemons = [Daemon(made.cmd("run"), hub.env, log) for _ in range(2 if server else 1)]
        writers = Writers(box, rng)
        events = HubEvents(hub, box, writers, rng)
        for app in APPLICATIONS:  # known to Application Discovery Service
            hub.control("application", {"application": app})
        for d in daemons:
            d.start()
        threads = [threading.Thread(target=writers.run_steady, daemon=True),
                   threading.Thread(target=writers.run_bursts, daemon=True)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        next_window = next_kill = next_reload = started
        plan = events.plan(seconds)
        windows = 0
        limited: list[tuple[float, float] | None] = []  # account-rate windows (wall clock)
        order = rng.sample(WINDOWS, len(WINDOWS))
        while time.monotonic() - started < seconds:
            now = time.monotonic()
            events.tick(now)
            while plan and now - started >= plan[0][0]:
                offset, kind = plan.pop(0)
                if not events.happen(now, kind):
                    plan.insert(0, (offset + 2.0, kind))
                    break
            if now >= next_window:
                window = order[windows % len(order)]  # each kind once per cycle
                hub.faults(**{**CLEAR, **window})
                windows += 1
                next_window = now + rng.uniform(3.0, 10.0)
                limited.append((time.time(), time.time() + next_window - now)
                               if "account_rate" in window else None)
            if now >= next_kill:
                if now > started:
                    rng.choice(daemons).kill()
                next_kill = now + rng.uniform(5.0, 20.0)
            if now >= next_reload and (now <= started or rng.choice(daemons).reload()):
                next_reload = now + rng.uniform(10.0, 30.0)
            for d in daemons:
                d.sample()
            time.sleep(0.25)
        writers.stop.set()
        for thread in threads:
            thread.join()
        hub.faults(**CLEAR)
        events.tick(float("inf"))  # the home Region set again
        settle_started = time.monotonic()
        while time.monotonic() - settle_started < 180 and not settled(box, hub, writers, log):
            for d in daemons:
                d.sample()
            time.sleep(0.5)
        settle = time.monotonic() - settle_started
        before = hub.operations()
        time.sleep(QUIET_SECONDS)  # nothing to send: no Hub write at all
        after = hub.operations()
        quiet_writes = {op: n - before.get(op, 0) for op, n in after.items()
                        if not op.startswith(READS) and n != before.get(op, 0)}
        verified = subprocess.run([*made.cmd("verify"), "--json"], env=hub.env,
                                  capture_output=True, text=True, timeout=300)
        code = max(d.stop() for d in daemons)
        result = oracle(box, hub, writers, log)
        foreign_now_at_end = foreign_now(hub)
        differing = {t["task"] for t in json.loads(verified.stdout or "{}").get("tasks", [])
                     if not t["ok"]}
        lookups = after.get("GetHomeRegion", 0)
        paced = account_rate_calls(hub, [w for w in limited if w is not None])
    starts = len(daemons) + sum(d.kills for d in daemons)
    budget = (starts + 2  # each process's first lookup, init's and verify's
              + len(daemons) * events.blocked_windows * (
                  int(BLOCKED_SECONDS / BLOCKED_RECHECK) + 2 + MAX_CONCURRENCY)
              + int(seconds / BACKOFF_BASE / 4))  # lookups retried after transient failures
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
        "tasks_lost_at_hub": events.lost, "streams_deleted": events.streams_deleted,
        "foreign_updates": len(events.foreign), "blocked_windows": events.blocked_windows,
        "hub_events_planned": len(events.plan(seconds)),
        "quiet_window_writes": quiet_writes, "verify_exit": verified.returncode,
        "verify_differing_not_foreign": sorted(differing - foreign_now_at_end),
        "get_home_region_calls": lookups, "get_home_region_budget": budget,
        "account_rate_windows": sum(w is not None for w in limited),
        "account_rate_calls": paced[0], "account_rate_throttled": paced[1],
    })
    checks = {
        "nothing pending or untracked": result["pending"] == 0 and result["untracked_rows"] == 0,
        "exactly the invalid rows rejected, each with a reason": (
            result["rejected"] == result["invalid_written"]
            and result["valid_rows_rejected"] == 0 and result["rejected_without_reason"] == 0),
        "every task at its last valid row": result["tasks_not_at_last_state"] == 0,
        "every task at its last attribute list and source resources": (
            result["tasks_not_at_last_attributes"] == 0),
        "every application at its last state, never backwards": (
            not result["applications_not_at_last_state"]
            and result["application_update_time_went_backwards"] == 0),
        "UpdateDateTime never went backwards": result["update_time_went_backwards"] == 0,
        "never over another client's newer update": result["foreign_updates_overwritten"] == 0,
        "every difference at the Hub reported": not result["foreign_not_reported"]
        and not result["verify_differing_not_foreign"] and verified.returncode in (0, 6),
        "no Hub write in the quiet window": not quiet_writes,
        "GetHomeRegion within its budget": lookups <= budget,
        "paced under the account's rate (never hammering it)": (
            paced[1] < PACED_SHARE * paced[0] + FIRST_REFUSALS * len(
                [w for w in limited if w is not None])),
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
