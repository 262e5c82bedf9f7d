"""The command line: `main` (the console script `mgh-reporter`) and the click group `cli`, built
in `commands`; each command's body lives in a module of its own beside it."""

from reporter.cli.commands import cli, main

__all__ = ["cli", "main"]
