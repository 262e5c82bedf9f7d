"""Per-task delivery: the import first, one ordered lane per kind, repair, per-lane backoff that
counts consecutive failures, give-up only for rows that were tried; durable across restarts."""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from reporter import config as config_mod
from reporter.config import Config
from reporter.delivery.courier import CALM_ATTEMPTS, Courier
from reporter.delivery.relay import Relay
from reporter.emulator import Emulator
from reporter.hub.client import Hub, HubTask
from reporter.hub.errors import Failure, HubError, Outcome
from reporter.hub_requests import Kind, Request
from reporter.rows import OutboxRow
from reporter.stores.contract import (
    ClaimedRow,
    ClaimedTask,
    LaneState,
    Resend,
    ResendScope,
    SentState,
)
from reporter.stores.sqlite import SqliteStore

from .helpers import frozen_clock, insert, judged, row_clock

NOW = 1_800_000_000.0
THROTTLED = Failure(Outcome.TRANSIENT, "ThrottlingException", "slow down", retry_after=None)
UNAVAILABLE = Failure(Outcome.TRANSIENT, "ServiceUnavailableException", "try later")
NOT_FOUND = Failure(Outcome.REPAIR, "ResourceNotFoundException", "no such stream")
DENIED = Failure(Outcome.BLOCKED, "AccessDeniedException", "access denied")
REFUSED = Failure(Outcome.REJECTED, "InvalidInputException", "bad value")


class FakeHub:
    """A scripted Hub: per operation, a queue of failures (None = success); records every call."""

    def __init__(self, script: dict[str, list[Failure | None]] | None = None,
                 described: HubTask | None = None) -> None:
        self.script: dict[str, list[Failure | None]] = defaultdict(list, script or {})
        self.calls: list[tuple[str, int | None]] = []
        self.hub_task = described  # what DescribeMigrationTask shows (None: no such task)

    def _call(self, operation: str, row: int | None = None) -> None:
        self.calls.append((operation, row))
        queue = self.script[operation]
        failure = queue.pop(0) if queue else None
        if failure is not None:
            raise HubError(failure, operation)

    def create_stream(self, stream: str) -> None:
        self._call("CreateProgressUpdateStream")

    def import_task(self, stream: str, task: str) -> None:
        self._call("ImportMigrationTask")

    def send(self, request: Request) -> None:
        self._call(request.operation, request.row_id)

    def described(self, stream: str, task: str) -> HubTask | None:
        self._call("DescribeMigrationTask")
        return self.hub_task

    @contextlib.contextmanager
    def fenced(self, check: Callable[[], bool]) -> Iterator[None]:
        self.fence = check
        yield


def _config(**publish: Any) -> Config:
    return config_mod.parse({"hub": {"progress_update_stream": "S"},
                             "publish": {"backoff_base_seconds": 1.0, **publish}})


def _state(rid: int, status: str = "IN_PROGRESS") -> OutboxRow:
    return OutboxRow(rid, "task_state", "t1", status=status, created_at="2027-01-15T08:00:00Z")


def _attrs(rid: int) -> OutboxRow:
    return OutboxRow(rid, "resource_attributes", "t1", created_at="2027-01-15T08:00:00Z",
                     resource_attributes=json.dumps([{"Type": "FQDN", "Value": "a.example"}]))


def _artifact(rid: int, arn: str) -> OutboxRow:
    return OutboxRow(rid, "created_artifact", "t1", artifact_name=arn,
                     created_at="2027-01-15T08:00:00Z")


def _task(*outbox: OutboxRow, imported: bool = False,
          lanes: dict[Kind, LaneState] | None = None, attempts: int = 0) -> ClaimedTask:
    return ClaimedTask(1, "S", "t1", "lease-1", imported=imported,
                       rows=[ClaimedRow(r.id, r.id, attempts, NOW - 10, judged(r)) for r in outbox],
                       lanes=lanes or {})


def _courier(hub: FakeHub, config: Config | None = None,
             stop: threading.Event | None = None) -> Courier:
    return Courier(hub, config or _config(), stop or threading.Event(), lambda: NOW,
                   random.Random(1))


