"""Release artifacts in one command: the wheel and sdist, a one-file app (.pyz, shiv) and the
.deb and .rpm (nfpm), all from one wheelhouse of pure-Python wheels, with SHA256SUMS.

    python packaging/build.py --out dist                    # fills build/wheelhouse (index)
    python packaging/build.py --out dist --wheelhouse DIR   # offline: only the wheels in DIR

Needs what `pip install -e '.[release]'` installs (build, setuptools, shiv, nfpm), found beside
this interpreter even when its bin directory is not on PATH. The version is pyproject's; the
CHANGELOG must have a dated section for it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "packaging"
NAME = "mgh-reporter"
APP = "/usr/lib/mgh-reporter"
# The interpreters the artifacts serve: resolved for the oldest, checked for every newer one.
PYTHONS = ("3.11", "3.12", "3.13", "3.14")
# The deb names the distribution's python3 when it is new enough, else a versioned one; the
# rpm says the same with a rich dependency (rpm >= 4.13: RHEL 8+, Amazon Linux 2023).
INTERPRETERS = ("python3.11", "python3.12", "python3.13", "python3.14")
DEB_PYTHON = " | ".join(("python3 (>= 3.11)", *INTERPRETERS))
RPM_PYTHON = "(" + " or ".join(("python3 >= 3.11", *INTERPRETERS)) + ")"
VENV_EXEC = "/opt/mgh-reporter/bin/mgh-reporter"  # the unit as the README's venv route has it


class BuildError(Exception):
    """A step failed; the message says which and why."""


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run one step, show it, and fail with its output when it fails."""
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:4])} ... exited {done.returncode}:\n"
                         f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def project() -> tuple[str, str]:
    """(version, requires-python floor) from pyproject.toml: the one place the version is."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floor = re.fullmatch(r">=\s*(3\.\d+)", data["requires-python"])
    if floor is None or floor.group(1) != PYTHONS[0]:
        raise BuildError(f"requires-python is {data['requires-python']!r}; the artifacts are "
                         f"resolved for Python {PYTHONS[0]} and newer")
    return str(data["version"]), floor.group(1)


PEP440 = re.compile(r"(?P<release>\d+(?:\.\d+)*)(?:(?P<pre>a|b|rc)(?P<pre_n>\d+))?"
                    r"(?:\.post(?P<post>\d+))?(?:\.dev(?P<dev>\d+))?")


def package_version(version: str) -> str:
    """pyproject's PEP 440 version in the form Debian and RPM order the same way: a pre-release
    or dev part after a tilde, which sorts before the release (`0.3.0.dev0` → `0.3.0~dev0`,
    `0.3.0rc1` → `0.3.0~rc1`, `0.3.0rc1.dev2` → `0.3.0~rc1~dev2`), a post-release after a plus
    (`0.3.0.post1` → `0.3.0+post1`). Only normalised versions; no alpha or beta, whose
    `~a1`/`~b1` would sort before a `~dev0` of the same release (PEP 440 orders them after)."""
    found = PEP440.fullmatch(version)
    if found is None:
        raise BuildError(f"version {version!r} in pyproject.toml is not a normalised PEP 440 "
                         "version (N.N.N, then optionally rcN, .postN, .devN)")
    if found["pre"] in ("a", "b"):
        raise BuildError(f"version {version!r}: alpha and beta releases would sort before the "
                         "release's .dev builds in dpkg and rpm; use .devN or rcN")
    parts = [found["release"]]
    if found["pre"]:
        parts.append(f"~{found['pre']}{found['pre_n']}")
    if found["post"]:
        parts.append(f"+post{found['post']}")
    if found["dev"]:
        parts.append(f"~dev{found['dev']}")
    return "".join(parts)


def is_release(version: str) -> bool:
    """A release (or release candidate) has a CHANGELOG section; a .dev build does not."""
    return ".dev" not in version


def changelog_date(version: str) -> str:
    """The date of the CHANGELOG's section for this version (a release has one); a .dev build
    needs the `[Unreleased]` section its changes are listed under, and has no date of its
    own (the commit's is used)."""
    if not is_release(version):
        if not re.search(r"^## \[Unreleased\]\s*$", (ROOT / "CHANGELOG.md").read_text(),
                         re.MULTILINE):
            raise BuildError(f"version {version} is a .dev build: CHANGELOG.md needs an "
                             "'## [Unreleased]' section listing what it holds")
        return ""
    found = re.search(rf"^## \[{re.escape(version)}\] - (\d{{4}}-\d{{2}}-\d{{2}})\s*$",
                      (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    if found is None:
        raise BuildError(f"CHANGELOG.md has no section '## [{version}] - YYYY-MM-DD' for the "
                         "version in pyproject.toml")
    return found.group(1)


def tool(name: str) -> str:
    """A console script of the release extra: beside this interpreter first (a venv that is
    not on PATH), then the scripts directory of its scheme, then PATH."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BuildError(f"{name} not found beside {sys.executable} or on PATH: "
                         "pip install -e '.[release]'")
    return found


def quiet_pip_env(offline: bool) -> dict[str, str]:
    """pip's environment: offline steps read no config file and no PIP_* variable, so only
    the wheelhouse is used (never an index or a find-links directory of this machine)."""
    env = dict(os.environ)
    if offline:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def python_artifacts(out: Path, version: str, epoch: str) -> tuple[Path, Path]:
    """sdist, then the wheel built from it (so the sdist is proven complete); no isolation, so
    no index is needed for the build backend."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    with tempfile.TemporaryDirectory(prefix="mgh-build-") as tmp:
        run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp, str(ROOT)],
            env=env)
        made = {p.name: p for p in Path(tmp).iterdir()}
        wheel_name = f"mgh_reporter-{version}-py3-none-any.whl"
        sdist_name = f"mgh_reporter-{version}.tar.gz"
        if set(made) != {wheel_name, sdist_name}:
            raise BuildError(f"python -m build made {sorted(made)}, expected {wheel_name} and "
                             f"{sdist_name}")
        for item in made.values():
            shutil.copy2(item, out / item.name)
    # setuptools' build directory is left in the checkout; it must never feed the next build.
    shutil.rmtree(ROOT / "build" / "lib", ignore_errors=True)
    return out / wheel_name, out / sdist_name


def fill_wheelhouse(wheel: Path, wheelhouse: Path) -> None:
    """Every dependency as a pure-Python wheel for each supported Python: one build then serves
    every CPU and every Python >= 3.11. `pip wheel` first (it turns a dependency published
    only as an sdist, such as sdnotify, into a wheel), then a download per Python, restricted
    to wheels for any platform."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    env = quiet_pip_env(offline=False)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheelhouse),
         "--find-links", str(wheelhouse), str(wheel)], env=env)
    for python in PYTHONS:
        try:
            run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheelhouse),
                 "--find-links", str(wheelhouse), "--only-binary", ":all:", "--platform", "any",
                 "--python-version", python, str(wheel)], env=env)
        except BuildError as exc:
            raise BuildError(f"{exc}\nEvery dependency must exist as a pure-Python wheel "
                             "(py3-none-any) for the packages to serve every CPU and Python "
                             f"{PYTHONS[0]}+.") from None


def _target_args(python: str, wheelhouse: Path, wheel: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheelhouse), "--find-links", str(wheel.parent),
            "--only-binary", ":all:", "--platform", "any", "--python-version", python]


def stage_site(wheel: Path, wheelhouse: Path, site: Path) -> list[str]:
    """Install the app and its dependencies into `site` as for the oldest Python, then check
    that no newer Python needs more (a dependency behind a python_version marker): what it
    would need beyond the oldest's set is added. Returns the name==version list."""
    env = quiet_pip_env(offline=True)
    requirement = f"mgh-reporter=={wheel.name.split('-')[1]}"
    run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), "--no-compile",
         "--no-warn-script-location", *_target_args(PYTHONS[0], wheelhouse, wheel),
         requirement], env=env)
    installed = _report(PYTHONS[0], wheelhouse, wheel, requirement, env)
    for python in PYTHONS[1:]:
        extra = _report(python, wheelhouse, wheel, requirement, env) - installed
        if extra:
            run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site),
                 "--no-compile", "--no-deps", *_target_args(python, wheelhouse, wheel),
                 *sorted(extra)], env=env)
            installed |= extra
    # Console scripts pip wrote for the build interpreter; /usr/bin/mgh-reporter replaces them.
    shutil.rmtree(site / "bin", ignore_errors=True)
    return sorted(installed)


