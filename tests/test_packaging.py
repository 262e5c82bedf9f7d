"""The systemd unit, the container file, the shared-outbox arrangement and the docs."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import click
import pytest

from reporter.cli import cli as cli_group
from reporter.stores.sqlite import SqliteStore

from .helpers import ROOT, Cli, child_env

UNIT = ROOT / "systemd" / "mgh-reporter.service"
ANALYZE = shutil.which("systemd-analyze")


def unit_for_this_machine(tmp_path: Path) -> Path:
    exe = shutil.which("mgh-reporter") or sys.executable
    path = tmp_path / "mgh-reporter.service"
    path.write_text(UNIT.read_text().replace("/opt/mgh-reporter/bin/mgh-reporter", exe))
    return path


def test_unit_has_the_contract_settings():
    """Type=notify, WatchdogSec, Restart=on-failure, a stop timeout above the 10 s graceful stop,
    a memory bound."""
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "StateDirectory=mgh-reporter", "UMask=0007"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert int(re.search(r"^WatchdogSec=(\d+)", text, re.M).group(1)) >= 10  # type: ignore[union-attr]
    assert int(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1)) > 10  # type: ignore[union-attr]
    assert "StartLimitBurst=" in text
    # a bound on memory, above the 80 MiB the daemon is measured to stay under
    assert re.search(r"^MemoryMax=(\d+)M$", text, re.M)
    assert int(re.search(r"^MemoryMax=(\d+)M$", text, re.M).group(1)) >= 80  # type: ignore[union-attr]


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
def test_unit_verifies_and_scores_at_most_2(tmp_path: Path):
    """`systemd-analyze verify` passes and the offline security exposure is <= 2.0."""
    unit = unit_for_this_machine(tmp_path)
    verify = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    score = subprocess.run([ANALYZE, "security", "--offline=true", str(unit)],
                           capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", score.stdout)
    assert match, score.stdout[-500:]
    assert float(match.group(1)) <= 2.0


def test_containerfile_runs_the_daemon_as_non_root_with_a_healthcheck():
    """Non-root user; the entrypoint execs our console script (PID 1 gets SIGTERM); a
    HEALTHCHECK that starts no Python (the shell test of the live state file, copied in)."""
    text = (ROOT / "Containerfile").read_text()
    user = re.search(r"^USER (\S+)", text, re.M)
    assert user and not user.group(1).startswith("root") and user.group(1) != "0"
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    assert entry and "exec mgh-reporter" in entry.group(1)
    assert re.search(r'^CMD \["run"\]', text, re.M)
    health = re.search(r'CMD \["([^"]+)"\]', text.split("HEALTHCHECK", 1)[1])
    assert health and health.group(1) == "/usr/local/bin/mgh-reporter-healthcheck"
    assert "COPY deploy/healthcheck.sh /usr/local/bin/mgh-reporter-healthcheck" in text
    assert "python" not in (ROOT / "deploy" / "healthcheck.sh").read_text().split("\nlive=")[1]
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        if not copied.startswith("${"):
            assert (ROOT / copied).exists(), copied


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                    reason="needs root to switch users and a system python")
def test_two_users_share_the_outbox_through_the_group():
    """Host tool and daemon as different users in one group: with a setgid 2770 directory and
    umask 007 both can write the database and its -wal/-shm files."""


    top = Path(tempfile.mkdtemp(prefix="mgh-share-"))
    os.chmod(top, 0o755)
    shared = top / "shared"
    shared.mkdir()
    gid = 15151
    os.chown(shared, 0, gid)
    os.chmod(shared, 0o2770)
    db = shared / "outbox.db"
    old = os.umask(0o007)
    try:
        SqliteStore.create(db).close()
    finally:
        os.umask(old)
    script = (
        "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=5);"
        "c.execute('PRAGMA journal_mode=WAL');"
        "c.execute(\"INSERT INTO outbox(kind,migration_task_name,status) "
        "VALUES ('task_state', ?, 'IN_PROGRESS')\", (sys.argv[2],)); c.commit()"
    )

    daemon_side = sqlite3.connect(db)  # held open like the daemon's, so -wal/-shm persist
    daemon_side.execute("SELECT count(*) FROM outbox").fetchone()
    for uid, task in ((15001, "from-tool"), (15002, "from-daemon-user")):
        result = subprocess.run(
            ["/usr/bin/python3", "-c", script, str(db), task],
            user=uid, group=gid, extra_groups=[], umask=0o007, capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
    for suffix in ("", "-wal", "-shm"):
        mode = (shared / f"outbox.db{suffix}").stat().st_mode
        assert mode & 0o060 == 0o060, suffix
    names = [r[0] for r in daemon_side.execute("SELECT migration_task_name FROM outbox")]
    assert names == ["from-tool", "from-daemon-user"]
    shutil.rmtree(top)


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        found.append((full, command))
        if isinstance(command, click.Group):
            found += _commands(command, full + " ")
    return found


@pytest.mark.parametrize(("name", "command"), _commands(cli_group))
def test_every_command_is_documented_and_has_help(name: str, command: click.Command):
    """Each CLI command has help text and appears in the operations page's table (the
    generated reference lists every command anyway)."""
    assert command.help and len(command.help) > 10
    table = (ROOT / "docs" / "operations.md").read_text()
    assert f"mgh-reporter {name}" in table or f"`{name}" in table


def test_readme_starts_with_the_two_commands():
    """The README shows, near the top, the demo command and the test command."""
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert "mgh-reporter demo" in head
    assert "python -m pytest" in head


def test_every_module_has_a_docstring():
    """Each module says in one line what it owns."""
    for path in (ROOT / "reporter").glob("*.py"):
        text = path.read_text()
        assert text.startswith('"""'), path.name


