"""Thin command-line commands over the library; library errors become clean exits.

Imports are lazy: a shell writer (`notify`, ...) loads only what an INSERT needs, and the
daemon never loads the terminal rendering of the reading commands.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from reporter import config as config_mod
from reporter.config import Config, ConfigError
from reporter.model import StoreError
from reporter.outbox import Outbox, OutboxValueError
from reporter.process import EXIT, LockError, hold_signals, lock_holder, stop_on_signals
from reporter.rows import ATTRIBUTE_TYPES, STATUSES
from reporter.secrets import scrub

if TYPE_CHECKING:
    from rich.console import Console

    from reporter.model import OutboxStore

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _console() -> Console:
    """Rich output; wide when piped so scripts and logs get whole lines."""
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=220)


def _fail(message: str, code: int = EXIT["error"]) -> None:
    click.echo(f"mgh-reporter: {scrub(message)}", err=True)
    sys.exit(code)


def _config_path(ctx: click.Context) -> Path:
    return config_mod.config_path(ctx.ensure_object(dict).get("config_path"))


def _config(ctx: click.Context) -> Config:
    """The validated config (loaded once per command; configures nothing)."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "config" not in obj:
        try:
            obj["config"] = config_mod.load(_config_path(ctx))
        except ConfigError as exc:
            _fail(str(exc))
    result: Config = obj["config"]
    return result


def _logging_config(ctx: click.Context) -> Config:
    """The config, with the event log set up as it says (for the commands that deliver).

    Call it before importing what delivers: with JSON logs nothing renders to a terminal, so
    structlog is kept from loading its optional pretty-printer, rich (~5 MB of a 64 MiB
    sidecar); a `None` in `sys.modules` makes structlog's `import rich` fail as if absent."""
    cfg = _config(ctx)
    if cfg.log.format == "json" and "structlog" not in sys.modules:
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    from reporter import logs

    logs.configure(cfg.log.level, cfg.log.format)
    return cfg


def guarded(fn: F) -> F:
    """Turn library errors into one line on stderr and exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (StoreError, LockError, ConfigError) as exc:
            _fail(str(exc))
        except OutboxValueError as exc:
            _fail(f"invalid update: {exc}", EXIT["usage"])

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: $MGH_REPORTER_CONFIG, then /etc/mgh-reporter/config.toml).",
)
@click.version_option(package_name="mgh-reporter")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Publish migration progress from an outbox (SQLite or PostgreSQL) to AWS Migration Hub."""
    ctx.ensure_object(dict)["config_path"] = config_path


@cli.command()
@click.pass_context
@guarded
def init(ctx: click.Context) -> None:
    """Create the outbox file, table and the daemon's own tables (idempotent)."""
    cfg = _logging_config(ctx)
    from reporter import engines

    engines.create(cfg).close()
    click.echo(f"outbox ready: {cfg.outbox.where}")


@cli.command()
@click.pass_context
@guarded
def run(ctx: click.Context) -> None:
    """Run the daemon until SIGTERM/SIGINT (graceful: exits 0)."""
    hold_signals()
    cfg = _logging_config(ctx)
    from reporter.daemon import run as run_daemon

    code = run_daemon(cfg, _config_path(ctx))
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
@click.pass_context
@guarded
def drain(ctx: click.Context, timeout: float) -> None:
    """Publish everything due now, retrying transient errors, then exit (0/1/3/4/5)."""
    hold_signals()
    cfg = _logging_config(ctx)
    from reporter.drain import drain as drain_outbox

    sys.exit(drain_outbox(cfg, timeout))


def _writer(cfg: Config) -> Outbox:
    return Outbox(cfg.outbox.url or cfg.outbox.path, cfg.outbox.busy_timeout_ms)


@cli.command()
@click.argument("task")
@click.option("--status", required=True, type=click.Choice(STATUSES), help="Task status.")
@click.option("--percent", type=int, help="Progress, 0..100.")
@click.option("--detail", help="Status detail (one line, <= 2,500 characters).")
@click.option(
    "--next-update-seconds", type=int, help="When the next update comes (default from config)."
)
@click.option("--stream", help="Progress update stream (default from config).")
@click.pass_context
@guarded
def notify(
    ctx: click.Context,
    task: str,
    status: str,
    percent: int | None,
    detail: str | None,
    next_update_seconds: int | None,
    stream: str | None,
) -> None:
    """Queue a task_state row (becomes NotifyMigrationTaskState)."""
    row = _writer(_config(ctx)).task_state(
        task,
        status,
        percent=percent,
        detail=detail,
        next_update_seconds=next_update_seconds,
        stream=stream,
    )
    click.echo(f"queued row {row}")


def _attribute(text: str) -> tuple[str, str]:
    kind, sep, value = text.partition("=")
    if not sep or kind not in ATTRIBUTE_TYPES:
        raise click.BadParameter(
            f"{text!r}: expected TYPE=VALUE with TYPE one of {', '.join(ATTRIBUTE_TYPES)}",
            param_hint="--attribute",
        )
    return kind, value