def _report(python: str, wheelhouse: Path, wheel: Path, requirement: str,
            env: dict[str, str]) -> set[str]:
    """What pip would install for `python` (a dry run), as name==version."""
    with tempfile.TemporaryDirectory(prefix="mgh-report-") as tmp:
        report = Path(tmp) / "report.json"
        run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
             "--target", str(Path(tmp) / "t"), "--report", str(report),
             *_target_args(python, wheelhouse, wheel), requirement], env=env)
        items = json.loads(report.read_text())["install"]
    return {f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items}


def build_pyz(site: Path, out: Path, version: str, epoch: str) -> Path:
    """One file with everything inside, for any python3.11+: shiv extracts it once into a cache
    (~/.cache/mgh-reporter, or $SHIV_ROOT, which the unit and the image set) and runs from
    there; byte code is compiled there by the interpreter that runs it."""
    pyz = out / f"{NAME}-{version}.pyz"
    run([tool("shiv"), "--site-packages", str(site), "--entry-point", "reporter.cli:main",
         "--output-file", str(pyz), "--python", "/usr/bin/env python3", "--compressed",
         "--compile-pyc", "--reproducible", "--root", "~/.cache/mgh-reporter"],
        env={**quiet_pip_env(offline=True), "SOURCE_DATE_EPOCH": epoch})
    guard_main(pyz)
    return pyz


