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
from reporter.process import EXIT, LockError, hold_signals, stop_on_signals
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
    if "rich" in sys.modules and sys.modules["rich"] is None:
        del sys.modules["rich"]  # structlog has made its choice; `drain`'s bar may load it
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


class WholeHelpGroup(click.Group):
    """A command group whose help lists each command's first sentence whole (click cuts it to
    fit one line, ending in "...", which hid what `drain` and `status` do)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (name, cmd.get_short_help_str(limit=10_000))
            for name in self.list_commands(ctx)
            if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=WholeHelpGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    cfg = _logging_config(ctx)
    cfg.outbox.engine.create(parents=parents).close()
    click.echo(f"outbox ready: {cfg.outbox.where}")


def _missing_outbox_hint(ctx: click.Context, logging: bool = False) -> Config:
    """The config, once its outbox exists; else exit 1 naming the `init` command to run."""
    cfg = _logging_config(ctx) if logging else _config(ctx)
    given = ctx.ensure_object(dict).get("config_path")
    init = "mgh-reporter " + (f"--config {given} " if given else "") + "init"
    problem = cfg.outbox.engine.missing(init)
    if problem is not None:
        _fail(problem)
    return cfg


@cli.command()
@click.pass_context
@guarded
def run(ctx: click.Context) -> None:
    """Run the daemon until SIGTERM/SIGINT (graceful: exits 0)."""
    hold_signals()
    cfg = _missing_outbox_hint(ctx, logging=True)
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
    cfg = _missing_outbox_hint(ctx, logging=True)
    from reporter.drain import drain as drain_outbox

    sys.exit(drain_outbox(cfg, timeout, as_json))


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
    row = _writer(_missing_outbox_hint(ctx)).task_state(
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
    row = _writer(_missing_outbox_hint(ctx)).resource_attributes(task, pairs, stream=stream)
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
    row = _writer(_missing_outbox_hint(ctx)).created_artifact(
        task, arn, description=description, stream=stream
    )
    click.echo(f"queued row {row}")


def _open(cfg: Config, writable: bool = False) -> OutboxStore:
    engine = cfg.outbox.engine
    return engine.open() if writable else engine.open_view()


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
    from reporter import statusview

    cfg = _config(ctx)
    if statusview.nobody_speaks_for(cfg):
        _missing_outbox_hint(ctx)  # no daemon to speak for a missing file: say what to run
    if watch:
        statusview.watch(cfg, as_json, every, _console())
        return
    report = statusview.gather(cfg)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        console = _console()
        for line in statusview.lines(report, cfg):
            console.print(line)
    if report["outbox_unusable"]:
        click.echo(f"mgh-reporter: {report['outbox_unusable']}", err=True)
        ctx.exit(EXIT["error"])
    if report["blocked"]:
        ctx.exit(EXIT["blocked"])
    if report["daemon_state"] == "hung":
        click.echo(f"mgh-reporter: {report['warnings'][-1]}", err=True)
        ctx.exit(EXIT["hung"])


@cli.group("dead-letters", cls=WholeHelpGroup)
def dead_letters() -> None:
    """Rows rejected with a reason: list them, put them back in line, or drop them."""


@dead_letters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@guarded
def dead_list(ctx: click.Context, as_json: bool) -> None:
    """List rejected rows with their reasons."""
    from rich.table import Table

    from reporter import views
    from reporter.statusview import esc

    cfg = _missing_outbox_hint(ctx)
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
            str(e["id"]), esc(e["kind"]), esc(e["stream"]), esc(e["task"]), esc(e["reason"]),
            e["rejected_at"],
        )
    _console().print(table if letters else "no dead letters")


RETRY_USAGE = """give the rows to retry: row IDs, or --all

  mgh-reporter dead-letters retry 17 42    # these two rows
  mgh-reporter dead-letters retry --all    # every dead letter

(`mgh-reporter dead-letters list` shows the IDs and why each row was rejected)"""

DROP_USAGE = """say which dead letters to drop: row IDs, --all, or --older-than DURATION

  mgh-reporter dead-letters drop 17 42            # these two rows
  mgh-reporter dead-letters drop --older-than 7d  # rejected more than 7 days ago
  mgh-reporter dead-letters drop --all --yes      # every one, without asking"""


@dead_letters.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead letter.")
@click.pass_context
@guarded
def dead_retry(ctx: click.Context, ids: tuple[int, ...], retry_all: bool) -> None:
    """Put dead letters back in line (still-invalid rows are rejected again with the reason).

    Give row IDs (from `dead-letters list`) or --all."""
    from reporter.deadletters import requeue_dead_letters

    if bool(ids) == retry_all:
        raise click.UsageError(RETRY_USAGE if not ids else "give row IDs or --all, not both")
    cfg = _missing_outbox_hint(ctx)
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


