"""Where the daemon's memory goes, stage by stage, in a fresh process (used by `run.py budget`).

`python benchmarks/budget.py CONFIG` with the emulator's environment, on an outbox holding a
backlog: it takes the same steps as `mgh-reporter run` (CLI, logging, imports, the service,
the Hub clients, passes until the backlog is delivered) and prints one JSON line per stage:
RSS and its anonymous part from /proc/self/smaps_rollup, and the high-water mark so far.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _mem() -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("Rss:", "Anonymous:"):
            out[parts[0].rstrip(":").lower()] = int(parts[1]) / 1024
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            out["hwm"] = int(line.split()[1]) / 1024
    return out


def stage(name: str) -> None:
    print(json.dumps({"stage": name, **_mem()}), flush=True)


def main() -> None:
    config_path = Path(sys.argv[1])
    stage("interpreter")
    from reporter.daemon.signals import one_malloc_arena

    one_malloc_arena()  # as `run` does first thing

    stage("CLI: click, config, rows, writer")
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  (as `run` does, JSON logs)
    from reporter import config, logs

    cfg = config.load(config_path)
    logs.configure("warning", "json")
    stage("logging: structlog (and asyncio it imports)")
    from reporter.daemon.service import Service

    stage("daemon imports: boto3/botocore/urllib3, APScheduler, prometheus-client")
    service = Service(cfg, config_path)
    stage("service built: store open, relay, metrics")
    service.parts.hub.resolve_region()
    stage("Hub clients made (SDK models let go)")
    service.tick()
    stage("first pass: pool threads started")
    deadline = time.monotonic() + 600
    while service.parts.store.backlog().pending and time.monotonic() < deadline:
        service.tick()
    stage("backlog delivered")


if __name__ == "__main__":
    main()
