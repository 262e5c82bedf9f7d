"""`drain`: publish everything due now, retrying transient errors, then exit with the
contract's code (0 delivered, 3 pending at the timeout or interrupted, 4 blocked, 5 rejected)."""

from __future__ import annotations

import sys
import threading
import time

import structlog

from reporter.config import Config
from reporter.process import EXIT, outbox_lock, stop_on_signals
from reporter.wiring import build

__all__ = ["drain"]


def drain(config: Config, timeout: float) -> int:
    """Publish everything due now, retrying transient errors, then exit with the contract's code.

    Exit 5 counts only rows rejected since this drain started; a stop signal exits 3 and says so.
    """
    log = structlog.get_logger("reporter.drain")
    stop = threading.Event()
    deadline = time.monotonic() + timeout
    with outbox_lock(config.outbox.path), stop_on_signals(stop):
        parts = build(config, stop, None)
        started = parts.relay.clock()
        parts.relay.gate.recheck_now()  # a person may have fixed what blocked the last run
        try:
            while True:
                result = parts.relay.run_once()
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
                stop.wait(min(max(wait, 0.05), left))
        finally:
            parts.relay.close()
            parts.store.close()

