"""The orchestrator of one pass: intake → gate → claim → fan out → record → gate update →
mapping checks; the state machines live in `gate`, `delivery`, `mapping`, `intake`."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import structlog

from reporter.config import Config, fence_seconds
from reporter.delivery.clockstep import StepWatch
from reporter.delivery.conditions import Conditions
from reporter.delivery.courier import CALM_RATIO, Courier, Delivery, StreamResult
from reporter.delivery.gate import Blocked, Gate, Open
from reporter.delivery.intake import Intake
from reporter.delivery.mapping import MappingChecker
from reporter.delivery.repair import RepairRounds
from reporter.hub.client import Hub
from reporter.hub.errors import Failure
from reporter.hub_requests import APPLICATIONS
from reporter.stores.contract import ClaimedTask, OutboxStore

__all__ = ["STREAM_WAIT_SECONDS", "PassResult", "Relay", "RelayStatus"]

# Tasks of a stream another replica is creating are handed back for this long.
STREAM_WAIT_SECONDS = 0.5


@dataclass
class PassResult:
    """What one pass did."""

    ingested: int = 0
    claimed: int = 0
    sent: int = 0
    rejected: int = 0  # while delivering: refused by the Hub, or retries given up
    rejected_at_intake: int = 0  # broke the outbox contract (never sent)
    superseded: int = 0
    failed: int = 0
    calls: int = 0  # Hub calls made (answered or failed)
    repaired: int = 0  # tasks a repair brought back to their newest state
    blocked: Failure | None = None

    @property
    def busy(self) -> bool:
        """True when the pass touched anything."""
        return bool(self.ingested or self.claimed)


@dataclass(frozen=True)
class RelayStatus:
    """The read-only view the daemon, `drain` and metrics use."""

    blocked: Failure | None
    braking: bool
    wakeup: float | None
    backlogged: bool
    progress_at: float
    last_success_at: float | None
    last_failure: str | None


class Relay:
    """The delivery algorithm; `run_once` is all of it, `daemon`/`drain` are timers around it."""

    def __init__(
        self,
        store: OutboxStore,
        hub: Hub,
        config: Config,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.store, self.config = store, config
        self.clock = clock or (lambda: time.time())  # looked up per call: freezegun-able
        self.stop = stop or threading.Event()
        rng = rng or random.Random()
        self.conditions = Conditions(config.log.summary_seconds, self.clock)
        self.gate = Gate(store.load_gate(), hub, config.publish, store.save_gate, rng, self.clock,
                         self.conditions)
        need, lease = fence_seconds(config), config.outbox.lease_seconds
        self.summaries = True  # a `delivered` line per period (`drain` shows progress instead)
        self.courier = Courier(
            hub, config, self.stop, self.clock, rng,
            fence=lambda task: store.hold(task.id, task.lease, need, lease),
            conditions=self.conditions,
        )
        self.mapping = MappingChecker(store, hub, config.mapping, self.stop, self.clock)
        self.repairs = RepairRounds(store, hub, config.verify, self.stop, self.clock)
        self.intake = Intake(store, config, self._progress, self.conditions)
        self._pool = ThreadPoolExecutor(config.publish.max_concurrency, thread_name_prefix="hub")
        self._streams = store.streams()
        self._creating: set[str] = set()
        self._seen_version: int | None = None
        self._wakeup: float | None = None
        self._progress_at = time.monotonic()  # last sign of life: a batch taken in, a task done
        aws = config.aws  # after this long an abandoned call can no longer be in flight
        self._abandon_seconds = (aws.connect_timeout_seconds + aws.read_timeout_seconds) * 1.0
        self._abandon_seconds *= aws.max_attempts
        self.hold_until = 0.0  # no claims before this (a replica not yet counted in the budget)
        self._steps = StepWatch(self.clock)

    def status(self) -> RelayStatus:
        """A snapshot of the relay's state for the daemon and `drain`."""
        now, gate = self.clock(), self.gate
        due = self._wakeup is not None and self._wakeup <= now
        return RelayStatus(
            blocked=gate.blocked,
            braking=gate.braking,
            wakeup=self._wakeup,
            backlogged=gate.blocked is None and (self.intake.behind or due),
            progress_at=self._progress_at,
            last_success_at=gate.state.last_success_at,
            last_failure=gate.last_failure,
        )

    def close(self) -> None:
        """Stop the worker pool without waiting for abandoned calls; log what the conditions
        have not said yet."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.conditions.finish()

    def quiet(self) -> bool:
        """True when nothing can have changed: no commit by others, no rows left behind by the
        last intake, and nothing due yet."""
        self.conditions.tick()  # a condition clears, a period's line is written, while idle
        version = self.store.data_version()
        changed, self._seen_version = version != self._seen_version, version
        if changed or self.intake.behind:
            return False
        now = self.clock()
        if self.gate.blocked is not None:
            return now < self.gate.recheck_time
        return self._wakeup is None or now < self._wakeup

    def invalidate(self) -> None:
        """Forget what `quiet` saw (a pass failed part-way): the next pass runs in full."""
        self._seen_version = None

    def run_once(self) -> PassResult:
        """One pass: take new rows in; if the gate admits, claim due tasks (one while probing an
        outage), deliver them concurrently, record the outcomes and let the gate learn from
        every call; then run the mapping checks and the repair round that are due."""
        self._rebase_after_a_step()
        now = self.clock()
        result = PassResult(ingested=self.intake.run(now), rejected_at_intake=self.intake.rejected)
        admission = self.gate.admit(now)
        if isinstance(admission, Blocked):
            result.blocked = admission.failure
        elif isinstance(admission, Open) and now >= self.hold_until:
            limit = 1 if admission.probe else self.config.outbox.batch_size
            tasks = self.store.claim_due(limit, self.config.outbox.lease_seconds)
            result.claimed = len(tasks)
            if self.store.backlog().waiting:  # rows a claim handed back to intake (an older
                self.intake.behind = True  # version's): our commit wakes no one, so take them now
            if tasks:
                self._deliver(tasks, result)
            if result.blocked is None:
                self.mapping.run()
                if not admission.probe:  # never while probing an outage
                    self.repairs.run()
        self._wakeup = min((t for t in (self.store.next_wakeup(), self.repairs.next_at)
                            if t is not None), default=None)
        if self._wakeup is not None:
            self._wakeup = max(self._wakeup, self.gate.hold_until, self.hold_until)
        self.conditions.tick()
        if self.summaries:
            self.conditions.delivered(
                sent=result.sent,
                superseded=result.superseded,
                rejected_at_intake=result.rejected_at_intake,
                rejected_by_hub=result.rejected,
                failed_lanes=result.failed,
            )
        if result.busy:
            structlog.get_logger("reporter.relay").debug(
                "pass", ingested=result.ingested, tasks=result.claimed, sent=result.sent,
                rejected_at_intake=result.rejected_at_intake, rejected_by_hub=result.rejected,
                superseded=result.superseded, failed=result.failed,
                blocked=result.blocked.code if result.blocked else None)
        return result

    def _rebase_after_a_step(self) -> None:
        """A wall-clock step (an hour back after a VM resume) would leave every stored wait an
        hour long: shift them by the step, so waiting rows go out when they were due."""
        delta = self._steps.step()
        if not delta:
            return
        self.store.rebase(delta)
        self.gate.rebase(delta)
        self.hold_until = self.hold_until + delta if self.hold_until else 0.0
        if self._wakeup is not None:
            self._wakeup += delta
        structlog.get_logger("reporter.relay").warning(
            "clock_stepped", seconds=round(delta, 3),
            hint="stored due times, retries and the outage brake were shifted by the step",
        )

    def _deliver(self, tasks: list[ClaimedTask], result: PassResult) -> None:
        self.courier.calm = self.gate.failure_ratio(self.clock()) < CALM_RATIO
        tasks = self._stream_owners(tasks)
        # Tasks of streams that exist start at once; streams new to this pass are created side
        # by side meanwhile, and only their own tasks wait for them.
        fresh = [t for t in tasks if t.stream in self._creating]
        futures: dict[Future[Delivery], ClaimedTask] = {
            self._pool.submit(self.courier.deliver, t, None): t
            for t in tasks
            if t.stream not in self._creating
        }
        streams, handed_back = self._ensure_streams(fresh)
        for stream in streams.created:
            self.store.mark_stream_created(stream)
            self._streams.add(stream)
        if not handed_back:
            futures.update({
                self._pool.submit(self.courier.deliver, t, streams.failures.get(t.stream)): t
                for t in fresh
            })
        finished = self._wait(futures)
        deliveries = [f.result() for f in finished]
        for d in deliveries:
            result.sent += len(d.outcome.sent)
            result.rejected += len(d.outcome.rejected)
            result.superseded += len(d.outcome.superseded)
            result.failed += d.failed
            result.repaired += d.outcome.resent
            result.blocked = result.blocked or d.blocked
        self.store.record([d.outcome for d in deliveries])
        calls = streams.calls + [c for d in deliveries for c in d.calls]
        result.calls += len(calls)
        if any(c is None for c in calls):
            self.conditions.succeeded()
        self.gate.learn(calls, self.clock())

    def _ensure_streams(self, tasks: list[ClaimedTask]) -> tuple[StreamResult, bool]:
        """Create the streams this pass needs, each on a worker of its own (1,000 new streams
        cost a few rounds of calls, not 1,000 in a row), watching for a stop while a call
        hangs: then `tasks` (those waiting for the streams) are handed back due now, not left
        leased until their leases run out (the flag says so)."""
        merged, handed_back = StreamResult(), False
        if not self._creating:
            return merged, handed_back
        jobs = [
            self._pool.submit(self.courier.ensure_streams, [stream], self._streams)
            for stream in sorted(self._creating)
        ]
        pending: set[Future[StreamResult]] = set(jobs)
        while pending:
            _, pending = wait(pending, timeout=0.1)
            if pending and self.stop.is_set():
                self.store.release([t.leased for t in tasks], self.clock())
                handed_back = True
                structlog.get_logger("reporter.relay").warning(
                    "stop_during_stream_creation", tasks=len(tasks), streams=len(self._creating)
                )
                break
        for job in jobs:
            if job.done() and not job.cancelled():
                done = job.result()
                merged.created += done.created
                merged.failures.update(done.failures)
                merged.calls += done.calls
        return merged, handed_back

    def _stream_owners(self, tasks: list[ClaimedTask]) -> list[ClaimedTask]:
        """Streams not known to exist are created once across replicas: this relay creates
        those whose creation it could claim; tasks of streams another replica is creating are
        handed back for a moment."""
        unknown = {t.stream for t in tasks if t.rows} - self._streams - {APPLICATIONS}
        if unknown:
            self._streams |= self.store.streams()  # perhaps another replica created them
            unknown -= self._streams
        self._creating = {s for s in unknown if self.store.claim_stream(s, self._abandon_seconds)}
        others = unknown - self._creating
        if not others:
            return tasks
        waiting = [t for t in tasks if t.stream in others]
        self.store.release([t.leased for t in waiting], self.clock() + STREAM_WAIT_SECONDS)
        return [t for t in tasks if t.stream not in others]

    def _wait(self, futures: dict[Future[Delivery], ClaimedTask]) -> list[Future[Delivery]]:
        """Wait for every task; on a stop, hand back what did not finish in time: tasks never
        started are due at once, a task whose call was abandoned once it can no longer be in
        flight."""
        pending: set[Future[Delivery]] = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2)
            if done:
                self._progress()
            if self.stop.is_set() and pending:
                _, pending = wait(pending, timeout=self.config.publish.stop_timeout_seconds)
                break
        if pending:
            now = self.clock()
            unstarted = [f for f in pending if f.cancel()]
            abandoned = [f for f in pending if f not in unstarted]
            log = structlog.get_logger("reporter.relay")
            log.warning("stop_abandoned_calls", tasks=len(abandoned), not_started=len(unstarted))
            self.store.release([futures[f].leased for f in unstarted], now)
            self.store.release(
                [futures[f].leased for f in abandoned], now + self._abandon_seconds
            )
        return [f for f in futures if f.done() and not f.cancelled()]

    def _progress(self) -> None:  # a sign of life for the watchdog
        self._progress_at = time.monotonic()