def guard_main(pyz: Path) -> None:
    """Put packaging/pyz_guard.py before shiv's own __main__.py in the archive (same order,
    dates and compression for every other member: the build stays reproducible): the cache it
    extracts into is checked before anything is imported from it."""
    raw = pyz.read_bytes()
    with zipfile.ZipFile(io.BytesIO(raw)) as old:
        members = [(info, old.read(info)) for info in old.infolist()]
        start = raw.index(b"PK\x03\x04")  # the shebang line comes first
    guard = (HERE / "pyz_guard.py").read_text()
    out = io.BytesIO()
    out.write(raw[:start])
    with zipfile.ZipFile(out, "w") as new:
        for info, data in members:
            if info.filename == "__main__.py":
                data = (guard + "\n\n# shiv's bootstrap\n" + data.decode()).encode()
            new.writestr(info, data, compress_type=info.compress_type)
    pyz.write_bytes(out.getvalue())


def _script(hook: Path) -> str:
    """A maintainer script: the shared functions, then the hook's own lines."""
    common = (HERE / "scripts" / "common.sh").read_text()
    sysusers = (ROOT / "systemd" / "mgh-reporter.sysusers.conf").read_text().strip()
    return "#!/bin/sh\n" + common.replace("@SYSUSERS@", sysusers) + "\n" + hook.read_text()


def packaged_config() -> str:
    """The conffile: the documented example with the stream left for the operator to name (a
    fresh install must not look configured)."""
    text = (ROOT / "config.example.toml").read_text()
    stream = re.compile(r'^progress_update_stream = "[^"]*"$', re.MULTILINE)
    if len(stream.findall(text)) != 1:
        raise BuildError("config.example.toml: expected one progress_update_stream line")
    return stream.sub('# progress_update_stream = "MyMigrationTool"   # required: name it', text)


def packaged_unit() -> str:
    """The unit of systemd/, running /usr/bin/mgh-reporter instead of the venv route's path."""
    unit = (ROOT / "systemd" / "mgh-reporter.service").read_text()
    if unit.count(VENV_EXEC) != 1:
        raise BuildError(f"systemd/mgh-reporter.service: expected one {VENV_EXEC}")
    return unit.replace(VENV_EXEC, "/usr/bin/mgh-reporter")


