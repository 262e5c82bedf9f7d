"""One task's calls: its stream, the import first, then its ordered lanes (states, attribute
lists, artifacts and their removal, manual mappings and their removal) with repair, and the
outcome to record (no SQL)."""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import structlog

from reporter import rows
from reporter.coalesce import Verdict, not_before, plan_task
from reporter.config import Config, PublishConfig
from reporter.delivery.conditions import Conditions
from reporter.delivery.gate import CallResult
from reporter.delivery.repair_plan import NO_REPAIR, RepairPlan, plan_repair
from reporter.delivery.retry import Backoff, give_up_reason
from reporter.hub.client import HubTask
from reporter.hub.errors import Failure, FenceLost, HubError, Outcome
from reporter.hub.view import iso
from reporter.hub_requests import (
    APPLICATIONS,
    ApplicationStateUpdate,
    ArtifactAssociation,
    ArtifactRemoval,
    AttributesUpdate,
    Kind,
    Request,
    ResourceAssociation,
    ResourceRemoval,
    SourceAssociation,
    SourceRemoval,
    StateUpdate,
)
from reporter.stores.contract import ClaimedTask, LaneResult, SentState, TaskOutcome

__all__ = [
    "CALM_ATTEMPTS",
    "CALM_CAP_FACTOR",
    "CALM_RATIO",
    "MISSING_ROW",
    "Courier",
    "Delivery",
    "HubCalls",
    "LaneFailure",
    "StreamResult",
]

MISSING_ROW = "row deleted from the outbox before delivery"
# While most recent calls succeed (the gate's window), a call's first CALM_ATTEMPTS failures are
# chance, not the service failing: its backoff stays under CALM_CAP_FACTOR x base. Past that, or
# when calls fail widely, the full cap applies; long waits are the outage brake's job.
CALM_RATIO = 0.5
CALM_CAP_FACTOR = 4.0
CALM_ATTEMPTS = 6
IMPORT = "ImportMigrationTask"


class HubCalls(Protocol):
    """The Hub calls a delivery makes (the `Hub` adapter; a fake in unit tests)."""

    def create_stream(self, stream: str) -> None:
        """CreateProgressUpdateStream."""

    def import_task(self, stream: str, task: str) -> None:
        """ImportMigrationTask."""

    def described(self, stream: str, task: str) -> HubTask | None:
        """DescribeMigrationTask's state of the task (None: the Hub has no such task)."""

    def send(self, request: Request) -> None:
        """The call a validated row becomes."""

    def fenced(self, check: Callable[[], bool]) -> AbstractContextManager[None]:
        """Calls inside the block pass `check` just before going out, or raise FenceLost."""


class LaneFailure(NamedTuple):
    """Why a lane stopped in this pass: the failure, the operation that failed, and the row
    charged with it (-1: a lane that only waited behind another's failure)."""

    failure: Failure
    operation: str
    row: int


@dataclass
class Delivery:
    """One task's outcome, every call's result (for the gate) and a blocking failure if any."""

    outcome: TaskOutcome
    calls: list[CallResult] = field(default_factory=list)
    blocked: Failure | None = None
    lease_lost: bool = False
    again_sent: set[int] = field(default_factory=set)  # a repair's calls that went through

    @property
    def failed(self) -> bool:
        """True when some lane of the task failed this pass."""
        return any(lane.attempts for lane in self.outcome.lanes) or self.blocked is not None


@dataclass
class StreamResult:
    """What `ensure_streams` did: streams created and per-stream failures."""

    created: list[str] = field(default_factory=list)
    failures: dict[str, Failure] = field(default_factory=dict)
    calls: list[CallResult] = field(default_factory=list)


