"""The click commands, thin over the library; library errors become clean exits.

Imports are lazy: a shell writer (`notify`, ...) loads only what an INSERT needs, and the
daemon never loads the terminal rendering of the reading commands.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from reporter.cli.applications import applications
from reporter.cli.base import (
    WholeHelpGroup,
    config_file,
    console,
    existing_outbox,
    fail,
    guarded,
    load_config,
    logging_config,
    open_store,
)
from reporter.cli.dead_letters import dead_letters
from reporter.cli.streams import streams
from reporter.cli.writers import WRITERS
from reporter.daemon.signals import hold_signals, stop_on_signals
from reporter.exits import Exit
from reporter.stores import Engine

if TYPE_CHECKING:

    pass

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


@click.group(cls=WholeHelpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, readable=False),  # read by config.load: its message
    default=None,
    help="Config file (default: $MGH_REPORTER_CONFIG, then /etc/mgh-reporter/config.toml).",
)
@click.version_option(package_name="mgh-reporter")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Publish migration progress from an outbox (SQLite or PostgreSQL) to AWS Migration Hub."""
    ctx.ensure_object(dict)["config_path"] = config_path


@cli.command()
@click.option(
    "--parents",
    is_flag=True,
    help="Also make the outbox's missing directories (without it only the last one is made).",
)
@click.pass_context
@guarded
def init(ctx: click.Context, parents: bool) -> None:
    """Create the outbox file, table and the daemon's own tables (idempotent).

    Accepts a table the host tool created itself, and upgrades an older one. The outbox's
    directory is made when its parent exists; a deeper missing tree needs --parents."""
    cfg = logging_config(ctx)
    Engine.of(cfg.outbox).create(parents=parents).close()
    click.echo(f"outbox ready: {cfg.outbox.where}")


@cli.command()
@click.pass_context
@guarded
def run(ctx: click.Context) -> None:
    """Run the daemon until SIGTERM/SIGINT (graceful: exits 0)."""
    hold_signals()
    cfg = existing_outbox(ctx, logging=True)
    from reporter.daemon.service import run as run_daemon

    code = run_daemon(cfg, config_file(ctx))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # abandoned in-flight calls must not hold the exit


