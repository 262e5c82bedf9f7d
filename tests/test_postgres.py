"""The PostgreSQL outbox: config, `init` and least-privilege roles, intake shared by replicas,
`SKIP LOCKED` leases and the fence, streams created once, the shared budget, LISTEN wake-ups,
lost connections, and replicas as real processes (kill -9, SIGSTOP) on a real server."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from reporter import config as config_mod
from reporter.config import ConfigError, load
from reporter.delivery.intake import Intake
from reporter.emulator import Emulator
from reporter.stores.contract import SentState, TaskOutcome
from reporter.stores.postgres import PostgresStore

from .docblocks import run_by
from .engines import PG_AWS, PG_OUTBOX, PgServer, pg_insert
from .helpers import (
    FAST,
    ROOT,
    child_env,
    start_daemon,
    stop_daemon,
    take_in,
    toml_text,
    wait_for,
)

PAGE = ROOT / "docs" / "postgresql.md"  # the docs page whose SQL these tests run


def _config(url: str, **sections: dict[str, Any]) -> config_mod.Config:
    base: dict[str, Any] = {
        "outbox": {"url": url, **PG_OUTBOX},
        "hub": {"progress_update_stream": "ToolA"},
        "aws": dict(PG_AWS),
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return config_mod.parse(base)


def _write_config(tmp_path: Path, url: str, name: str = "pg.toml", **sections: Any) -> Path:
    merged: dict[str, dict[str, Any]] = {
        "outbox": {**FAST["outbox"], "url": url, **PG_OUTBOX},
        "hub": {"progress_update_stream": "ToolA"},
        "publish": dict(FAST["publish"]),
        "mapping": dict(FAST["mapping"]),
        "log": {"level": "info", "format": "json"},
        "aws": dict(PG_AWS),
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    path = tmp_path / name
    path.write_text(toml_text(merged))
    return path


def _cli(config: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["python", "-m", "reporter", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env=child_env(env), cwd=ROOT,
    )


def _take_in(store: PostgresStore, limit: int) -> list[Any]:
    """One intake of valid rows of stream ToolA; the rows taken in."""
    return take_in(store, limit, "ToolA")[0]


def _state_rows(url: str, tasks: int, start: int = 0) -> None:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO outbox(kind, migration_task_name, status, progress_percent)"
            " VALUES ('task_state', %s, 'IN_PROGRESS', %s)",
            [(f"t{t}", start) for t in range(tasks)],
        )


# -- config --------------------------------------------------------------------------------------
def test_config_takes_a_url_or_a_path_never_both(tmp_path: Path):
    both = tmp_path / "both.toml"
    both.write_text('[outbox]\npath = "x.db"\nurl = "postgresql://h/db"\n'
                    '[hub]\nprogress_update_stream = "S"\n')
    with pytest.raises(ConfigError, match=r"either path .* or url"):
        load(both)
    bad = tmp_path / "bad.toml"
    bad.write_text('[outbox]\nurl = "mysql://h/db"\n[hub]\nprogress_update_stream = "S"\n')
    with pytest.raises(ConfigError, match=r"\[outbox\] url.*PostgreSQL URL"):
        load(bad)


def test_lease_must_outlast_the_fence(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"lease_seconds.*must exceed 20"):
        config_mod.parse({"outbox": {"url": "postgresql:///x", "lease_seconds": 20},
                          "hub": {"progress_update_stream": "S"}})
    assert config_mod.fence_seconds(_config("postgresql:///x")) == 4.0


def test_password_never_appears_in_messages():
    cfg = _config("postgresql://rep:hunter2@127.0.0.1:1/db?password=hunter2&sslmode=require")
    assert "hunter2" not in cfg.outbox.where
    from reporter.stores.contract import StoreError

    with pytest.raises(StoreError) as caught:
        PostgresStore.open("postgresql://rep:hunter2@127.0.0.1:1/db?connect_timeout=1")
    assert "hunter2" not in str(caught.value) and caught.value.busy


# -- init and roles ------------------------------------------------------------------------------
def test_init_is_idempotent_accepts_a_tool_created_table_and_queues_its_rows(pg_url: str):
    with psycopg.connect(pg_url) as conn:  # the page's DDL, run by the tool's owner first
        conn.execute(_readme_block("CREATE TABLE outbox", "IDENTITY"))
        conn.execute("INSERT INTO outbox(kind, migration_task_name, status)"
                     " VALUES ('task_state', 'early', 'NOT_STARTED')")
    PostgresStore.create(pg_url).close()
    PostgresStore.create(pg_url).close()
    store = PostgresStore.open(pg_url)
    try:
        assert [r.migration_task_name for r in _take_in(store, 10)] == ["early"]
        assert store.backlog().pending == 1
    finally:
        store.close()
    with psycopg.connect(pg_url) as conn:
        names = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='mgh_reporter'")}
    assert {"tasks", "rows", "inbox", "lanes", "gate", "streams", "replicas"} <= names


def _readme_block(starting: str, containing: str = "") -> str:
    """The postgresql.md page's SQL block that starts with `starting` (and holds
    `containing`), so the page stays true."""
    text = PAGE.read_text()
    for block in text.split("```sql")[1:]:
        body = block.split("```")[0].strip()
        statements = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
        if statements.startswith(starting) and containing in body:
            return body
    raise AssertionError(f"no ```sql block starting {starting!r} in postgresql.md")


@contextlib.contextmanager
def _readme_roles(pg_url: str) -> Iterator[str]:
    """`init` as the owner, then the page's least-privilege block as written (its database
    name replaced); the roles are dropped afterwards. Yields the database's name."""
    database = str(conninfo_to_dict(pg_url)["dbname"])
    PostgresStore.create(pg_url).close()
    grants = _readme_block("REVOKE CREATE ON SCHEMA public")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS mgh_tool")
        conn.execute("DROP ROLE IF EXISTS mgh_reporter_role")
        conn.execute(grants.replace("ON DATABASE migrations", f"ON DATABASE {database}"))
    try:
        yield database
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for role in ("mgh_tool", "mgh_reporter_role"):
                conn.execute(f"DROP OWNED BY {role}")
                conn.execute(f"DROP ROLE {role}")