class Courier:
    """Delivers claimed tasks; each task's lanes in row order, one call at a time."""

    def __init__(
        self,
        hub: HubCalls,
        config: Config,
        stop: threading.Event,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        fence: Callable[[ClaimedTask], bool] | None = None,
        conditions: Conditions | None = None,
    ) -> None:
        self._hub = hub
        self._conditions = conditions or Conditions(config.log.summary_seconds, clock)
        self._fence = fence or (lambda task: True)
        self._config = config
        self._stop = stop
        self._clock = clock
        self._rng = rng or random.Random()
        publish = config.publish
        self._backoff = Backoff(publish.backoff_base_seconds, publish.backoff_max_seconds)
        self._calm_cap = CALM_CAP_FACTOR * publish.backoff_base_seconds
        self._log = structlog.get_logger("reporter.delivery")
        self.calm = False  # set by the relay each pass from the gate's window

    def ensure_streams(self, streams: Iterable[str], known: set[str]) -> StreamResult:
        """CreateProgressUpdateStream once for each valid stream not known to exist."""
        result = StreamResult()
        for stream in sorted(set(streams) - known):
            if rows.check_stream(stream) is not None:
                continue  # its rows are rejected with the rule
            try:
                self._hub.create_stream(stream)
            except HubError as err:
                result.failures[stream] = err.failure
                result.calls.append(err.failure)
                continue
            result.calls.append(None)
            result.created.append(stream)
            self._log.info("stream_created", stream=stream)
        return result

    def deliver(self, task: ClaimedTask, stream_failure: Failure | None = None) -> Delivery:
        """All due calls of one task: the import first, then each lane in row order. A failing
        lane stops only itself; a lane still backing off is left alone."""
        out = TaskOutcome(task.id, task.lease)
        delivery = Delivery(out)
        out.rejected = [Verdict(rid, MISSING_ROW) for rid in task.missing]
        plan = plan_task(
            [(r.row_id, not_before(r, task.last_update_time)) for r in task.requests],
            task.state_floor,
            task.attributes_floor,
            task.associated,
            task.order(),
            task.resources,
            task.sources,
        )
        out.superseded = plan.superseded
        out.rejected += plan.rejected
        now = self._clock()
        send = [r for r in plan.send if (task.lane(r.kind.lane).retry_at or 0.0) <= now]
        repairing = task.resend is not None and (
            task.lane(Kind.TASK_STATE).retry_at or 0.0) <= now
        if self._stop.is_set() or not (send or repairing):
            return delivery
        failed: dict[Kind, LaneFailure] = {}
        if stream_failure is not None:  # made on behalf of the first due row, like the import
            if send:
                _fail_all(deque(send), failed, stream_failure, "CreateProgressUpdateStream",
                          send[0])
            else:
                failed[Kind.TASK_STATE] = LaneFailure(
                    stream_failure, "CreateProgressUpdateStream", -1)
            self._settle(task, send, failed, delivery)
            if repairing:
                _settle_repair(task, NO_REPAIR, False, delivery, now + self._backoff.base,
                               self._log)
            return delivery
        with self._hub.fenced(lambda: self._fence(task)):
            try:
                self._fenced(task, plan.send, send, repairing, delivery, failed)
            except FenceLost as lost:
                delivery.lease_lost = True
                self._log.warning(
                    "lease_lost", stream=task.stream, task=task.task, operation=str(lost),
                    hint="another replica holds this task now; no further call from here",
                )
        return delivery

    def _fenced(
        self,
        task: ClaimedTask,
        planned: list[Request],
        send: list[Request],
        repairing: bool,
        delivery: Delivery,
        failed: dict[Kind, LaneFailure],
    ) -> None:
        """The task's calls, each made only while its lease holds (checked right before the
        request goes out); once it is lost (FenceLost), no further call for the task. A repair
        first reads the Hub's state of the task, then sends again what it lacks before any
        waiting row."""
        fix = NO_REPAIR
        now = self._clock()
        if repairing:
            try:
                found = self._hub.described(task.stream, task.task)
                delivery.calls.append(None)
            except HubError as err:
                delivery.calls.append(err.failure)
                if err.failure.outcome is Outcome.BLOCKED:
                    delivery.blocked = err.failure
                    return
                # every lane waits for the read, as for the import; no row is charged
                failed[Kind.TASK_STATE] = LaneFailure(err.failure, err.operation, -1)
                _fail_all(deque(send), failed, err.failure, err.operation, None)
                self._settle(task, send, failed, delivery)
                _settle_repair(task, fix, False, delivery, now + self._backoff.base, self._log)
                return
            fix = plan_repair(task, planned, found, found is not None)
            if found is not None:
                delivery.outcome.imported = True
            _report_newer(task, fix, self._log)
            gone = {v.row for v in fix.superseded}
            delivery.outcome.superseded += fix.superseded
            send = [r for r in send if r.row_id not in gone]
        again = [r for r in fix.calls if (task.lane(r.kind.lane).retry_at or 0.0) <= now]
        due = again + send
        if due or fix.import_first:
            # an application has no stream and no import: its state is its only call
            imported = task.stream == APPLICATIONS or (task.imported and not fix.import_first)
            self._run_lanes(task, deque(due), delivery, failed, imported=imported)
        if delivery.blocked is None and not delivery.lease_lost:
            self._settle(task, due, failed, delivery)
        if repairing and not self._stop.is_set():
            _settle_repair(task, fix, len(again) == len(fix.calls), delivery,
                           self._clock() + self._backoff.base, self._log)

    def _run_lanes(
        self,
        task: ClaimedTask,
        queue: deque[Request],
        delivery: Delivery,
        failed: dict[Kind, LaneFailure],
        imported: bool,
    ) -> None:
        out = delivery.outcome
        repaired = False
        log = self._log.bind(stream=task.stream, task=task.task)
        if not queue and not imported:  # a repair with nothing to send again: the import
            _import_alone(self._hub, task, delivery)
            return
        while queue:
            request = queue[0]
            if request.kind.lane in failed:
                queue.popleft()
                continue
            if self._stop.is_set():
                return  # untried rows stay due at once
            operation = IMPORT
            try:
                if not imported:
                    self._hub.import_task(task.stream, task.task)
                    imported = out.imported = True
                    delivery.calls.append(None)
                    log.debug("task_imported")
                operation = request.operation
                self._hub.send(request)
            except HubError as err:
                failure = err.failure
                delivery.calls.append(failure)
                if isinstance(request, ApplicationStateUpdate) and (
                        failure.outcome is Outcome.REPAIR):
                    # no such application in Application Discovery Service: a person must
                    # create it there (then `dead-letters retry` sends the row again)
                    failure = _unknown_application(request, failure)
                if failure.outcome is Outcome.REJECTED and request.row_id > 0:
                    reason = f"the Hub refused {err.operation}: {failure}"
                    out.rejected.append(Verdict(request.row_id, reason))
                    self._conditions.rejected(
                        reason, row=request.row_id, stream=task.stream, task=task.task
                    )
                    queue.popleft()
                elif (failure.outcome is Outcome.REPAIR and operation != IMPORT
                      and task.resend is None):
                    # the Hub lost the task (or its stream): nothing more now. Its import
                    # waits for the repair the recorded loss starts (due at once), which
                    # restores it whole; importing here first would hide the loss from a
                    # restart if this process died before recording it.
                    out.lost = True
                    log.info("task_lost", operation=err.operation, error=str(failure))
                    return
                elif failure.outcome is Outcome.REPAIR and not repaired:
                    repaired, imported = True, False
                    # the task (or its stream) is gone: once imported again, restore it whole
                    out.lost = out.lost or operation != IMPORT
                    log.info("repairing", operation=err.operation, error=str(failure))
                    gone = _recreate_stream(self._hub, task, delivery)
                    if gone is not None:
                        _fail_all(queue, failed, gone.failure, gone.operation, request)
                        return
                elif failure.outcome is Outcome.BLOCKED:
                    delivery.blocked = failure
                    return
                elif failure.outcome is Outcome.HELD and operation != IMPORT:
                    # a person must fix what this kind of call needs: its lane waits (no row
                    # is charged, so none is given up), the task's other lanes go on
                    failed[request.kind.lane] = LaneFailure(failure, operation, -1)
                    queue.popleft()
                elif operation == IMPORT:  # the import comes first: every lane waits for it
                    _fail_all(queue, failed, failure, operation, request)
                    return
                else:
                    failed[request.kind.lane] = LaneFailure(failure, operation, request.row_id)
                    queue.popleft()
                continue
            delivery.calls.append(None)
            queue.popleft()
            if request.row_id < 0:
                delivery.again_sent.add(request.row_id)
            _note_sent(out, request, task,
                       self._clock() + self._config.mapping.check_after_seconds)
            log.debug("row_sent", row=request.row_id, operation=request.operation)

    def _settle(
        self,
        task: ClaimedTask,
        due: list[Request],
        failed: dict[Kind, LaneFailure],
        delivery: Delivery,
    ) -> None:
        """Each tried lane's new retry state (`_settle_lanes`, under this courier's policy)."""
        _settle_lanes(task, due, failed, delivery, self._clock(), self._backoff, self._rng,
                      self._calm_cap if self.calm else None, self._config.publish,
                      self._conditions)


