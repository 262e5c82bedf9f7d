"""Wake-ups: notice a commit to the outbox at once (inotify on its directory), or by polling
`PRAGMA data_version` where inotify is unavailable."""

from __future__ import annotations

import contextlib
import os
import select
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

__all__ = ["DEBOUNCE_SECONDS", "POLL_SECONDS", "Waker"]

# After the first event, wait this long for the rest of a burst (a transaction writes the WAL
# several times; a tool may commit many rows in a row) before asking for one pass.
DEBOUNCE_SECONDS = 0.02
# Without inotify: how often the outbox's data_version is read (one cheap query).
POLL_SECONDS = 0.1


class Waker:
    """Calls `on_change` soon after any connection writes the outbox; runs on its own thread.

    With inotify (Linux), it watches the outbox's directory and reacts to writes of the file,
    its `-wal` and its `-journal` (a directory watch survives the files being replaced). The
    daemon's own commits and checkpoints also fire: `on_change` must be cheap when nothing new
    was committed by others (the relay's `quiet()` reads `PRAGMA data_version`, which only
    another connection's commit changes). Elsewhere, or when the kernel refuses a watch (e.g.
    `fs.inotify.max_user_watches`), it polls `PRAGMA data_version` on a read-only connection
    of its own and says so once in the log.
    """

    def __init__(
        self,
        path: Path,
        on_change: Callable[[], None],
        debounce: float = DEBOUNCE_SECONDS,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.path = path
        self._on_change = on_change
        self._debounce_ms = max(0, round(debounce * 1000))
        self._poll = poll
        self._stop = threading.Event()
        self._rearm = threading.Event()
        # close() and rearm() write a byte here to end a wait at once: the thread sleeps in
        # poll() on inotify and this pipe, with no timeout, so an idle waker costs nothing.
        self._nudge_r, self._nudge_w = os.pipe()
        os.set_blocking(self._nudge_r, False)
        os.set_blocking(self._nudge_w, False)
        self._thread: threading.Thread | None = None
        self._log = structlog.get_logger("reporter.wake")
        self.mode: str | None = None  # "inotify" or "poll", once started

    def start(self) -> None:
        """Start watching (the thread is a daemon thread: it never holds the exit)."""
        self._thread = threading.Thread(target=self._run, name="wake", daemon=True)
        self._thread.start()

    def rearm(self) -> None:
        """The outbox was reopened (replaced, restored): watch it afresh."""
        self._rearm.set()
        self._nudge()

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._nudge()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for fd in (self._nudge_r, self._nudge_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _nudge(self) -> None:
        with contextlib.suppress(OSError):  # full (a nudge is pending anyway) or closed
            os.write(self._nudge_w, b"!")

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        reason = self._inotify()
        if reason is not None and not self._stop.is_set():
            self.mode = "poll"
            self._log.warning(
                "wakeups_polling",
                reason=reason,
                poll_seconds=self._poll,
                hint="new rows are noticed within the poll interval instead of at once",
            )
            self._poll_loop()

    def _inotify(self) -> str | None:
        """Watch with inotify until stopped; the reason it cannot, if it cannot."""
        try:
            from inotify_simple import INotify, flags
        except ImportError as exc:  # not Linux, or the package is missing
            return f"inotify unavailable: {exc}"
        names = {self.path.name + suffix for suffix in ("", "-wal", "-journal")}
        mask = (
            flags.MODIFY | flags.CLOSE_WRITE | flags.CREATE | flags.MOVED_TO  # written, replaced
            | flags.DELETE | flags.MOVED_FROM  # gone: the daemon says so at once
        )
        try:
            inotify = INotify()
        except OSError as exc:
            return f"inotify_init failed: {exc.strerror}"
        try:
            watch = self._watch(inotify, mask)
            if isinstance(watch, str):
                return watch
            self.mode = "inotify"
            self._log.info("wakeups", mode="inotify", directory=str(self.path.parent))
            poller = select.poll()
            poller.register(inotify.fileno(), select.POLLIN)
            poller.register(self._nudge_r, select.POLLIN)
            while not self._stop.is_set():
                if self._rearm.is_set():
                    self._rearm.clear()
                    _forget(inotify, watch)
                    watch = self._watch(inotify, mask)
                    if isinstance(watch, str):
                        return watch
                poller.poll()
                with contextlib.suppress(OSError):
                    os.read(self._nudge_r, 64)
                if self._stop.is_set():
                    break
                # Let the rest of a burst arrive (one wake-up for a transaction, or for a tool
                # committing row after row), then take every event queued.
                time.sleep(self._debounce_ms / 1000)
                events = inotify.read(timeout=0)
                if any(e.name in names for e in events) and not self._stop.is_set():
                    self._on_change()
                if any(e.mask & flags.IGNORED for e in events):
                    self._rearm.set()  # the directory itself went away or was replaced
        finally:
            inotify.close()
        return None

    def _watch(self, inotify: Any, mask: int) -> int | str:
        try:
            return int(inotify.add_watch(str(self.path.parent), mask))
        except OSError as exc:
            return f"cannot watch {self.path.parent}: {exc.strerror}"

    def _poll_loop(self) -> None:
        conn: sqlite3.Connection | None = None
        seen: int | None = None
        while not self._stop.wait(self._poll):
            if self._rearm.is_set() and conn is not None:
                self._rearm.clear()
                conn.close()
                conn, seen = None, None
            try:
                if conn is None:
                    uri = f"{self.path.absolute().as_uri()}?mode=ro"
                    conn = sqlite3.connect(uri, uri=True, timeout=1)
                version = int(conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                if conn is not None:
                    conn.close()
                conn = None  # gone or locked: the daemon's own checks report it
                continue
            if seen is not None and version != seen:
                self._on_change()
            seen = version
        if conn is not None:
            conn.close()


def _forget(inotify: Any, watch: int) -> None:
    with contextlib.suppress(OSError):  # already gone with its directory
        inotify.rm_watch(watch)
