"""The release artifacts where they will run: `python packaging/build.py` (from the index, and
offline from a wheelhouse), the .deb installed with no network on bare Debian 12 and 13 and
under systemd (enable, a tool user's rows, reload, an upgrade with pending rows, remove and
install again, purge), the .pyz draining on Python 3.11, 3.13 and 3.14, and the .rpm's
metadata read with `rpm -qp` (no RPM distribution can be booted here)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reporter.emulator import Emulator

from ..docblocks import run_by
from ..helpers import build_module, wait_for
from .images import (
    LIMITS,
    ROOT,
    SUITES,
    EngineMissing,
    base_image,
    podman,
    release,
    require_engine,
)

pytestmark = pytest.mark.deploy

VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                    re.MULTILINE).group(1)  # type: ignore[union-attr]
PACKAGE_VERSION = build_module().package_version(VERSION)  # 0.3.0.dev0 → 0.3.0~dev0
OLD_VERSION = "0.2.0"  # release 0.2.0's tree, built as released, for the upgrade
RELEASE_0_2_0 = "3b35377"  # the commit the CHANGELOG dates 0.2.0
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_EC2_METADATA_DISABLED": "true",
}
DEB = f"mgh-reporter_{PACKAGE_VERSION}_all.deb"
OLD_DEB = f"mgh-reporter_{OLD_VERSION}_all.deb"
RPM = f"mgh-reporter-{PACKAGE_VERSION}-1.noarch.rpm"
PYZ = f"mgh-reporter-{VERSION}.pyz"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's artifacts (the wheelhouse filled from the index), then a build of the
    same tree at a lower version made offline from that wheelhouse (for the upgrade)."""
    require_engine()
    work = tmp_path_factory.mktemp("release")
    out = work / "dist"
    release(out)
    old_tree = work / "old-tree"  # release 0.2.0's tree: a real schema change lies between
    old_tree.mkdir()
    archive = subprocess.run(["git", "archive", RELEASE_0_2_0], cwd=ROOT, capture_output=True,
                             check=False)
    assert archive.returncode == 0, (f"cannot read release 0.2.0 ({RELEASE_0_2_0}) from git:"
                                     f" {archive.stderr.decode()} (a shallow clone?)")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(old_tree, filter="data")
    old = work / "old-dist"
    release(old, root=old_tree, wheelhouse=ROOT / "build" / "wheelhouse", offline=True)
    shutil.copy(old / OLD_DEB, out / OLD_DEB)
    return out


@pytest.fixture(scope="module")
def hub() -> Iterator[Emulator]:
    with Emulator(map_delay=0.3) as emulator:
        yield emulator


def _env_lines(hub: Emulator) -> str:
    return "".join(f"Environment={k}={v}\n" for k, v in {**CREDENTIALS,
                                                         **hub.environment()}.items())


def _env_args(hub: Emulator) -> list[str]:
    return [arg for k, v in {**CREDENTIALS, **hub.environment()}.items()
            for arg in ("-e", f"{k}={v}")]


def install_line(deb: str) -> str:
    """The apt line of docs/install.md for `deb` (-y: no one answers here)."""
    block = run_by("install.md", "tests/deploy/test_packages.py::test_deb_offline_on_bare_debian")
    line = block[0].text.split("  #")[0].strip()
    assert line == f"apt install ./{DEB}", line  # the page names the version this tree builds
    return line.replace("apt install", "apt install -y").replace(f"./{DEB}", f"./{deb}")


def installed_image(base: str, dist: Path, deb: str) -> str:
    """The README's `apt install ./DEB` (with -y: no one answers) in a container with no
    network at all, committed as an image: apt fetches nothing (no Recommends to fetch)."""
    name = f"mgh-install-{uuid.uuid4().hex[:8]}"
    done = podman("run", "--name", name, "--network", "none", *LIMITS, "-v", f"{dist}:/dist:ro",
                  "-w", "/dist", base, "sh", "-c",
                  f"DEBIAN_FRONTEND=noninteractive {install_line(deb)} 2>&1", check=False,
                  timeout=600)
    try:
        assert done.returncode == 0, f"apt install offline failed:\n{done.stdout}\n{done.stderr}"
        assert "installed, not started" in done.stdout, done.stdout
        image = f"localhost/mgh-reporter-installed:{name}"
        podman("commit", "-q", name, image)
    finally:
        podman("rm", "-f", name, check=False)
    return image


