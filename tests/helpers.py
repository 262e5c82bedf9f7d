"""Helpers shared by the test modules: config files, the CLI and the daemon as real processes,
rows inserted the way host tools do, and polling."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from types import ModuleType
from typing import Any

from reporter.hub_requests import Request, encode
from reporter.rows import OutboxRow, Problem, judge
from reporter.stores.contract import Ingested, OutboxStore, TakenIn

from .docblocks import run_by

ROOT = Path(__file__).resolve().parent.parent

# The outbox table exactly as the contract page prints it: what a host tool may create itself
# (the tests create host tables from the page's own block, so the page stays what works).
CONTRACT_DDL = run_by(
    "contract.md", "tests/test_docs.py::test_the_contract_sqlite_ddl_is_the_contract_table")[0].text

FAST = {
    "publish": {
        "interval_seconds": 0.2,
        "backoff_base_seconds": 0.1,
        "backoff_max_seconds": 1.0,
        "blocked_recheck_seconds": 0.5,
        "stop_timeout_seconds": 2.0,
    },
    "outbox": {"lease_seconds": 2.0},
    "mapping": {"check_after_seconds": 0.2, "unmapped_after_seconds": 2.0,
                "max_check_interval_seconds": 0.5},
}


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    """Render nested dicts as TOML (strings, numbers, booleans)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment (with the emulator's variables) for a child process."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(extra or {})
    return env


Cli = Callable[..., subprocess.CompletedProcess[str]]


def start_daemon(config: Path, env: dict[str, str] | None = None,
                 stderr: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    """`mgh-reporter run` as a real background process."""
    return subprocess.Popen(
        [sys.executable, "-m", "reporter", "--config", str(config), "run"],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=child_env(env), cwd=ROOT,
    )


def stop_daemon(proc: subprocess.Popen[str], log: Path | None = None,
                timeout: float = 10.0) -> None:
    """SIGTERM, then a clean exit (0) within `timeout`; otherwise the failure shows the end of
    the daemon's log (`log`, or its piped stderr), which says why. A daemon a test left
    SIGSTOPped (it failed before its SIGCONT) is continued first, or SIGTERM would wait."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
    proc.terminate()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    if code != 0:
        if log is not None:
            text = log.read_text(errors="replace")
        else:
            text = proc.stderr.read() if proc.stderr is not None else "(stderr not kept)"
        raise AssertionError(f"the daemon exited {code}; its log ends:\n{text[-6000:]}")


def http_get(url: str) -> tuple[int, str]:
    """GET on loopback: (status, body); (0, "") while nothing answers (not listening yet, or a
    connection the server closed)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()
    except OSError:
        return 0, ""


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def insert(path: Path, **values: Any) -> int:
    """INSERT one row the way a host tool in any language would."""
    conn = sqlite3.connect(path, timeout=5)
    with conn:
        cur = conn.execute(
            f"INSERT INTO outbox ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            list(values.values()),
        )
    conn.close()
    return int(cur.lastrowid or 0)


def row_clock(path: Path) -> str:
    """The newest outbox row's `created_at` (SQLite's own clock, real time): a frozen test clock
    starts here, so rows and the frozen "now" agree on any calendar date."""
    conn = sqlite3.connect(path, timeout=5)
    try:
        value = conn.execute("SELECT max(created_at) FROM outbox").fetchone()[0]
    finally:
        conn.close()
    assert isinstance(value, str), "row_clock needs a row in the outbox"
    return value


def frozen_clock(frozen: Any) -> Callable[[], float]:
    """The epoch time of a freezegun `freeze_time(...)` factory, seen alike by every thread
    (freezegun shows code running on other threads the real clock)."""
    return lambda: float(frozen().replace(tzinfo=UTC).timestamp())


def status_json(cli: Cli, code: int = 0) -> dict[str, Any]:
    """`status --json` as a dict, asserting its exit code."""
    result = cli("status", "--json")
    assert result.returncode == code, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def pending(path: Path) -> int:
    """Rows not yet delivered or rejected (read straight from the file)."""
    conn = sqlite3.connect(path, timeout=5)
    try:
        waiting = conn.execute("SELECT count(*) FROM mgh_inbox").fetchone()[0]
        return int(waiting) + int(conn.execute(
            "SELECT count(*) FROM mgh_rows WHERE state='pending'").fetchone()[0])
    finally:
        conn.close()


def fill(path: Path, tasks: int, rounds: int) -> None:
    """INSERT `rounds` IN_PROGRESS states for each of `tasks` tasks (t0, t1, ...)."""
    conn = sqlite3.connect(path, timeout=5)
    with conn:
        for r in range(rounds):
            conn.executemany(
                "INSERT INTO outbox(kind, migration_task_name, status, progress_percent)"
                " VALUES ('task_state', ?, 'IN_PROGRESS', ?)",
                [(f"t{t}", r) for t in range(tasks)],
            )
    conn.close()


def attrs(*pairs: tuple[str, str]) -> str:
    """The resource_attributes JSON of (Type, Value) pairs."""
    return json.dumps([{"Type": t, "Value": v} for t, v in pairs])


def judged(row: OutboxRow, stream: str = "S", next_update_seconds: int = 3600) -> Request:
    """A valid outbox row as intake judges it (what a claim carries to delivery)."""
    checked = judge(row, stream, next_update_seconds)
    assert not isinstance(checked, Problem), checked
    return checked


def take_in(store: OutboxStore, limit: int = 100, stream: str = "S",
            rejected: dict[int, str] | None = None, supersedes: bool = True,
            judged_request: bool = True) -> tuple[list[OutboxRow], TakenIn]:
    """One `take_in` as intake makes it: every row judged valid (those of `rejected` refused
    with that reason); the rows the store handed the judge, and what it reported."""
    rejected = rejected or {}
    seen: list[OutboxRow] = []

    def decide(row: OutboxRow) -> Ingested:
        seen.append(row)
        refused = rejected.get(row.id)
        return Ingested(row.id, stream, str(row.migration_task_name), str(row.kind),
                        store.clock(), refused, supersedes and refused is None,
                        encode(judged(row, stream)) if refused is None and judged_request
                        else None)

    taken = store.take_in(limit, decide)
    return seen, taken


def free_port(family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1") -> int:
    """A TCP port free on loopback at this moment (the kernel's choice)."""
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_events(source: Path | str, strict: bool = False) -> list[dict[str, Any]]:
    """The JSON log events in a log file or a captured stderr. From a file the daemon may still
    be writing, a last line without its newline is left for next time. `strict`: every
    non-blank line must be JSON (a line that is not fails the test); else lines that do not
    start with `{` (a traceback, a warning) are skipped."""
    text = source.read_text() if isinstance(source, Path) else source
    lines = text.splitlines()
    if isinstance(source, Path) and text and not text.endswith("\n"):
        lines = lines[:-1]
    if strict:
        return [json.loads(line) for line in lines if line.strip()]
    return [json.loads(line) for line in lines if line.startswith("{")]


def load_script(path: Path, name: str) -> ModuleType:
    """A script of the tree (packaging/build.py, benchmarks/figures.py, docs/gen_reference.py)
    loaded as a module: they are files, not packages."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_module() -> ModuleType:
    """packaging/build.py, loaded from the tree."""
    return load_script(ROOT / "packaging" / "build.py", "mgh_build")


def read_pty(master: int) -> bytes:
    """Everything a pty's other side wrote until it closed."""
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    return screen
