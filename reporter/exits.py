"""The exit codes every command uses (README: Commands)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Exit"]


class Exit(IntEnum):
    """What a command's exit status says."""

    OK = 0  # done: delivered, matching, or nothing wrong to report
    ERROR = 1  # an error the message names (the config, the outbox unusable, a lock held)
    USAGE = 2  # bad arguments, or a row a writer refused (the field and the rule named)
    PENDING = 3  # drain: rows still waiting at its deadline
    BLOCKED = 4  # delivery blocked (no home Region, access denied, the outbox unusable)
    REJECTED = 5  # dead letters
    DIFFERS = 6  # verify: the Hub differs from what was sent
    HUNG = 7  # the daemon stopped ticking
