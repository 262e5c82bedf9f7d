"""The image in a real container engine (podman, runc): built on a Debian base that has only
python3 and python3-venv, from wheels, then run as a sidecar beside a tool container of another
uid sharing a volume; stopped by signal; health checked by its shell HEALTHCHECK; and a
50,000-row backlog delivered inside a 64 MiB memory limit with health checks running."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reporter.emulator import Emulator

from ..docblocks import run_by
from ..helpers import ROOT, toml_text, wait_for
from .images import LIMITS, base_image, build_project_image, podman, require_engine

pytestmark = pytest.mark.deploy

TAG = "localhost/mgh-reporter:deploy-test"
TOOL_UID = 20002  # the tool's own uid; it shares only the group (10001) with the reporter
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def image() -> str:
    require_engine()  # raises: a deploy run without an engine fails, it never skips
    started = time.monotonic()
    base = base_image("python")
    build_project_image(base, TAG)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", TAG).stdout.strip())
    print(f"\nimage {TAG}: {size / 1e6:.0f} MB on base {base}, built in "
          f"{time.monotonic() - started:.0f} s")
    return TAG


@pytest.fixture
def hub() -> Iterator[Emulator]:
    with Emulator(map_delay=0.3) as emulator:
        yield emulator


class Pod:
    """A reporter container and tool containers sharing one named volume (host network, so the
    emulator on 127.0.0.1 is reachable)."""

    def __init__(self, image: str, hub: Emulator, tmp: Path, config: dict[str, Any]) -> None:
        self.image, self.hub = image, hub
        self.id = uuid.uuid4().hex[:8]
        self.volume = f"mgh-outbox-{self.id}"
        self.reporter = f"mgh-reporter-{self.id}"
        self.config = tmp / "config.toml"
        sections: dict[str, dict[str, Any]] = {
            "outbox": {"path": "/var/lib/mgh-reporter/outbox.db"},
            "hub": {"progress_update_stream": "Sidecar"},
            "publish": {"interval_seconds": 1.0, "backoff_base_seconds": 0.2,
                        "backoff_max_seconds": 2.0, "blocked_recheck_seconds": 2.0},
            "log": {"level": "info", "format": "json"},
        }
        for section, values in config.items():
            sections.setdefault(section, {}).update(values)
        self.config.write_text(toml_text(sections))
        self.config.chmod(0o644)
        podman("volume", "create", self.volume)

    def env(self) -> list[str]:
        pairs = {**CREDENTIALS, **self.hub.environment()}
        return [arg for k, v in pairs.items() for arg in ("-e", f"{k}={v}")]

    def start(self, *extra: str) -> None:
        podman("run", "-d", "--name", self.reporter, "--network", "host", *LIMITS, *self.env(),
               "-v", f"{self.volume}:/var/lib/mgh-reporter",
               "-v", f"{self.config}:/etc/mgh-reporter/config.toml:ro", *extra, self.image)

    def tool(self, *args: str, timeout: float = 600) -> str:
        """A command in a tool container: another uid, the reporter's group, umask 007."""
        script = "umask 007 && exec \"$@\""
        return podman("run", "--rm", "--network", "host", *LIMITS,
                      "--user", f"{TOOL_UID}:10001", "-v", f"{self.volume}:/var/lib/mgh-reporter",
                      "-v", f"{self.config}:/etc/mgh-reporter/config.toml:ro",
                      "--entrypoint", "/bin/sh", self.image, "-c", script, "tool", *args,
                      timeout=timeout).stdout

    def sql(self, query: str) -> Any:
        code = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=10); "
                "print(json.dumps(c.execute(sys.argv[2]).fetchall()))")
        out = self.tool("python3", "-c", code, "/var/lib/mgh-reporter/outbox.db", query)
        return json.loads(out)

    def pending(self) -> int:
        rows = self.sql("SELECT (SELECT count(*) FROM mgh_inbox) +"
                        " (SELECT count(*) FROM mgh_rows WHERE state = 'pending')")
        return int(rows[0][0])

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.reporter).stdout.strip()

    def healthcheck(self) -> tuple[int, str]:
        """`podman healthcheck run`: its exit code, and what the check printed (the health
        log's last entry; podman itself prints only healthy/unhealthy)."""
        done = podman("healthcheck", "run", self.reporter, check=False)
        health = json.loads(self.inspect("{{json .State.Health}}") or "{}")
        log = (health or {}).get("Log") or [{}]
        return done.returncode, str(log[-1].get("Output", "")).strip()

    def logs(self) -> str:
        done = podman("logs", self.reporter, check=False)
        return done.stdout + done.stderr

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.reporter, check=False)
        podman("volume", "rm", "-f", self.volume, check=False)