ARN = "arn:aws:ec2:us-west-2:123456789012:instance/i-0aaa"


def test_import_first_then_rows_in_row_order_across_kinds():
    """With no failures the import comes first and the rows follow in row order."""
    hub = FakeHub()
    d = _courier(hub).deliver(_task(_attrs(1), _state(2), _artifact(3, ARN), _state(4)))
    assert hub.calls == [("ImportMigrationTask", None), ("PutResourceAttributes", 1),
                         ("AssociateCreatedArtifact", 3), ("NotifyMigrationTaskState", 4)]
    out = d.outcome
    assert out.sent == [1, 3, 4] and out.superseded == [(2, "superseded by row 4")]
    assert out.imported and out.state is not None and out.state.row == 4
    assert out.attributes_row == 1 and out.artifacts == [(ARN, None)]
    assert {lane.kind: lane.attempts for lane in out.lanes} == dict.fromkeys(
        (Kind.TASK_STATE, Kind.RESOURCE_ATTRIBUTES, Kind.CREATED_ARTIFACT), 0)
    assert d.calls == [None] * 4 and not d.failed


def test_a_failing_attributes_call_never_holds_back_a_newer_state():
    """PutResourceAttributes fails: its lane backs off alone while the state is sent."""
    hub = FakeHub({"PutResourceAttributes": [UNAVAILABLE]})
    d = _courier(hub).deliver(_task(_attrs(1), _state(2, "COMPLETED"), imported=True))
    out = d.outcome
    assert out.sent == [2] and out.state is not None and out.state.status == "COMPLETED"
    assert out.failed_rows == [1] and out.rejected == []
    lanes = {lane.kind: lane for lane in out.lanes}
    assert lanes[Kind.TASK_STATE].attempts == 0
    attributes = lanes[Kind.RESOURCE_ATTRIBUTES]
    assert attributes.attempts == 1 and attributes.retry_at is not None
    assert NOW <= attributes.retry_at <= NOW + 1.0
    assert "ServiceUnavailable" in (attributes.error or "")


def test_consecutive_failures_count_up_and_any_success_resets_them():
    """A lane's count grows only while nothing of the task succeeds; any success is progress,
    so a failing lane counts again from one."""
    lanes = {Kind.RESOURCE_ATTRIBUTES: LaneState(6, NOW - 1), Kind.TASK_STATE: LaneState(6, NOW)}
    stuck = _courier(FakeHub({"PutResourceAttributes": [UNAVAILABLE]})).deliver(
        _task(_attrs(1), imported=True, lanes=lanes))
    assert [(lane.kind, lane.attempts) for lane in stuck.outcome.lanes] == [
        (Kind.RESOURCE_ATTRIBUTES, 7)]
    moving = _courier(FakeHub({"PutResourceAttributes": [UNAVAILABLE]})).deliver(
        _task(_attrs(1), _state(2), imported=True, lanes=lanes))
    assert {lane.kind: lane.attempts for lane in moving.outcome.lanes} == {
        Kind.RESOURCE_ATTRIBUTES: 1, Kind.TASK_STATE: 0}


def test_backoff_is_capped_and_floored_by_retry_after():
    """A lane's delay never exceeds backoff_max_seconds (default 20) nor undercuts Retry-After."""
    lanes = {Kind.TASK_STATE: LaneState(30, NOW)}
    for seed in range(20):
        d = Courier(FakeHub({"NotifyMigrationTaskState": [THROTTLED]}), _config(),
                    threading.Event(), lambda: NOW, random.Random(seed)).deliver(
            _task(_state(1), imported=True, lanes=lanes))
        retry_at = d.outcome.lanes[0].retry_at
        assert retry_at is not None and NOW <= retry_at <= NOW + 20.0
    slow = Failure(Outcome.TRANSIENT, "ThrottlingException", "slow", retry_after=45.0)
    d = _courier(FakeHub({"NotifyMigrationTaskState": [slow]})).deliver(
        _task(_state(1), imported=True))
    assert d.outcome.lanes[0].retry_at == NOW + 45.0


