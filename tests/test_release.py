"""The release pieces that need no container: how the packages choose their interpreter
(packaging/select-python, with emulator interpreters on PATH), what an old python3 says, and
the packaged config and unit that packaging/build.py derives from the repository's."""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from reporter.config import ConfigError, parse

from .helpers import ROOT, build_module

SELECT = ROOT / "packaging" / "select-python"


def interpreters(directory: Path, versions: dict[str, tuple[int, int]]) -> Path:
    """Emulator interpreters: each answers select-python's version check as its version would."""
    directory.mkdir()
    for name, (major, minor) in versions.items():
        stub = directory / name
        old = (major, minor) < (3, 11)
        stub.write_text(f"#!/bin/sh\nexit {1 if old else 0}\n")
        stub.chmod(0o755)
    for tool in ("sh", "dirname"):
        found = shutil.which(tool)
        assert found
        (directory / tool).symlink_to(found)
    return directory


def select(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", str(SELECT)], capture_output=True, text=True,
                          env={"PATH": str(path)})


def test_the_distributions_python3_first_when_it_is_new_enough(tmp_path: Path):
    bin_dir = interpreters(tmp_path / "bin", {"python3": (3, 11), "python3.13": (3, 13)})
    chosen = select(bin_dir)
    assert chosen.returncode == 0 and chosen.stdout.strip() == str(bin_dir / "python3")


def test_an_old_python3_gives_way_to_the_newest_versioned_one(tmp_path: Path):
    """RHEL 9 / Amazon Linux 2023: python3 is 3.9, python3.11 and python3.12 installed."""
    bin_dir = interpreters(tmp_path / "bin", {"python3": (3, 9), "python3.11": (3, 11),
                                              "python3.12": (3, 12)})
    chosen = select(bin_dir)
    assert chosen.returncode == 0 and chosen.stdout.strip() == str(bin_dir / "python3.12")


def test_no_interpreter_new_enough_says_what_to_install(tmp_path: Path):
    bin_dir = interpreters(tmp_path / "bin", {"python3": (3, 9), "python3.6": (3, 6)})
    chosen = select(bin_dir)
    assert chosen.returncode == 1 and chosen.stdout == ""
    assert "no Python 3.11 or newer" in chosen.stderr
    assert "dnf install python3.11" in chosen.stderr


