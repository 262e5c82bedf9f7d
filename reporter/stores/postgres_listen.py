"""PostgreSQL wake-ups: `LISTEN` for the intake trigger's notification on a connection of its
own, so the daemon sleeps on a socket, not a poll."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from reporter.secrets import redact_url
from reporter.stores.postgres import RECONNECT_BASE, RECONNECT_MAX, connect_kwargs, first_line
from reporter.stores.postgres_schema import CHANNEL

__all__ = ["Listener"]


class Listener:
    """Calls `on_change` when a tool commits rows to the outbox: `LISTEN` on a connection of
    its own, on its own thread, blocked on the socket between notifications (no queries). A lost
    connection is retried with backoff; after reconnecting it calls `on_change` once (a
    notification may have been missed). `waker`-compatible: start, rearm, close, mode."""

    def __init__(self, url: str, on_change: Callable[[], None]) -> None:
        self.url, self.where = url, redact_url(url)
        self._on_change = on_change
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread: threading.Thread | None = None
        self._log = structlog.get_logger("reporter.wake")
        self.mode: str | None = None

    def start(self) -> None:
        """Listen on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="listen", daemon=True)
        self._thread.start()

    def rearm(self) -> None:
        """Nothing to re-arm: the channel belongs to the database, not to a file."""

    def close(self) -> None:
        """Stop listening (the thread ends at its next wake; it never holds the process)."""
        self._stop.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **connect_kwargs()) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if self.mode is None:
                        self._log.info("wakeups", mode="listen", channel=CHANNEL)
                    elif failures:
                        self._log.info("listen_reconnected", outbox=self.where)
                        self._on_change()  # whatever was committed while we were away
                    self.mode, failures = "listen", 0
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._on_change()
            except psycopg.Error as exc:
                failures += 1
                delay = min(RECONNECT_MAX, RECONNECT_BASE * 2 ** (failures - 1))
                if failures == 1 or failures % 10 == 0:
                    self._log.warning(
                        "listen_lost", outbox=self.where, error=first_line(exc),
                        retry_in=round(delay, 1),
                    )
                self._stop.wait(delay)