def test_readme_grants_are_enough_for_tool_and_reporter(pg_server: PgServer, pg_url: str,
                                                        tmp_path: Path, emulator: Emulator,
                                                        aws_env: dict[str, str]):
    """Least privilege as postgresql.md gives it: the owner runs init; the tool role can only
    INSERT (also with the page's psql line); the reporter role runs `check`, `drain` and
    `status` with its GRANTs."""
    with _readme_roles(pg_url) as database:
        tool = pg_server.url(database, "mgh_tool", "tool-secret")
        reporter = pg_server.url(database, "mgh_reporter_role", "reporter-secret")
        pg_insert(tool, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
        psql = run_by("postgresql.md",
                      "tests/test_postgres.py::test_readme_grants_are_enough_for_tool_and_reporter")
        line = next(b for b in psql if b.lang == "sh").text
        done = subprocess.run(["bash", "-e", "-c", line], capture_output=True, text=True,
                              env={**os.environ, "OUTBOX_URL": tool}, timeout=60)
        assert done.returncode == 0 and "INSERT 0 1" in done.stdout, done.stderr
        with psycopg.connect(tool) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT status FROM outbox")
        config = _write_config(tmp_path, reporter)
        checked = _cli(config, "check", env=aws_env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "mgh_tool" in checked.stdout
        assert _cli(config, "drain", "--timeout", "20", env=aws_env).returncode == 0
        assert emulator.state.task("ToolA", "t1").updates
        assert json.loads(_cli(config, "status", "--json").stdout)["pending"] == 0
        with psycopg.connect(tool) as conn:  # the tool asks what became of its row
            assert conn.execute("SELECT state, reason FROM outbox_fate").fetchall() == [
                ("sent", None), ("sent", None)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT state FROM mgh_reporter.rows")
        assert emulator.state.task("ToolA", "vm-042").updates  # the psql line's row
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("REVOKE UPDATE ON mgh_reporter.tasks FROM mgh_reporter_role")
        lacking = _cli(config, "check", env=aws_env)
        assert lacking.returncode == 1 and "UPDATE on mgh_reporter.tasks" in lacking.stdout


# -- intake --------------------------------------------------------------------------------------
def test_intake_takes_each_row_exactly_once_across_replicas(pg_url: str):
    """Writers commit rows while two replicas take them in: every row once, none twice."""
    PostgresStore.create(pg_url).close()
    config = _config(pg_url, outbox={"batch_size": 50})
    stores = [PostgresStore.open(pg_url), PostgresStore.open(pg_url)]
    writing = threading.Event()
    writing.set()
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            with psycopg.connect(pg_url) as conn:
                for i in range(60):
                    with conn.transaction():
                        for j in range(1 + i % 4):
                            conn.execute(
                                "INSERT INTO outbox(kind, migration_task_name, status)"
                                " VALUES ('task_state', %s, 'IN_PROGRESS')", (f"w{w}-{i}-{j}",))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def take(store: PostgresStore) -> None:
        intake = Intake(store, config, lambda: None)
        try:
            while writing.is_set() or store.backlog().waiting:
                intake.run(store.clock())
                time.sleep(0.005)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    takers = [threading.Thread(target=take, args=(s,)) for s in stores]
    for t in writers + takers:
        t.start()
    for t in writers:
        t.join()
    writing.clear()
    for t in takers:
        t.join(60)
    assert not errors, errors
    with psycopg.connect(pg_url) as conn:
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()
        taken = conn.execute("SELECT count(*), count(DISTINCT id) FROM mgh_reporter.rows"
                             ).fetchone()
        waiting = conn.execute("SELECT count(*) FROM mgh_reporter.inbox").fetchone()
    assert outbox == (3 * sum(1 + i % 4 for i in range(60)),)
    assert taken == (outbox[0], outbox[0]) and waiting == (0,)
    for s in stores:
        s.close()


def test_a_row_whose_id_commits_late_is_still_taken_in(pg_url: str):
    """Identity ids are handed out at INSERT, not at COMMIT: a cursor on ids would skip the
    early id that commits last."""
    PostgresStore.create(pg_url).close()
    store = PostgresStore.open(pg_url)
    slow = psycopg.connect(pg_url)
    slow.execute("INSERT INTO outbox(kind, migration_task_name, status)"
                 " VALUES ('task_state', 'slow', 'IN_PROGRESS')")
    fast = pg_insert(pg_url, kind="task_state", migration_task_name="fast", status="COMPLETED")
    assert [r.id for r in _take_in(store, 10)] == [fast]
    slow.commit()
    slow.close()
    second = _take_in(store, 10)
    assert [r.migration_task_name for r in second] == ["slow"]
    assert second[0].id < fast
    assert store.backlog().pending == 2
    store.close()


# -- leases and the fence ------------------------------------------------------------------------
def _ingested_store(url: str, tasks: int) -> PostgresStore:
    PostgresStore.create(url).close()
    _state_rows(url, tasks)
    store = PostgresStore.open(url)
    _take_in(store, 1000)
    return store


def test_claims_are_disjoint_and_a_lost_lease_is_fenced(pg_url: str):
    a = _ingested_store(pg_url, 20)
    b = PostgresStore.open(pg_url)
    first = a.claim_due(12, 0.6)
    second = b.claim_due(50, 30)
    assert len(first) == 12 and len(second) == 8
    assert not {t.id for t in first} & {t.id for t in second}
    task = first[0]
    assert a.hold(task.id, task.lease, 0.1, 0.6)  # enough left: no query needed
    time.sleep(0.7)  # a's lease expires
    taken = b.claim_due(50, 30)
    assert {t.id for t in taken} == {t.id for t in first}
    assert not a.hold(task.id, task.lease, 0.1, 30)  # the fence: no call from a
    # b sends the newest state; a's late outcome records facts only, never its schedule.
    mine = next(t for t in taken if t.id == task.id)
    row = mine.rows[0].id
    seq = mine.rows[0].seq
    b.record([TaskOutcome(task.id, mine.lease, sent=[row],
                          state=SentState(row, seq, "IN_PROGRESS", 0, None, 1.0, 60))])
    a.record([TaskOutcome(task.id, task.lease, sent=[row],
                          state=SentState(row, seq - 1, "FAILED", 0, None, 1.0, 60))])
    record = next(r for r in b.tasks() if r.task == mine.task)
    assert record.status == "IN_PROGRESS" and record.pending == 0
    a.close()
    b.close()


def test_renewal_happens_only_while_the_lease_is_still_ours(pg_url: str):
    store = _ingested_store(pg_url, 1)
    task = store.claim_due(1, 2.0)[0]
    assert store.hold(task.id, task.lease, 5.0, 10.0)  # less than 5 s left: renewed to 10 s
    with psycopg.connect(pg_url) as conn:
        left = conn.execute(
            "SELECT due_at - extract(epoch from clock_timestamp()) FROM mgh_reporter.tasks"
            " WHERE id = %s", (task.id,)).fetchone()
    assert left is not None and 9.0 < left[0] <= 10.0
    assert not store.hold(task.id, "not-my-lease", 5.0, 10.0)
    store.close()


def test_a_stream_is_claimed_by_one_replica_at_a_time(pg_url: str):
    PostgresStore.create(pg_url).close()
    a, b = PostgresStore.open(pg_url), PostgresStore.open(pg_url)
    assert a.claim_stream("S", 30) and not b.claim_stream("S", 30)
    assert a.claim_stream("S", 30)  # still ours
    a.mark_stream_created("S")
    assert "S" in b.streams() and not b.claim_stream("S", 30)
    assert b.claim_stream("T", 0.01)
    time.sleep(0.05)
    assert a.claim_stream("T", 30)  # b's claim lapsed
    a.close()
    b.close()


@pytest.mark.parametrize(("url", "secret"), [
    ("postgresql://rep:50%zzPctSecret@127.0.0.1:1/db?connect_timeout=1", "PctSecret"),
    ("postgressql://rep:TypoSecret@127.0.0.1:1/db", "TypoSecret"),
    ("postgresql://rep@127.0.0.1:1/db?sslpassword=SslSecret&connect_timeout=1", "SslSecret"),
    ("postgresql://rep@127.0.0.1:1/db?password=Param%53ecret&connect_timeout=1", "ParamSecret"),
    # % : space and non-ASCII, percent-encoded as the config asks
    ("postgresql://rep:p%25w%3AdS%20x%C3%A9Q@127.0.0.1:1/db?connect_timeout=1", "p%w:dS xéQ"),
    ("postgresql://rep:p%25w%3AdS%20x%C3%A9Q@127.0.0.1:1/db?connect_timeout=1",
     "p%25w%3AdS%20x%C3%A9Q"),
])
def test_a_malformed_url_never_shows_its_password(tmp_path: Path, aws_env: dict[str, str],
                                                  url: str, secret: str):
    """A bad escape (libpq quotes the token), a scheme typo (the config error quotes the
    value), sslpassword and a percent-encoded password= never reach status, run, check,
    drain or init output, in either form."""
    config = tmp_path / "c.toml"
    config.write_text(toml_text({"outbox": {"url": url, "lease_seconds": 60},
                                 "hub": {"progress_update_stream": "S"}}))
    base = [sys.executable, "-m", "reporter", "--config", str(config)]
    for command in (["status", "--json"], ["check"], ["drain", "--timeout", "1"], ["init"]):
        done = subprocess.run([*base, *command], capture_output=True, text=True, timeout=60,
                              env=child_env(), cwd=ROOT)
        said = done.stdout + done.stderr
        assert done.returncode != 0, (command, said)
        assert secret not in said and secret.replace("S", "%53") not in said, (command, said)
    daemon = subprocess.Popen([*base, "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=child_env(), cwd=ROOT)
    try:
        daemon.wait(timeout=4)  # a config error ends it; an unreachable database is waited for
    except subprocess.TimeoutExpired:
        daemon.terminate()
    out, err = daemon.communicate(timeout=20)
    assert out + err and secret not in out + err and secret.replace("S", "%53") not in out + err


# -- hostile roles (CVE-2018-1058) ---------------------------------------------------------------
PLANTED = """
CREATE TABLE public.pwned (who text, what text);
GRANT ALL ON public.pwned TO PUBLIC;
CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO public.pwned VALUES (current_user, 'quote_ident')
     RETURNING pg_catalog.quote_ident($1::text) $$;
CREATE FUNCTION public.pg_advisory_xact_lock(integer) RETURNS void LANGUAGE sql AS
  $$ INSERT INTO public.pwned VALUES (current_user, 'pg_advisory_xact_lock');
     SELECT pg_catalog.pg_advisory_xact_lock($1::bigint) $$;
CREATE FUNCTION public.evil_step(text[], text) RETURNS text[] LANGUAGE sql AS
  $$ INSERT INTO public.pwned VALUES (current_user, 'json_agg') RETURNING $1 || $2 $$;
CREATE AGGREGATE public.json_agg(text) (sfunc = public.evil_step, stype = text[]);
CREATE FUNCTION public.octet_length(text) RETURNS integer LANGUAGE sql AS
  $$ INSERT INTO public.pwned VALUES (current_user, 'octet_length')
     RETURNING pg_catalog.octet_length($1) $$;
"""


def test_functions_planted_in_public_never_run_as_us(pg_server: PgServer, pg_url: str,
                                                    tmp_path: Path, emulator: Emulator,
                                                    aws_env: dict[str, str]):
    """A tool role with CREATE on public plants better-matching overloads of functions the
    daemon calls. `init` refuses while the grant stands, naming it; after the owner revokes it
    (the planted functions stay), init, drain, tasks and status run and none of them ever
    executes a planted function."""
    database = str(conninfo_to_dict(pg_url)["dbname"])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS mgh_evil")
        conn.execute("CREATE ROLE mgh_evil LOGIN PASSWORD 'evil'")
        conn.execute("GRANT CREATE, USAGE ON SCHEMA public TO mgh_evil")
    try:
        with psycopg.connect(pg_server.url(database, "mgh_evil", "evil"), autocommit=True) as evil:
            evil.execute(PLANTED)
        config = _write_config(tmp_path, pg_url)
        refused = _cli(config, "init", env=aws_env)
        assert refused.returncode == 1
        assert "CREATE is granted on schema public to mgh_evil" in refused.stderr
        assert "REVOKE CREATE ON SCHEMA" in refused.stderr
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("REVOKE CREATE ON SCHEMA public FROM mgh_evil")
        assert _cli(config, "init", env=aws_env).returncode == 0
        pg_insert(pg_url, kind="task_state", migration_task_name="t1", status="IN_PROGRESS",
                  status_detail="x" * 100)
        pg_insert(pg_url, kind="created_artifact", migration_task_name="t1",
                  artifact_name="arn:aws:ec2:us-east-1:123456789012:instance/i-1")
        assert _cli(config, "drain", "--timeout", "20", env=aws_env).returncode == 0
        tasks = json.loads(_cli(config, "tasks", "--json", env=aws_env).stdout)
        assert tasks[0]["artifacts"] == ["arn:aws:ec2:us-east-1:123456789012:instance/i-1"]
        assert _cli(config, "status", "--json", env=aws_env).returncode == 0
        assert _cli(config, "check", env=aws_env).returncode in (0, 1)
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT who, what FROM public.pwned").fetchall() == []
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DROP OWNED BY mgh_evil")
            conn.execute("DROP ROLE mgh_evil")


def test_the_tool_role_cannot_choose_ids(pg_server: PgServer, pg_url: str):
    """With the README's GRANTs the tool INSERTs the contract's columns but never `id`, not even
    with OVERRIDING SYSTEM VALUE: it cannot take the id another tool's INSERT will get."""
    with _readme_roles(pg_url) as database:
        tool = pg_server.url(database, "mgh_tool", "tool-secret")
        assert pg_insert(tool, kind="task_state", migration_task_name="t1", status="COMPLETED")
        for statement in ("INSERT INTO outbox (id, kind, migration_task_name) VALUES"
                          " (1000, 'task_state', 't2')",
                          "INSERT INTO outbox (id, kind, migration_task_name) OVERRIDING SYSTEM"
                          " VALUE VALUES (1001, 'task_state', 't2')"):
            with psycopg.connect(tool) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_a_reporter_role_that_may_not_upgrade_waits_for_init(
        pg_server: PgServer, pg_url: str, tmp_path: Path, emulator: Emulator,
        aws_env: dict[str, str]):
    """A package upgrade brings a migration the README's reporter role may not apply: `run`
    neither exits nor loops; it logs once that `init` must run as the owner, and delivers
    as soon as the owner has run it."""
    with _readme_roles(pg_url) as database:
        with psycopg.connect(pg_url, autocommit=True) as conn:  # as before 0004_repair_scope
            conn.execute("DELETE FROM mgh_reporter.migrations WHERE name = '0004_repair_scope'")
            conn.execute("ALTER TABLE mgh_reporter.tasks ALTER COLUMN resend DROP DEFAULT")
            conn.execute("ALTER TABLE mgh_reporter.tasks ALTER COLUMN resend TYPE boolean"
                         " USING resend <> 0")
            conn.execute("ALTER TABLE mgh_reporter.tasks ALTER COLUMN resend SET DEFAULT false")
        reporter = pg_server.url(database, "mgh_reporter_role", "reporter-secret")
        tool = pg_server.url(database, "mgh_tool", "tool-secret")
        config = _write_config(tmp_path, reporter)
        pg_insert(tool, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
        log = tmp_path / "daemon.log"
        with log.open("w") as err:
            daemon = start_daemon(config, env=aws_env, stderr=err)
            try:
                wait_for(lambda: "outbox_upgrade_refused" in log.read_text(), timeout=30)
                time.sleep(6)  # past one retry: still one line, still running
                assert daemon.poll() is None
                assert log.read_text().count("outbox_upgrade_refused") == 1
                assert "mgh-reporter init" in log.read_text()
                owner = _write_config(tmp_path, pg_url, name="owner.toml")
                assert _cli(owner, "init", env=aws_env).returncode == 0
                wait_for(lambda: "t1" in emulator.state.streams.get("ToolA", {}), timeout=30)
            finally:
                stop_daemon(daemon, log)
