"""`dead-letters`: rows rejected with a reason, listed, put back in line, or dropped for good."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

import click

from reporter.cli.base import WholeHelpGroup, console, existing_outbox, fail, guarded, open_store
from reporter.exits import Exit

__all__ = ["dead_letters"]


@click.group("dead-letters", cls=WholeHelpGroup)
def dead_letters() -> None:
    """Rows rejected with a reason: list them, put them back in line, or drop them."""


@dead_letters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@guarded
def dead_list(ctx: click.Context, as_json: bool) -> None:
    """List rejected rows with their reasons."""
    from rich.table import Table

    from reporter import report as views
    from reporter.cli.status import esc

    cfg = existing_outbox(ctx)
    store = open_store(cfg)
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
    console().print(table if letters else "no dead letters")


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
    from reporter.cli.dead_letter_actions import requeue_dead_letters

    if bool(ids) == retry_all:
        raise click.UsageError(RETRY_USAGE if not ids else "give row IDs or --all, not both")
    cfg = existing_outbox(ctx)
    store = open_store(cfg, writable=True)
    try:
        result = requeue_dead_letters(store, cfg, None if retry_all else list(ids))
    finally:
        store.close()
    click.echo(f"requeued {len(result.requeued)} rows")
    for rid, reason in result.still_rejected:
        click.echo(f"row {rid} still rejected: {reason}", err=True)
    if result.unknown:
        fail(f"not dead letters: {', '.join(map(str, result.unknown))}")


class _Age(click.ParamType):  # type: ignore[type-arg]
    """A duration like 30m, 12h, 7d."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from reporter.cli.dead_letter_actions import parse_age

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

    from reporter.cli.dead_letter_actions import drop_dead_letters

    if sum((bool(ids), drop_all, older_than is not None)) != 1:
        raise click.UsageError(DROP_USAGE)
    cfg = existing_outbox(ctx, logging=True)
    store = open_store(cfg, writable=True)
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
            fail(f"not dead letters: {', '.join(map(str, absent))} (nothing dropped)")
        if not selected:
            click.echo("no dead letters to drop")
            return
        what = _count_ids(selected)
        if not yes:
            if not (sys.stdin.isatty() and sys.stdout.isatty()):
                fail(f"would drop {what}: not on a terminal, so add --yes", Exit.USAGE)
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
        fail(f"no longer dead letters (retried or dropped meanwhile): "
              f"{', '.join(map(str, result.unknown))}")


def _count_ids(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:10])) + (", …" if len(ids) > 10 else "")
    return f"{len(ids)} dead letter{'s' if len(ids) != 1 else ''} ({shown})"