def _recreate_stream(hub: HubCalls, task: ClaimedTask, delivery: Delivery) -> HubError | None:
    """The task (or its stream) is gone at the Hub: make the stream again (already there
    is success). The error when that failed, else None (the import is tried again)."""
    try:
        hub.create_stream(task.stream)
        delivery.calls.append(None)
        return None
    except HubError as err:
        delivery.calls.append(err.failure)
        return err

def _import_alone(hub: HubCalls, task: ClaimedTask, delivery: Delivery) -> None:
    """A repair with nothing else to send: the import (its stream first when that is
    gone), as `_run_lanes` imports before a task's first call."""
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
        if _recreate_stream(hub, task, delivery) is not None:
            return


def _fail_all(
    queue: deque[Request],
    failed: dict[Kind, LaneFailure],
    failure: Failure,
    operation: str,
    head: Request | None,
) -> None:
    """Charge the row whose call was tried; the other lanes wait without a charge."""
    for request in queue:
        if request.kind.lane not in failed:
            tried = request.row_id if request is head else -1
            failed[request.kind.lane] = LaneFailure(failure, operation, tried)


def _note_sent(out: TaskOutcome, request: Request, task: ClaimedTask, map_check_at: float) -> None:
    """What a call that went through puts on record (a repair's call: nothing new)."""
    if request.row_id < 0:
        return  # a repair's call: what it sends is on record already
    out.sent.append(request.row_id)
    seq = task.row(request.row_id).seq
    if isinstance(request, StateUpdate):
        out.state = SentState(
            request.row_id,
            seq,
            request.status,
            request.percent,
            request.detail,
            request.update_time.timestamp(),
            request.next_update_seconds,
        )
    elif isinstance(request, AttributesUpdate):
        out.attributes_row, out.attributes_seq = request.row_id, seq
        out.attributes = request.attributes
        out.map_check_at = map_check_at
    elif isinstance(request, ArtifactAssociation):
        out.artifacts.append((request.arn, request.description))
    elif isinstance(request, ArtifactRemoval):
        out.artifacts_removed.append(request.arn)
    elif isinstance(request, ApplicationStateUpdate):
        out.state = SentState(request.row_id, seq, request.status, None, None,
                              request.update_time.timestamp(), 0)
    elif isinstance(request, ResourceAssociation):
        out.resources.append((request.configuration_id, request.description))
    elif isinstance(request, ResourceRemoval):
        out.resources_removed.append(request.configuration_id)
    elif isinstance(request, SourceAssociation):
        out.sources.append((request.name, request.description, request.detail))
    elif isinstance(request, SourceRemoval):
        out.sources_removed.append(request.name)


