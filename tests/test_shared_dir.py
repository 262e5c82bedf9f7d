"""The outbox's directory is shared with the tools' group (2770, no sticky bit): with two real
users in that group (the service user who owns the directory, and a tool user playing the
attacker), every file the tool can plant there is met as hostile: a symlinked or FIFO lock
file, a stranger's lock, a symlinked outbox, forged or symlinked live state, and a race on the
live state's temporary file."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reporter import live
from reporter.emulator import Emulator
from reporter.files import UnsafeFile, private_dir

from .helpers import Cli, start_daemon, stop_daemon, wait_for

GROUP, SERVICE, TOOL = "mgh-share-t", "mgh-svc-t", "mgh-tool-t"


@pytest.fixture(scope="session")
def users() -> dict[str, int]:
    """Two real users in one group: the service user and a tool user (the attacker)."""
    assert os.geteuid() == 0, "the shared-directory tests create users: run them as root"
    subprocess.run(["groupadd", "-f", GROUP], check=False)  # another worker may race us
    for name in (SERVICE, TOOL):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-M", "-r", "-g", GROUP, "-s", "/usr/sbin/nologin", name],
                           check=False, capture_output=True)
            pwd.getpwnam(name)  # made, by us or by the worker that raced us
    return {"gid": grp.getgrnam(GROUP).gr_gid, SERVICE: pwd.getpwnam(SERVICE).pw_uid,
            TOOL: pwd.getpwnam(TOOL).pw_uid}


@pytest.fixture
def shared(users: dict[str, int]) -> Iterator[Path]:
    """/tmp/…/share: owned by the service user, group-shared 2770 as the README sets it up."""
    base = Path(tempfile.mkdtemp(prefix="mgh-shared-", dir="/tmp"))
    base.chmod(0o755)
    share = base / "share"
    share.mkdir()
    os.chown(share, users[SERVICE], users["gid"])
    share.chmod(0o2770)
    try:
        yield share
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_tool(*command: str) -> None:
    """Run a command as the tool user (the attacker), which must succeed."""
    subprocess.run(["runuser", "-u", TOOL, "--", *command], check=True, capture_output=True)


def _victim(tmp_path: Path, owner: int = 0) -> Path:
    victim = tmp_path / "victim-secret"
    victim.write_text("do not touch\n")
    victim.chmod(0o600)
    os.chown(victim, owner, -1)
    return victim


@pytest.fixture
def shared_config(shared: Path, make_config: Any) -> Path:
    return make_config("shared.toml", outbox={"path": str(shared / "outbox.db")})


@pytest.mark.parametrize("command", [("run",), ("drain", "--timeout", "5")])
def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(
    cli: Cli, emulator: Emulator, shared: Path, shared_config: Path, tmp_path: Path,
    command: tuple[str, ...],
):
    """The tool plants `<outbox>.lock` -> a root-owned 0600 file: `run` and a root `drain` exit
    non-zero at once naming the lock; the target is neither truncated nor written."""
    assert cli("init", config=shared_config).returncode == 0
    victim = _victim(tmp_path)
    as_tool("ln", "-s", str(victim), str(shared / "outbox.db.lock"))
    started = time.monotonic()
    result = cli(*command, config=shared_config, timeout=30)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 15
    assert "outbox.db.lock" in result.stderr and "symbolic link" in result.stderr
    assert victim.read_text() == "do not touch\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_a_fifo_lock_file_neither_hangs_nor_crashes(cli: Cli, emulator: Emulator, shared: Path,
                                                    shared_config: Path):
    """A FIFO planted as the lock: `run` refuses at once (no hang waiting for a writer) with a
    message naming it, and `status` answers instead of hanging."""
    assert cli("init", config=shared_config).returncode == 0
    as_tool("mkfifo", "-m", "660", str(shared / "outbox.db.lock"))
    result = cli("run", config=shared_config, timeout=20)
    assert result.returncode == 1 and "a FIFO" in result.stderr and "outbox.db.lock" in result.stderr
    status = cli("status", "--json", config=shared_config, timeout=20)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["daemon_pid"] is None


def test_a_lock_file_planted_by_the_tool_is_refused(cli: Cli, emulator: Emulator, shared: Path,
                                                    shared_config: Path):
    """A regular lock file the tool user made (not the service user, not root, not us): refused,
    named, and left as it was (never truncated)."""
    assert cli("init", config=shared_config).returncode == 0
    lock = shared / "outbox.db.lock"
    as_tool("sh", "-c", f"umask 007; echo planted > {lock}")
    result = cli("drain", "--timeout", "5", config=shared_config)
    assert result.returncode == 1 and "owned by uid" in result.stderr
    assert lock.read_text() == "planted\n"


def test_root_drain_locks_the_service_users_lock_without_truncating_it(
    cli: Cli, emulator: Emulator, shared: Path, shared_config: Path, users: dict[str, int],
):
    """The service user's own lock file (as its `run` left it) is trusted by root's `drain`,
    which locks it but never rewrites a file it did not create."""
    assert cli("init", config=shared_config).returncode == 0
    lock = shared / "outbox.db.lock"
    lock.write_text("4242\n")
    os.chown(lock, users[SERVICE], users["gid"])
    result = cli("drain", "--timeout", "5", config=shared_config)
    assert result.returncode == 0, result.stderr
    assert lock.read_text() == "4242\n"


def test_init_refuses_a_symlinked_outbox(cli: Cli, shared: Path, shared_config: Path,
                                         tmp_path: Path):
    """The tool points the outbox's name at another file: `init` refuses, naming the rule, and
    neither chmods nor writes the target."""
    victim = _victim(tmp_path)
    as_tool("ln", "-s", str(victim), str(shared / "outbox.db"))
    result = cli("init", config=shared_config)
    assert result.returncode == 1 and "symbolic link" in result.stderr
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert victim.read_text() == "do not touch\n"
    assert cli("drain", config=shared_config).returncode == 1


def test_live_state_in_a_shared_directory_is_met_as_hostile(
    cli: Cli, emulator: Emulator, shared: Path, make_config: Any, tmp_path: Path,
):
    """`live_state_path` set into the shared directory: a symlink the tool plants there is
    replaced, never written through; a live state the tool forges is never believed."""
    path = shared / "live.json"
    config = make_config("live.toml", outbox={"path": str(shared / "outbox.db"),
                                              "live_state_path": str(path)})
    assert cli("init", config=config).returncode == 0
    victim = _victim(tmp_path)
    as_tool("ln", "-s", str(victim), str(path))
    proc = start_daemon(config)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and path.is_symlink():
            time.sleep(0.05)
        assert not path.is_symlink()
        assert victim.read_text() == "do not touch\n"
    finally:
        stop_daemon(proc, timeout=15)
    forged = {"health": "ok", "cause": None, "heartbeat": time.time(), "pid": 1,
              "outbox": "x", "interval_seconds": 2.0}
    path.unlink()
    as_tool("sh", "-c", f"umask 007; echo '{json.dumps(forged)}' > {path}")
    report = json.loads(cli("status", "--json", config=config).stdout)
    assert report["daemon"] is None and report["daemon_state"] == "not running"


def test_the_live_state_temp_file_cannot_be_swapped_for_a_chmod(shared: Path, tmp_path: Path,
                                                                users: dict[str, int]):
    """The race the issue won in seconds: while the daemon rewrites its live state, the tool
    swaps every temporary `.live-*` file for a symlink to a 0600 file of the service user. The
    mode is set on the descriptor, so the victim stays 0600."""
    victim = _victim(tmp_path, owner=users[SERVICE])
    path = shared / "live.json"
    state = live.LiveState(health="ok", cause=None, heartbeat=0.0, pid=1, outbox="o",
                           interval_seconds=2.0)
    attacker = subprocess.Popen(
        ["runuser", "-u", TOOL, "--", "sh", "-c",
         f"end=$(( $(date +%s) + 4 )); while [ $(date +%s) -lt $end ]; do "
         f"for f in {shared}/.live-*; do [ -e \"$f\" ] && ln -sf {victim} \"$f\"; done; done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # a swapped temp file may fail one write
                live.write(path, state)
    finally:
        attacker.wait(timeout=10)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert victim.read_text() == "do not touch\n"


def test_the_default_live_state_is_never_in_the_shared_directory_nor_tmp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared: Path,
):
    """Without `live_state_path`: $RUNTIME_DIRECTORY, else /run/mgh-reporter as root, else
    $XDG_RUNTIME_DIR/mgh-reporter, one file per outbox; a directory others can write is refused;
    a PostgreSQL outbox's file is no guessable /tmp name."""
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    a = live.daemon_path(None, str(shared / "a.db"))
    b = live.daemon_path(None, "postgresql://u:***@db/x")
    assert a.parent == b.parent == tmp_path / "run" and a != b
    assert not str(b).startswith(tempfile.gettempdir() + "/mgh-reporter-pg")
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert live.daemon_path(None, "x").parent == Path("/run/mgh-reporter")
    with pytest.raises(UnsafeFile, match="refusing it"):
        private_dir(shared, create=False)  # the service user's, group-writable
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(open_dir))
    with pytest.raises(UnsafeFile, match="writable by group or others"):
        live.daemon_path(None, "x")


