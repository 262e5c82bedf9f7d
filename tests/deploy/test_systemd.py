"""The unit under real systemd (booted as PID 1 in a podman container), installed exactly as the
README's systemd block says, hardening included: READY=1 and STATUS=, delivery, a host tool of
another user in the group (and an outsider refused), the watchdog restarting a frozen daemon,
reload and stop, and a journal of JSON events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from reporter.emulator import Emulator

from ..docblocks import run_by
from ..helpers import wait_for
from .images import LIMITS, ROOT, base_image, podman, require_engine, wheels

pytestmark = pytest.mark.deploy

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_EC2_METADATA_DISABLED": "true",
}
WATCHDOG_SECONDS = 6  # the test's drop-in shortens the unit's 30 s so the test stays short


def readme_systemd_block() -> list[str]:
    """The shell lines of the systemd section of docs/operations.md, as a user would paste
    them."""
    block = run_by("operations.md", "tests/deploy/test_systemd.py::"
                   "test_started_under_systemd_with_every_hardening_line")[0].text
    return [line.split("  #")[0].strip() for line in block.strip().splitlines() if line.strip()]


class Machine:
    """A container booted with systemd; commands run in it with `podman exec`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> str:
        done = podman("exec", self.name, "/bin/sh", "-c", script, check=False, timeout=timeout)
        if check and done.returncode != 0:
            journal = podman("exec", self.name, "journalctl", "-u", "mgh-reporter", "-n", "40",
                             "--no-pager", check=False).stdout
            raise AssertionError(f"in the machine: {script!r} exited {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n"
                                 f"journal:\n{journal}")
        return done.stdout

    def code(self, script: str) -> int:
        return podman("exec", self.name, "/bin/sh", "-c", script, check=False).returncode

    def prop(self, name: str) -> str:
        return self.sh(f"systemctl show -p {name} --value mgh-reporter").strip()

    def journal(self) -> list[str]:
        """What the daemon itself wrote to the journal (not systemd's lines about the unit)."""
        out = self.sh("journalctl -u mgh-reporter -o json --no-pager", check=False)
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [str(e.get("MESSAGE", "")) for e in entries
                if e.get("SYSLOG_IDENTIFIER") != "systemd"]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.journal()]  # each line must be JSON


@pytest.fixture(scope="module")
def hub() -> Iterator[Emulator]:
    with Emulator(map_delay=0.3) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def machine(hub: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    require_engine()
    base = base_image("systemd")
    work = tmp_path_factory.mktemp("systemd")
    wheels(work / "wheels")
    name = f"mgh-systemd-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, "--systemd=always", "--network", "host", *LIMITS,
           "-v", f"{ROOT}:/src:ro", "-v", f"{work / 'wheels'}:/wheels:ro", base, "/sbin/init")
    box = Machine(name)
    try:
        wait_for(lambda: box.code("systemctl is-system-running --wait >/dev/null 2>&1; "
                                  "systemctl is-system-running | grep -qE 'running|degraded'")
                 == 0, timeout=120)
        # The operations page's systemd block, line by line, from the source tree; pip reads the wheels (this
        # machine has no index) and the config points at the emulator (a drop-in gives the
        # service the emulator's endpoints and test credentials).
        box.sh("mkdir -p /etc/systemd/system/mgh-reporter.service.d && cat > "
               "/etc/systemd/system/mgh-reporter.service.d/test.conf <<'EOF'\n[Service]\n"
               + "".join(f"Environment={k}={v}\n" for k, v in
                         {**CREDENTIALS, **hub.environment()}.items())
               + f"WatchdogSec={WATCHDOG_SECONDS}\nEOF")
        for line in readme_systemd_block():
            if line.startswith("systemctl status"):
                continue
            line = line.replace("--find-links ./wheels", "--find-links /wheels")
            if line.startswith("install -m 640 -g mgh-reporter config.example.toml"):
                box.sh("cd /src && " + line)
                box.sh(
                    "sed -i -e 's/^progress_update_stream = .*/progress_update_stream = "
                    "\"Systemd\"/' -e 's/^interval_seconds = .*/interval_seconds = 1.0/' "
                    "/etc/mgh-reporter/config.toml")
                continue
            box.sh("cd /src && " + line, timeout=600)
        yield box
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def _pending(box: Machine) -> int:
    out = box.sh(
        "/opt/mgh-reporter/bin/python -c \"import sqlite3; c = sqlite3.connect("
        "'/var/lib/mgh-reporter/outbox.db', timeout=10); print(c.execute('SELECT (SELECT count(*)"
        " FROM mgh_inbox) + (SELECT count(*) FROM mgh_rows WHERE state = \\'pending\\')')"
        ".fetchone()[0])\"")
    return int(out.strip())


