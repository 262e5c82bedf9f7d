"""Replicas of one outbox: each process's heartbeat, and the account's request budget shared among
the live ones (the pure share, and the membership that applies it)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, replace

import structlog

from reporter.stores.contract import OutboxStore, Replica, StoreError

__all__ = ["HEARTBEAT_MIN_SECONDS", "Budget", "Membership", "heartbeat_every", "share"]

# A replica's heartbeat period: its publish interval, but at least this (idle replicas make no
# more queries than one per interval).
HEARTBEAT_MIN_SECONDS = 5.0
SEEN_SLACK_SECONDS = 1.0  # a heartbeat this much after our join surely saw our row


@dataclass(frozen=True)
class Budget:
    """This replica's part of the account's rate: calls per second (0: no cap), and the time
    before which it must make none (others have not yet counted it in)."""

    rate: float
    ready_at: float = 0.0


def heartbeat_every(interval_seconds: float) -> float:
    """How often a replica says it is alive."""
    return max(interval_seconds, HEARTBEAT_MIN_SECONDS)


def share(live: list[Replica], me: Replica, joined_at: float) -> Budget:
    """The smallest cap any live replica is configured with, divided by the live replicas; so
    together they never exceed it. A replica that just joined makes no call until every other
    live replica has had a heartbeat since (and so divides by the new count)."""
    everyone = {r.id: r for r in live}
    everyone[me.id] = me
    caps = [r.rate for r in everyone.values() if r.rate > 0]
    if not caps:
        return Budget(0.0)
    unseen = [
        r for r in everyone.values()
        if r.id != me.id and r.heartbeat_at < joined_at + SEEN_SLACK_SECONDS
    ]
    ready_at = max(
        (r.heartbeat_at + r.every_seconds + SEEN_SLACK_SECONDS for r in unseen), default=0.0
    )
    return Budget(min(caps) / len(everyone), ready_at)


class Membership:
    """Keeps this process's heartbeat row fresh and works out its budget."""

    def __init__(
        self,
        store: OutboxStore,
        role: str,
        interval_seconds: float,
        rate: float,
    ) -> None:
        self._store = store
        self._log = structlog.get_logger("reporter.replicas")
        self.me = Replica(
            id=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=store.clock(),
            heartbeat_at=0.0,
            every_seconds=heartbeat_every(interval_seconds),
            rate=rate,
            role=role,
        )
        self._joined_at: float | None = None
        self._next = 0.0  # monotonic
        self.budget: Budget | None = None
        self._count = 0

    def settings(self, interval_seconds: float, rate: float) -> None:
        """A reloaded config: beat at once with the new promise and cap."""
        self.me = replace(self.me, every_seconds=heartbeat_every(interval_seconds), rate=rate)
        self._next = 0.0

    def beat(self) -> Budget | None:
        """Heartbeat when due; returns the budget when it changed (raises StoreError like any
        store call)."""
        now = time.monotonic()
        if now < self._next:
            return None
        live = self._store.heartbeat(self.me)
        self._next = now + self.me.every_seconds
        mine = next((r for r in live if r.id == self.me.id), None)
        if self._joined_at is None:
            self._joined_at = mine.heartbeat_at if mine else self._store.clock()
        budget = share(live, self.me, self._joined_at)
        if budget != self.budget or len(live) != self._count:
            # said at info only when it is news to an operator: replicas sharing the outbox, a
            # rate to share or a wait; one process alone with no cap says it at debug
            shared = len(live) > 1 or budget.rate or budget.ready_at > self._store.clock()
            (self._log.info if shared else self._log.debug)(
                "replicas",
                live=len(live),
                rate=round(budget.rate, 3) or None,
                hold_seconds=round(max(0.0, budget.ready_at - self._store.clock()), 1),
            )
            self.budget, self._count = budget, len(live)
            return budget
        return None

    def leave(self) -> None:
        """Drop the heartbeat row (a graceful stop); never raises."""
        try:
            self._store.leave(self.me.id)
        except StoreError as exc:
            self._log.warning("leave_failed", error=str(exc))