def test_status_finds_a_daemon_that_has_no_runtime_directory(
    cli: Cli, emulator: Emulator, shared: Path, make_config: Any, users: dict[str, int]
):
    """`runuser -u <service> -- mgh-reporter run` without systemd (no $RUNTIME_DIRECTORY, no
    $XDG_RUNTIME_DIR): the daemon writes no live state, yet `status` finds it by the outbox
    it holds, says it is delivering and never tells the operator to start another one."""
    config = shared.parent / "service.toml"
    shutil.copy(make_config("service.toml", outbox={"path": str(shared / "outbox.db")}), config)
    config.chmod(0o644)
    assert cli("init", config=config).returncode == 0
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY", "NOTIFY_SOCKET")}
    daemon = subprocess.Popen(
        ["runuser", "-u", SERVICE, "--", sys.executable, "-m", "reporter", "--config",
         str(config), "run"], env=env, cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert cli("notify", "t1", "--status", "IN_PROGRESS", config=config).returncode == 0
        wait_for(lambda: "t1" in emulator.state.streams.get("ToolA", {}), timeout=30)
        report = json.loads(cli("status", "--json", config=config).stdout)
        assert report["daemon_state"] == "running" and report["daemon"]["live_state"] is False
        assert report["daemon_pid"] == daemon.pid or report["daemon_pid"] > 0
        assert any("live_state_path" in w for w in report["warnings"])
        human = cli("status", config=config).stdout
        assert "not running" not in human and "delivering" in human, human
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=15)
    # runuser passes SIGTERM on and reports its own end: the daemon's clean stop is in its log
    assert '"clean": true' in err, err[-2000:]
    assert "live_state_unavailable" in err