def _unknown_application(request: ApplicationStateUpdate, failure: Failure) -> Failure:
    """NotifyApplicationState's ResourceNotFoundException: Application Discovery Service has no
    such application. Not a task to restore but a row the Hub refuses, naming the
    application."""
    return Failure(
        Outcome.REJECTED, failure.code,
        f"Application Discovery Service has no application {rows.clip(request.application)!r}"
        " (create it there, or fix application_id; then `mgh-reporter dead-letters retry`"
        f" sends the row again): {failure.message}")


def _settle_repair(task: ClaimedTask, plan: RepairPlan, complete: bool, delivery: Delivery,
               fallback: float, log: Any) -> None:
    """A repair is done once the Hub has the task (found by the read, or imported now or in
    an earlier try) and every call it sends again went through in this try (`complete`:
    none was held back by its lane's backoff): the flag is cleared, and `hub_repaired`
    logged when this try sent something. Else it is due again at its lanes' retry time (or
    `fallback`)."""
    out = delivery.outcome
    if delivery.blocked is not None or delivery.lease_lost or out.lost:
        return
    has_task = not plan.import_first or out.imported
    if has_task and complete and {r.row_id for r in plan.calls} <= delivery.again_sent:
        out.resent = True
        if plan.calls or plan.import_first:
            log.warning(
                "hub_repaired", stream=task.stream, task=task.task,
                calls=len(plan.calls) + int(plan.import_first),
                operations=sorted({r.operation for r in plan.calls}),
                hint="the Hub had lost the task (or its stream) or was behind us: sent"
                " again what it lacked")
        return
    retries = [lane.retry_at for lane in out.lanes if lane.retry_at is not None]
    out.retry_at = min(retries) if retries else fallback


