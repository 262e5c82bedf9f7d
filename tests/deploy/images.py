"""Images for the deployment tests, made here without a registry: Debian bases by debootstrap
(bookworm, trixie and sid, cached by a content key), the project's wheels, the project's image
built from them, and the release artifacts built by packaging/build.py."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"  # the host's own suite: its mirror serves every suite below
# The Debian releases the packages are proven on, and the Python each one's python3 is.
SUITES = {"bookworm": "3.11", "trixie": "3.13", "sid": "3.14"}
# podman's default runtime (crun) refuses this kernel's hybrid cgroup layout; runc works with
# explicit limits (the defaults fail with EPERM).
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
BASES = {
    # What the Containerfile must work on: only Debian's python3 and python3-venv.
    "python": ("python3", "python3-venv"),
    # systemd as PID 1, sudo for the README's `sudo -u` lines, and procps (`kill`, which every
    # real host has and the unit's ExecReload runs; debootstrap's minbase leaves it out).
    "systemd": ("python3", "python3-venv", "systemd", "systemd-sysv", "dbus", "sudo", "procps"),
    # What the packages must install on: debootstrap's minbase plus the interpreter, nothing
    # else (no systemd, no adduser).
    "bare": ("python3",),
}


class EngineMissing(RuntimeError):
    """podman (or debootstrap) cannot run here: the deploy step must fail, loudly."""


def podman(*args: str, check: bool = True, timeout: float = 600,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run podman (runc runtime) and return what it printed; raise with its stderr on failure."""
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout,
                          input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def require_engine() -> None:
    """Fail with the reason when podman cannot run a container here."""
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            raise EngineMissing(f"{tool} is not installed (apt-get install podman buildah runc "
                                "debootstrap)")
    done = subprocess.run([*PODMAN, "info", "--format", "{{.Host.OCIRuntime.Name}}"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise EngineMissing(f"podman cannot run here: {done.stderr.strip()[-2000:]}")


def debian_mirror() -> str:
    """The Debian mirror apt uses here, read from its deb822 sources (never hard-coded)."""
    for source in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in source.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, _, value = line.partition(":")
                    fields[key.strip()] = value.strip()
            suites = fields.get("Suites", "").split()
            if SUITE in suites and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    raise EngineMissing(f"no Debian {SUITE} mirror in apt's sources")


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def base_image(kind: str, suite: str = SUITE) -> str:
    """A Debian base made by debootstrap and `podman import`, tagged by a content key (suite,
    packages, mirror): made once per machine, re-made when any of them changes."""
    packages = BASES[kind]
    mirror = debian_mirror()
    key = hashlib.sha256(f"{suite} {' '.join(packages)} {mirror}".encode()).hexdigest()[:12]
    name = f"localhost/mgh-reporter-test-base-{kind}-{suite}:{key}"
    if image_exists(name):
        return name
    with tempfile.TemporaryDirectory(prefix="mgh-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite,
             str(rootfs), mirror],
            capture_output=True, text=True, timeout=900,
        )
        if done.returncode != 0:
            raise EngineMissing(f"debootstrap {suite} failed:\n{done.stdout[-2000:]}\n"
                                f"{done.stderr}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([*PODMAN, "import", "-", name], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=600)
        tar.wait()
        if imported.returncode != 0:
            raise EngineMissing(f"podman import failed: {imported.stderr}")
    return name


def wheels(into: Path) -> Path:
    """The project and every dependency as wheels (what a machine without an index installs)."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["python", "-m", "pip", "wheel", "-q", "--no-cache-dir", "-w", str(into),
                    str(ROOT)], check=True, capture_output=True, timeout=900)
    return into


def build_project_image(base: str, tag: str) -> str:
    """`podman build` of the project's Containerfile on `base`, from wheels in the context."""
    with tempfile.TemporaryDirectory(prefix="mgh-ctx-") as tmp:
        context = Path(tmp)
        for item in ("Containerfile", "pyproject.toml", "README.md", "config.example.toml"):
            shutil.copy(ROOT / item, context / item)
        shutil.copytree(ROOT / "reporter", context / "reporter",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "deploy", context / "deploy")
        wheels(context / "wheels")
        podman("build", *LIMITS, "--format", "docker", "--network", "host",
               "--build-arg", f"BASE={base}", "--build-arg", "WHEELS=wheels",
               "-t", tag, "-f", "Containerfile", str(context), timeout=1200)
    return tag




def release(out: Path, *, wheelhouse: Path | None = None, root: Path = ROOT,
            offline: bool = False) -> dict[str, Path]:
    """Build every release artifact with `python packaging/build.py` (of `root`, a checkout);
    `offline`: in a network namespace with no interface but loopback, from `wheelhouse`."""
    command = [sys.executable, str(root / "packaging" / "build.py"), "--out", str(out),
               "--work", str(out.parent / f"{out.name}-work")]
    if wheelhouse is not None:
        command += ["--wheelhouse", str(wheelhouse)]
    if offline:
        command = ["unshare", "--net", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise AssertionError(f"packaging/build.py failed:\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
    found = {p.suffix if p.suffix else p.name: p for p in out.iterdir()}
    artifacts = {
        "deb": found[".deb"], "rpm": found[".rpm"], "pyz": found[".pyz"],
        "wheel": found[".whl"], "sdist": found[".gz"], "sums": found["SHA256SUMS"],
    }
    return artifacts


# Every base the deploy and pythons steps use: made up front, three at a time (debootstrap
# waits on the mirror more than on the CPU), so a cold machine pays minutes, not a quarter hour.
USED_BASES = (("python", "bookworm"), ("systemd", "bookworm"), ("systemd", "trixie"),
              ("bare", "bookworm"), ("bare", "trixie"), ("bare", "sid"))


def prepare_bases() -> None:
    """Make (or find cached) every base in USED_BASES; raise EngineMissing on the first that
    cannot be made."""
    from concurrent.futures import ThreadPoolExecutor

    require_engine()
    with ThreadPoolExecutor(max_workers=3) as pool:
        for made in pool.map(lambda kind_suite: base_image(*kind_suite), USED_BASES):
            print(made, flush=True)


if __name__ == "__main__":
    prepare_bases()