class _Age(click.ParamType):  # type: ignore[type-arg]
    """A duration like 30m, 12h, 7d."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from reporter.deadletters import parse_age

        if isinstance(value, float):
            return value
        try:
            return parse_age(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@dead_letters.command("drop")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "drop_all", is_flag=True, help="Drop every dead letter.")
@click.option(
    "--older-than",
    type=_Age(),
    help="Drop those rejected more than DURATION ago (30m, 12h, 7d, 1w).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask (required when not on a terminal).")
@click.pass_context
@guarded
def dead_drop(
    ctx: click.Context,
    ids: tuple[int, ...],
    drop_all: bool,
    older_than: float | None,
    yes: bool,
) -> None:
    """Drop dead letters for good: they leave `dead-letters list` and `status`'s count, and are
    pruned with the delivered rows after [outbox] retention_days.

    Give row IDs, --all, or --older-than DURATION (exactly one). Asks first on a terminal;
    elsewhere --yes is required."""
    import getpass

    import structlog

    from reporter.deadletters import drop_dead_letters

    if sum((bool(ids), drop_all, older_than is not None)) != 1:
        raise click.UsageError(DROP_USAGE)
    cfg = _missing_outbox_hint(ctx, logging=True)
    store = _open(cfg, writable=True)
    try:
        if ids:
            present = {d.id for d in store.dead_letters(list(ids))}
            selected = sorted(present)
            absent = sorted(set(ids) - present)
        else:
            cutoff = None if older_than is None else store.clock() - older_than
            selected = [
                d.id for d in store.dead_letters()
                if cutoff is None or (d.rejected_at or 0.0) < cutoff
            ]
            absent = []
        if absent:
            _fail(f"not dead letters: {', '.join(map(str, absent))} (nothing dropped)")
        if not selected:
            click.echo("no dead letters to drop")
            return
        what = _count_ids(selected)
        if not yes:
            if not (sys.stdin.isatty() and sys.stdout.isatty()):
                _fail(f"would drop {what}: not on a terminal, so add --yes", EXIT["usage"])
            if not click.confirm(f"Drop {what} for good?", default=False):
                click.echo("nothing dropped")
                return
        result = drop_dead_letters(store, selected, None)
    finally:
        store.close()
    structlog.get_logger("reporter.cli").warning(
        "dead_letters_dropped",
        rows=len(result.dropped),
        ids=result.dropped[:100],
        older_than_seconds=older_than,
        user=getpass.getuser(),
    )
    click.echo(f"dropped {len(result.dropped)} dead letters")
    if result.unknown:
        _fail(f"no longer dead letters (retried or dropped meanwhile): "
              f"{', '.join(map(str, result.unknown))}")


def _count_ids(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:10])) + (", …" if len(ids) > 10 else "")
    return f"{len(ids)} dead letter{'s' if len(ids) != 1 else ''} ({shown})"


TASKS_LEGEND = (
    "mapped: the Hub matched the task to a discovered server (its configuration id), NO: still "
    "unmapped after [mapping] unmapped_after_seconds, checking: not known yet.  promise: ok, "
    "lapsing (the next update is due soon), STALE (the promised NextUpdateSeconds has passed), "
    "- (finished, or no state sent yet)."
)


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

    from reporter import views
    from reporter.statusview import esc

    cfg = _missing_outbox_hint(ctx)
    store = _open(cfg)
    try:
        entries = views.task_entries(store.tasks(stream), time.time(), cfg)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("no tasks yet" + (f" in stream {stream!r}" if stream else ""))
        return
    table = Table(
        "stream", "task", "status", "%", "updated", "pending", "mapped", "artifacts", "promise"
    )
    for e in entries:
        mapped = {
            True: esc(e["configuration_id"] or "yes"), False: "[red]NO[/]", None: "checking"
        }[e["mapped"]]
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
    console = _console()
    console.print(table)
    console.print(TASKS_LEGEND, style="dim", highlight=False)


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
    """Run a local Migration Hub emulator (for trying things out)."""
    import threading

    from reporter.emulator import Emulator

    region = None if home_region.lower() == "none" else home_region
    em = Emulator(host, port, home_region=region, map_delay=map_delay).start()
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
    from reporter.demo import run_demo

    sys.exit(run_demo(task_count))


def main() -> None:
    """Console-script entry point (also of the .pyz and of the packages' launcher): the
    program is called mgh-reporter in messages however it was started."""
    cli(obj={}, prog_name="mgh-reporter")