def _report_newer(task: ClaimedTask, fix: RepairPlan, log: Any) -> None:
    """A state someone else wrote later than ours: reported, never overwritten."""
    hub = fix.newer_at_hub
    if hub is None:
        return
    ours = task.resend.state if task.resend is not None else None
    log.warning(
        "hub_differs", stream=task.stream, task=task.task, fields=["update_date_time"],
        hub_status=hub.status, hub_percent=hub.percent, hub_update_time=iso(hub.update_time),
        our_update_time=iso(ours.update_time if ours else None),
        superseded=[v.row for v in fix.superseded],
        hint="the Hub holds a newer state than ours (another client's): not sent again")


def _settle_lanes(
    task: ClaimedTask,
    due: list[Request],
    failed: dict[Kind, LaneFailure],
    delivery: Delivery,
    now: float,
    backoff: Backoff,
    rng: random.Random,
    calm_cap: float | None,
    publish: PublishConfig,
    conditions: Conditions,
) -> None:
    """Each tried lane's new retry state; give up a row only if its own call kept failing.

    Any successful call of the task is progress: the failing lanes count again from one.
    """
    out = delivery.outcome
    progressed = any(result is None for result in delivery.calls)
    for kind in sorted({r.kind.lane for r in due} | set(failed)):
        if kind not in failed:
            out.lanes.append(LaneResult(kind, 0, None))
            continue
        failure, operation, row_id = failed[kind]
        attempts = 1 if progressed else task.lane(kind).attempts + 1
        give_up = None
        if row_id >= 0:
            out.failed_rows.append(row_id)
            row = task.row(row_id)
            give_up = give_up_reason(
                row.attempts + 1,
                now - row.created_at,
                publish.max_attempts,
                publish.max_age_seconds,
                str(failure),
            )
        cap = calm_cap if attempts <= CALM_ATTEMPTS else None
        delay = backoff.delay(attempts, rng, failure.retry_after, cap)
        if failure.outcome is Outcome.HELD:  # only a person can fix it: look again slowly
            delay = publish.blocked_recheck_seconds * rng.uniform(0.9, 1.1)
        out.error = out.error or str(failure)[:500]
        conditions.failed(
            failure,
            operation,
            delay,
            stream=task.stream,
            task=task.task,
            kind=kind.value,
            attempt=attempts,
        )
        if give_up is not None:
            conditions.rejected(give_up, row=row_id, stream=task.stream, task=task.task)
            out.rejected.append(Verdict(row_id, give_up))
            out.lanes.append(LaneResult(kind, 0, None))
        else:
            out.lanes.append(LaneResult(kind, attempts, now + delay, str(failure)[:500]))
