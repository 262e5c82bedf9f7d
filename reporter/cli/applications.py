"""`applications`: one line per Application Discovery Service application that rows named, with
the migration status last sent, rows pending and why its states wait, if they do."""

from __future__ import annotations

import json

import click

from reporter.cli.base import console, existing_outbox, guarded, open_store

__all__ = ["applications"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per application.")
@click.pass_context
@guarded
def applications(ctx: click.Context, as_json: bool) -> None:
    """One line per application: the status last sent (NotifyApplicationState), its
    UpdateDateTime, rows pending, and the error its states wait on (a missing
    migrationhub-discovery role, for one)."""
    from rich import box
    from rich.table import Table

    from reporter import report as views
    from reporter.cli.status import esc

    cfg = existing_outbox(ctx)
    store = open_store(cfg)
    try:
        entries = views.application_entries(store.applications())
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("no applications yet (write application_state rows, or"
                   " `mgh-reporter application-state APPLICATION_ID STATUS`)")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("application", overflow="fold", ratio=1, min_width=12)
    table.add_column("status", no_wrap=True)
    table.add_column("updated", overflow="fold", max_width=20, min_width=10)
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("waiting on", overflow="fold", ratio=1)
    for e in entries:
        table.add_row(esc(e["application"]), e["status"] or "-", e["update_date_time"] or "-",
                      str(e["pending"]), esc(e["last_error"] or "") if e["pending"] else "")
    console().print(table)