def stage_packages(site: Path, work: Path, version: str, epoch: str) -> Path:
    """Everything nfpm puts into the deb and rpm, in a staging directory (the manual pages
    generated from the staged app's own help texts)."""
    stage = work / "stage"
    app = stage / "app"
    shutil.copytree(site, app)
    shutil.copy(HERE / "app-main.py", app / "__main__.py")
    shutil.copy(HERE / "select-python", app / "select-python")
    (app / "select-python").chmod(0o755)
    files = {
        "launcher": (HERE / "launcher").read_text(),
        "mgh-reporter.service": packaged_unit(),
        "config.toml": packaged_config(),
        "copyright": (HERE / "copyright").read_text(),
    }
    for name, text in files.items():
        (stage / name).write_text(text)
    for packager, hooks in (("deb", ("preinst", "postinst", "prerm", "postrm")),
                            ("rpm", ("pre", "post", "preun", "postun"))):
        (stage / packager).mkdir()
        for hook in hooks:
            (stage / packager / hook).write_text(_script(HERE / packager / hook))
    date = time.strftime("%Y-%m-%d", time.gmtime(int(epoch)))
    run([sys.executable, str(HERE / "manpages.py"), "--out", str(stage / "man"),
         "--version", version, "--date", date], env={**os.environ, "PYTHONPATH": str(site)})
    return stage


def nfpm_config(stage: Path, version: str, epoch: str) -> dict[str, object]:
    """nfpm's package description (written as JSON, which is YAML)."""
    def deb_scripts(kind: str) -> dict[str, str]:
        names = {"preinstall": "preinst", "postinstall": "postinst", "preremove": "prerm",
                 "postremove": "postrm"} if kind == "deb" else {
            "preinstall": "pre", "postinstall": "post", "preremove": "preun",
            "postremove": "postun"}
        return {key: str(stage / kind / hook) for key, hook in names.items()}

    root_file = {"owner": "root", "group": "root"}
    # Docs: plain files in the deb (nfpm's `doc` type is rpm's %doc only), %doc in the rpm.
    docs = [{"src": str(ROOT / doc), "dst": f"/usr/share/doc/{NAME}/{doc}",
             "packager": packager, **({"type": "doc"} if packager == "rpm" else {}),
             "file_info": {**root_file, "mode": 0o644}}
            for doc in ("README.md", "CHANGELOG.md", "config.example.toml")
            for packager in ("deb", "rpm")]
    return {
        "name": NAME,
        "arch": "all",
        "platform": "linux",
        "version": package_version(version),
        "version_schema": "none",  # our own mapping: nfpm's semver would drop the .devN
        "release": "1",
        "section": "admin",
        "priority": "optional",
        "maintainer": "mgh-reporter maintainers <mgh-reporter@users.noreply.github.com>",
        "description": (
            "Durable outbox relay from migration tools to AWS Migration Hub\n"
            "Migration tools INSERT progress rows into a local SQLite (or PostgreSQL) outbox;\n"
            "this daemon publishes them to AWS Migration Hub in the account's home Region,\n"
            "with durable retry and backoff, in order, never losing a row."
        ),
        "vendor": "mgh-reporter",
        "homepage": "https://github.com/mgh-reporter/mgh-reporter",
        "license": "Apache-2.0",
        "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch))),
        "depends": [DEB_PYTHON],
        # suggested, not recommended: apt and dnf install recommendations by default, and an
        # offline host (no repository) would then refuse the whole install; libpq is named
        # where a PostgreSQL outbox is set up
        "suggests": ["libpq5"],
        "contents": [
            {"src": str(stage / "app"), "dst": APP, "type": "tree",
             "file_info": {**root_file}},
            {"src": str(stage / "launcher"), "dst": "/usr/bin/mgh-reporter",
             "file_info": {**root_file, "mode": 0o755}},
            {"src": str(stage / "mgh-reporter.service"),
             "dst": "/usr/lib/systemd/system/mgh-reporter.service",
             "file_info": {**root_file, "mode": 0o644}},
            {"src": str(ROOT / "systemd" / "mgh-reporter.sysusers.conf"),
             "dst": "/usr/lib/sysusers.d/mgh-reporter.conf",
             "file_info": {**root_file, "mode": 0o644}},
            {"src": str(ROOT / "systemd" / "mgh-reporter.tmpfiles.conf"),
             "dst": "/usr/lib/tmpfiles.d/mgh-reporter.conf",
             "file_info": {**root_file, "mode": 0o644}},
            {"dst": "/etc/mgh-reporter", "type": "dir",
             "file_info": {"owner": "root", "group": NAME, "mode": 0o750}},
            {"src": str(stage / "config.toml"), "dst": "/etc/mgh-reporter/config.toml",
             "type": "config|noreplace",
             "file_info": {"owner": "root", "group": NAME, "mode": 0o640}},
            *docs,
            *[{"src": str(page), "dst": f"/usr/share/man/man1/{page.name}",
               "file_info": {**root_file, "mode": 0o644}}
              for page in sorted((stage / "man").glob("*.1.gz"))],
            {"src": str(stage / "copyright"), "dst": f"/usr/share/doc/{NAME}/copyright",
             "packager": "deb", "file_info": {**root_file, "mode": 0o644}},
            # rpm owns its state directory (deb: made by postinst, so dpkg never tries to
            # remove a directory holding the outbox).
            {"dst": "/var/lib/mgh-reporter", "type": "dir", "packager": "rpm",
             "file_info": {"owner": NAME, "group": NAME, "mode": 0o2770}},
        ],
        "overrides": {
            "deb": {"scripts": deb_scripts("deb")},
            "rpm": {"depends": [RPM_PYTHON], "suggests": ["libpq"],
                    "scripts": deb_scripts("rpm")},
        },
        "rpm": {"group": "System Environment/Daemons", "summary":
                "Durable outbox relay from migration tools to AWS Migration Hub"},
    }


