"""Repair rounds: every `[verify] every_seconds` the daemon reads the Hub back and marks what it
lost (or holds older than ours) for sending again; the courier sends it (`repair_plan`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from reporter.config import VerifyConfig
from reporter.delivery.compare import NOT_RECORDED, compare, delivered, view_of
from reporter.hub.client import Hub
from reporter.hub.errors import HubError, Outcome
from reporter.hub.view import seconds
from reporter.stores.contract import OutboxStore, ResendScope, TaskRecord

__all__ = ["TASKS_PER_ROUND", "RepairRounds"]

TASKS_PER_ROUND = 5  # tasks read back per round: "a few at a time"


class RepairRounds:
    """Every `every_seconds`, read back the next few imported tasks (round-robin) and the
    streams the Hub has. A task or stream the Hub no longer has is marked to be imported and
    sent its newest state, attribute list, artifacts and manual mappings again. A task whose
    view differs is reported once (`hub_differs`) and sent again only when our newest state is
    newer than the Hub's: an update someone else wrote later is never overwritten."""

    def __init__(self, store: OutboxStore, hub: Hub, config: VerifyConfig,
                 stop: threading.Event, clock: Callable[[], float]) -> None:
        self._store, self._hub, self._every = store, hub, config.every_seconds
        self._stop, self._clock = stop, clock
        self._log = structlog.get_logger("reporter.repair")
        self.next_at: float | None = clock() if self._every > 0 else None
        self.differing: dict[int, tuple[str, ...]] = {}  # task id -> fields that differ

    def run(self) -> None:
        """One round when it is due (a blocked Hub ends it; other failures skip a task)."""
        now = self._clock()
        if self.next_at is None or now < self.next_at or self._stop.is_set():
            return
        self.next_at = now + self._every
        records = self._store.due_verifications(TASKS_PER_ROUND)
        if not records:
            return
        try:
            streams = {s["ProgressUpdateStreamName"] for s in self._hub.pages(
                "ListProgressUpdateStreams", {}, "ProgressUpdateStreamSummaryList", 100)}
            lost: set[int] = set()
            behind: set[int] = set()
            for record in records:
                if record.stream not in streams:  # the stream is gone: every task of it
                    lost |= {t.task_id for t in self._store.tasks(record.stream)
                             if delivered(t)}
                    continue
                try:
                    view = view_of(self._hub, record)
                except HubError as err:
                    if err.failure.outcome is Outcome.BLOCKED:
                        raise
                    continue
                if view is None:
                    lost.add(record.task_id)
                elif self._differs(record, compare(record, view), view.update_time):
                    behind.add(record.task_id)
        except HubError:
            return  # the Hub is unusable for now; the next round tries again
        for marked, scope in ((lost, ResendScope.WHOLE), (behind - lost, ResendScope.STATE)):
            if marked:
                self._store.mark_resend(sorted(marked), scope)
                self._log.info("hub_repair_started", tasks=len(marked), scope=scope.name.lower())

    def _differs(self, record: TaskRecord, problems: list[Any], hub_time: float | None) -> bool:
        """Report a difference once (until it changes or clears); True when our newest state
        is newer than the Hub's, so sending it again overwrites nothing newer."""
        problems = [p for p in problems if p.sent != NOT_RECORDED]  # unknown, not a difference
        fields = tuple(p.field for p in problems)
        ours = record.update_time
        hub_newer = hub_time is not None and (ours is None or seconds(hub_time) > seconds(ours))
        if not fields or (hub_newer and record.pending):
            # a task with rows waiting may be in flight: a newer Hub state may be our own send
            # whose outcome is not recorded yet (another replica, a database that came back)
            self.differing.pop(record.task_id, None)
            return False
        if self.differing.get(record.task_id) != fields:
            self.differing[record.task_id] = fields
            self._log.warning("hub_differs", stream=record.stream, task=record.task,
                              fields=list(fields), problems=[p.to_json() for p in problems],
                              hint="`mgh-reporter verify` shows it; sent again only when ours"
                              " is newer than the Hub's")
        if ours is not None and (hub_time is None or seconds(ours) > seconds(hub_time)):
            self.differing.pop(record.task_id, None)  # ours is sent again: being repaired
            return True
        return False
