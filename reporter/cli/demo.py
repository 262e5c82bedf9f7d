"""`demo`: the emulator, a simulated migration tool and the daemon, on one machine."""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from reporter import logs
from reporter.config import Config, HubConfig, LogConfig, MappingConfig, OutboxConfig, PublishConfig
from reporter.daemon.service import Service
from reporter.emulator import Emulator
from reporter.outbox import Outbox
from reporter.stores.sqlite import SqliteStore

# What the demo suggests next, line by line as a shell runs it (tests/test_operator.py does).
NEXT_STEPS = (
    "mgh-reporter emulator --port 4566 &",
    "export AWS_ENDPOINT_URL_MIGRATION_HUB=http://127.0.0.1:4566",
    "export AWS_ENDPOINT_URL_MIGRATIONHUB_CONFIG=http://127.0.0.1:4566",
    "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test",
    "export AWS_DEFAULT_REGION=us-west-2",
    "printf '[outbox]\\npath = \"outbox.db\"\\n' > try.toml",
    "printf '[hub]\\nprogress_update_stream = \"MyTool\"\\n' >> try.toml",
    "mgh-reporter --config try.toml init",
    "mgh-reporter --config try.toml notify vm-1 --status IN_PROGRESS --percent 40",
    "mgh-reporter --config try.toml drain",
    "mgh-reporter --config try.toml tasks",
)

__all__ = ["run_demo"]

STREAM = "DemoMigrationTool"


def _host_tool(box: Outbox, names: list[str], done: threading.Event, rng: random.Random) -> None:
    """A migration tool: attributes first, then progress, an artifact, and one bad update."""
    for i, name in enumerate(names):
        box.resource_attributes(
            name,
            [
                ("IPV4_ADDRESS", f"10.0.0.{10 + i}"),
                ("FQDN", f"{name}.corp.example"),
                ("MAC_ADDRESS", f"00:1A:2B:3C:4D:{10 + i:02X}"),
            ],
        )
        box.task_state(name, "NOT_STARTED", detail="queued", next_update_seconds=120)
    percent = dict.fromkeys(names, 0)
    box.task_state(names[0], "IN_PROGRESS")
    # A row a buggy tool might write with plain SQL: the daemon rejects it, keeps it, moves on.
    with closing(sqlite3.connect(box.path, timeout=5)) as conn, conn:
        conn.execute(
            "INSERT INTO outbox(kind, migration_task_name, status, progress_percent)"
            " VALUES ('task_state', ?, 'IN_PROGRESS', 150)",
            (names[-1],),
        )
    while any(p < 100 for p in percent.values()):
        for name in names:
            if percent[name] >= 100:
                continue
            percent[name] = min(100, percent[name] + rng.randint(5, 25))
            if name == names[1] and percent[name] >= 60:
                box.task_state(
                    name,
                    "FAILED",
                    percent=percent[name],
                    detail="source disk read error on /dev/sdb",
                )
                percent[name] = 100
                continue
            if percent[name] == 100:
                box.created_artifact(
                    name,
                    f"arn:aws:ec2:us-west-2:123456789012:instance/i-0{name[-2:]}"
                    f"{rng.randrange(16**10):010x}",
                    description="cut-over instance",
                )
                box.task_state(name, "COMPLETED", percent=100, detail="cut-over complete")
            else:
                box.task_state(
                    name,
                    "IN_PROGRESS",
                    percent=percent[name],
                    detail=f"replicating: {percent[name]}%",
                    next_update_seconds=60,
                )
        time.sleep(0.4)
    done.set()


