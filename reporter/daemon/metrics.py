"""Prometheus `/metrics` and `/healthz` over a small loopback HTTP listener."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reporter.stores.contract import Backlog

__all__ = ["Metrics", "MetricsServer"]


class Metrics:
    """The daemon's instruments, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pending = Gauge(
            "mgh_reporter_pending_rows", "Outbox rows not yet delivered", registry=r
        )
        self.oldest = Gauge(
            "mgh_reporter_oldest_pending_seconds", "Age of the oldest undelivered row", registry=r
        )
        self.dead_letters = Gauge(
            "mgh_reporter_dead_letters", "Rows rejected and kept with their reason", registry=r
        )
        self.requests = Counter(
            "mgh_reporter_api_requests",
            "Migration Hub API requests",
            ["operation", "outcome"],
            registry=r,
        )
        self.throttles = Counter(
            "mgh_reporter_throttles",
            "Migration Hub calls refused with ThrottlingException (the account's rate, shared"
            " by every host and tool of the account)",
            ["operation"],
            registry=r,
        )
        self.send_rate = Gauge(
            "mgh_reporter_send_rate",
            "Calls/s the adaptive rate allows this process (0: no limit of its own, throttling"
            " has not held it back)",
            registry=r,
        )
        self.latency = Histogram(
            "mgh_reporter_api_request_duration_seconds",
            "Migration Hub API latency",
            ["operation"],
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.blocked = Gauge(
            "mgh_reporter_blocked",
            "1 while delivery is blocked by something only a person can fix",
            registry=r,
        )
        self.backoff = Gauge(
            "mgh_reporter_outage_backoff",
            "1 while every call fails and only probes are sent",
            registry=r,
        )
        self.concurrency = Gauge(
            "mgh_reporter_concurrency_limit", "Current adaptive concurrency limit", registry=r
        )
        self.stale = Gauge(
            "mgh_reporter_stale_tasks",
            "Tasks whose NextUpdateSeconds promise has lapsed",
            ["stream"],
            registry=r,
        )
        self.lapsing = Gauge(
            "mgh_reporter_lapsing_tasks",
            "Tasks whose promise lapses within the warning window",
            ["stream"],
            registry=r,
        )
        self.unmapped = Gauge(
            "mgh_reporter_unmapped_tasks",
            "Tasks the Hub has not mapped to a discovered server",
            registry=r,
        )
        self.last_success = Gauge(
            "mgh_reporter_last_success_timestamp_seconds", "When a call last succeeded", registry=r
        )
        self.wal_bytes = Gauge(
            "mgh_reporter_outbox_wal_bytes",
            "Size of the outbox's -wal file (grows while a long-lived reader blocks checkpoints)",
            registry=r,
        )
        self.hub_differs = Gauge(
            "mgh_reporter_hub_differs",
            "Tasks whose Hub view differs from what was last sent (repair rounds, [verify])",
            registry=r,
        )
        self.repaired = Counter(
            "mgh_reporter_hub_repaired",
            "Tasks the Hub had lost (or was behind on) brought back to their newest state",
            registry=r,
        )
        self._oldest_created: float | None = None
        self.oldest.set_function(self._oldest_age)

    def _oldest_age(self) -> float:
        return 0.0 if self._oldest_created is None else max(0.0, time.time() - self._oldest_created)

    def observe_call(self, operation: str, outcome: str, seconds: float) -> None:
        """The Hub's observer: count and time one call."""
        self.requests.labels(operation, outcome).inc()
        if outcome == "throttled":
            self.throttles.labels(operation).inc()
        self.latency.labels(operation).observe(seconds)

    def set_backlog(self, backlog: Backlog) -> None:
        """Refresh backlog gauges from the store."""
        self.pending.set(backlog.pending)
        self._oldest_created = backlog.oldest_created_at
        self.dead_letters.set(backlog.dead_letters)


# The listener answers whatever other clients do (another local user, a port scanner): at most
# MAX_CONNECTIONS are served at once, each on a thread of its own; a connection has
# REQUEST_DEADLINE_SECONDS to send its whole request, however slowly it trickles in (a
# per-read timeout alone lets one byte every 1.5 s hold a slot for ever); our answer is not cut
# short; it is closed after one response (no keep-alive). With every slot taken, a new
# connection makes the oldest one still sending its request past EVICT_AFTER_SECONDS give way
# (only a slow client is that old), and waits up to SLOT_WAIT_SECONDS for the slot; a flood of
# fresh connections is closed at once.
MAX_CONNECTIONS = 8
REQUEST_TIMEOUT_SECONDS = 2.0  # per read
REQUEST_DEADLINE_SECONDS = 2.0  # per connection, from accept to the end of its request
EVICT_AFTER_SECONDS = 0.25
SLOT_WAIT_SECONDS = 0.5


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = REQUEST_TIMEOUT_SECONDS  # socket timeout: a slow or idle client is dropped
    protocol_version = "HTTP/1.0"  # one request per connection

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not events."""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.answering(self.connection)  # the request is in: the deadline is met
        path = self.path.split("?")[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            problem = self.server.health()
            if problem is None:
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            else:
                self._send(503, f"unhealthy: {problem}\n".encode(), "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")


class MetricsServer(ThreadingHTTPServer):
    """Serves one Metrics and a health callback (None: healthy, else the reason), on IPv4 or
    IPv6, with at most MAX_CONNECTIONS connections served at once."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self, address: tuple[str, int], metrics: Metrics, health: Callable[[], str | None]
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.metrics, self.health = metrics, health
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._active: dict[Any, float] = {}  # connection -> when it was accepted
        self._active_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="metrics")
        self._reaper = threading.Thread(target=self._reap, daemon=True, name="metrics-deadline")

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection while a slot is free; with none free, the oldest slow
        connection gives way; failing that the new one is closed at once (the scraper retries;
        an attacker's flood costs nothing)."""
        # with no slot free, wait only when one is about to be (a slow connection was just
        # evicted: its handler ends within milliseconds); a flood of fresh ones is closed at once
        if not self._slots.acquire(blocking=False) and (
                not self._evict_oldest() or not self._slots.acquire(timeout=SLOT_WAIT_SECONDS)):
            self.shutdown_request(request)
            return
        with self._active_lock:
            self._active[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: Any) -> None:
        with self._active_lock:
            self._active.pop(request, None)
        self._slots.release()

    def answering(self, connection: Any) -> None:
        """The whole request has arrived: what is left is our answer, which no deadline cuts
        short (a busy daemon may take its time) and which is never evicted."""
        with self._active_lock:
            if connection in self._active:
                self._active[connection] = float("inf")

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client dropped (by us at its deadline, or by itself) is no event."""

    def oldest_age(self) -> float:
        """Seconds the oldest connection being served has been open (0: none)."""
        with self._active_lock:
            began = min((t for t in self._active.values() if t != float("inf")), default=None)
        return 0.0 if began is None else time.monotonic() - began

    def _evict_oldest(self) -> bool:
        """Hang up on the oldest connection when it is past EVICT_AFTER_SECONDS (True)."""
        now = time.monotonic()
        with self._active_lock:
            oldest = min(self._active.items(), key=lambda item: item[1], default=None)
        if oldest is None or now - oldest[1] <= EVICT_AFTER_SECONDS:
            return False
        _hang_up(oldest[0])
        return True

    def _reap(self) -> None:
        """Close every connection past its deadline (its handler then ends, freeing the slot)."""
        while not self._stopping.wait(0.1):
            now = time.monotonic()
            with self._active_lock:
                late = [c for c, began in self._active.items()
                        if now - began > REQUEST_DEADLINE_SECONDS]
            for connection in late:
                _hang_up(connection)

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()
        self._reaper.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._stopping.set()
        self.shutdown()
        self.server_close()


def _hang_up(connection: Any) -> None:
    """End a connection from another thread: its handler's next read or write fails."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
