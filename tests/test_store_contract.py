"""The `OutboxStore` contract, at the store level, on both engines: intake, supersession, claim
order, leases, record and its state guards, requeue, drop, release, counts, tasks, the gate's
record, streams and mapping. A behaviour that differs between SQLite and PostgreSQL fails here,
before it reaches a CLI test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reporter.coalesce import Verdict
from reporter.hub_requests import Kind
from reporter.rows import MAX_ROW_BYTES, STATE_SPACING_SECONDS
from reporter.stores import Engine as Outbox
from reporter.stores.batches import INTAKE_BATCH_BYTES
from reporter.stores.contract import (
    GateState,
    LaneResult,
    Lease,
    OutboxStore,
    ResendScope,
    RowState,
    SentState,
    TaskOutcome,
)

from .engines import Engine
from .helpers import take_in

LEASE = 30.0


@pytest.fixture
def store(engine: Engine) -> Iterator[OutboxStore]:
    """An initialised outbox on the engine under test."""
    made = Outbox(engine.path or Path(), engine.url).create()
    yield made
    made.close()


def _rows(engine: Engine, *specs: tuple[str, str]) -> list[int]:
    """INSERT task_state rows (task, status) as a tool would; their ids."""
    return [engine.insert(kind="task_state", migration_task_name=task, status=status,
                          progress_percent=10) for task, status in specs]


def _take_in(store: OutboxStore, stream: str = "S", rejected: dict[int, str] | None = None,
             supersedes: bool = True) -> list[int]:
    """One intake: every queued row judged (those of `rejected` refused); the ids taken in."""
    seen, _ = take_in(store, 100, stream, rejected, supersedes)
    return [row.id for row in seen]


def _claim(store: OutboxStore, limit: int = 10) -> dict[str, Any]:
    return {t.task: t for t in store.claim_due(limit, LEASE)}


def test_intake_takes_each_row_in_once_in_insertion_order(engine: Engine, store: OutboxStore):
    ids = _rows(engine, ("b", "IN_PROGRESS"), ("a", "IN_PROGRESS"), ("c", "FAILED"))
    assert store.backlog().waiting == 3
    seen, taken = take_in(store, 100, judged_request=False)
    assert [r.id for r in seen] == ids and taken == (3, False)
    assert [r.migration_task_name for r in seen] == ["b", "a", "c"]
    assert seen[2].status == "FAILED" and seen[0].progress_percent == 10
    assert take_in(store, 100) == ([], (0, False))
    backlog = store.backlog()
    assert (backlog.waiting, backlog.queued, backlog.dead_letters) == (0, 3, 0)
    assert store.work_left().tasks == 3


def test_a_backlog_is_read_in_bounded_batches(engine: Engine, store: OutboxStore):
    _rows(engine, *[(f"t{i}", "IN_PROGRESS") for i in range(7)])
    first, taken = take_in(store, 3)
    assert taken.more and 3 <= len(first) < 7 and taken.taken == len(first)
    seen = {r.id for r in first}
    while True:
        batch, _ = take_in(store, 3)
        if not batch:
            break
        assert not seen & {r.id for r in batch}
        seen |= {r.id for r in batch}
    assert len(seen) == 7 and store.backlog().queued == 7


def test_an_intake_batch_reads_at_most_a_byte_budget(engine: Engine, store: OutboxStore):
    """Rows near the 1 MiB row bound are read a few at a time: one batch never holds more than
    INTAKE_BATCH_BYTES of values (plus one row), whatever its row limit; every row gets in."""
    big = 900_000
    ids = [engine.insert(kind="task_state", migration_task_name=f"t{i}", status="IN_PROGRESS",
                         status_detail=chr(97 + i) * big) for i in range(12)]
    seen: list[int] = []
    while True:
        batch, taken = take_in(store, 100)
        held = sum(len(r.status_detail or "") for r in batch)
        assert held <= INTAKE_BATCH_BYTES + big
        if batch and len(seen) + len(batch) < len(ids):
            assert taken.more and len(batch) < len(ids)
        if not batch:
            break
        seen += [r.id for r in batch]
    assert sorted(seen) == ids and store.backlog().queued == 12


def test_a_row_over_the_row_bound_is_read_as_sizes_only(engine: Engine, store: OutboxStore):
    """Columns each under 1 MiB that total over it: the batch holds their sizes, not their
    values (only those up to SMALL_VALUE_BYTES, which name the task)."""
    rid = engine.insert(kind="task_state", migration_task_name="wide", status="IN_PROGRESS",
                        status_detail="d" * 600_000, artifact_description="a" * 600_000)
    (row,), _ = take_in(store, 10, rejected={rid: "too big"})
    assert row.id == rid and row.migration_task_name == "wide" and row.status == "IN_PROGRESS"
    assert row.status_detail is None and row.artifact_description is None
    assert dict(row.oversize) == {"status_detail": 600_000, "artifact_description": 600_000}
    assert row.row_bytes > MAX_ROW_BYTES


def test_a_pending_row_with_no_stored_request_is_judged_again(engine: Engine,
                                                              store: OutboxStore):
    """A row taken in by an older version (no stored request), or whose stored request does not
    read back, goes back to intake, keeps its place among its task's rows and is claimed once
    judged again."""
    first, second = _rows(engine, ("t", "IN_PROGRESS"), ("u", "IN_PROGRESS"))
    _take_in(store, supersedes=False)
    engine.execute("UPDATE mgh_reporter.rows SET request = NULL WHERE id = ?", first)
    engine.execute("UPDATE mgh_reporter.rows SET request = '{\"not\": 1}' WHERE id = ?",
                   second)
    assert _claim(store) == {}  # not claimed while a row of theirs is back at intake
    assert store.backlog().waiting == 2
    assert sorted(_take_in(store)) == [first, second]
    again = _claim(store)
    assert [r.row_id for r in again["t"].requests] == [first]
    assert [r.row_id for r in again["u"].requests] == [second]


def test_a_newer_row_supersedes_the_older_one_of_its_lane(engine: Engine, store: OutboxStore):
    old, new = _rows(engine, ("t", "IN_PROGRESS"), ("t", "COMPLETED"))
    _take_in(store)
    claimed = _claim(store)["t"]
    assert [r.row_id for r in claimed.requests] == [new] and claimed.missing == []
    counts = store.counts()
    # the superseded row's lane has not reached the Hub: it still counts as pending
    assert (counts.pending, counts.superseded, counts.sent) == (2, 0, 0)
    store.record([TaskOutcome(claimed.id, claimed.lease, sent=[new])])
    counts = store.counts()
    assert (counts.pending, counts.superseded, counts.sent) == (0, 1, 1)
    assert store.finished_since(0)[RowState.SUPERSEDED.value] == 1
    assert old != new


def test_a_row_rejected_at_intake_is_a_dead_letter_never_claimed(engine: Engine,
                                                                 store: OutboxStore):
    bad, good = _rows(engine, ("t", "BOGUS"), ("u", "IN_PROGRESS"))
    _take_in(store, rejected={bad: "status: must be one of ..."})
    assert set(_claim(store)) == {"u"}
    letters = store.dead_letters()
    assert [(d.id, d.task, d.reason, d.present) for d in letters] == [
        (bad, "t", "status: must be one of ...", True)]
    assert store.counts().dead_letters == 1 and store.finished_since(0)["rejected"] == 1
    assert [r.id for r in store.outbox_rows([bad, good])] == [bad, good]


def test_claims_come_in_due_order_with_rows_in_insertion_order_and_hold_a_lease(
        engine: Engine, store: OutboxStore):
    _rows(engine, ("first", "IN_PROGRESS"))
    _take_in(store)
    _rows(engine, ("second", "IN_PROGRESS"))
    _take_in(store)
    claimed = store.claim_due(1, LEASE)
    assert [t.task for t in claimed] == ["first"]
    assert [t.task for t in store.claim_due(10, LEASE)] == ["second"]
    assert store.claim_due(10, LEASE) == []  # both leased
    wake = store.next_wakeup()
    assert wake is not None and wake > store.clock() + LEASE - 5
    held = claimed[0]
    assert store.hold(held.id, held.lease, 1.0, LEASE)
    store.release([Lease(held.id, "not-the-lease")], store.clock())
    assert store.claim_due(10, LEASE) == []  # a stranger's token releases nothing
    store.release([held.leased], store.clock() - 1)
    again = store.claim_due(10, LEASE)
    assert [t.task for t in again] == ["first"] and again[0].lease != held.lease
    assert [r.status for r in again[0].requests] == ["IN_PROGRESS"]


def test_a_deleted_outbox_row_is_claimed_as_missing(engine: Engine, store: OutboxStore):
    (rid,) = _rows(engine, ("t", "IN_PROGRESS"))
    _take_in(store)
    engine.execute("DELETE FROM outbox WHERE id = ?", rid)
    claimed = _claim(store)["t"]
    assert claimed.requests == [] and claimed.missing == [rid]
    assert claimed.row(rid).attempts == 0


def test_record_stores_the_state_the_hub_has_and_ends_the_lease(engine: Engine,
                                                               store: OutboxStore):
    (rid,) = _rows(engine, ("t", "IN_PROGRESS"))
    _take_in(store)
    claimed = _claim(store)["t"]
    seq = claimed.row(rid).seq
    state = SentState(rid, seq, "IN_PROGRESS", 10, "copying", 1_700_000_000.0, 60)
    store.record([TaskOutcome(claimed.id, claimed.lease, sent=[rid], imported=True, state=state,
                              artifacts=[("arn:b", None), ("arn:a", "d")])])
    (task,) = store.tasks()
    assert (task.stream, task.task, task.status, task.percent, task.detail) == (
        "S", "t", "IN_PROGRESS", 10, "copying")
    assert task.update_time == 1_700_000_000.0 and task.next_update_seconds == 60
    assert task.artifacts == ("arn:a", "arn:b") and task.pending == 0
    assert store.tasks("other") == []
    assert store.counts().sent == 1 and store.next_wakeup() is None
    _rows(engine, ("t", "COMPLETED"))
    _take_in(store)
    wake = store.next_wakeup()  # a new state waits out the spacing after the last one
    assert wake is not None and wake <= store.clock() + STATE_SPACING_SECONDS
    time.sleep(STATE_SPACING_SECONDS)
    later = _claim(store)["t"]
    assert later.imported and later.state_floor == seq and later.associated == {"arn:a", "arn:b"}
    assert later.last_update_time == 1_700_000_000.0


def test_a_failed_lane_backs_off_and_its_retry_state_comes_back_with_the_claim(
        engine: Engine, store: OutboxStore):
    (rid,) = _rows(engine, ("t", "IN_PROGRESS"))
    _take_in(store)
    claimed = _claim(store)["t"]
    retry_at = store.clock() + 3600
    store.record([TaskOutcome(claimed.id, claimed.lease, failed_rows=[rid], error="Throttling",
                              lanes=[LaneResult(Kind.TASK_STATE, 1, retry_at, "Throttling")])])
    assert store.claim_due(10, LEASE) == []
    wake = store.next_wakeup()
    assert wake is not None and abs(wake - retry_at) < 1
    assert store.work_left().retrying == 1
    (task,) = store.tasks()
    assert task.last_error == "Throttling" and task.pending == 1
    store.record([TaskOutcome(claimed.id, claimed.lease)])  # a spent lease changes nothing
    assert store.claim_due(10, LEASE) == []
    store.release([claimed.leased], store.clock())  # spent: releases nothing
    assert store.claim_due(10, LEASE) == []


def test_record_never_moves_a_row_backwards(engine: Engine, store: OutboxStore):
    """State guards: a row already sent is not rejected or superseded by a late outcome, and an
    older state never replaces a newer one the task has."""
    first, second = _rows(engine, ("t", "IN_PROGRESS"), ("t", "COMPLETED"))
    _take_in(store, supersedes=False)
    claimed = _claim(store)["t"]
    seqs = {rid: claimed.row(rid).seq for rid in (first, second)}
    newer = SentState(second, seqs[second], "COMPLETED", 100, None, 2.0, 60)
    older = SentState(first, seqs[first], "IN_PROGRESS", 10, None, 1.0, 60)
    store.record([TaskOutcome(claimed.id, claimed.lease, sent=[first, second], state=newer)])
    store.record([TaskOutcome(claimed.id, claimed.lease, rejected=[Verdict(first, "late")],
                              superseded=[Verdict(second, "late")], state=older)])
    assert store.counts().sent == 2 and store.dead_letters() == []
    assert store.tasks()[0].status == "COMPLETED"


def test_requeue_and_drop_dead_letters(engine: Engine, store: OutboxStore):
    """A dead letter handed back goes to intake in its old place in line and is judged
    again there (a row fixed meanwhile goes out, one still bad is a dead letter again); one
    whose outbox row is gone stays a dead letter."""
    a, b, c, d = _rows(engine, ("t", "X"), ("u", "Y"), ("v", "Z"), ("w", "W"))
    _take_in(store, rejected={a: "bad a", b: "bad b", c: "bad c", d: "bad d"})
    assert store.claim_due(10, LEASE) == []
    seqs = dict(engine.query("SELECT id, seq FROM mgh_reporter.rows"))
    engine.execute("UPDATE outbox SET status = 'IN_PROGRESS' WHERE id = ?", a)
    engine.execute("DELETE FROM outbox WHERE id = ?", d)
    assert store.requeue([a, b, d]) == [a, b]
    assert store.backlog().waiting == 2
    assert [x.id for x in store.dead_letters()] == [c, d]
    _take_in(store, rejected={b: "still bad"})
    assert dict(engine.query("SELECT id, seq FROM mgh_reporter.rows")) == seqs
    assert [(x.id, x.reason) for x in store.dead_letters()] == [
        (b, "still bad"), (c, "bad c"), (d, "bad d")]
    claimed = _claim(store)
    assert set(claimed) == {"t"} and [r.status for r in claimed["t"].requests] == ["IN_PROGRESS"]
    assert store.drop([c], None) == [c]
    assert store.drop(None, rejected_before=store.clock() - 3600) == []
    assert store.drop(None, None) == [b, d]
    counts = store.counts()
    assert (counts.dead_letters, counts.dropped, counts.pending) == (0, 3, 1)
    assert store.dead_letters([b]) == []


def test_prune_deletes_delivered_and_dropped_rows_with_their_outbox_rows(engine: Engine,
                                                                       store: OutboxStore):
    sent, dead, waiting = _rows(engine, ("t", "IN_PROGRESS"), ("u", "X"), ("v", "IN_PROGRESS"))
    _take_in(store, rejected={dead: "bad"})
    claimed = _claim(store)
    store.record([TaskOutcome(claimed["t"].id, claimed["t"].lease, sent=[sent])])
    store.drop([dead], None)
    assert store.prune(store.clock() - 3600) == 0
    assert store.prune(store.clock() + 1) == 2
    assert [r.id for r in store.outbox_rows([sent, dead, waiting])] == [waiting]
    counts = store.counts()
    assert (counts.sent, counts.dropped, counts.pending) == (0, 0, 1)


def test_the_gate_record_round_trips(store: OutboxStore):
    assert store.load_gate() == GateState()
    state = GateState("AccessDeniedException", "denied [hub]", 10.5, 20.25, "us-west-2", 3, 30.5,
                      2, 40.75, 50.125)
    store.save_gate(state)
    assert store.load_gate() == state
    store.save_gate(GateState(home_region="eu-central-1"))
    assert store.load_gate() == GateState(home_region="eu-central-1")


def test_streams_are_remembered(store: OutboxStore):
    assert store.streams() == set()
    assert store.claim_stream("S", 30)
    store.mark_stream_created("S")
    assert store.streams() == {"S"}


def test_a_sent_attribute_list_schedules_a_mapping_check(engine: Engine, store: OutboxStore):
    rid = engine.insert(kind="resource_attributes", migration_task_name="t",
                        resource_attributes='[{"Type": "FQDN", "Value": "db1.corp"}]')
    _take_in(store)
    claimed = _claim(store)["t"]
    seq = claimed.row(rid).seq
    store.record([TaskOutcome(claimed.id, claimed.lease, sent=[rid], attributes_row=rid,
                              attributes_seq=seq, map_check_at=store.clock() - 1)])
    (check,) = store.due_mapping_checks(10)
    assert (check.stream, check.task, check.checks, check.unmapped_reported) == ("S", "t", 0,
                                                                                False)
    store.record_mapping(check.task_id, True, "d-server-0123456789abcd", None, False)
    assert store.due_mapping_checks(10) == []
    (task,) = store.tasks()
    assert task.mapped is True and task.configuration_id == "d-server-0123456789abcd"
    assert store.next_wakeup() is None
    assert store.claim_due(10, LEASE) == []


def _delivered(engine: Engine, store: OutboxStore, *tasks: str) -> dict[str, Any]:
    """Each task delivered: imported, a state and an attribute list sent, one artifact and
    one manual mapping associated."""
    ids = _rows(engine, *[(t, "IN_PROGRESS") for t in tasks])
    _take_in(store)
    claimed = _claim(store)
    outcomes = []
    for rid, task in zip(ids, tasks, strict=True):
        c = claimed[task]
        outcomes.append(TaskOutcome(
            c.id, c.lease, sent=[rid], imported=True,
            state=SentState(rid, c.row(rid).seq, "IN_PROGRESS", 40, "copying",
                            1_700_000_000.0 + rid, 300),
            attributes_row=rid, attributes_seq=c.row(rid).seq,
            attributes=(("FQDN", f"{task}.example"),), artifacts=[(f"arn:{task}", "vm")],
            resources=[(f"d-{task}", "by hand")]))
    store.record(outcomes)
    return claimed


def test_repair_rounds_go_round_robin_and_a_repair_rides_on_the_next_claim(
        engine: Engine, store: OutboxStore):
    """Rounds take the imported tasks read back longest ago; a task marked for repair is due
    at once and claimed with what it last sent (state, attributes, artifacts and mappings
    with their descriptions) and not imported; a repair done clears the mark, one that failed
    is due again at its retry time."""
    first = _delivered(engine, store, "a", "b", "c")
    assert {t.task for t in store.due_verifications(2)} == {"a", "b"}
    third = {t.task: t for t in store.due_verifications(2)}["c"]  # then c, the oldest
    assert third.attributes == (("FQDN", "c.example"),) and third.resources == ("d-c",)
    assert store.claim_due(10, LEASE) == []
    store.mark_resend([first["b"].id], ResendScope.WHOLE)
    store.mark_resend([first["b"].id], ResendScope.STATE)  # the wider scope is kept
    (claimed,) = store.claim_due(10, LEASE)
    assert claimed.task == "b" and not claimed.imported and claimed.resend is not None
    assert claimed.resend.scope is ResendScope.WHOLE
    again = claimed.resend
    assert again.state is not None and again.state.percent == 40
    assert again.attributes == (("FQDN", "b.example"),)
    assert again.artifacts == (("arn:b", "vm"),) and again.resources == (("d-b", "by hand"),)
    retry_at = store.clock() + 3600
    store.record([TaskOutcome(claimed.id, claimed.lease, imported=True, retry_at=retry_at,
                              lanes=[LaneResult(Kind.TASK_STATE, 1, retry_at, "Throttling")])])
    wake = store.next_wakeup()
    assert store.claim_due(10, LEASE) == [] and wake is not None and abs(wake - retry_at) < 1
    store.mark_resend([claimed.id], ResendScope.STATE)  # due now again (a round asked for it)
    (claimed,) = store.claim_due(10, LEASE)
    assert claimed.imported and claimed.resend is not None  # the Hub behind: still imported
    assert claimed.resend.scope is ResendScope.WHOLE  # ... but the earlier loss is not forgotten
    store.record([TaskOutcome(claimed.id, claimed.lease, imported=True, resent=True)])
    assert store.claim_due(10, LEASE) == [] and store.next_wakeup() is None
    store.mark_resend([first["a"].id], ResendScope.STATE)  # behind only: stays imported
    (claimed,) = store.claim_due(10, LEASE)
    assert claimed.imported and claimed.resend is not None
    assert claimed.resend.scope is ResendScope.STATE
    # a call found the task gone meanwhile: once imported again, it is restored whole
    store.record([TaskOutcome(claimed.id, claimed.lease, imported=True, lost=True)])
    (claimed,) = store.claim_due(10, LEASE)
    assert claimed.resend is not None and claimed.resend.scope is ResendScope.WHOLE
    store.record([TaskOutcome(claimed.id, claimed.lease, imported=True, resent=True)])
    assert store.claim_due(10, LEASE) == [] and store.next_wakeup() is None


def test_a_repair_asked_for_during_a_lease_waits_for_it(engine: Engine, store: OutboxStore):
    """Marking a leased task never breaks its lease (nobody else may claim it meanwhile); the
    lease's outcome makes the repair due."""
    _delivered(engine, store, "a")
    _rows(engine, ("a", "COMPLETED"))
    _take_in(store)
    time.sleep(STATE_SPACING_SECONDS)
    (leased,) = store.claim_due(10, LEASE)
    store.mark_resend([leased.id], ResendScope.WHOLE)
    assert store.claim_due(10, LEASE) == []
    store.record([TaskOutcome(leased.id, leased.lease, sent=[leased.rows[0].id])])
    (claimed,) = store.claim_due(10, LEASE)
    assert claimed.resend is not None and not claimed.imported
