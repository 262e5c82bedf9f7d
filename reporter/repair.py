"""Repair: the daemon's rounds that read the Hub back (`[verify] every_seconds`) and mark what
it lost for sending again, and the part a claimed task carries: the calls that send again its
newest state, attribute list, artifacts and manual mappings after the import, and when a
repair counts as done."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from reporter import rows
from reporter.config import VerifyConfig
from reporter.errors import HubError, Outcome
from reporter.hub import Hub
from reporter.hubview import compare, delivered, read_view, seconds
from reporter.model import ClaimedTask, OutboxStore, TaskRecord

if TYPE_CHECKING:
    from reporter.delivery import Delivery, HubCalls

__all__ = ["TASKS_PER_ROUND", "RepairRounds", "import_alone", "resend_requests", "settle"]

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
            again: set[int] = set()
            for record in records:
                if record.stream not in streams:  # the stream is gone: every task of it
                    again |= {t.task_id for t in self._store.tasks(record.stream)
                              if delivered(t)}
                    continue
                try:
                    view = read_view(self._hub, record)
                except HubError as err:
                    if err.failure.outcome is Outcome.BLOCKED:
                        raise
                    continue
                if view is None or self._differs(record, compare(record, view),
                                                 view.update_time):
                    again.add(record.task_id)
        except HubError:
            return  # the Hub is unusable for now; the next round tries again
        if again:
            self._store.mark_resend(sorted(again))
            self._log.info("hub_repair_started", tasks=len(again))

    def _differs(self, record: TaskRecord, problems: list[Any], hub_time: float | None) -> bool:
        """Report a difference once (until it changes or clears); True when our newest state
        is newer than the Hub's, so sending it again overwrites nothing newer."""
        fields = tuple(p.field for p in problems)
        if not fields:
            self.differing.pop(record.task_id, None)
            return False
        if self.differing.get(record.task_id) != fields:
            self.differing[record.task_id] = fields
            self._log.warning("hub_differs", stream=record.stream, task=record.task,
                              fields=list(fields), problems=[p.to_json() for p in problems],
                              hint="`mgh-reporter verify` shows it; sent again only when ours"
                              " is newer than the Hub's")
        ours = record.update_time
        if ours is not None and (hub_time is None or seconds(ours) > seconds(hub_time)):
            self.differing.pop(record.task_id, None)  # ours is sent again: being repaired
            return True
        return False


def resend_requests(task: ClaimedTask, planned: list[rows.Request]) -> list[rows.Request]:
    """A repair's calls, before the task's waiting rows (they are older than any of those):
    its newest state and attribute list unless a waiting row replaces them, its artifacts and
    manual mappings unless a waiting row removes them. Their row ids are negative (-1, -2...):
    nothing of the outbox is charged or recorded for them."""
    again = task.resend
    if again is None:
        return []
    kinds = {type(r) for r in planned}
    removed = {(r.kind.lane, rows.key_of(r)) for r in planned
               if isinstance(r, rows.ArtifactRemoval | rows.ResourceRemoval)}
    calls: list[rows.Request] = []
    s = again.state
    if s is not None and rows.StateUpdate not in kinds:
        calls.append(rows.StateUpdate(0, task.stream, task.task, s.status, s.detail, s.percent,
                                      datetime.fromtimestamp(s.update_time, UTC),
                                      s.next_update_seconds))
    if again.attributes and rows.AttributesUpdate not in kinds:
        calls.append(rows.AttributesUpdate(0, task.stream, task.task, again.attributes))
    calls += [rows.ArtifactAssociation(0, task.stream, task.task, arn, description)
              for arn, description in again.artifacts
              if (rows.Kind.CREATED_ARTIFACT, arn) not in removed]
    calls += [rows.ResourceAssociation(0, task.stream, task.task, cid, description)
              for cid, description in again.resources
              if (rows.Kind.DISCOVERED_RESOURCE, cid) not in removed]
    return [replace(call, row_id=-n) for n, call in enumerate(calls, start=1)]


def import_alone(hub: HubCalls, task: ClaimedTask, delivery: Delivery) -> None:
    """A repair with nothing else to send: the import (its stream first when that is gone)."""
    for attempt in (1, 2):
        try:
            hub.import_task(task.stream, task.task)
            delivery.outcome.imported = True
            delivery.calls.append(None)
            return
        except HubError as err:
            delivery.calls.append(err.failure)
            if err.failure.outcome is Outcome.BLOCKED:
                delivery.blocked = err.failure
            if err.failure.outcome is not Outcome.REPAIR or attempt == 2:
                return
        try:
            hub.create_stream(task.stream)
            delivery.calls.append(None)
        except HubError as again:
            delivery.calls.append(again.failure)
            return


def settle(task: ClaimedTask, again: list[rows.Request], delivery: Delivery, fallback: float,
           log: Any) -> None:
    """A repair is done when the import and every call it sends again went through (logged
    once, `hub_repaired`); else it is due again at its lanes' retry time (or `fallback`)."""
    out = delivery.outcome
    if delivery.blocked is not None or delivery.lease_lost:
        return
    if out.imported and {r.row_id for r in again} <= delivery.again_sent:
        out.resent = True
        log.warning("hub_repaired", stream=task.stream, task=task.task, calls=len(again) + 1,
                    hint="the Hub had lost the task (or its stream) or was behind us: imported"
                    " and sent its newest state again")
        return
    retries = [lane.retry_at for lane in out.lanes if lane.retry_at is not None]
    out.retry_at = min(retries) if retries else fallback