def _table(store: SqliteStore, hub: Emulator) -> Table:
    # Fits 80 columns: the names, the status and the mapping whole; the detail wraps.
    table = Table(title="Migration Hub, as the emulator sees it (live)", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    table.add_column("task", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("%", justify="right", no_wrap=True)
    table.add_column("mapped to", no_wrap=True)
    table.add_column("ARNs", justify="right", no_wrap=True)
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("detail", ratio=1, min_width=12)
    for t in store.tasks():
        try:
            record = hub.state.task(t.stream, t.task)
        except KeyError:
            table.add_row(t.task, "-", "", "", "", str(t.pending), "not imported yet")
            continue
        last: dict[str, Any] = record.updates[-1]["Task"] if record.updates else {}
        table.add_row(
            t.task,
            last.get("Status", "-"),
            str(last.get("ProgressPercent", "")),
            record.mapped_to or "…",
            str(len(record.artifacts)),
            str(t.pending),
            (last.get("StatusDetail") or "")[:36],
        )
    return table


def run_demo(task_count: int = 6) -> int:
    """Run the whole path in-process; prints what the Hub shows at the end. Returns 0 or 1."""
    console = Console()
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(key, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_REGION="us-east-1"
    )
    with tempfile.TemporaryDirectory(prefix="mgh-demo-") as tmp, Emulator(map_delay=1.0) as hub:
        os.environ.update(hub.environment())
        hub.state.add_server(
            "d-server-0a1b2c3d4e5f", "known to discovery", IPV4_ADDRESS="10.0.0.10"
        )
        hub.state.faults.update(throttle=0.1)  # a real Hub throttles; watch the daemon cope
        path = Path(tmp) / "outbox.db"
        config = Config(
            # The live state beside the demo's own outbox, in its private temporary directory.
            outbox=OutboxConfig(path=path, lease_seconds=5.0,
                                live_state_path=Path(tmp) / "live.json"),
            hub=HubConfig(progress_update_stream=STREAM, region="auto", next_update_seconds=300),
            publish=PublishConfig(
                interval_seconds=0.3, backoff_base_seconds=0.2, backoff_max_seconds=2.0
            ),
            mapping=MappingConfig(
                check_after_seconds=1.0, unmapped_after_seconds=30.0, max_check_interval_seconds=2.0
            ),
            log=LogConfig(level="warning", format="console"),
        )
        logs.configure("error", "console")
        SqliteStore.create(path).close()
        console.print(
            f"[bold]mgh-reporter demo[/]: emulator at {hub.url} (home Region "
            f"us-west-2, 10% throttling), outbox {path}"
        )
        console.print("A simulated migration tool INSERTs rows; the daemon publishes them.\n")
        names = [f"server-{i:02d}" for i in range(1, task_count + 1)]
        done = threading.Event()
        service = Service(config)
        tool = threading.Thread(
            target=_host_tool, args=(Outbox(path), names, done, random.Random(7)), daemon=True
        )
        viewer = SqliteStore.open(path, writable=False)
        started = time.monotonic()

        def watch() -> None:
            with Live(_table(viewer, hub), console=console, refresh_per_second=4) as live:
                while not service.shared.stop.is_set():
                    live.update(_table(viewer, hub))
                    mapped = all(
                        hub.state.streams.get(STREAM, {}).get(n) is not None
                        and hub.state.task(STREAM, n).mapped_to
                        for n in names
                    )
                    pending = viewer.backlog().pending
                    if (
                        done.is_set() and pending == 0 and mapped
                    ) or time.monotonic() - started > 50:
                        service.shutdown()
                    time.sleep(0.25)
                live.update(_table(viewer, hub))

        watcher = threading.Thread(target=watch, daemon=True)
        tool.start()
        watcher.start()
        service.serve()
        watcher.join(5)
        counts = viewer.counts()
        letters = viewer.dead_letters()
        viewer.close()
        ops = hub.state.summary()["operations"]
        console.print(
            f"\n[bold]Done in {time.monotonic() - started:.1f}s.[/] Rows: "
            f"{counts.sent} sent, {counts.superseded} superseded by newer ones, "
            f"{counts.dead_letters} rejected, {counts.pending} pending."
        )
        console.print(
            "Calls the Hub received: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items()))
        )
        for d in letters:
            console.print(f"[yellow]dead letter[/] row {d.id} ({d.task}): {d.reason}")
        console.print("\nTry it yourself against the emulator, in a shell (no AWS account):")
        console.print("\n".join(f"  {line}" for line in NEXT_STEPS), markup=False,
                      highlight=False, soft_wrap=True)
        console.print('For AWS itself: the README\'s "Quick start" (a package, a config naming '
                      "your tool's stream, credentials, then `systemctl enable --now`).")
        return 0 if counts.pending == 0 else 1