def test_while_calls_mostly_succeed_one_calls_backoff_stays_short():
    """When the relay judges the Hub calm, a lane's first failures wait at most 4 x base (chance,
    not an outage); past CALM_ATTEMPTS, or when not calm, the full cap applies again."""
    for attempts, calm, limit in ((4, True, 4.0), (CALM_ATTEMPTS, True, 4.0),
                                  (CALM_ATTEMPTS + 3, True, 20.0), (4, False, 8.0)):
        delays = []
        for seed in range(40):
            courier = Courier(FakeHub({"NotifyMigrationTaskState": [UNAVAILABLE]}), _config(),
                              threading.Event(), lambda: NOW, random.Random(seed))
            courier.calm = calm
            d = courier.deliver(_task(_state(1), imported=True,
                                      lanes={Kind.TASK_STATE: LaneState(attempts - 1, NOW)}))
            retry_at = d.outcome.lanes[0].retry_at
            assert retry_at is not None
            delays.append(retry_at - NOW)
        assert max(delays) <= limit and max(delays) > limit / 2, (attempts, calm, max(delays))


def test_a_lane_still_backing_off_is_left_alone():
    """Rows of a lane whose retry time has not come are not tried; other lanes go ahead."""
    hub = FakeHub()
    lanes = {Kind.RESOURCE_ATTRIBUTES: LaneState(3, NOW + 30)}
    d = _courier(hub).deliver(_task(_attrs(1), _state(2), imported=True, lanes=lanes))
    assert hub.calls == [("NotifyMigrationTaskState", 2)]
    assert [lane.kind for lane in d.outcome.lanes] == [Kind.TASK_STATE]


def test_give_up_rejects_only_the_row_whose_own_call_kept_failing():
    """With max_attempts, the failing attributes row is dead-lettered; the newer COMPLETED state
    that succeeded is sent, and a lane that was never tried loses nothing."""
    config = _config(max_attempts=3)
    hub = FakeHub({"PutResourceAttributes": [UNAVAILABLE]})
    d = _courier(hub, config).deliver(_task(_attrs(1), _state(2, "COMPLETED"), imported=True,
                                            attempts=2))
    out = d.outcome
    assert out.sent == [2]
    assert [rid for rid, _ in out.rejected] == [1]
    assert "gave up after 3 attempts" in out.rejected[0][1]
    assert {lane.kind: (lane.attempts, lane.retry_at) for lane in out.lanes}[
        Kind.RESOURCE_ATTRIBUTES] == (0, None)


def test_a_failing_import_holds_every_lane_but_charges_only_the_row_tried():
    """The import comes first: when it fails every lane waits, and only the row on whose behalf
    it was made is charged an attempt (so give-up never takes a row that was not tried)."""
    config = _config(max_attempts=1)
    hub = FakeHub({"ImportMigrationTask": [UNAVAILABLE]})
    d = _courier(hub, config).deliver(_task(_attrs(1), _state(2)))
    assert hub.calls == [("ImportMigrationTask", None)]
    out = d.outcome
    assert out.sent == [] and out.failed_rows == [1]
    assert [rid for rid, _ in out.rejected] == [1]
    assert {lane.kind: lane.attempts for lane in out.lanes} == {
        Kind.RESOURCE_ATTRIBUTES: 0, Kind.TASK_STATE: 1}


def test_stream_lost_at_the_hub_is_repaired_once():
    """ResourceNotFound in a repair: re-create the stream, re-import, send again; a second
    loss in the same try fails the lane."""
    hub = FakeHub({"NotifyMigrationTaskState": [NOT_FOUND]})
    d = _courier(hub).deliver(_repairing(ResendScope.STATE, True, None, _state(1)))
    assert hub.calls[-4:] == [("NotifyMigrationTaskState", 1),
                              ("CreateProgressUpdateStream", None),
                              ("ImportMigrationTask", None), ("NotifyMigrationTaskState", 1)]
    assert d.outcome.sent == [1] and d.outcome.imported
    hub = FakeHub({"NotifyMigrationTaskState": [NOT_FOUND, NOT_FOUND]})
    d = _courier(hub).deliver(_repairing(ResendScope.STATE, True, None, _state(1)))
    lanes = {lane.kind: lane.attempts for lane in d.outcome.lanes}
    assert d.outcome.sent == [] and lanes[Kind.TASK_STATE] == 1


