"""One hostile row never stops delivery: judging never raises, bounds are checked before parsing
(sizes without reading values, JSON depth before the parser), undecodable text is a dead letter
that still names its task, and the daemon stays small with 50 MB values in the outbox."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from reporter import rows
from reporter.emulator import Emulator
from reporter.hub_requests import AttributesUpdate, json_depth
from reporter.rows import MAX_COLUMN_BYTES, MAX_JSON_DEPTH, OutboxRow, Problem

from .engines import Engine
from .helpers import Cli, attrs, start_daemon, stop_daemon, wait_for

NOW = 1_800_000_000.0
CREATED = "2027-01-15T08:00:00.000Z"


def _row(**values: Any) -> OutboxRow:
    base: dict[str, Any] = {"id": 1, "kind": "task_state", "migration_task_name": "vm-1",
                            "status": "IN_PROGRESS", "created_at": CREATED}
    return OutboxRow.from_mapping({**base, **values})


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(("values", "field", "words"), [
    ({"kind": "resource_attributes", "resource_attributes": _nested(5000)},
     "resource_attributes", "nested 5000 levels"),
    ({"kind": "resource_attributes", "resource_attributes": _nested(MAX_JSON_DEPTH + 1)},
     "resource_attributes", f"at most {MAX_JSON_DEPTH}"),
    ({"update_date_time": "9999-12-31T23:59:59-14:00"}, "update_date_time", "out of range"),
    ({"update_date_time": "0001-01-01T00:00:00+14:00"}, "update_date_time", "out of range"),
    ({"update_date_time": "1999-12-31T23:59:59Z"}, "update_date_time", "earlier than 2000"),
    ({"status_detail": "copying\udcff disk"}, "status_detail", "not valid UTF-8"),
    ({"migration_task_name": "vm\udcc3"}, "migration_task_name", "not valid UTF-8"),
    ({"kind": b"task_state"}, "kind", "BLOB"),
    ({"oversize": (("status_detail", 50_000_000),)}, "status_detail", "50,000,000 bytes"),
    ({"progress_percent": float("nan")}, "progress_percent", "integer"),
    ({"next_update_seconds": 10**30}, "next_update_seconds", "2147483647"),
])
def test_a_hostile_row_is_a_problem_naming_its_field(values: dict[str, Any], field: str,
                                                     words: str):
    """Each hostile value the contract bounds becomes a Problem that names the column and the
    rule; nothing raises."""
    problem = rows.judge(_row(**values), "S", 3600, NOW)
    assert isinstance(problem, Problem), problem
    assert problem.field == field and words in problem.rule


def test_json_depth_counts_only_brackets_outside_strings():
    """Brackets inside JSON strings (escaped quotes included) never count as nesting."""
    assert json_depth('[{"Type": "FQDN", "Value": "[[[[\\"{{{{"}]') == 2
    assert json_depth(_nested(MAX_JSON_DEPTH)) == MAX_JSON_DEPTH
    ok = rows.judge(_row(kind="resource_attributes",
                         resource_attributes=attrs(("VM_NAME", 'a[b]{c}"x'))), "S", 3600, NOW)
    assert isinstance(ok, AttributesUpdate)


def test_judging_never_raises_on_random_garbage():
    """Fuzz: rows of random types and values (huge ints, NaN, bytes, surrogates, nesting, odd
    times) are judged as a Request or a Problem, never an exception, and every reason is
    printable and capped."""
    rng = random.Random(1805)
    pool: list[Any] = [None, 0, -1, 10**40, 1.5, float("inf"), float("nan"), True, b"\xff\x00",
                       "", "x" * 5000, "\udcff", "2026-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00",
                       _nested(40), '[{"Type":"FQDN","Value":"a"}]', "task_state",
                       "resource_attributes", "created_artifact", "IN_PROGRESS", "|:/",
                       "arn:aws:ec2:us-east-1:123456789012:instance/i-1", "{" * 3000]
    names = [f for f in OutboxRow.__dataclass_fields__ if f not in ("id", "oversize")]
    for i in range(3000):
        values = {name: rng.choice(pool) for name in names if rng.random() < 0.7}
        values.setdefault("kind", None)
        values.setdefault("migration_task_name", None)
        result = rows.judge(OutboxRow.from_mapping({"id": i, **values}), "S", 3600, NOW)
        if isinstance(result, Problem):
            reason = result.reason
            assert len(reason) < rows.MAX_REASON_CHARS + 40
            reason.encode("utf-8")  # printable: no lone surrogates


def test_judging_survives_a_bug_in_the_checks(monkeypatch: pytest.MonkeyPatch):
    """Should a check itself raise (a bug), the row is a Problem naming the error, not a crash."""
    def broken(*args: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(rows, "to_request", broken)
    problem = rows.judge(_row(), "S", 3600, NOW)
    assert isinstance(problem, Problem) and "RecursionError" in problem.reason


def _hostile_rows(engine: Engine) -> None:
    engine.insert(kind="resource_attributes", migration_task_name="deep",
                  resource_attributes=_nested(1500))
    engine.insert(kind="task_state", migration_task_name="future", status="IN_PROGRESS",
                  update_date_time="9999-12-31T23:59:59-14:00")
    engine.insert(kind="task_state", migration_task_name="big", status="IN_PROGRESS",
                  status_detail="d" * (MAX_COLUMN_BYTES + 1))
    # every column under 1 MiB, the row over it: read as sizes, never as values
    engine.insert(kind="task_state", migration_task_name="wide", status="IN_PROGRESS",
                  status_detail="d" * 700_000, artifact_description="a" * 700_000)


def test_hostile_rows_are_dead_letters_and_good_rows_go_out(engine: Engine, engine_cli: Cli,
                                                             emulator: Emulator):
    """On both engines: a 1,500-deep JSON, a date past datetime's range, a column over 1 MiB
    and a row whose columns total over 1 MiB are dead letters naming the field (or the row and
    its largest column); the good rows around them are delivered."""
    assert engine_cli("init").returncode == 0
    engine.insert(kind="task_state", migration_task_name="good-1", status="IN_PROGRESS",
                  progress_percent=10)
    _hostile_rows(engine)
    engine.insert(kind="task_state", migration_task_name="good-2", status="COMPLETED",
                  progress_percent=100)
    result = engine_cli("drain", "--timeout", "60")
    assert result.returncode == 5, result.stderr
    assert emulator.state.task("ToolA", "good-1").updates[-1]["Task"]["ProgressPercent"] == 10
    assert emulator.state.task("ToolA", "good-2").updates[-1]["Task"]["Status"] == "COMPLETED"
    letters = {d["task"]: d for d in json.loads(engine_cli("dead-letters", "list", "--json").stdout)}
    assert set(letters) == {"deep", "future", "big", "wide"}
    assert "resource_attributes" in letters["deep"]["reason"]
    assert "update_date_time" in letters["future"]["reason"]
    assert "status_detail" in letters["big"]["reason"]
    assert "1,048,577 bytes" in letters["big"]["reason"]
    wide = letters["wide"]["reason"]
    assert "row" in wide and "its columns total 1,400,0" in wide and "1,048,576 (1 MiB) in all" in wide
    assert "the largest: " in wide and "700,000 bytes" in wide
    assert all(len(d["reason"]) < 700 for d in letters.values())


def test_undecodable_text_is_a_dead_letter_that_names_its_task(cli: Cli, emulator: Emulator,
                                                               outbox_path: Path):
    """SQLite: text that is not UTF-8 (a C tool's raw bytes) no longer stops all intake; the row
    is a dead letter under its task's printable name and the next row goes out."""
    assert cli("init").returncode == 0
    conn = sqlite3.connect(outbox_path)
    with conn:
        conn.execute("INSERT INTO outbox(kind, migration_task_name, status, status_detail)"
                     " VALUES ('task_state', CAST(X'766DFF31' AS TEXT), 'IN_PROGRESS', 'ok')")
        conn.execute("INSERT INTO outbox(kind, migration_task_name, status, status_detail)"
                     " VALUES ('task_state', 'vm-2', 'IN_PROGRESS', CAST(X'41FF42' AS TEXT))")
        conn.execute("INSERT INTO outbox(kind, migration_task_name, status)"
                     " VALUES ('task_state', 'vm-3', 'COMPLETED')")
    conn.close()
    result = cli("drain", "--timeout", "30")
    assert result.returncode == 5, result.stderr
    assert emulator.state.task("ToolA", "vm-3").updates[-1]["Task"]["Status"] == "COMPLETED"
    letters = json.loads(cli("dead-letters", "list", "--json").stdout)
    by_task = {d["task"]: d["reason"] for d in letters}
    assert by_task == {"vm\ufffd1": "migration_task_name: is not valid UTF-8 text",
                       "vm-2": "status_detail: is not valid UTF-8 text"}
    status = json.loads(cli("status", "--json").stdout)
    assert status["dead_letters"] == 2 and status["pending"] == 0
    assert cli("dead-letters", "list").returncode == 0  # the table renders it too


def _delivered(emulator: Emulator, task: str) -> bool:
    try:
        return bool(emulator.state.task("ToolA", task).updates)
    except KeyError:
        return False


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_the_daemon_stays_under_64_mib_with_50_mb_values(engine: Engine, engine_config: Any,
                                                         engine_cli: Cli, emulator: Emulator):
    """Two 50 MB values sit in the outbox: the running daemon never reads them (peak RSS
    stays <= 64 MiB), dead-letters them, and the good rows written after them reach the Hub
    within seconds."""
    assert engine_cli("init").returncode == 0
    huge = "x" * 50_000_000
    engine.insert(kind="task_state", migration_task_name="huge-1", status="IN_PROGRESS",
                  status_detail=huge)
    engine.insert(kind="resource_attributes", migration_task_name="huge-2",
                  resource_attributes=huge)
    del huge
    proc = start_daemon(engine_config())
    try:
        wait_for(lambda: json.loads(engine_cli("status", "--json").stdout)["dead_letters"] == 2,
                 timeout=60)
        written = time.monotonic()
        engine.insert(kind="task_state", migration_task_name="after", status="COMPLETED")
        wait_for(lambda: _delivered(emulator, "after"), timeout=30)
        assert time.monotonic() - written < 10
        peak = _peak_rss_mib(proc.pid)
        print(f"peak RSS {engine.name}: {peak:.1f} MiB")
        assert peak <= 64, f"peak RSS {peak:.1f} MiB"
    finally:
        stop_daemon(proc, timeout=15)


def test_the_sizing_connection_is_recycled_and_never_onto_a_replaced_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Sizing by blob handles would grow CPython's per-connection list of them for ever: past
    BLOB_RECYCLE the store swaps in a fresh connection between transactions; a file that
    replaced the outbox at its path is never swapped onto."""
    from reporter.stores import sqlite as store_mod
    from reporter.stores.sqlite import SqliteStore

    from .helpers import fill

    monkeypatch.setattr(store_mod, "BLOB_RECYCLE", 50)
    path = tmp_path / "o.db"
    SqliteStore.create(path).close()
    fill(path, 40, 1)
    store = SqliteStore.open(path)
    try:
        first = store.conn
        store._read_new(40)  # a read, nothing taken in: 40 rows x 4 text columns, 160 handles
        assert store.conn is first and store._blobs >= 150
        store._read_new(40)  # swapped first, then counted afresh
        assert store.conn is not first and store._blobs == 160
        second = store.conn
        store._blobs = 10**6
        path.rename(tmp_path / "moved.db")
        SqliteStore.create(path).close()
        store._read_new(40)
        assert store.conn is second  # still the file it had open
    finally:
        store.close()
