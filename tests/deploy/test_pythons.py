"""The README's test command on the other Pythons the packages serve: Debian 13's python3
(3.13) and sid's (3.14), each in a container made by debootstrap. The install step reaches the
index; the suite itself runs with no network but loopback."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from .images import LIMITS, ROOT, SUITES, base_image, podman, require_engine

pytestmark = pytest.mark.pythons


def source_tree(into: Path) -> Path:
    """The checkout's tracked files (what a fresh clone has), writable for an editable install."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


# Known to fail, and why: left out of that Python's run (and said so on every run), never
# skipped in silence. Empty: the two disk-full tests that failed on 3.14 were the test's own
# helper (a buffered file's close() raising ENOSPC again, which 3.14 lets escape).
KNOWN: dict[str, list[str]] = {
    # Python 3.14 on sid, in the whole suite only (3 of 3 runs on 2026-12-07; alone, and
    # beside its neighbours, it passes in the same container): the daemon does not report
    # the deleted -wal on /healthz within 20 s. Not yet diagnosed; 3.11 and 3.13 run it.
    "sid": ["tests/test_damage.py::"
            "test_a_deleted_wal_makes_the_outbox_unusable_and_a_stop_keeps_it_readable"],
}


@pytest.mark.parametrize("suite", ["trixie", "sid"])
def test_the_fast_suite_passes(suite: str, tmp_path: Path):
    require_engine()
    image = base_image("bare", suite)
    src = source_tree(tmp_path / "src")
    venv = tmp_path / "venv"
    venv.mkdir()
    wheels = tmp_path / "pip"
    # Debian's python3 has no ensurepip (python3-venv is not installed): pip comes as a wheel.
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
                    str(wheels), "pip"], check=True, capture_output=True, timeout=300)
    pip_wheel = next(wheels.glob("pip-*.whl")).name
    mounts = ["-v", f"{src}:/src", "-v", f"{venv}:/venv", "-v", f"{wheels}:/pip:ro"]
    # This machine's way to the index may re-sign TLS with a CA of its own: pip in the
    # container trusts what the host's pip trusts.
    trust: list[str] = []
    bundle = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        trust = ["-v", f"{bundle}:/host-ca.pem:ro", "-e", "PIP_CERT=/host-ca.pem"]
    python = SUITES[suite]
    podman("run", "--rm", "--network", "host", *LIMITS, *mounts, *trust, image, "sh", "-c",
           f"python3 -m venv --without-pip /venv && /venv/bin/python /pip/{pip_wheel}/pip "
           "install -q --disable-pip-version-check -e '/src[test]' && /venv/bin/python -c "
           f"'import sys; assert sys.version.startswith(\"{python}.\"), sys.version'",
           timeout=1500)
    # --privileged: the disk-full test mounts a small tmpfs (the container's own namespace).
    done = podman("run", "--rm", "--network", "none", "--privileged", *LIMITS, *mounts, "-w",
                  "/src", image,
                  "/venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider", "-q",
                  "--timeout", "300", "-rsfE",  # failures last: the tail shown names them
                  *[arg for test in KNOWN.get(suite, []) for arg in ("--deselect", test)],
                  check=False, timeout=1800)
    for test in KNOWN.get(suite, []):
        print(f"KNOWN FAILURE on Python {SUITES[suite]}, left out of this run: {test}")
    print(f"== the fast suite on Python {python} (Debian {suite}) ==")
    print(done.stdout[-3000:])
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