def test_a_task_found_lost_by_a_normal_send_is_marked_to_be_restored_whole():
    """A normal send that finds the task gone makes no further call (no re-import that would
    hide the loss from a restart if the process died before recording it): the outcome says
    `lost`, the store marks the task for a whole repair, due at once, and nothing is charged.
    A new task whose stream is gone is another matter: its stream is made and it is imported."""
    hub = FakeHub({"NotifyMigrationTaskState": [NOT_FOUND]})
    d = _courier(hub).deliver(_task(_state(1), imported=True))
    assert hub.calls == [("NotifyMigrationTaskState", 1)]
    assert d.outcome.lost and d.outcome.sent == [] and not d.outcome.resent
    assert d.outcome.failed_rows == [] and all(lane.attempts == 0 for lane in d.outcome.lanes)
    hub = FakeHub({"ImportMigrationTask": [NOT_FOUND]})  # a new task whose stream is gone
    d = _courier(hub).deliver(_task(_state(1)))
    assert not d.outcome.lost and d.outcome.sent == [1]


def _repairing(scope: ResendScope = ResendScope.WHOLE, imported: bool = False,
               lanes: dict[Kind, LaneState] | None = None, *outbox: OutboxRow) -> ClaimedTask:
    task = _task(*outbox, imported=imported, lanes=lanes)
    task.resend = Resend(SentState(-1, -1, "IN_PROGRESS", 90, None, NOW - 100, 300),
                         (("FQDN", "a.example"),), ((ARN, "vm"),), (), scope)
    return task


def test_a_repair_interrupted_by_a_throttle_finishes_on_its_next_try():
    """Try 1: the Hub lacks the task; imported, state sent, the attribute list throttled: not
    done, due at its lane's retry time. Try 2 (imported now): the read finds our state there,
    so only what it lacks goes (no state again); done (`resent`), never again."""
    hub = FakeHub({"PutResourceAttributes": [THROTTLED]})
    d = _courier(hub).deliver(_repairing())
    assert hub.calls == [("DescribeMigrationTask", None), ("ImportMigrationTask", None),
                         ("NotifyMigrationTaskState", -1), ("PutResourceAttributes", -2),
                         ("AssociateCreatedArtifact", -3)]
    out = d.outcome
    assert out.imported and not out.resent and out.sent == [] and out.failed_rows == []
    lane = {lane.kind: lane for lane in out.lanes}[Kind.RESOURCE_ATTRIBUTES]
    assert lane.attempts == 1 and lane.retry_at is not None and out.retry_at == lane.retry_at
    hub = FakeHub(described=HubTask("IN_PROGRESS", 90, NOW - 100))
    d = _courier(hub).deliver(_repairing(imported=True, lanes={
        Kind.RESOURCE_ATTRIBUTES: LaneState(1, NOW - 1)}))
    assert hub.calls == [("DescribeMigrationTask", None), ("PutResourceAttributes", -1),
                         ("AssociateCreatedArtifact", -2)]
    assert d.outcome.resent and d.outcome.retry_at is None


