"""What the command-line commands share: loading the config (and the event log it sets up),
one-line failures instead of tracebacks, the outbox opened for reading or writing, and the help
layout."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from reporter import config as config_mod
from reporter.config import Config, ConfigError
from reporter.exits import Exit
from reporter.outbox import OutboxValueError
from reporter.secrets import scrub
from reporter.stores import Engine
from reporter.stores.errors import StoreError
from reporter.stores.lock import LockError

if TYPE_CHECKING:
    from rich.console import Console

    from reporter.stores.contract import OutboxStore

__all__ = [
    "WholeHelpGroup",
    "config_file",
    "console",
    "existing_outbox",
    "fail",
    "guarded",
    "load_config",
    "logging_config",
    "open_store",
]

F = TypeVar("F", bound=Callable[..., Any])


def console() -> Console:
    """Rich output; wide when piped so scripts and logs get whole lines."""
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=220)


def fail(message: str, code: int = Exit.ERROR) -> None:
    click.echo(f"mgh-reporter: {scrub(message)}", err=True)
    sys.exit(code)


def config_file(ctx: click.Context) -> Path:
    return config_mod.config_path(ctx.ensure_object(dict).get("config_path"))


def load_config(ctx: click.Context) -> Config:
    """The validated config (loaded once per command; configures nothing)."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "config" not in obj:
        try:
            obj["config"] = config_mod.load(config_file(ctx))
        except ConfigError as exc:
            fail(str(exc))
    result: Config = obj["config"]
    return result


def logging_config(ctx: click.Context) -> Config:
    """The config, with the event log set up as it says (for the commands that deliver).

    Call it before importing what delivers: with JSON logs nothing renders to a terminal, so
    structlog is kept from loading its optional pretty-printer, rich (~5 MB of a 64 MiB
    sidecar); a `None` in `sys.modules` makes structlog's `import rich` fail as if absent."""
    cfg = load_config(ctx)
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
            fail(str(exc))
        except OutboxValueError as exc:
            fail(f"invalid update: {exc}", Exit.USAGE)

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


def existing_outbox(ctx: click.Context, logging: bool = False) -> Config:
    """The config, once its outbox exists; else exit 1 naming the `init` command to run."""
    cfg = logging_config(ctx) if logging else load_config(ctx)
    given = ctx.ensure_object(dict).get("config_path")
    init = "mgh-reporter " + (f"--config {given} " if given else "") + "init"
    problem = Engine.of(cfg.outbox).missing(init)
    if problem is not None:
        fail(problem)
    return cfg


def open_store(cfg: Config, writable: bool = False) -> OutboxStore:
    engine = Engine.of(cfg.outbox)
    return engine.open() if writable else engine.open_view()