def sh(container: str, script: str, check: bool = True, timeout: float = 300,
       user: str | None = None) -> str:
    extra = ["--user", user] if user else []
    done = podman("exec", *extra, container, "/bin/sh", "-c", script, check=False,
                  timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{script!r} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def test_build_writes_every_artifact_and_their_sums(dist: Path):
    """The packaging page's command (its install half is `.ci/run`'s install step, its build
    half what the `dist` fixture runs) writes every artifact and their sums."""
    block = run_by("packaging.md",
                   "tests/deploy/test_packages.py::test_build_writes_every_artifact_and_their_sums")
    assert block[0].text.strip() == (
        "python -m pip install -e '.[release]' && python packaging/build.py --out dist")
    assert "release" in (ROOT / ".ci" / "run").read_text().split('step "install"')[1].split("\n")[0]
    names = sorted(p.name for p in dist.iterdir())
    assert names == sorted([DEB, OLD_DEB, RPM, PYZ, f"mgh_reporter-{VERSION}-py3-none-any.whl",
                            f"mgh_reporter-{VERSION}.tar.gz", "SHA256SUMS"])
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=dist, capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 5
    field = {key: subprocess.run(["dpkg-deb", "-f", str(dist / DEB), key], capture_output=True,
                                 text=True, check=True).stdout.strip()
             for key in ("Package", "Version", "Architecture", "Depends", "Recommends",
                         "Suggests")}
    assert field == {
        "Package": "mgh-reporter", "Version": f"{PACKAGE_VERSION}-1", "Architecture": "all",
        "Depends": "python3 (>= 3.11) | python3.11 | python3.12 | python3.13 | python3.14",
        "Recommends": "", "Suggests": "libpq5",  # an offline `apt install` fetches nothing
    }
    listing = subprocess.run(["dpkg-deb", "-c", str(dist / DEB)], capture_output=True,
                             text=True, check=True).stdout
    for path, mode in (("./usr/bin/mgh-reporter", "-rwxr-xr-x root/root"),
                       ("./usr/lib/systemd/system/mgh-reporter.service", "-rw-r--r-- root/root"),
                       ("./usr/lib/sysusers.d/mgh-reporter.conf", "-rw-r--r-- root/root"),
                       ("./usr/lib/tmpfiles.d/mgh-reporter.conf", "-rw-r--r-- root/root"),
                       ("./etc/mgh-reporter/config.toml", "-rw-r----- root/mgh-reporter"),
                       ("./usr/share/doc/mgh-reporter/README.md", "-rw-r--r-- root/root"),
                       ("./usr/share/doc/mgh-reporter/CHANGELOG.md", "-rw-r--r-- root/root"),
                       ("./usr/share/man/man1/mgh-reporter.1.gz", "-rw-r--r-- root/root"),
                       ("./usr/share/man/man1/mgh-reporter-dead-letters-drop.1.gz",
                        "-rw-r--r-- root/root"),
                       ("./usr/lib/mgh-reporter/reporter/cli/__init__.py", "-rw-r--r-- root/root"),
                       ("./usr/lib/mgh-reporter/botocore/data/mgh/2017-05-31/service-2.json.gz",
                        "-rw-r--r-- root/root")):
        assert any(line.startswith(mode) and line.endswith(" " + path)
                   for line in listing.splitlines()), (path, mode)
    assert "__pycache__" not in listing  # compiled at install, for the interpreter chosen there
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(dist / DEB)],
                               capture_output=True, check=True).stdout
    assert b"conffiles" in conffiles
    unit = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(dist / DEB)], capture_output=True,
                          check=True).stdout
    assert b"ExecStart=/usr/bin/mgh-reporter --config /etc/mgh-reporter/config.toml run" in unit
    # The pyz runs here too, and says its version; the wheel inside is the same.
    shown = subprocess.run(["python3", str(dist / PYZ), "--version"], capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(dist.parent)})
    assert shown.stdout.strip() == f"mgh-reporter, version {VERSION}", shown.stderr