def test_a_repair_waits_for_its_lanes_backoff_and_a_failed_read_backs_off():
    """A repair call whose lane is still backing off is not made and the repair is not done;
    a failing read (the first call of a try) charges the state lane, no row."""
    hub = FakeHub(described=HubTask("IN_PROGRESS", 90, NOW - 100))
    d = _courier(hub).deliver(_repairing(imported=True, lanes={
        Kind.RESOURCE_ATTRIBUTES: LaneState(2, NOW + 30)}))
    assert ("PutResourceAttributes", -1) not in hub.calls and not d.outcome.resent
    hub = FakeHub({"DescribeMigrationTask": [THROTTLED]})
    d = _courier(hub).deliver(_repairing(ResendScope.STATE, True, None, _state(5)))
    assert hub.calls == [("DescribeMigrationTask", None)]
    lanes = {lane.kind: lane for lane in d.outcome.lanes}
    assert lanes[Kind.TASK_STATE].attempts == 1 and d.outcome.failed_rows == []
    assert not d.outcome.resent and d.outcome.retry_at == lanes[Kind.TASK_STATE].retry_at
    hub = FakeHub()  # a state lane backing off: no read at all, the waiting row waits too
    d = _courier(hub).deliver(_repairing(ResendScope.STATE, True, {
        Kind.TASK_STATE: LaneState(1, NOW + 30)}))
    assert hub.calls == []


def test_a_repair_never_overwrites_a_newer_state_and_ends():
    """The Hub shows a state dated after ours (someone else's): no state goes, a waiting older
    row is superseded, and the repair is done (reported, not retried)."""
    hub = FakeHub(described=HubTask("COMPLETED", 100, NOW))
    old = OutboxRow(7, "task_state", "t1", status="IN_PROGRESS",
                    update_date_time="2027-01-15T07:59:00Z", created_at="2027-01-15T08:00:00Z")
    d = _courier(hub).deliver(_repairing(ResendScope.STATE, True, None, old))
    assert hub.calls == [("DescribeMigrationTask", None)]
    assert [v.row for v in d.outcome.superseded] == [7] and d.outcome.resent


def test_refused_rows_are_rejected_and_their_lane_goes_on():
    """The Hub refusing one artifact dead-letters that row; the next artifact is still sent."""
    hub = FakeHub({"AssociateCreatedArtifact": [REFUSED]})
    d = _courier(hub).deliver(_task(_artifact(1, ARN), _artifact(2, ARN + "b"), imported=True))
    assert [rid for rid, _ in d.outcome.rejected] == [1]
    assert "the Hub refused AssociateCreatedArtifact" in d.outcome.rejected[0][1]
    assert d.outcome.sent == [2]


def test_blocked_stops_the_task_and_keeps_its_rows_due():
    """AccessDenied: the delivery reports the blocking failure and changes no lane."""
    hub = FakeHub({"NotifyMigrationTaskState": [DENIED]})
    d = _courier(hub).deliver(_task(_state(1), _attrs(2), imported=True))
    assert d.blocked == DENIED and d.outcome.lanes == [] and d.outcome.sent == []


def test_a_stop_request_makes_no_call():
    """With the stop flag set nothing is sent and no lane is charged."""
    stop = threading.Event()
    stop.set()
    hub = FakeHub()
    d = _courier(hub, stop=stop).deliver(_task(_state(1)))
    assert hub.calls == [] and d.outcome.lanes == [] and d.calls == []


def test_stream_creation_failure_holds_the_task_and_charges_the_first_row():
    """A stream that could not be created fails each due lane; like a failed import it charges
    only the first due row, on whose behalf it was made."""
    d = _courier(FakeHub()).deliver(_task(_state(1), _attrs(2)), stream_failure=UNAVAILABLE)
    assert d.outcome.failed_rows == [1] and d.outcome.sent == []
    assert {lane.attempts for lane in d.outcome.lanes} == {1}


# -- end to end: the durable schedule ---------------------------------------------------------
def _relay(path: Path, seed: int, clock: Callable[[], float]) -> tuple[SqliteStore, Relay, Hub]:
    cfg: Config = config_mod.parse(
        {"hub": {"progress_update_stream": "S"}, "outbox": {"path": str(path)},
         "publish": {"backoff_base_seconds": 2.0, "backoff_max_seconds": 60.0}})
    store = SqliteStore.open(path)
    store.clock = clock
    hub = Hub(cfg.aws)
    return store, Relay(store, hub, cfg, clock=clock, rng=random.Random(seed)), hub


