"""One delivery pass: intake new rows → claim due tasks → coalesce → send → record outcomes."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import structlog

from reporter import rows
from reporter.config import Config
from reporter.errors import Failure, Outcome
from reporter.hub import Hub, HubError
from reporter.retry import Backoff, give_up_reason
from reporter.store import ClaimedTask, Ingested, Store, TaskOutcome

__all__ = ["PassResult", "Relay", "requeue_dead_letters"]

# A pass takes in every new row before claiming (so a backlog coalesces to one call per task),
# but stops after this long so a torrent of inserts cannot starve delivery.
INTAKE_SECONDS = 5.0
MAPPING_CHECKS_PER_PASS = 20


@dataclass
class PassResult:
    """What one pass did."""

    ingested: int = 0
    claimed: int = 0
    sent: int = 0
    rejected: int = 0
    superseded: int = 0
    failed: int = 0
    blocked: Failure | None = None
    skipped: bool = False
    operations: dict[str, int] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        """True when the pass touched anything."""
        return bool(self.ingested or self.claimed)


@dataclass
class _Delivery:
    outcome: TaskOutcome
    failure: Failure | None = None
    calls: int = 0


class Relay:
    """The delivery algorithm; `run_once` is all of it, `daemon`/`drain` are timers around it."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        config: Config,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.store, self.hub, self.config = store, hub, config
        self.clock = clock or (lambda: time.time())  # looked up per call: freezegun-able
        self.rng = rng or random.Random()
        self.stop = stop or threading.Event()
        self.log = structlog.get_logger("reporter.relay")
        publish = config.publish
        self.backoff = Backoff(publish.backoff_base_seconds, publish.backoff_max_seconds)
        self.pool = ThreadPoolExecutor(publish.max_concurrency, thread_name_prefix="hub")
        self.blocked: Failure | None = self._load_blocked()
        self._recheck_at = float(store.get_meta("blocked_recheck_at") or 0)
        self._brake_attempts = int(store.get_meta("brake_attempts") or 0)
        self._brake_until = float(store.get_meta("brake_until") or 0)
        self._region_attempts, self._region_retry_at = 0, 0.0  # GetHomeRegion's own backoff
        self._streams = store.streams()
        self._seen_version: int | None = None
        self._wakeup: float | None = None
        self.intake_behind = False
        self.progress_at = time.monotonic()  # last sign of life: a batch taken in, a task done
        self.last_success_at: float | None = None

    @property
    def wakeup(self) -> float | None:
        """When the next pass can do something (None: only a new row can make work)."""
        return self._wakeup

    @property
    def backlogged(self) -> bool:
        """True when more work is due right now (rows not yet taken in, or tasks due)."""
        if self.blocked is not None:
            return False
        return self.intake_behind or (self._wakeup is not None and self._wakeup <= self.clock())

    @property
    def braking(self) -> bool:
        """True while every call fails transiently and only single probes are sent."""
        return self._brake_attempts > 0

    def close(self) -> None:
        """Stop the worker pool without waiting for abandoned calls."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- blocked state ---------------------------------------------------------------------
    def _load_blocked(self) -> Failure | None:
        reason = self.store.get_meta("blocked_reason")
        code = self.store.get_meta("blocked_code") or "Blocked"
        return Failure(Outcome.BLOCKED, code, reason) if reason else None

    def _set_blocked(self, failure: Failure, now: float) -> None:
        recheck = now + self.config.publish.blocked_recheck_seconds
        if self.blocked is None or self.blocked.message != failure.message:
            self.log.error(
                "delivery_blocked",
                error_code=failure.code,
                reason=failure.message,
                recheck_in=self.config.publish.blocked_recheck_seconds,
            )
        self.blocked, self._recheck_at = failure, recheck
        self.store.set_meta(
            blocked_reason=failure.message,
            blocked_code=failure.code,
            blocked_since=self.store.get_meta("blocked_since") or now,
            blocked_recheck_at=recheck,
        )

    def recheck_now(self) -> None:
        """Re-check a blocked state on the next pass instead of waiting for the slow schedule."""
        self._recheck_at = 0.0

    def _clear_blocked(self) -> None:
        if self.blocked is not None:
            self.log.info("delivery_resumed", previous_error_code=self.blocked.code)
        self.blocked = None
        self.store.set_meta(
            blocked_reason=None, blocked_code=None, blocked_since=None, blocked_recheck_at=None
        )

    # -- the pass ----------------------------------------------------------------------------
    def quiet(self) -> bool:
        """True when nothing can have changed: no commit by others, no rows left behind by the
        last intake, and nothing due yet."""
        version = self.store.data_version()
        changed, self._seen_version = version != self._seen_version, version
        if changed or self.intake_behind:
            return False
        now = self.clock()
        if self.blocked is not None:
            return now < self._recheck_at
        return self._wakeup is None or now < self._wakeup

    def invalidate(self) -> None:
        """Forget what `quiet` saw (a pass failed part-way): the next pass runs in full."""
        self._seen_version = None

    def run_once(self) -> PassResult:
        """One pass over everything due now."""
        result = PassResult()
        now = self.clock()
        result.ingested = self._intake(now)
        if self.blocked is not None and now < self._recheck_at:
            result.blocked = self.blocked
            return self._finish(result)
        if self.blocked is not None or self.hub.region is None:
            if self.blocked is None and now < self._region_retry_at:
                return self._finish(result)
            try:
                region = self.hub.resolve_region()
            except HubError as err:
                if err.failure.outcome is Outcome.BLOCKED:
                    self._set_blocked(err.failure, now)
                    result.blocked = err.failure
                else:
                    self._region_attempts += 1
                    delay = self.backoff.delay(
                        self._region_attempts, self.rng, err.failure.retry_after
                    )
                    self._region_retry_at = now + delay
                    self.log.warning(
                        "home_region_unavailable",
                        operation="GetHomeRegion",
                        attempt=self._region_attempts,
                        error_code=err.failure.code,
                        error=err.failure.message,
                        delay=round(delay, 3),
                    )
                return self._finish(result)
            self._region_attempts, self._region_retry_at = 0, 0.0
            if self.blocked is not None:
                self._clear_blocked()
            self.store.set_meta(home_region=region)
            self.log.info("home_region", region=region)
        if now < self._brake_until:
            return self._finish(result)
        limit = 1 if self._brake_attempts else self.config.outbox.batch_size
        tasks = self.store.claim_due(limit, self.config.outbox.lease_seconds)
        result.claimed = len(tasks)
        if tasks:
            self._deliver_all(tasks, result)
        self._check_mappings()
        return self._finish(result)

    def _finish(self, result: PassResult) -> PassResult:
        self._wakeup = self.store.next_wakeup()
        hold = max(
            self._brake_until if self._brake_attempts else 0.0,
            self._region_retry_at if self.hub.region is None else 0.0,
        )
        if self._wakeup is not None:
            self._wakeup = max(self._wakeup, hold)
        if result.busy:
            self.log.info(
                "pass",
                ingested=result.ingested,
                tasks=result.claimed,
                sent=result.sent,
                rejected=result.rejected,
                superseded=result.superseded,
                failed=result.failed,
                blocked=result.blocked.code if result.blocked else None,
            )
        return result

    # -- intake ------------------------------------------------------------------------------
    def _intake(self, now: float) -> int:
        """Validate new outbox rows once and take them into delivery state."""
        total = 0
        defaults = self.config.hub
        until = time.monotonic() + INTAKE_SECONDS
        self.intake_behind = False
        while True:
            new = self.store.fetch_new(self.config.outbox.batch_size)
            items = []
            for row in new:
                checked = rows.to_request(
                    row, defaults.progress_update_stream, defaults.next_update_seconds
                )
                stream = row.progress_update_stream
                if stream is None:
                    stream = defaults.progress_update_stream
                rejected = checked.reason if isinstance(checked, rows.Problem) else None
                if rejected:
                    self.log.warning(
                        "row_rejected",
                        row=row.id,
                        task=str(row.migration_task_name),
                        stream=str(stream),
                        reason=rejected,
                    )
                items.append(
                    Ingested(
                        row.id,
                        str(stream),
                        str(row.migration_task_name),
                        str(row.kind),
                        rows.epoch_of(row.created_at, now),
                        rejected,
                        supersedes=isinstance(checked, rows.StateUpdate | rows.AttributesUpdate),
                    )
                )
            self.store.ingest(items)
            total += len(items)
            self.progress_at = time.monotonic()
            if len(new) < self.config.outbox.batch_size:
                return total
            if time.monotonic() >= until:
                self.intake_behind = True
                return total

    # -- delivery ----------------------------------------------------------------------------
    def _ensure_streams(self, tasks: Sequence[ClaimedTask]) -> dict[str, Failure]:
        failures: dict[str, Failure] = {}
        for stream in sorted({t.stream for t in tasks if t.rows} - self._streams):
            if rows.check_stream(stream) is not None:
                continue
            try:
                self.hub.create_stream(stream)
            except HubError as err:
                failures[stream] = err.failure
                continue
            self.store.mark_stream_created(stream)
            self._streams.add(stream)
            self.log.info("stream_created", stream=stream)
        return failures

    def _deliver_all(self, tasks: list[ClaimedTask], result: PassResult) -> None:
        stream_failures = self._ensure_streams(tasks)
        futures: dict[Future[_Delivery], ClaimedTask] = {
            self.pool.submit(self._deliver, t, stream_failures.get(t.stream)): t for t in tasks
        }
        pending: set[Future[_Delivery]] = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2)
            if done:
                self.progress_at = time.monotonic()
            if self.stop.is_set() and pending:
                _, pending = wait(pending, timeout=self.config.publish.stop_timeout_seconds)
                self.log.warning("stop_abandoned_calls", tasks=len(pending))
                for f in pending:
                    f.cancel()
                break
        deliveries = [f.result() for f in futures if f.done() and not f.cancelled()]
        now = self.clock()
        for d in deliveries:
            result.sent += len(d.outcome.sent)
            result.rejected += len(d.outcome.rejected)
            result.superseded += len(d.outcome.superseded)
            if d.failure is not None:
                result.failed += 1
                if d.failure.outcome is Outcome.BLOCKED:
                    result.blocked = d.failure
        self.store.record([d.outcome for d in deliveries])
        if result.blocked is not None:
            self._set_blocked(result.blocked, now)
        attempted = [d for d in deliveries if d.calls]
        if attempted and all(
            d.failure is not None and d.failure.outcome is not Outcome.BLOCKED for d in attempted
        ):
            self._brake_attempts += 1
            self._brake_until = now + self.backoff.delay(self._brake_attempts, self.rng)
            self.log.warning(
                "outage_brake",
                attempt=self._brake_attempts,
                delay=round(self._brake_until - now, 3),
                error=str(attempted[0].failure),
            )
            self.store.set_meta(brake_attempts=self._brake_attempts, brake_until=self._brake_until)
        elif any(d.failure is None or d.outcome.sent for d in attempted):
            self.last_success_at = now
            if self._brake_attempts:
                self.log.info("outage_over", attempts=self._brake_attempts)
                self._brake_attempts, self._brake_until = 0, 0.0
                self.store.set_meta(brake_attempts=None, brake_until=None)
            self.store.set_meta(last_success_at=now)

    def _deliver(self, task: ClaimedTask, stream_failure: Failure | None) -> _Delivery:
        """All of one task's calls, strictly in order (runs in a pool thread)."""
        out = TaskOutcome(task.id)
        delivery = _Delivery(out)
        out.rejected = [
            (rid, "row deleted from the outbox before delivery") for rid in task.missing
        ]
        defaults = self.config.hub
        plan = rows.plan_task(
            [
                (r.id, rows.to_request(r, task.stream, defaults.next_update_seconds))
                for r in task.rows
            ],
            task.last_state_row,
            task.last_attributes_row,
            task.associated,
        )
        out.superseded = plan.superseded
        out.rejected += [(rid, p.reason) for rid, p in plan.rejected]
        if not plan.send:
            return delivery
        if self.stop.is_set():
            out.retry_at = self.clock()
            return delivery
        if stream_failure is not None:
            delivery.calls = 1
            return self._failed(delivery, task, stream_failure, "CreateProgressUpdateStream")
        steps = deque(plan.send)
        imported, repaired = task.imported, False
        log = self.log.bind(stream=task.stream, task=task.task)
        while steps:
            request = steps[0]
            if self.stop.is_set():
                out.retry_at = self.clock()
                return delivery
            operation = "ImportMigrationTask"
            try:
                delivery.calls += 1
                if not imported:
                    self.hub.import_task(task.stream, task.task)
                    imported = out.imported = True
                    log.debug("task_imported")
                operation = request.operation
                self.hub.send(request)
            except HubError as err:
                failure = err.failure
                if failure.outcome is Outcome.REJECTED:
                    reason = f"the Hub refused {err.operation}: {failure}"
                    out.rejected.append((request.row_id, reason))
                    log.warning("row_rejected", row=request.row_id, reason=reason)
                    steps.popleft()
                    continue
                if failure.outcome is Outcome.REPAIR and not repaired:
                    repaired, imported = True, False
                    log.info("repairing", operation=err.operation, error=str(failure))
                    try:
                        self.hub.create_stream(task.stream)
                    except HubError as again:
                        return self._failed(delivery, task, again.failure, again.operation)
                    continue
                return self._failed(delivery, task, failure, operation)
            steps.popleft()
            self._sent(out, request)
            log.debug("row_sent", row=request.row_id, operation=request.operation)
        return delivery

    def _sent(self, out: TaskOutcome, request: rows.Request) -> None:
        out.sent.append(request.row_id)
        if isinstance(request, rows.StateUpdate):
            out.state = {
                "row": request.row_id,
                "status": request.status,
                "percent": request.percent,
                "detail": request.detail,
                "update_time": request.update_time.timestamp(),
                "next_update_seconds": request.next_update_seconds,
            }
        elif isinstance(request, rows.AttributesUpdate):
            out.attributes_row = request.row_id
            out.map_check_at = self.clock() + self.config.mapping.check_after_seconds
        else:
            out.artifacts.append(request.arn)

    def _failed(
        self, delivery: _Delivery, task: ClaimedTask, failure: Failure, operation: str
    ) -> _Delivery:
        out, now = delivery.outcome, self.clock()
        delivery.failure = failure
        out.error = str(failure)[:500]
        if failure.outcome is Outcome.BLOCKED:
            out.retry_at = now
            return delivery
        attempts = task.attempts + 1
        publish = self.config.publish
        out.give_up = give_up_reason(
            attempts,
            now - task.oldest_created_at,
            publish.max_attempts,
            publish.max_age_seconds,
            str(failure),
        )
        delay = self.backoff.delay(attempts, self.rng, failure.retry_after)
        out.retry_at, out.charge_attempt = now + delay, True
        self.log.info(
            "call_failed",
            stream=task.stream,
            task=task.task,
            operation=operation,
            attempt=attempts,
            error_code=failure.code,
            error=failure.message[:300],
            delay=round(delay, 3),
            gave_up=out.give_up is not None,
        )
        return delivery

    # -- auto-mapping ------------------------------------------------------------------------
    def _check_mappings(self) -> None:
        mapping = self.config.mapping
        for row in self.store.due_mapping_checks(MAPPING_CHECKS_PER_PASS):
            if self.stop.is_set():
                return
            now = self.clock()
            try:
                found = self.hub.discovered_resources(row["stream"], row["task"])
            except HubError as err:
                found = []
                if err.failure.outcome is Outcome.BLOCKED:
                    return
            checks = row["map_checks"] + 1
            if found:
                self.store.record_mapping(row["id"], True, found[0], None, False)
                self.log.info(
                    "task_mapped",
                    stream=row["stream"],
                    task=row["task"],
                    configuration_id=found[0],
                )
                continue
            unmapped = now - row["attributes_at"] >= mapping.unmapped_after_seconds
            interval = min(
                mapping.max_check_interval_seconds,
                max(mapping.check_after_seconds, 1.0) * 2 ** min(checks, 20),
            )
            if unmapped and not row["unmapped_reported"]:
                self.log.warning(
                    "task_unmapped",
                    stream=row["stream"],
                    task=row["task"],
                    seconds_since_attributes=round(now - row["attributes_at"]),
                    hint="check the attributes match a discovered server; VM fields need "
                    "VM_MANAGER_ID",
                )
            self.store.record_mapping(
                row["id"], False if unmapped else None, None, now + interval, unmapped
            )


def requeue_dead_letters(store: Store, config: Config, ids: Sequence[int] | None) -> dict[str, Any]:
    """Put dead letters back in line; ones still invalid are rejected again with their reason."""
    letters = store.dead_letters(ids)
    found = {d["id"]: d for d in letters}
    unknown = sorted(set(ids or ()) - set(found))
    present = [i for i, d in found.items() if d["present"]]
    contents = {r.id: r for r in store.outbox_rows(present)} if present else {}
    valid, invalid = [], []
    for rid, letter in found.items():
        row = contents.get(rid)
        if row is None:
            invalid.append((rid, "row deleted from the outbox before delivery"))
            continue
        checked = rows.to_request(row, letter["stream"], config.hub.next_update_seconds)
        if isinstance(checked, rows.Problem):
            invalid.append((rid, checked.reason))
        else:
            valid.append(rid)
    store.requeue(valid, invalid)
    return {
        "requeued": valid,
        "still_rejected": [dict(id=i, reason=r) for i, r in invalid],
        "unknown": unknown,
    }
