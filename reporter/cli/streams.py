"""`streams`: the progress update streams the Hub has beside the outbox's, and deleting one at
the end of a project (at the Hub, waiting for it, then forgotten by the outbox)."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

import click

from reporter.cli.base import WholeHelpGroup, console, existing_outbox, fail, guarded, open_store
from reporter.config import Config
from reporter.exits import Exit
from reporter.stores.lock import lock_holder

if TYPE_CHECKING:  # the SDK loads only when a command of this group runs (shell writers
    from reporter.hub.client import Hub  # stay light)

__all__ = ["streams"]

POLL_SECONDS = 1.0


@click.group("streams", cls=WholeHelpGroup)
def streams() -> None:
    """Progress update streams: list them (at the Hub and in the outbox), or delete one."""


def _hub_streams(hub: Hub) -> set[str]:
    return {s["ProgressUpdateStreamName"] for s in hub.pages(
        "ListProgressUpdateStreams", {}, "ProgressUpdateStreamSummaryList", 100)}


def _hub(cfg: Config) -> Hub:
    """The Hub adapter in the home Region; a person's fix needed (no home Region, access
    denied, credentials) exits 4 with the reason."""
    from reporter.hub.client import Hub
    from reporter.hub.errors import HubError, Outcome

    hub = Hub(cfg.aws, cfg.hub.region)
    try:
        hub.resolve_region()
    except HubError as err:
        fail(f"{err.operation}: {err.failure}", Exit.BLOCKED if
             err.failure.outcome is Outcome.BLOCKED else Exit.ERROR)
    return hub


@streams.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per stream.")
@click.pass_context
@guarded
def streams_list(ctx: click.Context, as_json: bool) -> None:
    """Every stream the Hub has and every stream the outbox has tasks of: whether the Hub has
    it, and the outbox's tasks in it with their rows taken in and not delivered yet."""
    from reporter.hub.errors import HubError

    cfg = existing_outbox(ctx)
    store = open_store(cfg)
    try:
        records = store.tasks()
    finally:
        store.close()
    hub = _hub(cfg)
    at_hub: set[str] = set()
    try:
        at_hub = _hub_streams(hub)
    except HubError as err:
        fail(f"{err.operation}: {err.failure}")
    tasks = Counter(r.stream for r in records)
    pending = Counter({s: 0 for s in tasks})
    for r in records:
        pending[r.stream] += r.pending
    entries = [{"stream": name, "at_hub": name in at_hub, "tasks": tasks.get(name, 0),
                "pending": pending.get(name, 0)} for name in sorted(at_hub | set(tasks))]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    from rich import box
    from rich.table import Table

    from reporter.cli.status import esc

    table = Table("stream", "at the Hub", "our tasks", "pending rows", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for e in entries:
        table.add_row(esc(e["stream"]), "yes" if e["at_hub"] else "NO", str(e["tasks"]),
                      str(e["pending"]))
    console().print(table if entries else "no streams at the Hub, none in the outbox")


def _daemon_running(cfg: Config) -> str | None:
    """Who delivers from this outbox now (a running `run`, or a live replica), if anyone."""
    if not cfg.outbox.postgres:
        holder = lock_holder(cfg.outbox.path)
        return None if holder is None else f"pid {holder}"
    store = open_store(cfg)
    try:
        live = store.replicas()
    finally:
        store.close()
    return ", ".join(f"{r.host} pid {r.pid}" for r in live) or None


@streams.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask (needed when not on a terminal).")
@click.option("--force", is_flag=True,
              help="Even while a daemon delivers from this outbox.")
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds to wait for the Hub to finish deleting.")
@click.pass_context
@guarded
def streams_delete(ctx: click.Context, name: str, yes: bool, force: bool,
                   timeout: float) -> None:
    """Delete a stream at the Hub (DeleteProgressUpdateStream: its tasks and their history
    go), wait for the deletion to finish, then let the outbox forget it: later rows of it
    create it and import their tasks again, and no repair restores what was deleted.

    Asks first on a terminal (--yes elsewhere). Refuses while a daemon delivers from this
    outbox, whose rows could reach the stream while it is being deleted (--force to go on).
    Exit 0 deleted, 1 error, 2 not confirmed, 3 still being deleted at --timeout (run it
    again), 4 blocked."""
    cfg = existing_outbox(ctx)
    running = _daemon_running(cfg)
    if running and not force:
        fail(f"a daemon ({running}) delivers from this outbox: stop it first (its rows could"
             f" reach {name} while the Hub deletes it), or add --force")
    store = open_store(cfg)
    try:
        ours = sum(1 for r in store.tasks(name))
    finally:
        store.close()
    question = (f"Delete stream {name!r} at the Hub, with every task in it and its history "
                f"({ours} of them from this outbox)? This cannot be undone")
    if not yes:
        if not sys.stdin.isatty():
            fail("streams delete changes the Hub for good: add --yes", Exit.USAGE)
        if not click.confirm(question, default=False):
            fail("nothing deleted", Exit.USAGE)
    hub = _hub(cfg)
    _delete_at_hub(hub, name, timeout)
    store = open_store(cfg, writable=True)
    try:
        count = store.forget_stream(name)
    finally:
        store.close()
    click.echo(f"deleted stream {name} at the Hub; the outbox forgot it ({count} tasks: later"
               " rows create the stream and import them again)")


def _delete_at_hub(hub: Hub, name: str, timeout: float) -> None:
    """DeleteProgressUpdateStream, then wait until the Hub no longer lists it (the deletion
    is asynchronous); a stream the Hub does not have is already deleted."""
    from reporter.hub.errors import HubError, Outcome

    try:
        hub.call("DeleteProgressUpdateStream", {"ProgressUpdateStreamName": name})
    except HubError as err:
        if err.failure.code != "ResourceNotFoundException":
            fail(f"DeleteProgressUpdateStream: {err.failure}",
                 Exit.BLOCKED if err.failure.outcome is Outcome.BLOCKED else Exit.ERROR)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if name not in _hub_streams(hub):
                return
        except HubError as err:
            if err.failure.outcome is not Outcome.TRANSIENT:
                fail(f"ListProgressUpdateStreams: {err.failure}")
        if time.monotonic() >= deadline:
            fail(f"the Hub is still deleting {name} after {timeout:.0f} s: run this again to"
                 " wait for it (the outbox forgets the stream only once it is gone)",
                 Exit.PENDING)
        time.sleep(POLL_SECONDS)