@pytest.fixture
def pod_factory(image: str, hub: Emulator, tmp_path: Path) -> Iterator[Any]:
    made: list[Pod] = []

    def make(**config: Any) -> Pod:
        pod = Pod(image, hub, tmp_path, config)
        made.append(pod)
        return pod

    yield make
    for pod in made:
        pod.remove()


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_image_runs_as_non_root_without_compiler_or_pip(image: str):
    """The daemon's user is uid 10001; no compiler, no pip (nor its cache) in the image."""
    done = podman("run", "--rm", *LIMITS, "--entrypoint", "/bin/sh", image, "-c",
                  "id -u; id -g; for t in gcc cc pip pip3; do command -v $t; done;"
                  " ls -d /root/.cache/pip /var/lib/mgh-reporter/.cache/pip 2>/dev/null;"
                  " mgh-reporter --help >/dev/null && echo cli-ok", check=False)
    assert done.stdout.split() == ["10001", "10001", "cli-ok"], done.stdout + done.stderr


def test_sidecar_delivers_what_a_tool_of_another_uid_writes(pod_factory: Any, hub: Emulator):
    """A tool container (uid 20002, group 10001, umask 007) writes with the shell writer and
    with plain SQL; the reporter container delivers every task to its last state; every line
    it logs is JSON; the health check says healthy while it delivers."""
    pod = pod_factory()
    pod.start()
    wait_for(lambda: "started" in pod.logs(), timeout=60)
    for n in range(5):
        pod.tool("mgh-reporter", "notify", f"web-{n}", "--status", "IN_PROGRESS",
                 "--percent", str(10 * n), "--detail", f"copy {n}")
    pod.tool("python3", "-c",
             "import sqlite3; c = sqlite3.connect('/var/lib/mgh-reporter/outbox.db', timeout=10)\n"
             "with c: c.executemany(\"INSERT INTO outbox(kind, migration_task_name, status,"
             " progress_percent) VALUES ('task_state', ?, 'COMPLETED', 100)\","
             " [(f'db-{i}',) for i in range(20)])")
    wait_for(lambda: pod.pending() == 0, timeout=60)
    updates = hub.state.updates()["Sidecar"]
    assert {f"web-{n}" for n in range(5)} | {f"db-{i}" for i in range(20)} <= set(updates)
    assert all(updates[f"db-{i}"][-1]["Task"]["Status"] == "COMPLETED" for i in range(20))
    code, said = pod.healthcheck()
    assert code == 0, said
    assert all(isinstance(e, dict) for e in _json_lines(pod.logs()))


def test_podman_stop_is_graceful_and_loses_nothing(pod_factory: Any, hub: Emulator):
    """`podman stop` (SIGTERM to the daemon as PID 1): exit 0 well within 10 s; the rows
    written are all there after a restart of the container, and all delivered."""
    pod = pod_factory()
    pod.start()
    wait_for(lambda: "started" in pod.logs(), timeout=60)
    hub.state.faults.update(latency=0.5)  # calls in flight when the stop comes
    pod.tool("python3", "-c",
             "import sqlite3; c = sqlite3.connect('/var/lib/mgh-reporter/outbox.db', timeout=10)\n"
             "with c: c.executemany(\"INSERT INTO outbox(kind, migration_task_name, status,"
             " progress_percent) VALUES ('task_state', ?, 'IN_PROGRESS', 50)\","
             " [(f'stop-{i}',) for i in range(200)])")
    before = pod.sql("SELECT count(*) FROM outbox")[0][0]
    time.sleep(1.0)
    started = time.monotonic()
    podman("stop", "-t", "10", pod.reporter, timeout=60)
    took = time.monotonic() - started
    assert pod.inspect("{{.State.ExitCode}}") == "0", pod.logs()[-3000:]
    assert took < 10, took
    assert "stopped" in pod.logs()
    hub.state.faults.update(latency=0.0)
    podman("start", pod.reporter)
    assert pod.sql("SELECT count(*) FROM outbox")[0][0] == before == 200
    wait_for(lambda: pod.pending() == 0, timeout=60)
    assert {f"stop-{i}" for i in range(200)} <= set(hub.state.updates()["Sidecar"])


def test_healthcheck_healthy_while_delivering_unhealthy_while_blocked(
    image: str, tmp_path: Path, pod_factory: Any, hub: Emulator
):
    """`podman healthcheck run`: healthy once delivering; unhealthy (with the cause) while the
    account has no home Region; healthy again once it is set."""
    pod = pod_factory()
    hub.state.home_region = None
    pod.start()
    wait_for(lambda: "blocked" in pod.healthcheck()[1], timeout=60)
    code, said = pod.healthcheck()
    assert code == 1 and "home Region is not set" in said, said
    hub.state.home_region = "us-west-2"
    wait_for(lambda: pod.healthcheck()[0] == 0, timeout=60)
    pod.tool("mgh-reporter", "notify", "after", "--status", "COMPLETED")
    wait_for(lambda: pod.pending() == 0, timeout=60)


