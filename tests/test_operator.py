"""Operator experience, as processes against the emulator: quiet logs under throttling, a drain
that shows its work and sums up, dead letters that can be dropped, a smooth first day."""

from __future__ import annotations

import itertools
import json
import os
import pty
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reporter.emulator import Emulator
from reporter.outbox import Outbox, OutboxValueError

from .helpers import Cli, insert, log_events, read_pty

THROTTLE_TASKS = 1000


def _bulk(outbox: Path, tasks: int, prefix: str = "task") -> None:
    conn = sqlite3.connect(outbox, timeout=5)
    with conn:
        conn.executemany(
            "INSERT INTO outbox (kind, migration_task_name, status, progress_percent)"
            " VALUES ('task_state', ?, 'IN_PROGRESS', 50)",
            [(f"{prefix}-{i:05d}",) for i in range(tasks)],
        )
    conn.close()


def test_a_throttled_drain_logs_conditions_not_calls(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path
):
    """30% of calls throttled over a drain of 1,000 tasks: a handful of lines on stderr (the
    condition starting, its summaries, the progress events), not one per failed call; at
    debug level every call is still there."""
    config = make_config(log={"level": "info", "format": "json", "summary_seconds": 3})
    assert cli("init", config=config).returncode == 0
    _bulk(outbox_path, THROTTLE_TASKS)
    emulator.state.faults.update(throttle=0.3, retry_after=0)
    started = time.monotonic()
    result = cli("drain", "--timeout", "240", config=config, timeout=300)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    throttled = sum(
        1 for c in emulator.state.calls if c.get("error") == "ThrottlingException"
    )
    assert throttled > 200  # the condition really happened, many times over
    lines = result.stderr.splitlines()
    events = log_events(result.stderr)
    assert len(events) == len(lines)  # every stderr line is one JSON event
    names = [e["event"] for e in events]
    assert "call_failed" not in names
    assert "replicas" not in names  # one process, no cap: nothing an operator acts on
    assert names.count("condition_started") == 1
    started_event = next(e for e in events if e["event"] == "condition_started")
    assert started_event["condition"] == "throttling"
    assert started_event["error_code"] == "ThrottlingException"
    assert {"operation", "attempt", "delay"} <= set(started_event)
    if started_event["operation"] != "GetHomeRegion":  # the lookup is a condition too
        assert {"task", "stream"} <= set(started_event)
    # One summary per 3 s at most, one progress event per 5 s at most, and a few others.
    assert len(lines) <= 12 + seconds / 3 + seconds / 5, "\n".join(lines)
    summaries = [e for e in events if e["event"] == "condition_ongoing"]
    assert summaries, names
    assert sum(s["failures"] for s in summaries) + 1 >= throttled * 0.9
    for s in summaries:
        assert s["condition"] == "throttling" and s["worst_delay"] >= 0
        assert set(s["operations"]) <= {"NotifyMigrationTaskState", "ImportMigrationTask",
                                        "CreateProgressUpdateStream"}
    progress = [e for e in events if e["event"] == "drain_progress"]
    times = [time.mktime(time.strptime(e["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
             for e in progress]
    assert all(b - a >= 4 for a, b in itertools.pairwise(times))
    assert result.stdout.startswith("drain delivered: ")
    assert f"{THROTTLE_TASKS} sent" in result.stdout


def test_condition_clears_with_one_line_and_debug_keeps_every_call(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path
):
    """Server errors that stop: one start, one clear; at debug level each failed call."""
    config = make_config(log={"level": "debug", "format": "json", "summary_seconds": 0.5})
    assert cli("init", config=config).returncode == 0
    _bulk(outbox_path, 20, "first")
    emulator.state.faults.update(fail_operations={"NotifyMigrationTaskState"})
    result = cli("drain", "--timeout", "1.5", config=config)
    assert result.returncode == 3
    events = log_events(result.stderr)
    assert sum(e["event"] == "call_failed" for e in events) >= 20
    start = [e for e in events if e["event"] == "condition_started"]
    assert [e["condition"] for e in start] == ["server_errors"]
    assert any(e["event"] == "condition_ongoing" and e.get("ongoing_at_exit") for e in events)
    emulator.state.faults.update(fail_operations=set())
    _bulk(outbox_path, 1, "late")
    result = cli("drain", "--timeout", "30", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    # A fresh process: nothing active at its start, nothing failed, so no condition lines.
    assert not [e for e in log_events(result.stderr) if e["event"].startswith("condition_")]


def test_drain_summary_line_and_json(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path
):
    """Always one summary on stdout; --json makes it one JSON object; exit 5 says rejected."""
    config = make_config()
    assert cli("init", config=config).returncode == 0
    result = cli("drain", config=config)
    assert result.returncode == 0
    assert result.stdout.strip() == result.stdout.strip().splitlines()[0]
    assert result.stdout.startswith("drain delivered: 0 sent, 0 superseded, 0 rejected, "
                                    "0 still pending in ")
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    insert(outbox_path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
           progress_percent=10)
    insert(outbox_path, kind="task_state", migration_task_name="t2", status="DONE?")
    result = cli("drain", "--json", config=config)
    assert result.returncode == 5
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 5 and summary["outcome"] == "rejected"
    assert summary["sent"] == 1 and summary["superseded"] == 1
    assert summary["rejected"] == 1 and summary["rejected_at_intake"] == 1
    assert summary["pending"] == 0 and summary["seconds"] >= 0
    emulator.state.faults.update(outage=True)
    insert(outbox_path, kind="task_state", migration_task_name="t3", status="IN_PROGRESS")
    result = cli("drain", "--json", "--timeout", "1", config=config)
    assert result.returncode == 3
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "pending" and summary["pending"] == 1
    assert summary["reason"].startswith("timeout")


def test_drain_on_a_terminal_shows_a_progress_bar(
    emulator: Emulator, aws_env: dict[str, str], make_config: Any, outbox_path: Path
):
    """On a terminal the drain draws a bar (rows, tasks left, calls/s, retries, ETA) on
    stderr, in 80 columns and counting rows as the summary does (150 tasks x 2 rows: 150 sent,
    150 superseded, 300 rows), never "None"; stdout keeps only the summary."""
    config = make_config(log={"level": "warning", "format": "json"})
    env = {**os.environ, **aws_env, "COLUMNS": "80", "TERM": "xterm"}
    assert subprocess.run([sys.executable, "-m", "reporter", "--config", str(config), "init"],
                          env=env, capture_output=True).returncode == 0
    _bulk(outbox_path, 150)
    _bulk(outbox_path, 150)  # a newer state of each task: the first rows are superseded
    emulator.state.faults.update(latency=0.01)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reporter", "--config", str(config), "drain"],
        env=env, stdout=subprocess.PIPE, stderr=slave, text=True,
    )
    os.close(slave)
    screen = read_pty(master)
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    text = screen.decode(errors="replace")
    assert "rows" in text and "tasks left" in text and "None" not in text
    assert "/s" in text and "retrying" in text and "ETA" in text
    assert "300/300 rows" in text
    assert out.startswith("drain delivered: 150 sent, 150 superseded"), out


def test_dead_letters_drop(cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path):
    """Drop by id, by age, or all: asked on a terminal, --yes elsewhere; status counts them;
    the drop is logged; retry without arguments shows how to call it."""
    config = make_config(log={"level": "info", "format": "json"})
    assert cli("init", config=config).returncode == 0
    ids = [insert(outbox_path, kind="task_state", migration_task_name=f"bad{i}",
                  status="NOPE") for i in range(4)]
    assert cli("drain", config=config).returncode == 5
    listed = json.loads(cli("dead-letters", "list", "--json", config=config).stdout)
    assert [d["id"] for d in listed] == ids
    assert all({"id", "task", "kind", "reason"} <= set(d) for d in listed)
    assert listed[0]["task"] == "bad0" and listed[0]["kind"] == "task_state"

    usage = cli("dead-letters", "retry", config=config)
    assert usage.returncode == 2 and "dead-letters retry --all" in usage.stderr
    usage = cli("dead-letters", "drop", config=config)
    assert usage.returncode == 2 and "--older-than 7d" in usage.stderr
    bad_age = cli("dead-letters", "drop", "--older-than", "7 parsecs", config=config)
    assert bad_age.returncode == 2 and "not a duration" in bad_age.stderr

    refused = cli("dead-letters", "drop", str(ids[0]), config=config)
    assert refused.returncode == 2 and "add --yes" in refused.stderr
    unknown = cli("dead-letters", "drop", "999", "--yes", config=config)
    assert unknown.returncode == 1 and "not dead letters: 999" in unknown.stderr
    dropped = cli("dead-letters", "drop", str(ids[0]), "--yes", config=config)
    assert dropped.returncode == 0 and "dropped 1 dead letters" in dropped.stdout
    logged = [e for e in log_events(dropped.stderr) if e["event"] == "dead_letters_dropped"]
    assert logged and logged[0]["ids"] == [ids[0]] and logged[0]["rows"] == 1

    none_old = cli("dead-letters", "drop", "--older-than", "1h", "--yes", config=config)
    assert none_old.returncode == 0 and "no dead letters to drop" in none_old.stdout
    status = json.loads(cli("status", "--json", config=config).stdout)
    assert status["dead_letters"] == 3 and status["dropped"] == 1
    human = cli("status", config=config).stdout
    assert "dead letters 3" in human and "1 dropped" in human

    everything = cli("dead-letters", "drop", "--all", "--yes", config=config)
    assert everything.returncode == 0 and "dropped 3" in everything.stdout
    assert json.loads(cli("dead-letters", "list", "--json", config=config).stdout) == []
    assert json.loads(cli("status", "--json", config=config).stdout)["dropped"] == 4


def test_drop_asks_on_a_terminal(
    emulator: Emulator, aws_env: dict[str, str], make_config: Any, outbox_path: Path
):
    """On a terminal `drop` shows what it would drop and asks; "n" drops nothing."""
    config = make_config()
    env = {**os.environ, **aws_env}
    base = [sys.executable, "-m", "reporter", "--config", str(config)]
    assert subprocess.run([*base, "init"], env=env).returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="bad", status="NOPE")
    assert subprocess.run([*base, "drain"], env=env, capture_output=True).returncode == 5
    for answer, left in ((b"n\n", 1), (b"y\n", 0)):
        master, slave = pty.openpty()
        proc = subprocess.Popen([*base, "dead-letters", "drop", "--all"], env=env,
                                stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        screen = b""
        while b"for good?" not in screen:
            screen += os.read(master, 4096)
        os.write(master, answer)
        assert proc.wait(timeout=30) == 0
        os.close(master)
        assert b"Drop 1 dead letter (1) for good?" in screen
        counts = json.loads(subprocess.run([*base, "status", "--json"], env=env,
                                           capture_output=True, text=True).stdout)
        assert counts["dead_letters"] == left


def test_a_missing_outbox_names_the_init_to_run(cli: Cli, make_config: Any, tmp_path: Path):
    """status/run/drain/tasks/dead-letters on a path that was never made: exit 1 and the init
    command (with --parents when the directory is missing too); init makes no directory
    without --parents: a typo in the last directory does not become a new outbox."""
    deep = tmp_path / "typo" / "deeper" / "outbox.db"
    config = make_config(outbox={"path": str(deep)})
    for args in (["status"], ["run"], ["drain"], ["tasks"], ["dead-letters", "list"],
                 ["notify", "t", "--status", "IN_PROGRESS"]):
        result = cli(*args, config=config)
        assert result.returncode == 1, args
        assert f"no outbox at {deep}, and no directory {deep.parent}" in result.stderr, args
        assert "init --parents`" in result.stderr and "None" not in result.stdout
    refused = cli("init", config=config)
    assert refused.returncode == 1 and "--parents" in refused.stderr
    assert not (tmp_path / "typo").exists()  # a typo does not become a tree
    one_level = tmp_path / "state" / "outbox.db"
    config2 = make_config("c2.toml", outbox={"path": str(one_level)})
    missing = cli("status", config=config2)
    assert missing.returncode == 1 and "init --parents`" in missing.stderr
    refused = cli("init", config=config2)  # one level missing: still refused
    assert refused.returncode == 1 and "no directory" in refused.stderr
    assert "init --parents`" in refused.stderr and not one_level.parent.exists()
    assert cli("init", "--parents", config=config2).returncode == 0 and one_level.exists()
    one_level.unlink()
    missing = cli("status", config=config2)  # the directory exists now: plain init
    assert missing.returncode == 1 and missing.stderr.rstrip().endswith(" init`")
    assert cli("init", "--parents", config=config).returncode == 0 and deep.exists()
    assert cli("status", config=config).returncode == 0


def test_blocked_reason_shown_whole_and_tasks_legend(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path
):
    """The human status keeps the `[hub] region` part of a blocked reason; task names with
    brackets are shown as written; `tasks` explains its columns."""
    config = make_config(hub={"progress_update_stream": "ToolA", "region": "eu-west-1"})
    assert cli("init", config=config).returncode == 0
    insert(outbox_path, kind="task_state", migration_task_name="vm[1]", status="IN_PROGRESS")
    assert cli("drain", config=config).returncode == 4
    status = cli("status", config=config)
    reason = json.loads(cli("status", "--json", config=config).stdout)["blocked"]
    assert "[hub]" in reason
    assert reason in " ".join(status.stdout.split())
    emulator_ok = make_config("ok.toml")
    assert cli("drain", config=emulator_ok).returncode == 0
    tasks = cli("tasks", config=emulator_ok)
    assert "vm[1]" in tasks.stdout and "…" not in tasks.stdout
    assert "checking" in tasks.stdout or "yes" in tasks.stdout
    assert "mapped:" in tasks.stdout and "promise:" in tasks.stdout
    assert "STALE (the promised NextUpdateSeconds has passed)" in " ".join(
        cli("tasks", "--help", config=emulator_ok).stdout.split())


@pytest.mark.parametrize("command", [[], ["dead-letters"]])
def test_help_is_not_cut_short(command: list[str]):
    """Every command's one-line description is shown whole in its group's help."""
    import click

    from reporter.cli import cli as group

    result = subprocess.run([sys.executable, "-m", "reporter", *command, "--help"],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0
    assert "...\n" not in result.stdout.split("Commands:")[1]
    target = group
    for name in command:
        target = target.commands[name]  # type: ignore[attr-defined]
    assert isinstance(target, click.Group)
    flat = " ".join(result.stdout.split())
    for sub in target.commands.values():
        assert " ".join(sub.get_short_help_str(limit=10_000).split()) in flat, sub.name


def test_status_watch_refreshes_in_place_on_a_terminal(
    emulator: Emulator, aws_env: dict[str, str], make_config: Any, outbox_path: Path
):
    """`status --watch` on a terminal redraws the same lines (cursor up, not a scrolling
    log) and sees a row arrive; Ctrl-C ends it with exit 0."""
    import signal

    config = make_config()
    env = {**os.environ, **aws_env, "COLUMNS": "120", "TERM": "xterm"}
    base = [sys.executable, "-m", "reporter", "--config", str(config)]
    assert subprocess.run([*base, "init"], env=env).returncode == 0
    master, slave = pty.openpty()
    # Ctrl-C as a terminal sends it: with SIGINT's default action, whatever this test was started
    # from (a shell's background job ignores SIGINT, and its children inherit that: the command
    # then slept on, the failure seen on a loaded machine)
    proc = subprocess.Popen([*base, "status", "--watch", "--every", "0.3"], env=env,
                            stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 30
    inserted = False
    try:
        while time.monotonic() < deadline and b"backlog      1 pending" not in screen:
            ready, _, _ = select.select([master], [], [], 0.5)  # never blocks past the deadline
            if ready:
                screen += os.read(master, 65536)
            if not inserted and b"backlog      0 pending" in screen:
                insert(outbox_path, kind="task_state", migration_task_name="t",
                       status="COMPLETED")
                inserted = True
        proc.send_signal(signal.SIGINT)
        # keep reading while it ends: its last redraw must not block on a full terminal
        # (a busy machine's slow reader filled it: the exit then took longer than 10 s)
        ended = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < ended:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    screen += os.read(master, 65536)
                except OSError:  # it closed the terminal: it is exiting (slowly when busy)
                    time.sleep(0.2)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:  # a failure above must not leave `status --watch` running
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"backlog      1 pending" in screen
    assert b"\x1b[1A" in screen or b"\x1b[A" in screen  # the cursor went back up: in place
    assert screen.count(b"mgh-reporter  ") >= 2


def test_status_watch_json_is_one_object_per_line(cli: Cli, make_config: Any):
    """Off a terminal, `status --watch --json` streams one JSON object per refresh."""
    config = make_config()
    assert cli("init", config=config).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "reporter", "--config", str(config), "status", "--watch",
         "--json", "--every", "0.2"], stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
    proc.terminate()
    proc.wait(timeout=10)
    assert first["pending"] == 0 and second["pending"] == 0 and "blocked" in second


def test_outbox_resource_attributes_takes_pairs_or_dicts(tmp_path: Path, make_config: Any,
                                                         cli: Cli):
    """The Python writer takes (Type, Value) pairs or the column's own {"Type", "Value"}
    dicts; anything else names the expected shape."""
    config = make_config(outbox={"path": str(tmp_path / "w.db")})
    assert cli("init", config=config).returncode == 0
    box = Outbox(tmp_path / "w.db")
    box.resource_attributes("t", [("IPV4_ADDRESS", "10.0.0.1")])
    box.resource_attributes("t", [{"Type": "IPV4_ADDRESS", "Value": "10.0.0.2"},
                                  ["FQDN", "db1.corp"]])
    conn = sqlite3.connect(tmp_path / "w.db")
    stored = [json.loads(r[0]) for r in conn.execute(
        "SELECT resource_attributes FROM outbox ORDER BY id")]
    conn.close()
    assert stored == [[{"Type": "IPV4_ADDRESS", "Value": "10.0.0.1"}],
                      [{"Type": "IPV4_ADDRESS", "Value": "10.0.0.2"},
                       {"Type": "FQDN", "Value": "db1.corp"}]]
    with pytest.raises(OutboxValueError, match=r"attributes\[0\]: each attribute is a "
                       r"\(Type, Value\) pair or a \{\"Type\": \.\.\., \"Value\": \.\.\.\} dict"):
        box.resource_attributes("t", [{"type": "FQDN", "value": "x"}])
    with pytest.raises(OutboxValueError, match=r"attributes\[1\]: .*got str"):
        box.resource_attributes("t", [("FQDN", "a"), "FQDN=b"])  # type: ignore[list-item]
    with pytest.raises(OutboxValueError, match="Type: must be one of"):
        box.resource_attributes("t", [{"Type": "HOSTNAME", "Value": "x"}])


def test_the_daemon_says_what_it_delivered_once_per_period(
    cli: Cli, emulator: Emulator, make_config: Any, outbox_path: Path, tmp_path: Path
):
    """At info level a running daemon writes one `delivered` line per summary period while it
    works (the per-pass event is debug), and nothing while idle."""
    from .helpers import start_daemon, wait_for

    config = make_config(log={"level": "info", "format": "json", "summary_seconds": 1})
    assert cli("init", config=config).returncode == 0
    log = tmp_path / "daemon.log"
    sink = log.open("w")
    proc = start_daemon(config, stderr=sink)
    try:
        _bulk(outbox_path, 50)
        wait_for(lambda: any(e["event"] == "delivered"
                             for e in log_events(log.read_text())), timeout=30)
        time.sleep(2.5)
        events = log_events(log.read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        sink.close()
    delivered = [e for e in events if e["event"] == "delivered"]
    assert sum(e["sent"] for e in delivered) == 50
    assert all(e["level"] == "info" for e in delivered)
    assert "pass" not in {e["event"] for e in events}


def test_status_tells_one_story(cli: Cli, emulator: Emulator, make_config: Any,
                                outbox_path: Path):
    """A daemon that never reached the Hub (its endpoints refuse) is not "delivering": with a
    row pending status says it is not delivered yet, and names the last error; blocked because
    the home Region is not set, status names no home Region beside that cause, and the block
    is dated."""
    from .helpers import free_port, start_daemon, stop_daemon, wait_for

    def status_json(cli: Cli, config: Path) -> dict[str, Any]:
        return json.loads(cli("status", "--json", config=config).stdout)  # type: ignore[no-any-return]

    config = make_config(publish={"interval_seconds": 0.2})
    assert cli("init", config=config).returncode == 0
    assert cli("notify", "t1", "--status", "IN_PROGRESS", config=config).returncode == 0
    closed = f"http://127.0.0.1:{free_port()}"
    daemon = start_daemon(config, env={"AWS_ENDPOINT_URL_MIGRATION_HUB": closed,
                                       "AWS_ENDPOINT_URL_MIGRATIONHUB_CONFIG": closed})
    try:
        wait_for(lambda: status_json(cli, config)["daemon_state"] == "running", timeout=20)
        wait_for(lambda: (status_json(cli, config)["daemon"] or {}).get("last_error"),
                 timeout=20)
        human = " ".join(cli("status", config=config).stdout.split())
        assert "not delivered yet" in human and "delivering" not in human, human
        assert "home region unknown yet" in human, human
    finally:
        stop_daemon(daemon)
    assert cli("drain", config=config).returncode == 0  # the Hub reachable: delivered
    ready = json.loads(cli("status", "--json", config=config).stdout)
    assert ready["home_region"] == "us-west-2" and ready["blocked"] is None
    emulator.state.home_region = None
    try:
        assert cli("notify", "t1", "--status", "COMPLETED", config=config).returncode == 0
        assert cli("drain", config=config).returncode == 4
        report = json.loads(cli("status", "--json", config=config).stdout)
        assert report["blocked_code"] in ("HomeRegionNotSet", "HomeRegionNotSetException")
        assert report["home_region"] is None and report["blocked_since"]
        human = " ".join(cli("status", config=config).stdout.split())
        assert "us-west-2" not in human and f"since {report['blocked_since']}" in human, human
    finally:
        emulator.state.home_region = "us-west-2"


def _on_terminal(args: list[str], env: dict[str, str], columns: int = 80) -> str:
    """A command's output on a terminal of `columns` (a pty sized so), escapes removed."""
    import fcntl
    import re
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "reporter", *args], env={**env, "TERM": "xterm"},
                            stdin=slave, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    screen = read_pty(master)
    proc.wait(timeout=120)
    os.close(master)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))


def test_tasks_and_the_demo_fit_80_columns_whole(
    cli: Cli, aws_env: dict[str, str], config_path: Path, tmp_path: Path
):
    """On an 80-column terminal `tasks` and the demo's table show every value whole (a long
    task name folds, nothing ends in "…") in lines of at most 80, and the legend keeps its
    `[mapping]` (it is not read as markup)."""
    name = "vm-with-a-rather-long-name-abcd"
    assert cli("init").returncode == 0
    assert cli("notify", name, "--status", "IN_PROGRESS", "--percent", "40").returncode == 0
    assert cli("drain").returncode == 0
    env = {**os.environ, **aws_env}
    shown = _on_terminal(["--config", str(config_path), "tasks"], env)
    table = shown[:shown.index("rows: rows still pending")]
    assert max(len(line) for line in shown.splitlines()) <= 80, shown
    assert "…" not in shown and "IN_PROGRESS" in table, shown
    assert "".join(t for t in table.split() if t in name) == name, table  # folded, whole
    assert "[mapping] unmapped_after_seconds" in " ".join(shown.split())
    demo = _on_terminal(["demo", "--tasks", "3"], {**env, "HOME": str(tmp_path)})
    table = demo[demo.index("task"):demo.index("Done in")]
    assert max(len(line) for line in table.splitlines()) <= 80, table
    assert "…" not in table.replace("  …  ", "") and "d-server-" in table, table