def _resolve(hub: Hub, emulator: Emulator) -> None:
    throttle = emulator.state.faults.throttle
    emulator.state.faults.update(throttle=0.0)
    hub.resolve_region()
    emulator.state.faults.update(throttle=throttle)


def _lane(path: Path) -> sqlite3.Row | None:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT l.attempts, l.retry_at, t.due_at, t.status FROM mgh_tasks t"
                            " LEFT JOIN mgh_lanes l ON l.task_id = t.id").fetchone()
    finally:
        conn.close()


def test_backoff_schedule_is_durable_across_restarts(aws_env: dict[str, str], emulator: Emulator,
                                                     tmp_path: Path):
    """Attempt counts and next-attempt times survive a restart; each delay respects the
    jitter ceiling of its attempt, the cap and the RetryAfterSeconds floor."""
    path = tmp_path / "o.db"
    SqliteStore.create(path).close()
    insert(path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    emulator.state.faults.update(throttle=1.0, retry_after=0)
    with freeze_time(row_clock(path)) as frozen:
        clock = frozen_clock(frozen)
        _, relay, hub = _relay(path, 0, clock)
        _resolve(hub, emulator)
        relay.run_once()  # the import succeeds, the state is throttled: attempt 1
        relay.close()
        for attempt in range(1, 8):
            row = _lane(path)
            assert row is not None and row["attempts"] == attempt
            delay = row["due_at"] - time.time()
            assert row["due_at"] == row["retry_at"]
            assert 0 <= delay <= min(60.0, 2.0 * 2 ** (attempt - 1)) + 1e-6
            frozen.tick(delay + 0.001)
            store, relay, hub = _relay(path, attempt, clock)  # a fresh process each time
            _resolve(hub, emulator)
            if attempt == 7:
                emulator.state.faults.update(retry_after=45)
            before = time.time()
            relay.run_once()
            relay.close()
            store.close()
        row = _lane(path)
        assert row is not None and row["due_at"] - before >= 45
        emulator.state.faults.update(throttle=0.0)
        frozen.tick(61)
        store, relay, hub = _relay(path, 99, clock)
        _resolve(hub, emulator)
        relay.run_once()
        row = _lane(path)
        assert row is not None
        assert (row["attempts"], row["due_at"], row["status"]) == (None, None, "IN_PROGRESS")
        assert sqlite3.connect(path).execute(
            "SELECT attempts FROM mgh_rows").fetchone()[0] == 8
        relay.close()
        store.close()


@pytest.mark.parametrize("max_attempts", [0, 2])
def test_failing_attributes_never_hold_back_a_newer_state_end_to_end(
    aws_env: dict[str, str], emulator: Emulator, tmp_path: Path, max_attempts: int
):
    """Over real HTTP: PutResourceAttributes keeps failing, yet the COMPLETED state written after
    it reaches the Hub at once; with max_attempts only the attributes row is dead-lettered."""
    path = tmp_path / "o.db"
    SqliteStore.create(path).close()
    insert(path, kind="resource_attributes", migration_task_name="t1",
           resource_attributes=json.dumps([{"Type": "FQDN", "Value": "db.example"}]))
    insert(path, kind="task_state", migration_task_name="t1", status="COMPLETED",
           progress_percent=100)
    emulator.state.faults.update(fail_operations={"PutResourceAttributes"})
    cfg = config_mod.parse({"hub": {"progress_update_stream": "S"}, "outbox": {"path": str(path)},
                            "publish": {"backoff_base_seconds": 0.01, "max_attempts": max_attempts}})
    store = SqliteStore.open(path)
    relay = Relay(store, Hub(cfg.aws), cfg)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            relay.run_once()
            if max_attempts and store.counts().dead_letters:
                break
            time.sleep(0.02)
        assert emulator.state.task("S", "t1").updates[-1]["Task"]["Status"] == "COMPLETED"
        letters = store.dead_letters()
        if max_attempts:
            assert [d.kind for d in letters] == ["resource_attributes"]
            assert "gave up after 2 attempts" in letters[0].reason
        else:
            assert letters == [] and store.backlog().pending == 1
    finally:
        relay.close()
        store.close()