def _exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): the two names swap atomically (the attacker's tool)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, bytes(a), -100, bytes(b), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        raise OSError(ctypes.get_errno(), "renameat2")


def test_a_symlink_swapped_in_while_opening_is_never_followed(tmp_path: Path):
    """A thread swaps the outbox with a symlink to an empty root-owned 0600 file, atomically
    and without pause, while the outbox is opened 2,000 times the way `status`, `init` and
    `dead-letters` open it: every open gets the outbox or a clean refusal, and the victim is
    never touched (before nofollow and the descriptor check, an empty victim became an SQLite
    database)."""
    from reporter.stores.contract import StoreError
    from reporter.stores.sqlite import SqliteStore

    outbox = tmp_path / "outbox.db"
    SqliteStore.create(outbox).close()
    victim = tmp_path / "victim"
    victim.touch(mode=0o600)
    swap = tmp_path / "swap"
    swap.symlink_to(victim)
    stop = threading.Event()
    swaps = [0]

    def attacker() -> None:
        while not stop.is_set():
            _exchange(outbox, swap)
            swaps[0] += 1

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    opened = refused = 0
    try:
        for attempt in range(2000):
            try:
                store = (SqliteStore.create(outbox) if attempt % 4 == 0
                         else SqliteStore.open(outbox, writable=attempt % 2 == 0))
            except StoreError:
                refused += 1
                continue
            store.close()
            opened += 1
    finally:
        stop.set()
        thread.join(timeout=10)
    assert swaps[0] > 1000 and opened > 0 and refused > 0  # the race really ran
    assert victim.stat().st_size == 0 and stat.S_IMODE(victim.stat().st_mode) == 0o600
    if outbox.is_symlink():
        _exchange(outbox, swap)
    SqliteStore.open(outbox).close()  # the outbox itself is intact


@pytest.mark.swaps
def test_the_symlink_swap_race_against_root_commands_is_never_won(
        cli: Cli, shared: Path, shared_config: Path, tmp_path: Path):
    """The attack as it was made: a tool user in the group swaps the outbox with a symlink to
    a root-owned 0600 file in a loop (renameat2 exchange) while root runs `status`, `init` and
    `dead-letters list`, 300 runs in all: the victim is never touched, and every run either
    works on the outbox or refuses, naming it."""
    assert cli("init", config=shared_config).returncode == 0
    victim = _victim(tmp_path)
    outbox, swap = shared / "outbox.db", shared / "swap"
    as_tool("ln", "-s", str(victim), str(swap))
    attacker = subprocess.Popen(
        ["runuser", "-u", TOOL, "--", sys.executable, "-c",
         "import ctypes, sys\nlibc = ctypes.CDLL(None)\n"
         "while True:\n    libc.renameat2(-100, sys.argv[1].encode(), -100,"
         " sys.argv[2].encode(), 2)\n", str(outbox), str(swap)], start_new_session=True)
    try:
        for run in range(300):
            command = (("status", "--json"), ("init",), ("dead-letters", "list"))[run % 3]
            done = cli(*command, config=shared_config, timeout=60)
            assert "Traceback" not in done.stderr, done.stderr
    finally:  # runuser's child too: the whole session, and anything left of the tool user's
        with contextlib.suppress(ProcessLookupError):
            os.killpg(attacker.pid, signal.SIGKILL)
        attacker.wait()
        subprocess.run(["pkill", "-KILL", "-u", TOOL], check=False)
    assert victim.read_text() == "do not touch\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_a_planted_sdk_config_in_a_shared_home_is_never_read(
        cli: Cli, emulator: Emulator, shared: Path, make_config: Any, tmp_path: Path):
    """The service's HOME is the shared directory (as packages before 0.3 made it) and a tool
    user plants `.aws/config` (a credential_process, an endpoint) and `.aws/credentials` (its
    own keys): run as the service user (`runuser`, as the README says) and as root with that
    HOME (`sudo -E`), neither file is read: the process never runs, the planted key never
    signs a call, and the daemon says which file it ignored and why."""
    config = shared.parent / "service.toml"
    shutil.copy(make_config("service.toml", outbox={"path": str(shared / "outbox.db")}), config)
    config.chmod(0o644)
    assert cli("init", config=config).returncode == 0
    marker = Path(tempfile.gettempdir()) / f"mgh-pwned-{os.getpid()}-{time.monotonic_ns()}"
    as_tool("mkdir", str(shared / ".aws"))
    as_tool("sh", "-c", f"printf '[default]\\ncredential_process = /bin/sh -c \"id > {marker};"
            f" cat /dev/null\"\\nendpoint_url = http://127.0.0.9:9\\n' > {shared}/.aws/config")
    as_tool("sh", "-c", "printf '[default]\\naws_access_key_id = AKIAPLANTEDPLANTED01\\n"
            f"aws_secret_access_key = planted\\n' > {shared}/.aws/credentials")
    assert cli("notify", "t1", "--status", "IN_PROGRESS", config=config).returncode == 0
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_ACCESS_KEY") and not k.startswith("AWS_SECRET")}
    env.update({"HOME": str(shared), **emulator.environment()})
    env.pop("AWS_SHARED_CREDENTIALS_FILE", None)
    env.pop("AWS_CONFIG_FILE", None)
    for runner in (["runuser", "-u", SERVICE, "--", "env", f"HOME={shared}"], []):
        done = subprocess.run([*runner, sys.executable, "-m", "reporter", "--config",
                               str(config), "drain", "--timeout", "3"], env=env,
                              capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parent.parent)
        assert done.returncode == 4, done.stderr[-2000:]  # no credentials: blocked
        assert "sdk_file_ignored" in done.stderr and f"{shared}/.aws/config" in done.stderr
        assert not marker.exists(), marker.read_text()
    assert "AKIAPLANTEDPLANTED01" not in {c.get("caller") for c in emulator.state.calls}


def test_a_user_outside_the_configs_group_is_told_whom_to_ask(
    shared: Path, make_config: Any, users: dict[str, int]
):
    """A config readable by its group only (root:group 0640, as the packages install it), read
    by a user outside that group: exit 1 naming the file, the group and the command that adds
    the user; nothing is created."""
    config = shared.parent / "locked.toml"
    shutil.copy(make_config("locked.toml", outbox={"path": str(shared / "outbox.db")}), config)
    os.chown(config, 0, users["gid"])
    config.chmod(0o640)
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, "-m", "reporter", "--config",
         str(config), "status"], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 1, result.stderr
    assert f"{config}: cannot read config: Permission denied" in result.stderr
    assert f"readable by group {GROUP}" in result.stderr
    assert f"usermod -a -G {GROUP} $USER" in result.stderr
    assert not (shared / "outbox.db").exists()