def test_50k_backlog_in_64_mib_with_health_checks(pod_factory: Any, hub: Emulator):
    """`--memory 64m --memory-swap 64m`: 5,000 tasks x 10 rows delivered, health checked every
    2 s throughout (a shell test: no second Python), and no OOM kill."""
    pod = pod_factory()
    pod.tool("mgh-reporter", "init")
    pod.tool("python3", "-c",
             "import sqlite3; c = sqlite3.connect('/var/lib/mgh-reporter/outbox.db', timeout=10)\n"
             "with c: c.executemany(\"INSERT INTO outbox(kind, migration_task_name, status,"
             " progress_percent, status_detail) VALUES ('task_state', ?, 'IN_PROGRESS', ?, ?)\","
             " [(f'big-{t:04d}', j * 10, f'step {j}') for j in range(10) for t in range(5000)])",
             timeout=900)
    pod.start("--memory", "64m", "--memory-swap", "64m")
    started, checks, unhealthy = time.monotonic(), 0, []
    while time.monotonic() - started < 600:
        if pod.inspect("{{.State.Running}}") != "true":
            break
        code, said = pod.healthcheck()
        checks += 1
        if code != 0 and time.monotonic() - started > 20:
            unhealthy.append(said)
        if pod.pending() == 0:
            break
        time.sleep(2.0)
    running = pod.inspect("{{.State.Running}}")
    exit_code = pod.inspect("{{.State.ExitCode}}")
    oom = pod.inspect("{{.State.OOMKilled}}")
    print(f"\n64 MiB sidecar: 50,000 rows in {time.monotonic() - started:.0f} s, "
          f"{checks} health checks, running={running} exit={exit_code} oom={oom}")
    assert running == "true" and exit_code == "0" and oom == "false", pod.logs()[-3000:]
    assert pod.pending() == 0
    assert unhealthy == []
    updates = hub.state.updates()["Sidecar"]
    assert len(updates) == 5000
    assert all(u[-1]["Task"]["StatusDetail"] == "step 9" for u in updates.values())


def test_the_operations_podman_block_as_written(hub: Emulator, tmp_path: Path):
    """docs/operations.md's podman block, line by line, in a copy of the source tree: `pip
    wheel`, `podman build` on the Debian base (the block's BASE names it), `podman run`, then
    `podman healthcheck run` healthy and a tool's row delivered. Made to run here, and only
    so: names made unique, the host's network, this machine's rlimits and the emulator's
    endpoints given to build and run (the block's host reaches AWS with its own
    credentials)."""
    require_engine()
    text = run_by("operations.md",
                  "tests/deploy/test_container.py::test_the_operations_podman_block_as_written"
                  )[0].text
    commands = [line.split("  #")[0].strip()
                for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    assert [c.split()[:2] for c in commands] == [
        ["pip", "wheel"], ["podman", "build"], ["podman", "run"], ["podman", "healthcheck"]]
    tree = tmp_path / "src"
    tree.mkdir()
    for item in ("Containerfile", "pyproject.toml", "README.md", "config.example.toml"):
        shutil.copy(ROOT / item, tree / item)
    for item in ("reporter", "deploy"):
        shutil.copytree(ROOT / item, tree / item, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "config.toml").write_text(toml_text({
        "outbox": {"path": "/var/lib/mgh-reporter/outbox.db"},
        "hub": {"progress_update_stream": "Documented"}, "publish": {"interval_seconds": 1.0}}))
    (tree / "config.toml").chmod(0o644)
    unique = uuid.uuid4().hex[:8]
    name, tag, volume = f"mgh-doc-{unique}", f"localhost/mgh-doc:{unique}", f"mgh-doc-{unique}"
    env_args = " ".join(f"-e {k}={v}" for k, v in {**CREDENTIALS, **hub.environment()}.items())
    limits = " ".join(LIMITS)  # this machine's runc cannot raise the default rlimits
    here = {"BASE=localhost/debian-python:bookworm": f"BASE={base_image('python')}",
            "-t mgh-reporter ": f"-t {tag} ", "--name mgh-reporter ": f"--name {name} ",
            "-v outbox:": f"-v {volume}:",
            "podman build ": f"podman build {limits} --network host ",
            "podman run -d ": f"podman run -d {limits} --network host {env_args} "}
    shell_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        for command in commands[:3]:
            for written, local in here.items():
                command = command.replace(written, local)
            if command.startswith("podman run"):
                command = command[:command.rindex(" mgh-reporter")] + f" {tag}"
            done = subprocess.run(["bash", "-c", command], cwd=tree, capture_output=True,
                                  text=True, timeout=1200, env=shell_env)
            assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        health = commands[3].replace("mgh-reporter", name)
        wait_for(lambda: subprocess.run(["bash", "-c", health], capture_output=True
                                        ).returncode == 0, timeout=60)
        podman("exec", name, "mgh-reporter", "notify", "doc-1", "--status", "COMPLETED")
        wait_for(lambda: "doc-1" in hub.state.updates().get("Documented", {}), timeout=60)
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)
        podman("rmi", "-f", tag, check=False)