def test_rpm_metadata(dist: Path):
    """What dnf would act on, read with Debian's rpm: requires, scriptlets, files, config."""
    if shutil.which("rpm") is None:
        raise EngineMissing("rpm is not installed (apt-get install rpm)")

    def query(*args: str) -> str:
        return subprocess.run(["rpm", "-qp", *args, str(dist / RPM)], capture_output=True,
                              text=True, check=True).stdout

    assert query("--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}") == (
        f"mgh-reporter {PACKAGE_VERSION} 1 noarch")
    requires = query("--requires").splitlines()
    assert "(python3 >= 3.11 or python3.11 or python3.12 or python3.13 or python3.14)" in requires
    assert not [r for r in requires if not r.startswith(("(python3", "rpmlib("))], requires
    assert query("--recommends").split() == [] and query("--suggests").split() == ["libpq"]
    scripts = query("--scripts")
    for scriptlet, line in (("preinstall", "ensure_user"), ("postinstall", "use_python"),
                            ("preuninstall", "disable --now"), ("postuninstall", "try-restart")):
        assert re.search(rf"^{scriptlet} scriptlet \(using /bin/sh\):", scripts, re.MULTILINE), (
            scriptlet)
        assert line in scripts
    files = dict(line.rsplit(" ", 1)[::-1] for line in query(
        "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} "
        "%{FILENAMES}\n]").splitlines())
    assert files["/etc/mgh-reporter/config.toml"] == "-rw-r----- root:mgh-reporter cn"
    assert files["/etc/mgh-reporter"].startswith("drwxr-x--- root:mgh-reporter")
    assert files["/var/lib/mgh-reporter"].startswith("drwxrws--- mgh-reporter:mgh-reporter")
    assert files["/usr/bin/mgh-reporter"].startswith("-rwxr-xr-x root:root")
    for path in ("/usr/lib/systemd/system/mgh-reporter.service",
                 "/usr/lib/sysusers.d/mgh-reporter.conf", "/usr/lib/tmpfiles.d/mgh-reporter.conf",
                 "/usr/lib/mgh-reporter/__main__.py", "/usr/lib/mgh-reporter/select-python"):
        assert path in files, path
    assert files["/usr/share/doc/mgh-reporter/README.md"].split()[2] == "d"  # %doc


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_deb_offline_on_bare_debian(suite: str, dist: Path, hub: Emulator):
    """dpkg -i with no network on minbase + python3 (no systemd, no adduser); then init and
    drain; remove keeps config and outbox; purge removes them and keeps the user."""
    image = installed_image(base_image("bare", suite), dist, DEB)
    name = f"mgh-bare-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, "--network", "host", *LIMITS, *_env_args(hub),
           image, "sleep", "infinity")
    try:
        python = SUITES[suite]
        stats = sh(name, "stat -c '%a %U:%G %n' /var/lib/mgh-reporter /var/lib/mgh-reporter-home"
                         " /etc/mgh-reporter "
                         "/etc/mgh-reporter/config.toml; readlink -f /usr/lib/mgh-reporter/python3;"
                         " getent passwd mgh-reporter")
        assert "3770 mgh-reporter:mgh-reporter /var/lib/mgh-reporter\n" in stats  # sticky
        assert "700 mgh-reporter:mgh-reporter /var/lib/mgh-reporter-home" in stats
        assert "750 root:mgh-reporter /etc/mgh-reporter\n" in stats
        assert "640 root:mgh-reporter /etc/mgh-reporter/config.toml" in stats
        assert f"/usr/bin/python{python}\n" in stats
        assert ":/var/lib/mgh-reporter-home:/usr/sbin/nologin" in stats  # never the shared dir
        assert sh(name, "find /usr/lib/mgh-reporter/reporter/cli/__pycache__ -name "
                        f"'__init__.cpython-{python.replace('.', '')}.pyc'").strip()
        stream = f"Bare-{suite}"
        sh(name, f"sed -i 's/^# progress_update_stream = .*/progress_update_stream = "
                 f"\"{stream}\"/' /etc/mgh-reporter/config.toml")
        sh(name, "groupadd tool && useradd -m -g tool -G mgh-reporter tool")
        sh(name, "runuser -u mgh-reporter -- mgh-reporter init")
        for n in range(3):
            sh(name, f"umask 007; mgh-reporter notify t-{n} --status IN_PROGRESS --percent {n}",
               user="tool")
        drained = sh(name, "runuser -u mgh-reporter -- mgh-reporter drain --timeout 60")
        assert set(hub.state.updates()[stream]) == {"t-0", "t-1", "t-2"}, drained
        assert sh(name, "mgh-reporter --version").strip() == f"mgh-reporter, version {VERSION}"
        sh(name, "dpkg -r mgh-reporter")
        left = sh(name, "ls /usr/lib/mgh-reporter /usr/bin/mgh-reporter 2>&1; "
                        "ls /var/lib/mgh-reporter /etc/mgh-reporter", check=False)
        assert "No such file" in left and "outbox.db" in left and "config.toml" in left, left
        sh(name, "dpkg -P mgh-reporter")
        assert sh(name, "ls -d /var/lib/mgh-reporter /etc/mgh-reporter 2>&1; getent passwd "
                        "mgh-reporter", check=False).count("No such file") == 2
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("rmi", "-f", image, check=False)