def test_started_under_systemd_with_every_hardening_line(machine: Machine, hub: Emulator):
    """active only after READY=1 (Type=notify), STATUS= shown, hardening in force."""
    assert machine.prop("ActiveState") == "active"
    assert machine.prop("Type") == "notify"
    assert machine.prop("StatusText")  # the daemon's STATUS= line
    unit = (ROOT / "systemd" / "mgh-reporter.service").read_text()
    for line in ("MemoryDenyWriteExecute=yes", "PrivateUsers=yes", "ProtectSystem=strict",
                 "SystemCallFilter=@system-service"):
        assert line in unit
    assert machine.prop("MemoryDenyWriteExecute") == "yes"
    assert machine.prop("ProtectSystem") == "strict"
    assert machine.prop("MemoryMax") == str(128 * 1024 * 1024)  # in force, not just written
    status = machine.sh("systemctl status mgh-reporter --no-pager", check=False)
    assert "Status:" in status, status


def test_a_tool_in_the_group_writes_and_an_outsider_cannot(machine: Machine, hub: Emulator):
    machine.sh("id tool >/dev/null 2>&1 || useradd -m -G mgh-reporter tool; "
               "id outsider >/dev/null 2>&1 || useradd -m outsider")
    for n in range(3):
        machine.sh(f"sudo -u tool sh -c 'umask 007; /opt/mgh-reporter/bin/mgh-reporter "
                   f"--config /etc/mgh-reporter/config.toml notify tool-{n} --status "
                   f"IN_PROGRESS --percent {n}'")
    wait_for(lambda: _pending(machine) == 0, timeout=60)
    assert {f"tool-{n}" for n in range(3)} <= set(hub.state.updates()["Systemd"])
    refused = machine.code("sudo -u outsider /opt/mgh-reporter/bin/mgh-reporter --config "
                           "/etc/mgh-reporter/config.toml notify nope --status COMPLETED")
    assert refused != 0
    assert "nope" not in hub.state.updates()["Systemd"]


def test_watchdog_restarts_a_frozen_daemon_and_nothing_is_lost(machine: Machine, hub: Emulator):
    pid = machine.prop("MainPID")
    machine.sh(f"kill -STOP {pid}")
    machine.sh("sudo -u tool sh -c 'umask 007; /opt/mgh-reporter/bin/mgh-reporter --config "
               "/etc/mgh-reporter/config.toml notify frozen --status COMPLETED'")
    wait_for(lambda: machine.prop("MainPID") not in ("0", pid)
             and machine.prop("ActiveState") == "active", timeout=WATCHDOG_SECONDS * 6)
    assert any("watchdog" in line.lower() for line in
               machine.sh("journalctl -u mgh-reporter --no-pager", check=False).splitlines())
    wait_for(lambda: _pending(machine) == 0, timeout=60)
    assert hub.state.updates()["Systemd"]["frozen"][-1]["Task"]["Status"] == "COMPLETED"


def test_reload_and_stop_are_clean_and_the_journal_is_json(machine: Machine):
    machine.sh("systemctl reload mgh-reporter")
    wait_for(lambda: any(e.get("event") == "reloaded" for e in machine.events()), timeout=30)
    started = time.monotonic()
    machine.sh("systemctl stop mgh-reporter", timeout=60)
    took = time.monotonic() - started
    assert took < 20, took  # TimeoutStopSec
    assert machine.prop("ActiveState") == "inactive"
    assert machine.prop("Result") == "success"
    events = machine.events()
    assert [e["event"] for e in events if e["event"] in ("stopping", "stopped")][-2:] == [
        "stopping", "stopped"]
    assert events and all(isinstance(e, dict) and "event" in e for e in events)