WRITER_PROBE = """
import json, sys
from reporter.cli import main
sys.argv = ["mgh-reporter", "--config", sys.argv[1], *sys.argv[2:]]
try:
    main()
except SystemExit as done:
    code = done.code
heavy = ["boto3", "botocore", "structlog", "rich", "sqlite_utils", "apscheduler",
         "prometheus_client"]
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_shell_writers_load_only_what_an_insert_needs(cli: Cli, config_path: Path):
    """`notify`, `put-attributes` and `associate-artifact` import neither the SDK nor logging,
    terminal rendering, sqlite-utils or the scheduler (a shell tool pays for an INSERT only)."""
    assert cli("init").returncode == 0
    for args in (["notify", "t1", "--status", "IN_PROGRESS"],
                 ["put-attributes", "t1", "--attribute", "FQDN=a.example"],
                 ["associate-artifact", "t1",
                  "arn:aws:ec2:us-west-2:123456789012:instance/i-0abc"]):
        done = subprocess.run([sys.executable, "-c", WRITER_PROBE, str(config_path), *args],
                              capture_output=True, text=True, env=child_env(), cwd=ROOT)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result == {"code": None, "loaded": []} or result == {"code": 0, "loaded": []}, (
            args, result, done.stderr[-1000:])


def _tiny_pyz(tmp_path: Path) -> Path:
    """A real shiv app (one module that prints `ran`) with the release's guard put in front of
    shiv's bootstrap, as packaging/build.py does to mgh-reporter's."""
    sys.path.insert(0, str(ROOT / "packaging"))
    try:
        from build import guard_main
    finally:
        sys.path.pop(0)
    site = tmp_path / "site"
    site.mkdir()
    (site / "tiny.py").write_text("def main():\n    print('ran')\n")
    pyz = tmp_path / "tiny.pyz"
    shiv = Path(sys.executable).parent / "shiv"
    subprocess.run([str(shiv), "--site-packages", str(site), "-e", "tiny:main", "-o", str(pyz),
                    "--python", sys.executable, "--root", "~/.cache/tiny", "--reproducible"],
                   check=True, capture_output=True, env=child_env({"SOURCE_DATE_EPOCH": "315532800"}))
    guard_main(pyz)
    return pyz


def test_the_pyz_never_imports_from_a_cache_another_user_can_write(tmp_path: Path):
    """shiv reuses an extraction it finds under a predictable name and imports its `.pth`
    files: run as root with a cache another user can write, or that another user owns, the
    app refuses (naming it) and a planted `.pth` never runs; a private cache is made 0700 and
    used."""
    pyz = _tiny_pyz(tmp_path)
    with zipfile.ZipFile(pyz) as archive:
        env = json.loads(archive.read("environment.json"))
    marker = tmp_path / "pwned"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2777)  # as a shared or mis-set cache directory
    planted = shared / f"tiny.pyz_{env['build_id']}" / "site-packages"
    planted.mkdir(parents=True)
    (planted / "evil.pth").write_text(f"import os; open({str(marker)!r}, 'w').write('ran')\n")
    (planted / "tiny.py").write_text("def main():\n    print('planted')\n")
    run = subprocess.run([sys.executable, str(pyz)], capture_output=True, text=True,
                         env=child_env({"SHIV_ROOT": str(shared)}), timeout=60)
    assert run.returncode == 1 and "refusing to run from the cache" in run.stderr
    assert str(shared) in run.stderr and "Traceback" not in run.stderr
    assert not marker.exists()
    stranger = tmp_path / "stranger"
    stranger.mkdir(mode=0o700)
    os.chown(stranger, 65534, 65534)  # nobody's (run as root: not ours)
    run = subprocess.run([sys.executable, str(pyz)], capture_output=True, text=True,
                         env=child_env({"SHIV_ROOT": str(stranger)}), timeout=60)
    assert run.returncode == 1 and "belongs to uid 65534" in run.stderr
    private = tmp_path / "home" / ".cache" / "tiny"
    run = subprocess.run([sys.executable, str(pyz)], capture_output=True, text=True,
                         env=child_env({"SHIV_ROOT": str(private)}), timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ran", run.stderr
    assert oct(private.stat().st_mode & 0o777) == "0o700"