class Booted:
    """A container booted with systemd from an image with the package installed."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def boot(cls, name: str, image: str, dist: Path) -> Booted:
        """Start `image` with systemd as PID 1 and the release at /dist; wait until it runs
        (the caller removes the container)."""
        podman("run", "-d", "--name", name, "--systemd=always", "--network", "host", *LIMITS,
               "-v", f"{dist}:/dist:ro", image, "/sbin/init")
        box = cls(name)
        try:
            wait_for(lambda: box.sh("systemctl is-system-running --wait; true", check=False)
                     .strip().splitlines()[-1:] in (["running"], ["degraded"]), timeout=120)
        except BaseException:
            podman("rm", "-f", "-t", "0", name, check=False)
            raise
        return box

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> str:
        try:
            return sh(self.name, script, check=check, timeout=timeout)
        except AssertionError as exc:
            journal = sh(self.name, "journalctl -u mgh-reporter -n 40 --no-pager", check=False)
            raise AssertionError(f"{exc}\njournal:\n{journal}") from None

    def prop(self, name: str) -> str:
        return self.sh(f"systemctl show -p {name} --value mgh-reporter").strip()

    def starts(self) -> int:
        """How many times the daemon started (its `started` events in the journal)."""
        return int(self.sh("journalctl -u mgh-reporter -o cat --no-pager | grep -c "
                           "'\"event\": \"started\"' || true").strip() or 0)

    def pending(self) -> int:
        return int(self.sh(
            "/usr/lib/mgh-reporter/python3 -c \"import sqlite3; c = sqlite3.connect("
            "'/var/lib/mgh-reporter/outbox.db', timeout=10); print(c.execute('SELECT (SELECT "
            "count(*) FROM mgh_inbox) + (SELECT count(*) FROM mgh_rows WHERE state = "
            "\\'pending\\')').fetchone()[0])\"").strip())


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_deb_under_systemd(suite: str, dist: Path, hub: Emulator):
    """Installed (offline) at a lower version: nothing enabled; enable --now delivers a tool
    user's rows; reload; an upgrade with rows pending restarts the running service once and
    keeps the rows and the edited config; remove stops it and keeps the outbox; the outbox a
    tool writes meanwhile is delivered after installing again; purge removes config and state."""
    image = installed_image(base_image("systemd", suite), dist, OLD_DEB)
    name = f"mgh-pkg-{uuid.uuid4().hex[:8]}"
    stream = f"Packaged-{suite}"
    box = Booted.boot(name, image, dist)
    try:
        assert box.sh("systemctl is-enabled mgh-reporter", check=False).strip() == "disabled"
        assert box.prop("ActiveState") == "inactive"
        assert "argv[]=/usr/bin/mgh-reporter --config /etc/mgh-reporter/config.toml run" in (
            box.prop("ExecStart"))
        box.sh("mkdir -p /etc/systemd/system/mgh-reporter.service.d && cat > "
               "/etc/systemd/system/mgh-reporter.service.d/test.conf <<'EOF'\n[Service]\n"
               + _env_lines(hub) + "EOF")
        box.sh(f"sed -i -e 's/^# progress_update_stream = .*/progress_update_stream = "
               f"\"{stream}\"/' -e 's/^interval_seconds = .*/interval_seconds = 1.0/' "
               "/etc/mgh-reporter/config.toml")
        box.sh("runuser -u mgh-reporter -- mgh-reporter init")
        box.sh("systemctl daemon-reload && systemctl enable --now mgh-reporter")
        assert box.prop("ActiveState") == "active"
        exe = box.sh(f"readlink /proc/{box.prop('MainPID')}/exe").strip()
        assert exe == f"/usr/bin/python{SUITES[suite]}", exe
        box.sh("useradd -m -G mgh-reporter tool")

        def notify(task: str, status: str = "IN_PROGRESS") -> None:
            box.sh(f"runuser -u tool -- sh -c 'umask 007; mgh-reporter notify {task} "
                   f"--status {status}'")

        notify("before-upgrade")
        wait_for(lambda: "before-upgrade" in hub.state.updates().get(stream, {}), timeout=60)
        box.sh("systemctl reload mgh-reporter")
        wait_for(lambda: '"event": "reloaded"' in box.sh(
            "journalctl -u mgh-reporter -o cat --no-pager"), timeout=30)

        # The upgrade, with rows the Hub has not taken yet (an outage).
        hub.state.faults.update(outage=True)
        notify("pending-1")
        notify("pending-2")
        before = box.starts()
        pid = box.prop("MainPID")
        # 0.2.0 shipped another config.toml and the test edited it: dpkg would ask; unattended
        # upgrades keep the edited one, as --force-confold says
        upgraded = box.sh(f"dpkg --force-confold -i /dist/{DEB} 2>&1")
        assert "installed, not started" not in upgraded, upgraded
        assert box.prop("ActiveState") == "active" and box.prop("MainPID") != pid
        assert box.sh("mgh-reporter --version").strip() == f"mgh-reporter, version {VERSION}"
        assert f'progress_update_stream = "{stream}"' in box.sh(
            "cat /etc/mgh-reporter/config.toml")
        assert box.pending() == 2
        hub.state.faults.update(outage=False)
        wait_for(lambda: box.pending() == 0, timeout=90)
        assert {"pending-1", "pending-2"} <= set(hub.state.updates()[stream])
        assert box.starts() == before + 1  # restarted once
        # 0.2.0 made the shared directory the service user's home: moved, and made sticky
        moved = box.sh("getent passwd mgh-reporter; stat -c '%a' /var/lib/mgh-reporter")
        assert ":/var/lib/mgh-reporter-home:" in moved and "\n3770" in moved, moved
        # 0.2.0's outbox lacked this version's tables: the new daemon migrated it itself
        assert '"event": "outbox_upgraded"' in box.sh("journalctl -u mgh-reporter -o cat"
                                                      " --no-pager")

        # Remove: stopped, outbox and config kept; a tool INSERTs meanwhile, as tools do.
        box.sh("dpkg -r mgh-reporter")
        assert box.prop("ActiveState") in ("inactive", "")
        kept = box.sh("ls /var/lib/mgh-reporter /etc/mgh-reporter; ls /usr/lib/mgh-reporter "
                      "2>&1", check=False)
        assert "outbox.db" in kept and "config.toml" in kept and "No such file" in kept, kept
        box.sh("runuser -u tool -- python3 -c \"import sqlite3; c = sqlite3.connect("
               "'/var/lib/mgh-reporter/outbox.db'); c.execute(\\\"INSERT INTO outbox (kind, "
               "migration_task_name, status) VALUES ('task_state', 'while-removed', "
               "'COMPLETED')\\\"); c.commit()\"")
        box.sh(f"dpkg -i /dist/{DEB}")
        box.sh("systemctl start mgh-reporter")
        wait_for(lambda: "while-removed" in hub.state.updates().get(stream, {}), timeout=60)
        assert {"before-upgrade", "pending-1"} <= set(hub.state.updates()[stream])

        box.sh("systemctl stop mgh-reporter")
        assert box.prop("Result") == "success"
        box.sh("dpkg -P mgh-reporter")
        gone = box.sh("ls -d /var/lib/mgh-reporter /etc/mgh-reporter 2>&1; systemctl "
                      "is-enabled mgh-reporter 2>&1", check=False)
        assert "cannot access '/var/lib/mgh-reporter'" in gone, gone
        assert "cannot access '/etc/mgh-reporter'" in gone, gone
        assert "enabled" not in gone.replace("is-enabled", ""), gone
    finally:
        hub.state.faults.update(outage=False)
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("rmi", "-f", image, check=False)


@pytest.mark.parametrize("suite", list(SUITES))
def test_pyz_drains_and_writes_only_its_cache(suite: str, dist: Path, hub: Emulator):
    """`python3 mgh-reporter-<v>.pyz` on Debian's Python 3.11, 3.13 and 3.14 (sid), as a plain
    user: init, notify, drain end to end; nothing written but the cache it names and the
    outbox."""
    name = f"mgh-pyz-{uuid.uuid4().hex[:8]}"
    stream = f"Pyz-{suite}"
    podman("run", "-d", "--name", name, "--network", "host", *LIMITS, *_env_args(hub),
           "-v", f"{dist}:/dist:ro", base_image("bare", suite), "sleep", "infinity")
    try:
        assert sh(name, "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'"
                  ).strip() == SUITES[suite]
        sh(name, "useradd -m op && mkdir /work && chown op /work && touch /tmp/marker && "
                 "sleep 1.1")
        config = (f'[outbox]\npath = "/work/outbox.db"\n[hub]\nprogress_update_stream = '
                  f'"{stream}"\n[log]\nformat = "json"\n')
        sh(name, f"cat > /work/config.toml <<'EOF'\n{config}EOF\nchown op /work/config.toml")
        app = f"python3 /dist/{PYZ} --config /work/config.toml"
        sh(name, f"cd /work && {app} init", user="op")
        for n in range(3):
            sh(name, f"cd /work && {app} notify z-{n} --status COMPLETED", user="op")
        sh(name, f"cd /work && {app} drain --timeout 60", user="op")
        assert set(hub.state.updates()[stream]) == {"z-0", "z-1", "z-2"}
        if suite == "sid":  # docs/install.md's line, with this container's python3
            line = run_by("install.md", "tests/deploy/test_packages.py::"
                          "test_pyz_drains_and_writes_only_its_cache")[0].text.split("  #")[0]
            assert line.strip() == f"python3.11 {PYZ} demo", line
            demo = sh(name, f"cd /work && {line.replace('python3.11 ', 'python3 /dist/')}",
                      user="op", timeout=120)
            assert "0 pending" in demo, demo
        written = sh(name, "find / -xdev -newer /tmp/marker -not -type d "
                           "-not -path '/proc/*' -not -path '/sys/*' -not -path '/dev/*'")
        outside = [path for path in written.split()
                   if not path.startswith(("/home/op/.cache/mgh-reporter/", "/work/"))]
        assert not outside, outside
        assert "/home/op/.cache/mgh-reporter/" in written
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def readme_quick_start() -> list[str]:
    """The shell lines of the README's Quick start, as a user would paste them."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    start = section.index("```sh") + 5
    block = section[start:section.index("```", start)]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_quick_start_as_written(dist: Path, hub: Emulator):
    """The README's Quick start, line by line, as root on a fresh Debian 13 booted with
    systemd and the release in the current directory: nothing downloaded; the `editor` line
    is a person's edit (here: setting the stream); credentials come from the host's
    environment (here: the emulator's, in the shell and in a unit drop-in). A tool's INSERT
    is then delivered and `status` says it is delivering."""
    lines = readme_quick_start()
    assert lines[0] == f"apt install ./{DEB}", lines  # the version it names is the release's
    test = "tests/deploy/test_packages.py::test_readme_quick_start_as_written"
    assert run_by("getting-started.md", test)[0].text == run_by("README.md", test)[0].text
    assert any(line.startswith("editor /etc/mgh-reporter/config.toml") for line in lines)
    image = base_image("systemd", "trixie")
    name = f"mgh-quick-{uuid.uuid4().hex[:8]}"
    stream = "QuickStart"
    box = Booted.boot(name, image, dist)
    try:
        box.sh("cat > /usr/local/bin/editor <<'EOF'\n#!/bin/sh\n"
               f"sed -i 's/^# progress_update_stream = .*/progress_update_stream = \"{stream}\"/'"
               " \"$1\"\nEOF\nchmod 755 /usr/local/bin/editor")
        box.sh("mkdir -p /etc/systemd/system/mgh-reporter.service.d && cat > "
               "/etc/systemd/system/mgh-reporter.service.d/credentials.conf <<'EOF'\n"
               "[Service]\n" + _env_lines(hub) + "EOF")
        exports = "".join(f"export {k}='{v}'; "
                          for k, v in {**CREDENTIALS, **hub.environment()}.items())
        outputs = [box.sh(f"cd /dist && {exports}{line}", timeout=300) for line in lines]
        assert f'progress_update_stream = "{stream}"' in box.sh(
            "cat /etc/mgh-reporter/config.toml")
        assert box.prop("ActiveState") == "active"
        assert box.sh("systemctl is-enabled mgh-reporter").strip() == "enabled"
        # Right after start, nothing written: ready (or delivering once the Hub answered)
        assert "ready" in outputs[-1] or "delivering" in outputs[-1], outputs[-1]
        box.sh("useradd -m -G mgh-reporter tool")
        box.sh("runuser -u tool -- sh -c 'umask 007; mgh-reporter notify vm-042 "
               "--status IN_PROGRESS --percent 40'")
        wait_for(lambda: "vm-042" in hub.state.updates().get(stream, {}), timeout=60)
        assert "delivering" in box.sh("mgh-reporter status")
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
