"""The release artifacts measured: their sizes, the offline install time of the .deb on a bare
Debian 12 (minbase + python3, `--network none`), and the packaged daemon's memory and idle CPU
beside the same daemon installed the venv way of docs/operations.md (both in the same kind of
container, both idle against the emulator for the same minute).

    python benchmarks/packages.py                  # builds the release first (packaging/build.py)
    python benchmarks/packages.py --dist dist      # measures artifacts already built

Needs podman, runc and debootstrap, like the deploy tests. Prints one line per figure and
writes its figures into benchmarks/results.json (as `packages`) and the READMEs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reporter.emulator import Emulator  # noqa: E402
from tests.deploy.images import (  # noqa: E402
    LIMITS,
    base_image,
    podman,
    release,
    require_engine,
    wheels,
)

IDLE_SECONDS = 60.0
CREDENTIALS = ["-e", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "-e",
               "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "-e",
               "AWS_EC2_METADATA_DISABLED=true"]
CONFIG = ('[outbox]\npath = "/var/lib/mgh-reporter/outbox.db"\n[hub]\n'
          'progress_update_stream = "Bench"\n')


def sh(name: str, script: str) -> str:
    return podman("exec", name, "/bin/sh", "-c", script, timeout=600).stdout


def install_time(dist: Path, deb: Path) -> float:
    """Seconds `dpkg -i` takes with no network, on a bare Debian 12 (median of three)."""
    base = base_image("bare", "bookworm")
    times = []
    for _ in range(3):
        done = podman("run", "--rm", "--network", "none", *LIMITS, "-v", f"{dist}:/dist:ro",
                      base, "sh", "-c", "s=$(date +%s.%N); dpkg -i /dist/" + deb.name
                      + " >/dev/null 2>&1; e=$(date +%s.%N); echo \"$s $e\"")
        start, end = (float(x) for x in done.stdout.split())
        times.append(end - start)
    return sorted(times)[1]


def idle(name: str, command: str) -> dict[str, float]:
    """Start the daemon in the container, let it settle, then read its RSS and the CPU all its
    threads used over IDLE_SECONDS (schedstat, nanoseconds)."""
    sh(name, "runuser -u mgh-reporter -- sh -c 'umask 007; "
             f"nohup {command} > /tmp/daemon.log 2>&1 &'")
    time.sleep(15)
    pid = sh(name, "pgrep -u mgh-reporter -o -f ' run'").split()[0]

    def cpu_ns() -> int:
        out = sh(name, f"cat /proc/{pid}/task/*/schedstat")
        return sum(int(line.split()[0]) for line in out.splitlines() if line.strip())

    before, started = cpu_ns(), time.monotonic()
    time.sleep(IDLE_SECONDS)
    used, elapsed = cpu_ns() - before, time.monotonic() - started
    status = sh(name, f"cat /proc/{pid}/status")
    fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines()
              if line.startswith(("VmRSS", "VmHWM"))}
    return {"rss_mib": int(fields["VmRSS"]) / 1024, "hwm_mib": int(fields["VmHWM"]) / 1024,
            "idle_cpu_percent": 100.0 * used / 1e9 / elapsed}


def measure_daemons(dist: Path, deb: Path, hub: Emulator) -> dict[str, dict[str, float]]:
    base = base_image("systemd", "bookworm")  # python3-venv too, for the venv route
    env = [*CREDENTIALS, *(a for k, v in hub.environment().items() for a in ("-e", f"{k}={v}"))]
    results = {}
    with tempfile.TemporaryDirectory(prefix="mgh-bench-wheels-") as tmp:
        wheel_dir = wheels(Path(tmp) / "wheels")
        for route in ("package", "venv"):
            name = f"mgh-bench-{uuid.uuid4().hex[:8]}"
            podman("run", "-d", "--name", name, "--network", "host", *LIMITS, *env,
                   "-v", f"{dist}:/dist:ro", "-v", f"{wheel_dir}:/wheels:ro", base,
                   "sleep", "infinity")
            try:
                if route == "package":
                    sh(name, f"dpkg -i /dist/{deb.name} >/dev/null")
                    command = "/usr/bin/mgh-reporter"
                else:
                    sh(name, "groupadd --system mgh-reporter && useradd --system -g "
                             "mgh-reporter mgh-reporter && install -d -m 2770 -o mgh-reporter "
                             "-g mgh-reporter /var/lib/mgh-reporter /etc/mgh-reporter && "
                             "python3 -m venv /opt/mgh-reporter && /opt/mgh-reporter/bin/pip "
                             "install -q --no-index --find-links /wheels mgh-reporter")
                    command = "/opt/mgh-reporter/bin/mgh-reporter"
                sh(name, f"cat > /etc/mgh-reporter/config.toml <<'EOF'\n{CONFIG}EOF\n"
                         "chmod 644 /etc/mgh-reporter/config.toml")
                config = "--config /etc/mgh-reporter/config.toml"
                sh(name, f"runuser -u mgh-reporter -- {command} {config} init")
                results[route] = idle(name, f"{command} {config} run")
            finally:
                podman("rm", "-f", "-t", "0", name, check=False)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, help="measure these artifacts (default: build)")
    args = parser.parse_args()
    require_engine()
    with tempfile.TemporaryDirectory(prefix="mgh-bench-release-") as tmp:
        if args.dist is None:
            release(Path(tmp) / "dist")
            dist = Path(tmp) / "dist"
        else:
            dist = args.dist.resolve()
        artifacts = sorted(p for p in dist.iterdir() if p.name != "SHA256SUMS")
        sizes = {p.name: round(p.stat().st_size / 1e6, 2) for p in artifacts}
        deb = next(p for p in artifacts if p.suffix == ".deb")
        seconds = install_time(dist, deb)
        with Emulator(map_delay=0.3) as hub:
            daemons = measure_daemons(dist, deb, hub)
    for name, size in sizes.items():
        print(f"size      {name}: {size} MB")
    print(f"install   dpkg -i offline on bare Debian 12: {seconds:.1f} s (median of 3, "
          "byte-compiling included)")
    for route, figures in daemons.items():
        print(f"daemon    {route:8s} RSS {figures['rss_mib']:.1f} MiB (peak "
              f"{figures['hwm_mib']:.1f}), idle {figures['idle_cpu_percent']:.3f}% of a core "
              f"over {IDLE_SECONDS:.0f} s")
    results_file = ROOT / "benchmarks" / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    results["packages"] = {"sizes_mb": sizes, "install_seconds": seconds, "daemons": daemons}
    results_file.write_text(json.dumps(results, indent=1) + "\n")
    from figures import documents, load, update  # beside this script: the docs quote it

    for doc in documents(ROOT):
        doc.write_text(update(doc.read_text(), load(ROOT / "benchmarks")))
    worse = daemons["package"]["rss_mib"] > daemons["venv"]["rss_mib"] * 1.05
    print("packaged daemon vs venv:", "WORSE" if worse else "no worse")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
