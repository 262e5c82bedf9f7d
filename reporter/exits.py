"""The exit codes every command uses (README: Commands)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Exit"]


class Exit(IntEnum):
    """What a command's exit status says."""

    OK = 0
    ERROR = 1
    USAGE = 2
    PENDING = 3  # drain: rows still waiting at its deadline
    BLOCKED = 4  # delivery blocked (no home Region, access denied, the outbox unusable)
    REJECTED = 5  # dead letters
    DIFFERS = 6  # verify: the Hub differs from what was sent
    HUNG = 7  # the daemon stopped ticking