def build_packages(stage: Path, out: Path, version: str, epoch: str) -> tuple[Path, Path]:
    config = stage / "nfpm.yaml"
    config.write_text(json.dumps(nfpm_config(stage, version, epoch), indent=1))
    deb = out / f"{NAME}_{package_version(version)}_all.deb"
    rpm = out / f"{NAME}-{package_version(version)}-1.noarch.rpm"
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    for packager, target in (("deb", deb), ("rpm", rpm)):
        run([tool("nfpm"), "package", "--config", str(config), "--packager", packager,
             "--target", str(target)], env=env)
    return deb, rpm


def write_sums(out: Path, artifacts: list[Path]) -> Path:
    """SHA256SUMS in the format `sha256sum -c` reads."""
    lines = []
    for item in artifacts:
        digest = hashlib.sha256(item.read_bytes()).hexdigest()
        lines.append(f"{digest}  {item.name}\n")
    sums = out / "SHA256SUMS"
    sums.write_text("".join(lines))
    return sums


def source_epoch() -> str:
    """SOURCE_DATE_EPOCH when set, else the last commit's time (same tree, same timestamps)."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return os.environ["SOURCE_DATE_EPOCH"]
    done = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else str(
        int(time.time()))


def build(out: Path, wheelhouse: Path | None, work: Path) -> list[Path]:
    """Every artifact into `out`; returns them (SHA256SUMS last)."""
    version, _ = project()
    package_version(version)
    changelog_date(version)
    epoch = source_epoch()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # an earlier build's artifacts, never anything else
        if old.name == "SHA256SUMS" or old.name.startswith(("mgh-reporter", "mgh_reporter")):
            old.unlink()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wheel, sdist = python_artifacts(out, version, epoch)
    if wheelhouse is None:
        wheelhouse = ROOT / "build" / "wheelhouse"
        fill_wheelhouse(wheel, wheelhouse)
        print(f"wheelhouse: {wheelhouse} (build offline from it: --wheelhouse {wheelhouse})")
    elif not wheelhouse.is_dir():
        raise BuildError(f"--wheelhouse {wheelhouse}: no such directory")
    site = work / "site"
    vendored = stage_site(wheel, wheelhouse, site)
    pyz = build_pyz(site, out, version, epoch)
    stage = stage_packages(site, work, version, epoch)
    deb, rpm = build_packages(stage, out, version, epoch)
    artifacts = [wheel, sdist, pyz, deb, rpm]
    sums = write_sums(out, artifacts)
    print(f"mgh-reporter {version}: {len(vendored)} distributions inside "
          f"({', '.join(vendored)})")
    for item in [*artifacts, sums]:
        print(f"  {item.stat().st_size / 1e6:7.2f} MB  {item}")
    return [*artifacts, sums]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "dist",
                        help="directory for the artifacts (default: dist)")
    parser.add_argument("--wheelhouse", type=Path, default=None,
                        help="build offline from the wheels in DIR (default: fill "
                             "build/wheelhouse from the index)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "release",
                        help="scratch directory (default: build/release)")
    args = parser.parse_args(argv)
    try:
        build(args.out.resolve(), args.wheelhouse.resolve() if args.wheelhouse else None,
              args.work.resolve())
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