@cli.command("put-attributes")
@click.argument("task")
@click.option(
    "--attribute",
    "attributes",
    multiple=True,
    required=True,
    metavar="TYPE=VALUE",
    help="Repeatable; the full list (it replaces what the Hub has).",
)
@click.option("--stream", help="Progress update stream (default from config).")
@click.pass_context
@guarded
def put_attributes(
    ctx: click.Context, task: str, attributes: tuple[str, ...], stream: str | None
) -> None:
    """Queue a resource_attributes row (becomes PutResourceAttributes)."""
    pairs = [_attribute(a) for a in attributes]
    row = _writer(_config(ctx)).resource_attributes(task, pairs, stream=stream)
    click.echo(f"queued row {row}")


@cli.command("associate-artifact")
@click.argument("task")
@click.argument("arn")
@click.option("--description", help="Up to 500 characters, one line.")
@click.option("--stream", help="Progress update stream (default from config).")
@click.pass_context
@guarded
def associate_artifact(
    ctx: click.Context, task: str, arn: str, description: str | None, stream: str | None
) -> None:
    """Queue a created_artifact row (becomes AssociateCreatedArtifact)."""
    row = _writer(_config(ctx)).created_artifact(task, arn, description=description, stream=stream)
    click.echo(f"queued row {row}")


def _open(cfg: Config, writable: bool = False) -> OutboxStore:
    from reporter import engines

    return engines.open_store(cfg, writable=writable)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@guarded
def status(ctx: click.Context, as_json: bool) -> None:
    """Backlog, delivery health, dead letters, stale and unmapped tasks, the daemon's own word.

    Exits 1 while the outbox is unusable (unreadable, full, replaced, gone), 4 while delivery is
    blocked (as `drain` would), 7 while the daemon is hung (its live state has not ticked and it
    did not stop cleanly), 0 otherwise (a daemon that is not running is not an error).
    """
    from reporter import live, views
    from reporter.files import trusted_owners

    cfg = _config(ctx)
    now = time.time()
    owners = None if cfg.outbox.postgres else trusted_owners(cfg.outbox.path.parent)
    state = live.read_freshest(live.candidates(cfg.outbox.live_state_path, cfg.outbox.where),
                               owners)
    counts = gate = health = None
    error = None
    replicas: list[Any] = []
    try:
        store = _open(cfg)
        try:
            health = views.task_health(store.tasks(), now, cfg)
            counts, gate = store.counts(), store.load_gate()
            wal = store.wal_bytes()
            replicas = store.replicas()
            now = store.clock()
        finally:
            store.close()
    except StoreError as exc:
        error, wal = str(exc), 0
    report = views.status_report(
        counts,
        gate,
        health,
        (state.pid if state else None) if cfg.outbox.postgres else lock_holder(cfg.outbox.path),
        state,
        now,
        (wal, cfg.outbox.wal_warning_bytes),
        error,
        wall_now=time.time(),
    )
    if cfg.outbox.postgres:
        report["replicas"] = [views.replica_view(r, now) for r in replicas]
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_status(report, cfg)
    if report["outbox_unusable"]:
        click.echo(f"mgh-reporter: {report['outbox_unusable']}", err=True)
        ctx.exit(EXIT["error"])
    if report["blocked"]:
        ctx.exit(EXIT["blocked"])
    if report["daemon_state"] == "hung":
        click.echo(f"mgh-reporter: {report['warnings'][-1]}", err=True)
        ctx.exit(EXIT["hung"])


def _print_status(report: dict[str, Any], cfg: Config) -> None:
    console = _console()
    if report["outbox_unusable"]:
        headline = f"[bold red]OUTBOX UNUSABLE[/]: {report['outbox_unusable']}"
    elif report["blocked"]:
        headline = f"[bold red]BLOCKED[/] since {report['blocked_since']}: {report['blocked']}"
    elif report["daemon_state"] == "hung":
        headline = "[bold red]HUNG[/]: the daemon stopped ticking without stopping cleanly"
    elif report["daemon_state"] != "running":
        headline = "[bold]not running[/]: nothing is delivering (start `mgh-reporter run`)"
    elif report["outage_backoff"]:
        headline = "[bold yellow]BACKING OFF[/]: every call is failing; probing at a slow pace"
    else:
        headline = "[bold green]delivering[/]"
    pid, daemon = report["daemon_pid"], report["daemon"]
    console.print(f"mgh-reporter  {cfg.outbox.where}")
    console.print(f"  state        {headline}")
    beat = ""
    if pid and daemon and daemon["running"]:
        beat = f", heartbeat {daemon['heartbeat_age_seconds']:.0f}s ago"
    if "replicas" in report:
        live_ones = report["replicas"]
        console.print(f"  replicas     {len(live_ones)} live")
        for r in live_ones:
            console.print(
                f"    {r['host']} pid {r['pid']} ({r['role']}), heartbeat"
                f" {r['heartbeat_age_seconds']:.0f}s ago, up {r['up_seconds']:.0f}s"
            )
    else:
        console.print(f"  daemon       {'pid ' + str(pid) + beat if pid else 'not running'}")
    if daemon and daemon["running"] and daemon["last_error"]:
        console.print(f"  last error   {daemon['last_error']}")
    for warning in report["warnings"]:
        console.print(f"  [bold yellow]warning[/]      {warning}")
    console.print(f"  home region  {report['home_region'] or 'unknown yet'}")
    oldest = report["oldest_pending_seconds"]
    console.print(
        f"  backlog      {report['pending']} pending"
        + (f", oldest {oldest:.0f}s" if oldest is not None else "")
    )
    console.print(
        f"  delivered    {report['delivered']} ({report['sent']} sent, "
        f"{report['superseded']} superseded)   last success {report['last_success'] or 'never'}"
    )
    dead = report["dead_letters"]
    console.print(f"  dead letters {dead}" + ("  → mgh-reporter dead-letters list" if dead else ""))
    console.print(
        f"  tasks        {report['tasks']}: {report['stale_tasks']} stale, "
        f"{report['lapsing_tasks']} lapsing, {report['unmapped_tasks']} unmapped"
    )
    for stream, counts in sorted(report["streams"].items()):
        console.print(
            f"    {stream}: {counts['tasks']} tasks, {counts['stale']} stale, "
            f"{counts['lapsing']} lapsing"
        )