def test_an_old_interpreter_is_told_the_version_it_needs():
    """The one-file app started by RHEL 8/9's python3: a sentence, not a traceback."""
    old = sorted(glob.glob("/root/.pyenv/versions/3.[6-9].*/bin/python3.[6-9]")
                 + glob.glob("/root/.pyenv/versions/3.10.*/bin/python3.10"))
    old += [p for p in (shutil.which(f"python3.{n}") for n in range(6, 11))
            if p and "/shims/" not in p]
    if not old:
        pytest.skip("no Python older than 3.11 on this machine to run the check with")
    for python in old:
        done = subprocess.run([python, "-c", "import reporter"], capture_output=True, text=True,
                              cwd=ROOT, env={"PATH": os.defpath, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 1, (python, done.stderr)
        assert done.stderr.startswith("mgh-reporter needs Python 3.11 or newer; this is "
                                      "Python 3."), (python, done.stderr)
        assert "Traceback" not in done.stderr


def test_the_packaged_config_names_no_stream_and_is_otherwise_the_example():
    build = build_module()
    text = build.packaged_config()
    data = tomllib.loads(text)
    with pytest.raises(ConfigError, match="progress_update_stream is required"):
        parse(data)
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    example["hub"].pop("progress_update_stream")
    assert data == example


def test_the_packaged_unit_runs_the_launcher():
    unit = build_module().packaged_unit()
    assert "ExecStart=/usr/bin/mgh-reporter --config /etc/mgh-reporter/config.toml run" in unit
    assert "/opt/mgh-reporter" not in unit
    assert "Environment=SHIV_ROOT=%C/mgh-reporter" in unit and "CacheDirectory=mgh-reporter" in unit


def test_the_version_lives_in_pyproject_only():
    import reporter

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert reporter.__version__ == project["version"]
    build = build_module()
    assert build.project()[0] == project["version"]
    if build.is_release(project["version"]):
        assert build.changelog_date(project["version"])  # a dated CHANGELOG section
    else:  # a .dev build after a release: its changes are under [Unreleased]
        assert build.changelog_date(project["version"]) == ""
    assert sys.version_info >= (3, 11)


def test_a_commit_after_a_release_never_carries_the_release_version():
    """Right after a release pyproject moves to the next .dev version: HEAD is newer than the
    CHANGELOG's newest release and older than the release it leads to."""
    from packaging.version import Version

    version = Version(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])
    released = re.findall(r"^## \[(\d[^\]]*)\] - \d{4}-\d{2}-\d{2}",
                          (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    newest = max(Version(v) for v in released)
    assert version > newest or (version == newest and not version.is_devrelease)
    if version.is_devrelease:
        assert version < Version(version.base_version)


ORDERED = ["0.2.0", "0.2.1.dev0", "0.3.0.dev0", "0.3.0.dev1", "0.3.0rc1.dev0", "0.3.0rc1",
           "0.3.0rc2", "0.3.0", "0.3.0.post1.dev0", "0.3.0.post1", "0.3.1.dev0", "1.0.0"]


def test_package_versions_map_pep440_to_tilde_forms():
    build = build_module()
    assert build.package_version("0.3.0.dev0") == "0.3.0~dev0"
    assert build.package_version("0.3.0rc1.dev2") == "0.3.0~rc1~dev2"
    assert build.package_version("0.3.0.post1") == "0.3.0+post1"
    assert build.package_version("0.2.0") == "0.2.0"
    for bad, rule in (("0.3.0a1", "alpha and beta"), ("0.3.0-dev", "normalised PEP 440"),
                      ("v1", "normalised PEP 440"), ("0.3.0.dev", "normalised PEP 440")):
        with pytest.raises(build.BuildError, match=rule):
            build.package_version(bad)


@pytest.mark.parametrize("tool", ["dpkg", "rpm"])
def test_dpkg_and_rpm_order_the_package_versions_as_pep440_does(tool: str):
    """A dev build upgrades the release before it, and the final release upgrades the dev
    build, as the package managers themselves compare them."""
    from packaging.version import Version

    if shutil.which(tool) is None:  # the pythons step's containers have python3 alone
        pytest.skip(f"{tool} is not installed here: the release build's own checks (the main"
                    " run, whose tools step installs it) compare with the real tool")
    assert sorted(ORDERED, key=Version) == ORDERED
    build = build_module()
    for older, newer in itertools.pairwise(ORDERED):
        a, b = build.package_version(older), build.package_version(newer)
        if tool == "dpkg":
            done = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False)
            assert done.returncode == 0, (a, b)
        else:
            out = subprocess.run(["rpm", "--eval", f'%{{lua: print(rpm.vercmp("{a}", "{b}"))}}'],
                                 capture_output=True, text=True, check=True).stdout.strip()
            assert out == "-1", (a, b, out)


def test_every_package_of_the_source_tree_is_in_the_distribution():
    """The wheel (and so the deb, the rpm and the .pyz built from it) lists its packages
    explicitly: a subpackage left out would pass every test of the editable install and break
    every installed host."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = {str(init.parent.relative_to(ROOT)).replace("/", ".")
             for init in (ROOT / "reporter").rglob("__init__.py")}
    assert listed == found


def test_manual_pages_cover_every_command_with_whole_names(tmp_path: Path):
    """packaging/manpages.py writes mgh-reporter.1 and a page per command (gzipped, with no
    time in the header, so builds are reproducible); NAME lines are not cut short."""
    import gzip

    import click

    from reporter.cli import cli

    spec = importlib.util.spec_from_file_location("mgh_man", ROOT / "packaging" / "manpages.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pages = {p.name for p in module.write_pages(tmp_path / "a", "9.9.9", "2026-01-02")}
    expected = {"mgh-reporter.1.gz"}
    for name, command in cli.commands.items():
        expected.add(f"mgh-reporter-{name}.1.gz")
        if isinstance(command, click.Group):
            expected |= {f"mgh-reporter-{name}-{sub}.1.gz" for sub in command.commands}
    assert pages == expected
    drain = gzip.decompress((tmp_path / "a" / "mgh-reporter-drain.1.gz").read_bytes()).decode()
    assert '"2026-01-02" "9.9.9"' in drain
    assert "retrying transient errors, then exit (0/1/3/4/5)." in drain.split(".SH SYNOPSIS")[0]
    again = {p.name: p.read_bytes() for p in module.write_pages(tmp_path / "b", "9.9.9",
                                                                "2026-01-02")}
    assert all((tmp_path / "a" / n).read_bytes() == b for n, b in again.items())