@cli.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds to keep retrying before giving up with exit 3.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the closing summary as JSON.")
@click.pass_context
@guarded
def drain(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Publish everything due now, retrying transient errors, then exit (0/1/3/4/5).

    Shows progress on stderr (a bar on a terminal, a drain_progress event every 5 s
    otherwise) and ends with one summary line on stdout: sent, superseded, rejected, still
    pending, seconds (--json: one JSON object). Exit 0 all delivered, 3 rows still pending at
    the timeout or interrupted, 4 blocked (only a person can fix it), 5 done but rows were
    rejected since it started (`dead-letters list`), 1 error."""
    hold_signals()
    cfg = existing_outbox(ctx, logging=True)
    from reporter.cli.drain import drain as drain_outbox

    sys.exit(drain_outbox(cfg, timeout, as_json))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--watch",
    is_flag=True,
    help="Refresh every --every seconds until Ctrl-C (in place on a terminal; elsewhere one "
    "report after another, with --json one JSON object per line).",
)
@click.option(
    "--every",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.pass_context
@guarded
def status(ctx: click.Context, as_json: bool, watch: bool, every: float) -> None:
    """Backlog, delivery health, dead letters, stale and unmapped tasks, the daemon's own word.

    Exits 1 while the outbox is unusable (unreadable, full, replaced, gone), 4 while delivery is
    blocked (as `drain` would), 7 while the daemon is hung (its live state has not ticked and it
    did not stop cleanly), 0 otherwise (a daemon that is not running is not an error). With
    --watch it exits 0 on Ctrl-C.
    """
    from reporter.cli import status as statusview

    cfg = load_config(ctx)
    if statusview.nobody_speaks_for(cfg):
        existing_outbox(ctx)  # no daemon to speak for a missing file: say what to run
    if watch:
        statusview.watch(cfg, as_json, every, console())
        return
    report = statusview.gather(cfg)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        out = console()
        for line in statusview.lines(report, cfg):
            out.print(line)
    if report.outbox_unusable:
        click.echo(f"mgh-reporter: {report.outbox_unusable}", err=True)
        ctx.exit(Exit.ERROR)
    if report.blocked:
        ctx.exit(Exit.BLOCKED)
    if report.daemon_state == "hung":
        click.echo(f"mgh-reporter: {report.warnings[-1]}", err=True)
        ctx.exit(Exit.HUNG)


TASKS_LEGEND = (
    "mapped: the Hub matched the task to a discovered server (its configuration id), manual: "
    "mapped by discovered_resource rows, NO: still "
    "unmapped after [mapping] unmapped_after_seconds, checking: not known yet.  promise: ok, "
    "lapsing (the next update is due soon), STALE (the promised NextUpdateSeconds has passed), "
    "- (finished, or no state sent yet)."
)


@cli.command("rows")
@click.argument("ids", nargs=-1, type=click.IntRange(min=1), required=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per row.")
@click.pass_context
@guarded
def row_fates(ctx: click.Context, ids: tuple[int, ...], as_json: bool) -> None:
    """What became of outbox rows: pending, sent, superseded or dead (with the reason), and
    when.

    IDS are outbox row ids (what your INSERT returned). A row never written, or pruned after
    delivery, is "unknown". Tools can also SELECT the view outbox_fate (id, state, reason, at).
    """
    cfg = existing_outbox(ctx)
    store = open_store(cfg)
    try:
        fates = store.fates(list(ids))
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([f.to_json() for f in fates], indent=2))
        return
    for fate in fates:
        shown = fate.to_json()
        where = f" (task {fate.task}, stream {fate.stream})" if fate.task is not None else ""
        when = f" at {shown['at']}" if shown["at"] else ""
        why = f": {fate.reason}" if fate.reason and fate.state == "dead" else ""
        click.echo(f"row {fate.id}: {fate.state}{when}{where}{why}")


@cli.command(epilog=TASKS_LEGEND)
@click.option("--stream", help="Only this stream.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@guarded
def tasks(ctx: click.Context, stream: str | None, as_json: bool) -> None:
    """One line per task: last state sent, pending rows, mapping, artifacts, staleness.

    Columns: stream and task; the status and percent last sent and its UpdateDateTime; rows
    still pending; mapped; how many artifacts are associated; the promise state."""
    from rich.table import Table

    from reporter import report as views
    from reporter.cli.status import esc

    cfg = existing_outbox(ctx)
    store = open_store(cfg)
    try:
        entries = views.task_entries(store.tasks(stream), time.time(), cfg)
        waiting = store.backlog().waiting if not entries else 0
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        where = f" in stream {stream!r}" if stream else ""
        click.echo(f"no tasks yet{where}" + (
            f"; {waiting} rows are waiting to be taken in (a running daemon, or `drain`, takes"
            " them in and their tasks appear here)" if waiting else ""))
        return
    # Whole values in 80 columns: names fold rather than end in "…", the time folds at its T.
    from rich import box

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("stream", overflow="fold")
    table.add_column("task", overflow="fold", ratio=1, min_width=8)
    table.add_column("status", no_wrap=True)
    table.add_column("%", justify="right", no_wrap=True)
    table.add_column("updated", overflow="fold", max_width=20, min_width=10)
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("mapped", overflow="fold")
    table.add_column("ARNs", justify="right", no_wrap=True)
    table.add_column("promise", no_wrap=True)
    for e in entries:
        mapped = {
            True: esc(e["configuration_id"] or "yes"), False: "[red]NO[/]", None: "checking"
        }[e["mapped"]]
        if e["discovered_resources"]:
            mapped = esc("manual: " + ", ".join(e["discovered_resources"]))
        promise = {"stale": "[red]STALE[/]", "lapsing": "[yellow]lapsing[/]"}.get(
            e["promise"] or "", e["promise"] or "-"
        )
        table.add_row(
            esc(e["stream"]),
            esc(e["task"]),
            e["status"] or "-",
            "" if e["progress_percent"] is None else str(e["progress_percent"]),
            e["update_date_time"] or "-",
            str(e["pending"]),
            mapped,
            str(len(e["artifacts"])),
            promise,
        )
    out = console()
    out.print(table)
    out.print("rows: rows still pending; ARNs: artifacts associated.  " + TASKS_LEGEND,
              style="dim", highlight=False, markup=False)


@cli.command()
@click.option("--stream", help="Only this stream.")
@click.option("--task", help="Only this task.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@guarded
def verify(ctx: click.Context, stream: str | None, task: str | None, as_json: bool) -> None:
    """Read back what Migration Hub shows for each delivered task; exit 6 if any differs.

    Compares field by field with what was last sent: status, progress_percent, status_detail,
    update_date_time, resource_attributes (as a set), artifact_name and the manual mapping's
    configuration_id. One line per task that differs or is missing at the Hub, then a summary.
    Read-only; paced under [publish] max_requests_per_second (a share of it beside replicas).
    Exit 0 all match, 6 some task differs or is missing, 4 blocked, 1 error."""
    from reporter.cli.verify import verify as run_verify

    sys.exit(run_verify(existing_outbox(ctx, logging=True), stream, task, as_json))


@cli.command()
@click.pass_context
@guarded
def check(ctx: click.Context) -> None:
    """Prove config, outbox, credentials, home Region and permissions (changes nothing)."""
    from reporter.cli.check import run_checks

    sys.exit(run_checks(config_file(ctx), click.echo))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=4566, show_default=True, type=int, help="Port (0: any free).")
@click.option(
    "--home-region",
    default="us-west-2",
    show_default=True,
    help='Home Region to simulate ("none": not set).',
)
@click.option(
    "--map-delay",
    default=2.0,
    show_default=True,
    type=float,
    help="Seconds before auto-mapping settles.",
)
def emulator(host: str, port: int, home_region: str, map_delay: float) -> None:
    """Run a local Migration Hub emulator (for trying things out)."""
    import threading

    from reporter.emulator import Emulator

    region = None if home_region.lower() == "none" else home_region
    try:
        em = Emulator(host, port, home_region=region, map_delay=map_delay).start()
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another with"
             " --port (0: any free port)")
    click.echo(f"Migration Hub emulator on {em.url} (home Region: {region or 'not set'})")
    click.echo(f"  export AWS_ENDPOINT_URL_MIGRATION_HUB={em.url}")
    click.echo(f"  export AWS_ENDPOINT_URL_MIGRATIONHUB_CONFIG={em.url}")
    click.echo(f"  state: curl {em.url}/_emulator/state")
    sys.stdout.flush()
    stop = threading.Event()
    with stop_on_signals(stop):
        stop.wait()
    em.stop()


@cli.command()
@click.option(
    "--tasks",
    "task_count",
    default=6,
    show_default=True,
    type=click.IntRange(1, 50),
    help="How many simulated migration tasks.",
)
def demo(task_count: int) -> None:
    """The whole path on one machine: emulator, a simulated tool, the daemon."""
    from reporter.cli.demo import run_demo

    sys.exit(run_demo(task_count))


cli.add_command(dead_letters)
cli.add_command(streams)
cli.add_command(applications)
for _command in WRITERS:
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point (also of the .pyz and of the packages' launcher): the
    program is called mgh-reporter in messages however it was started."""
    cli(obj={}, prog_name="mgh-reporter")
