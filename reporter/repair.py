"""Repair: the daemon's rounds that read the Hub back (`[verify] every_seconds`) and mark what
it lost for sending again, and the part a claimed task carries: the calls that send again its
newest state, attribute list, artifacts and manual mappings after the import, and when a
repair counts as done."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog

from reporter import rows
from reporter.config import VerifyConfig
from reporter.errors import HubError, Outcome
from reporter.hub import Hub
from reporter.hubview import NOT_RECORDED, compare, delivered, read_view, seconds
from reporter.model import ClaimedTask, HubTask, OutboxStore, ResendScope, TaskRecord
from reporter.rows import Verdict
from reporter.views import iso

if TYPE_CHECKING:
    from reporter.delivery import Delivery, HubCalls

__all__ = ["TASKS_PER_ROUND", "RepairPlan", "RepairRounds", "import_alone", "plan_repair",
           "settle"]

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
                    view = read_view(self._hub, record)
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


class RepairPlan(NamedTuple):
    """What one repair try does, decided from the Hub's current state of the task (read just
    before): the calls sent again (negative row ids), whether the task must be imported first,
    waiting state rows older than the Hub's state (superseded, never sent), and the Hub's
    state when it is newer than ours (reported, never overwritten)."""

    calls: list[rows.Request]
    import_first: bool
    superseded: list[Verdict]
    newer_at_hub: HubTask | None


def plan_repair(task: ClaimedTask, planned: list[rows.Request], hub: HubTask | None,
                found: bool) -> RepairPlan:
    """A repair's calls, before the task's waiting rows (they are older than any of those).

    `found` False: the Hub lacks the task (or its stream), so it is imported and sent
    everything again. Else the newest state is sent again only when ours is newer than the
    Hub's (to the second, as the Hub keeps it); a later state (someone else's) is never
    overwritten, and waiting state rows older than it are superseded. The attribute list,
    artifacts and manual mappings carry no date at the Hub: they go again only to a task that
    was lost (scope WHOLE), unless a waiting row replaces or removes them."""
    again = task.resend
    if again is None:
        return RepairPlan([], False, [], None)
    hub_time = None if hub is None or hub.update_time is None else seconds(hub.update_time)
    ours = again.state
    # a waiting row as new as the Hub's state may be the one that put it there (a send whose
    # outcome was not recorded: a replica that lost its database): then it is not someone else's
    ours_waiting = any(isinstance(r, rows.StateUpdate) and hub_time is not None
                       and seconds(r.update_time.timestamp()) >= hub_time for r in planned)
    newer = hub if hub_time is not None and not ours_waiting and (
        ours is None or hub_time > seconds(ours.update_time)) else None
    superseded = [Verdict(r.row_id, f"the Hub holds a newer state (dated {iso(hub_time)}) than"
                          " this row's: an older state is never sent after a newer one")
                  for r in planned if isinstance(r, rows.StateUpdate) and hub_time is not None
                  and seconds(r.update_time.timestamp()) < hub_time]
    gone = {v.row for v in superseded}
    kinds = {type(r) for r in planned if r.row_id not in gone}
    calls: list[rows.Request] = []
    if (ours is not None and rows.StateUpdate not in kinds
            and (hub_time is None or seconds(ours.update_time) > hub_time)):
        calls.append(rows.StateUpdate(0, task.stream, task.task, ours.status, ours.detail,
                                      ours.percent, datetime.fromtimestamp(ours.update_time, UTC),
                                      ours.next_update_seconds))
    if not found or again.scope is ResendScope.WHOLE:
        removed = {(r.kind.lane, rows.key_of(r)) for r in planned
                   if isinstance(r, rows.ArtifactRemoval | rows.ResourceRemoval)}
        if again.attributes and rows.AttributesUpdate not in kinds:
            calls.append(rows.AttributesUpdate(0, task.stream, task.task, again.attributes))
        calls += [rows.ArtifactAssociation(0, task.stream, task.task, arn, description)
                  for arn, description in again.artifacts
                  if (rows.Kind.CREATED_ARTIFACT, arn) not in removed]
        calls += [rows.ResourceAssociation(0, task.stream, task.task, cid, description)
                  for cid, description in again.resources
                  if (rows.Kind.DISCOVERED_RESOURCE, cid) not in removed]
    return RepairPlan([replace(call, row_id=-n) for n, call in enumerate(calls, start=1)],
                      not found, superseded, newer)


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


def settle(task: ClaimedTask, plan: RepairPlan, complete: bool, delivery: Delivery,
           fallback: float, log: Any) -> None:
    """A repair is done once the Hub has the task (found by the read, or imported now or in an
    earlier try) and every call it sends again went through in this try (`complete`: none was
    held back by its lane's backoff): the flag is cleared, and `hub_repaired` logged when this
    try sent something. Else it is due again at its lanes' retry time (or `fallback`)."""
    out = delivery.outcome
    if delivery.blocked is not None or delivery.lease_lost or out.lost:
        return
    has_task = not plan.import_first or out.imported
    if has_task and complete and {r.row_id for r in plan.calls} <= delivery.again_sent:
        out.resent = True
        if plan.calls or plan.import_first:
            log.warning("hub_repaired", stream=task.stream, task=task.task,
                        calls=len(plan.calls) + int(plan.import_first),
                        operations=sorted({r.operation for r in plan.calls}),
                        hint="the Hub had lost the task (or its stream) or was behind us: sent"
                        " again what it lacked")
        return
    retries = [lane.retry_at for lane in out.lanes if lane.retry_at is not None]
    out.retry_at = min(retries) if retries else fallback