@cli.group("dead-letters")
def dead_letters() -> None:
    """Rows rejected with a reason: list them, or put them back in line."""


@dead_letters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@guarded
def dead_list(ctx: click.Context, as_json: bool) -> None:
    """List rejected rows with their reasons."""
    from rich.table import Table

    from reporter import views

    cfg = _config(ctx)
    store = _open(cfg)
    try:
        letters = store.dead_letters()
    finally:
        store.close()
    entries = [{**asdict(d), "rejected_at": views.iso(d.rejected_at)} for d in letters]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    table = Table("id", "kind", "stream", "task", "reason", "rejected at")
    for e in entries:
        table.add_row(
            str(e["id"]), e["kind"], e["stream"], e["task"], e["reason"], e["rejected_at"]
        )
    _console().print(table if letters else "no dead letters")


@dead_letters.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead letter.")
@click.pass_context
@guarded
def dead_retry(ctx: click.Context, ids: tuple[int, ...], retry_all: bool) -> None:
    """Put dead letters back in line (still-invalid rows are rejected again with the reason)."""
    from reporter.deadletters import requeue_dead_letters

    if bool(ids) == retry_all:
        raise click.UsageError("give row IDs or --all (not both)")
    cfg = _config(ctx)
    store = _open(cfg, writable=True)
    try:
        result = requeue_dead_letters(store, cfg.hub, None if retry_all else list(ids))
    finally:
        store.close()
    click.echo(f"requeued {len(result.requeued)} rows")
    for rid, reason in result.still_rejected:
        click.echo(f"row {rid} still rejected: {reason}", err=True)
    if result.unknown:
        _fail(f"not dead letters: {', '.join(map(str, result.unknown))}")


@cli.command()
@click.option("--stream", help="Only this stream.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@guarded
def tasks(ctx: click.Context, stream: str | None, as_json: bool) -> None:
    """One line per task: last state sent, pending rows, mapping, artifacts, staleness."""
    from rich.table import Table

    from reporter import views

    cfg = _config(ctx)
    store = _open(cfg)
    try:
        entries = views.task_entries(store.tasks(stream), time.time(), cfg)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    table = Table(
        "stream", "task", "status", "%", "updated", "pending", "mapped", "artifacts", "promise"
    )
    for e in entries:
        mapped = {True: e["configuration_id"] or "yes", False: "[red]NO[/]", None: "…"}[e["mapped"]]
        promise = {"stale": "[red]STALE[/]", "lapsing": "[yellow]lapsing[/]"}.get(
            e["promise"] or "", e["promise"] or "-"
        )
        table.add_row(
            e["stream"],
            e["task"],
            e["status"] or "-",
            "" if e["progress_percent"] is None else str(e["progress_percent"]),
            e["update_date_time"] or "-",
            str(e["pending"]),
            mapped,
            str(len(e["artifacts"])),
            promise,
        )
    _console().print(table)


@cli.command()
@click.pass_context
@guarded
def check(ctx: click.Context) -> None:
    """Prove config, outbox, credentials, home Region and permissions (changes nothing)."""
    from reporter.check import run_checks

    sys.exit(run_checks(_config_path(ctx), click.echo))


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
    """Run a local Migration Hub stand-in (for trying things out)."""
    import threading

    from reporter.emulator import Emulator

    region = None if home_region.lower() == "none" else home_region
    em = Emulator(host, port, home_region=region, map_delay=map_delay).start()
    click.echo(f"Migration Hub stand-in on {em.url} (home Region: {region or 'not set'})")
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
    """The whole path on one machine: stand-in Hub, a simulated tool, the daemon."""
    from reporter.demo import run_demo

    sys.exit(run_demo(task_count))


def main() -> None:
    """Console-script entry point (also of the .pyz and of the packages' launcher): the
    program is called mgh-reporter in messages however it was started."""
    cli(obj={}, prog_name="mgh-reporter")
