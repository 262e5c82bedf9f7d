"""`status`: the report gathered from the outbox and the daemon's live state, and its lines for
people, once or refreshed in place (`--watch`)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from reporter import live
from reporter import report as views
from reporter.config import Config
from reporter.files import trusted_owners
from reporter.stores import Engine
from reporter.stores.contract import StoreError
from reporter.stores.lock import lock_holder

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["esc", "gather", "lines", "nobody_speaks_for", "watch"]


def esc(text: object) -> str:
    """Text from the outbox, the Hub or the config, shown literally by rich (`[hub]` in a
    reason is not markup)."""
    return escape(str(text))


def _live_state(cfg: Config) -> live.LiveState | None:
    owners = None if cfg.outbox.postgres else trusted_owners(cfg.outbox.path.parent)
    return live.read_freshest(
        live.candidates(cfg.outbox.live_state_path, cfg.outbox.where), owners
    )


def nobody_speaks_for(cfg: Config) -> bool:
    """True when an SQLite outbox is missing and no daemon's live state speaks for it."""
    if cfg.outbox.postgres or cfg.outbox.path.exists():
        return False
    state = _live_state(cfg)
    return state is None or state.health == "stopped"


def gather(cfg: Config) -> views.StatusReport:
    """The `status --json` document, read now."""
    now = time.time()
    state = _live_state(cfg)
    counts = gate = health = None
    error = None
    replicas: list[Any] = []
    apps: list[dict[str, Any]] = []

    try:
        store = Engine.of(cfg.outbox).open_view()
        try:
            health = views.task_health(store.tasks(), now, cfg)
            apps = views.application_entries(store.applications())
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
    if error is None:
        held = [e for e in apps if e["held"]]
        report.applications, report.applications_held = len(apps), len(held)
        report.held_reason = held[0]["last_error"] if held else None
    if cfg.outbox.postgres:
        report.replicas = [views.replica_view(r, now) for r in replicas]
    return report


def watch(cfg: Config, as_json: bool, every: float, console: Console) -> None:
    """Refresh until Ctrl-C: in place on a terminal, else one report after another."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    def render() -> Group:
        report = gather(cfg)
        shown = [Text.from_markup(line) for line in lines(report, cfg)]
        stamp = time.strftime("%H:%M:%S")
        return Group(*shown, Text(f"  every {every:g}s, last {stamp}; Ctrl-C to stop", "dim"))

    try:
        if as_json:
            while True:
                print(json.dumps(gather(cfg).to_json()), flush=True)
                time.sleep(every)
        elif console.is_terminal:
            with Live(render(), console=console, auto_refresh=False, screen=False) as view:
                while True:
                    time.sleep(every)
                    view.update(render(), refresh=True)
        else:
            while True:
                console.print(render())
                console.print()
                time.sleep(every)
    except KeyboardInterrupt:
        return


def state_line(report: views.StatusReport) -> str:
    """The one-line state, rich markup: each state tells only what is true of it (a block its
    own cause and time; "delivering" only once the Hub has answered)."""
    if report.outbox_unusable:
        return f"[bold red]OUTBOX UNUSABLE[/]: {esc(report.outbox_unusable)}"
    if report.blocked:
        since = f" since {report.blocked_since}" if report.blocked_since else ""
        return f"[bold red]BLOCKED[/]{since}: {esc(report.blocked)}"
    if report.daemon_state == "hung":
        return "[bold red]HUNG[/]: the daemon stopped ticking without stopping cleanly"
    if report.daemon_state != "running":
        return "[bold]not running[/]: nothing is delivering (start `mgh-reporter run`)"
    if report.outage_backoff:
        return "[bold yellow]BACKING OFF[/]: every call is failing; probing at a slow pace"
    if report.last_success is None and report.home_region is None:
        if report.pending:
            return ("[bold yellow]not delivered yet[/]: running, no call has reached the Hub"
                    " yet (see last error)")
        return "[bold green]ready[/]: running, nothing sent yet (the Hub is asked when rows come)"
    return "[bold green]delivering[/]"


def lines(report: views.StatusReport, cfg: Config) -> list[str]:
    """The human report, one rich-markup line each."""
    out: list[str] = []
    headline = state_line(report)
    pid, daemon = report.daemon_pid, report.daemon
    out.append(f"mgh-reporter  {esc(cfg.outbox.where)}")
    out.append(f"  state        {headline}")
    beat = ""
    if pid and daemon and daemon["running"] and daemon["live_state"]:
        beat = f", heartbeat {daemon['heartbeat_age_seconds']:.0f}s ago"
    elif daemon and daemon["running"]:
        beat = ", holding the outbox (no live state)"
    if report.replicas is not None:
        live_ones = report.replicas
        out.append(f"  replicas     {len(live_ones)} live")
        for r in live_ones:
            out.append(
                f"    {esc(r['host'])} pid {r['pid']} ({r['role']}), heartbeat"
                f" {r['heartbeat_age_seconds']:.0f}s ago, up {r['up_seconds']:.0f}s"
            )
    else:
        out.append(f"  daemon       {'pid ' + str(pid) + beat if pid else 'not running'}")
    if daemon and daemon["running"] and daemon["last_error"]:
        out.append(f"  last error   {esc(daemon['last_error'])}")
    for warning in report.warnings:
        out.append(f"  [bold yellow]warning[/]      {esc(warning)}")
    out.append(f"  home region  {_home_region(report)}")
    if report.pending is None:
        out.append("  backlog      unknown: the outbox cannot be read")
        return out
    oldest = report.oldest_pending_seconds
    out.append(
        f"  backlog      {report.pending} pending"
        + (f", oldest {oldest:.0f}s" if oldest is not None else "")
    )
    out.append(
        f"  delivered    {report.delivered} ({report.sent} sent, "
        f"{report.superseded} superseded)   last success {report.last_success or 'never'}"
    )
    dead = report.dead_letters
    dropped = report.dropped
    out.append(
        f"  dead letters {dead}"
        + ("  → mgh-reporter dead-letters list" if dead else "")
        + (f"   ({dropped} dropped, kept until pruned)" if dropped else "")
    )
    out.append(
        f"  tasks        {report.tasks}: {report.stale_tasks} stale, "
        f"{report.lapsing_tasks} lapsing, {report.unmapped_tasks} unmapped"
        + (f", [yellow]{report.hub_differs} differ at the Hub[/] → mgh-reporter verify"
           if report.hub_differs else "")
    )
    if report.send_rate:
        out.append(f"  [yellow]throttled[/]    the account's Migration Hub rate holds this host to"
                   f" {report.send_rate:.2f} calls/s (adapting; shared by every host and tool"
                   " of the account)")
    if report.throttle_tolerated:
        out.append(f"  throttles    up to {100 * report.throttle_tolerated:.0f}% come whatever"
                   " this host sends: not cut for")
    if report.applications:
        held = (f", [bold red]{report.applications_held} BLOCKED[/] (only their states wait):"
                f" {esc(report.held_reason)}" if report.applications_held else "")
        out.append(f"  applications {report.applications}{held}  → mgh-reporter applications")
    for stream, counts in sorted(report.streams.items()):
        out.append(
            f"    {esc(stream)}: {counts['tasks']} tasks, {counts['stale']} stale, "
            f"{counts['lapsing']} lapsing"
        )
    return out


def _home_region(report: views.StatusReport) -> str:
    """The home Region as the daemon last learnt it (none beside a block saying there is
    none: the report leaves it out then)."""
    if report.home_region is None and report.blocked:
        return "unknown (see state)"
    return report.home_region or "unknown yet"
