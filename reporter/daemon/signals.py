"""Process set-up for long-running commands (`run`, `drain`): signals that arrive during
start-up held, SIGTERM/SIGINT/SIGHUP turned into flags the main loop reads, and glibc malloc
kept to one arena."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["hold_signals", "one_malloc_arena", "stop_on_signals"]

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def one_malloc_arena() -> None:
    """Make glibc malloc share one arena among all threads (as MALLOC_ARENA_MAX=1 would) before
    any thread starts. By default every thread that allocates may get an arena of its own, up to
    8 per core, each fragmenting on its own: ~2.5 MB of a 64 MiB sidecar for the Hub call pool.
    Contention costs nothing here: the GIL already serialises our threads. Elsewhere (not
    glibc), a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is not None:
            mallopt(M_ARENA_MAX, 1)
    except OSError:
        pass


_held: list[int] = []  # signals received between `hold_signals` and `stop_on_signals`


def hold_signals() -> None:
    """Call first thing in a long-running command: SIGTERM/SIGINT/SIGHUP that arrive while it
    still imports and opens its files are remembered and acted on by `stop_on_signals`, rather
    than killing it by their default action (a reload sent during start-up must not kill)."""
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda signum, frame: _held.append(signum))
    one_malloc_arena()


@contextmanager
def stop_on_signals(
    stop: threading.Event, reload: threading.Event | None = None
) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop`, SIGHUP sets `reload` (or is ignored when there is none, so a
    stray hang-up never kills us); the main loop acts on the flags."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            if reload is not None:
                reload.set()
        else:
            stop.set()

    for s in previous:
        signal.signal(s, handler)
    while _held:
        handler(_held.pop(0), None)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
