"""`StoreError`, the one exception every outbox engine raises: in a module of its own so the
shell writers (`notify` and the rest) can name it without importing the daemon's records."""

from __future__ import annotations

__all__ = ["StoreError"]


class StoreError(Exception):
    """The outbox file cannot be used; the message says which file and why.

    `busy` is True when the only problem was the write lock staying taken past the busy
    timeout (other writers): transient, the next pass tries again. `needs_init` is True for a
    valid outbox table without (current) delivery tables: `init` would make it usable.
    `damaged` is True when the file cannot be trusted (SQLITE_CORRUPT, SQLITE_NOTADB): nothing
    may be written or checkpointed into it any more.
    """

    def __init__(
        self,
        message: str,
        busy: bool = False,
        needs_init: bool = False,
        cause: str | None = None,
        damaged: bool = False,
    ) -> None:
        super().__init__(message)
        self.busy = busy
        self.needs_init = needs_init
        self.damaged = damaged
        self.cause = cause or message  # the engine's own words (one event per distinct cause)
