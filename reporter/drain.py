"""`drain`: publish everything due now, retrying transient errors, then exit with the
contract's code (0 delivered, 3 pending at the timeout or interrupted, 4 blocked, 5 rejected)."""

from __future__ import annotations

import sys
import threading
import time

import structlog

from reporter.config import Config
from reporter.engines import instance_lock
from reporter.model import StoreError
from reporter.process import EXIT, stop_on_signals
from reporter.wiring import build

# Between passes, at most this long without looking: other replicas' outcomes (a lease they
# hold ending) are seen this soon.
LOOK_SECONDS = 0.25

__all__ = ["drain"]


def drain(config: Config, timeout: float) -> int:
    """Publish everything due now, retrying transient errors, then exit with the contract's code.

    Exit 5 counts only rows rejected since this drain started (by any replica); a stop signal
    exits 3 and says so. Beside running replicas (PostgreSQL) a drain is one more replica: it
    exits 0 only once nothing is pending or leased by anyone, and 3 if leases remain at the
    timeout.
    """
    log = structlog.get_logger("reporter.drain")
    stop = threading.Event()
    deadline = time.monotonic() + timeout
    with instance_lock(config), stop_on_signals(stop):
        parts = build(config, stop, None, role="drain")
        started = parts.store.clock()
        parts.relay.gate.recheck_now()  # a person may have fixed what blocked the last run
        try:
            while True:
                try:
                    parts.beat()
                    result = parts.relay.run_once()
                except StoreError as exc:
                    if not exc.busy:
                        raise
                    # A lock conflict or a lost database connection: transient, try again.
                    log.warning("store_busy", error=str(exc))
                    parts.relay.invalidate()
                    if time.monotonic() >= deadline or stop.is_set():
                        print(f"outbox unavailable at the timeout: {exc}", file=sys.stderr)
                        return EXIT["pending"]
                    stop.wait(min(1.0, max(0.0, deadline - time.monotonic())))
                    continue
                if result.blocked is not None:
                    log.error(
                        "drain_blocked",
                        error_code=result.blocked.code,
                        reason=result.blocked.message,
                    )
                    print(f"delivery blocked: {result.blocked.message}", file=sys.stderr)
                    return EXIT["blocked"]
                pending = parts.store.backlog().pending
                if pending == 0:
                    rejected = parts.store.rejected_since(started)
                    return EXIT["rejected"] if rejected else EXIT["ok"]
                if stop.is_set():
                    log.warning("drain_interrupted", pending=pending)
                    print(f"interrupted: {pending} rows still pending", file=sys.stderr)
                    return EXIT["pending"]
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("drain_timeout", pending=pending, timeout=timeout)
                    print(f"{pending} rows still pending at the timeout", file=sys.stderr)
                    return EXIT["pending"]
                status = parts.relay.status()
                if result.busy and status.backlogged:
                    continue
                now = parts.relay.clock()
                wait = 0.05 if status.wakeup is None else status.wakeup - now
                stop.wait(min(max(wait, 0.05), left, LOOK_SECONDS))
        finally:
            parts.membership.leave()
            parts.relay.close()
            parts.store.close()

