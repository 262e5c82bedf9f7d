"""Shared fixtures: an emulated Hub on loopback, config files, the CLI as a real process."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reporter.emulator import Emulator

from .engines import PG_OUTBOX, Engine, PgServer
from .helpers import FAST, ROOT, Cli, child_env, toml_text


def _children() -> dict[int, str]:
    """This process's live children (pid -> command line), from /proc (zombies excluded: a
    child that exited is no process left behind)."""
    me, found = os.getpid(), {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != me or fields[0] == "Z":
                continue
            command = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry.name)] = command.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """A test ends with every process it started ended (a daemon, `status --watch`, an
    emulator): one still running 3 s after the test is killed and the test fails, naming it.
    The session's PostgreSQL server is the session's, not a test's."""
    before = set(_children())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        left = {pid: command for pid, command in _children().items()
                if pid not in before and "postgres" not in command}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if left:
        pytest.fail(f"the test left processes running (killed now): {left}")


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's daemons keep their live state in a runtime directory of the test's own (as
    systemd's $RUNTIME_DIRECTORY), not in the machine's /run/mgh-reporter."""
    path = tmp_path / "run"
    path.mkdir(mode=0o755)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(path))
    return path


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A Migration Hub emulator on 127.0.0.1 with home Region us-west-2."""
    with Emulator(map_delay=0.3) as emulator:
        yield emulator



@pytest.fixture
def aws_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment that points boto3 (in-process and in children) at the emulator."""
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        **emulator.environment(),
    }
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env



def _write_config(path: Path, outbox: dict[str, Any], stream: str,
                  sections: dict[str, dict[str, Any]],
                  extra: dict[str, dict[str, Any]] | None = None) -> Path:
    """A test config: fast timings, JSON logs at info, then `extra` and `sections` merged in
    (a section's keys override)."""
    merged: dict[str, dict[str, Any]] = {
        "outbox": {**FAST["outbox"], **outbox},
        "hub": {"progress_update_stream": stream},
        "publish": dict(FAST["publish"]),
        "mapping": dict(FAST["mapping"]),
        "log": {"level": "info", "format": "json"},
        **(extra or {}),
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    path.write_text(toml_text(merged))
    return path


def _runner(default: Path) -> Cli:
    """`mgh-reporter --config CONFIG ARGS` as a real process (CONFIG: `default` unless given)."""

    def run(*args: str, config: Path | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "reporter", "--config", str(config or default), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=child_env(env), cwd=ROOT)

    return run


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config (fast test timings, overridable per section) and return its path."""

    def make(name: str = "config.toml", stream: str = "ToolA", **sections: dict[str, Any]) -> Path:
        return _write_config(tmp_path / name, {"path": str(tmp_path / "outbox.db")}, stream,
                             sections)

    return make


@pytest.fixture
def config_path(make_config: Callable[..., Path]) -> Path:
    """The default test config."""
    return make_config()



@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    """Where the default test config puts the outbox."""
    return tmp_path / "outbox.db"



@pytest.fixture
def cli(aws_env: dict[str, str], config_path: Path) -> Cli:
    """Run `mgh-reporter --config <test config> ARGS` as a real process."""
    return _runner(config_path)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL 16 server for the session (pgserver), on a Unix socket. pgserver has no
    wheel for Python 3.13+: there (the containers of tests/deploy/test_pythons.py) the
    PostgreSQL tests are skipped with this reason, and run on 3.11 in every CI run."""
    if importlib.util.find_spec("pgserver") is None:
        pytest.skip(f"PostgreSQL tests need pgserver, which has no wheel for Python "
                    f"{sys.version_info[0]}.{sys.version_info[1]}")
    server = PgServer()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database on the session's server (its URL, as the superuser)."""
    return pg_server.database()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """The outbox on each engine in turn (behaviour that is the same on both)."""
    if request.param == "sqlite":
        path = tmp_path / "outbox.db"
        return Engine("sqlite", {"path": str(path)}, path=path)
    url = request.getfixturevalue("pg_server").database()
    return Engine("postgres", {"url": url, **PG_OUTBOX}, url=url)


@pytest.fixture
def engine_config(engine: Engine, tmp_path: Path) -> Callable[..., Path]:
    """Write a config for the engine under test (fast timings; sections overridable)."""

    def make(name: str = "engine.toml", **sections: dict[str, Any]) -> Path:
        return _write_config(tmp_path / name, engine.outbox, "ToolA", sections, engine.extra)

    return make


@pytest.fixture
def engine_cli(aws_env: dict[str, str], engine_config: Callable[..., Path]) -> Cli:
    """`mgh-reporter --config <engine config> ARGS` as a real process."""
    return _runner(engine_config())
