"""The delivery algorithm both engines share, written once over the named statements of
`statements`: intake's bookkeeping, supersession, claims' assembly, outcomes and their state
guards, mapping checks and repair marks (the people's verbs are in `admin`). An engine supplies
its `Dialect`, its connection and transactions, and what only it has."""

from __future__ import annotations

import json
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, fields
from typing import Any

import structlog

from reporter.hub_requests import Kind, Request, decode
from reporter.rows import STATE_SPACING_SECONDS, OutboxRow
from reporter.stores.admin import AdminSql, stored_pairs
from reporter.stores.batches import tail_size
from reporter.stores.contract import (
    ClaimedRow,
    ClaimedTask,
    GateState,
    Ingested,
    LaneState,
    Lease,
    MappingCheck,
    NewRows,
    Resend,
    ResendScope,
    RowState,
    SentState,
    StoreError,
    TakenIn,
    TaskOutcome,
    TaskRecord,
)
from reporter.stores.statements import (
    GATE_COLUMNS,
    OUTBOX_COLUMNS,
    REQUIRED_COLUMNS,
)

__all__ = ["SqlStore"]


class SqlStore(AdminSql):
    """`OutboxStore`'s shared algorithm over an engine's connection and dialect: the delivery
    verbs here, the people's (dead letters, views, pruning) in `AdminSql`."""

    @abstractmethod
    def _leased(self, ids: Sequence[int], token: str, ends: float) -> None:
        """After a claim: its leases end no earlier than `ends` (monotonic), for the fence."""

    @abstractmethod
    def _ended(self, outcomes: Sequence[TaskOutcome]) -> None:
        """After outcomes were recorded: their leases are spent."""

    # -- opening -----------------------------------------------------------------------------
    def _columns_to_add(self, columns: Sequence[str], creating: bool) -> list[str]:
        """The outbox table's columns judged: `init` (`creating`) refuses a table without the
        contract's first columns and returns the later ones it must add; `open` refuses a table
        that lacks any (`init` adds them)."""
        missing = [c for c in (REQUIRED_COLUMNS if creating else OUTBOX_COLUMNS)
                   if c not in columns]
        if missing:
            hint = "" if creating else " (run `mgh-reporter init` to add them)"
            raise StoreError(f"{self.where}: table outbox lacks columns {', '.join(missing)}"
                             f"{hint}", needs_init=not creating)
        return [c for c in OUTBOX_COLUMNS if c not in columns]

    def _outdated(self) -> StoreError:
        return StoreError(f"{self.where}: delivery tables missing or old; run `mgh-reporter init`",
                          needs_init=True)

    # -- the gate's record ------------------------------------------------------------------
    def load_gate(self) -> GateState:
        """The gate's persisted record (defaults for what was never saved)."""
        with self._tx("read gate state", write=False) as c:
            row = self._one(c, "gate")
        if row is None:
            return GateState()
        values: dict[str, Any] = {}
        for f in fields(GateState):
            value = row[f.name]
            if value is None:
                value = f.default
            elif "int" in str(f.type):
                value = int(value)
            elif "float" in str(f.type):
                value = float(value)
            values[f.name] = value
        return GateState(**values)

    def save_gate(self, state: GateState) -> None:
        """Persist the gate's record."""
        with self._tx("write gate state") as c:
            c.execute(self.sql("save_gate"), dict(zip(GATE_COLUMNS, astuple(state), strict=True)))

    # -- intake -----------------------------------------------------------------------------
    @abstractmethod
    def take_in(self, limit: int, judge: Callable[[OutboxRow], Ingested]) -> TakenIn:
        """Intake (OutboxStore.take_in): the engine reads the batch its own way, then
        `_ingest` writes it."""

    def _inbox(self, c: Any, limit: int, sizes: str = "", hold: str = "") -> list[Any]:
        """The intake queue's next `limit` entries and, behind a backlog, its newest
        (tail_size): a task written now is taken in within a pass, not after the backlog."""
        head = self._all_sql(c, self.sql("inbox", order="ASC", sizes=sizes, hold=hold),
                             {"after": 0, "limit": limit})
        if len(head) < limit:
            return head
        tail = self._all_sql(c, self.sql("inbox", order="DESC", sizes=sizes, hold=hold),
                             {"after": head[-1]["seq"], "limit": tail_size(limit)})
        return [*head, *tail]

    def _all_sql(self, c: Any, sql: str, params: Mapping[str, Any]) -> list[Any]:
        return list(c.execute(sql, params).fetchall())

    def _ingest(self, c: Any, batch: NewRows, items: Sequence[Ingested]) -> int:
        """Dequeue a batch read from the intake queue and take its judged rows into delivery
        state, in the caller's transaction; only the entries still queued count (another
        process may have taken some in since the read). A task becomes due when a new row
        arrives unless that row's lane is backing off; a leased task keeps its lease. A reused
        row id replaces what we remembered under it (that earlier row is gone from the
        outbox); a newer row of a lane that supersedes supersedes the older rows still
        waiting. Returns how many rows were taken in."""
        now = self.clock()
        if batch.seqs:
            still = {int(r["seq"]) for r in self._all(c, "dequeue",
                                                       {"seqs": self._array(batch.seqs)})}
            items = [i for i in items if batch.places[i.row_id] in still]
        if not items:
            return 0
        row_ids = self._array([i.row_id for i in items])
        reused = self._all(c, "forget_reused", {"ids": row_ids})
        if reused:
            structlog.get_logger("reporter.stores").info(
                "row_id_reused", rows=len(reused),
                earlier_pending=sum(r["state"] == RowState.PENDING for r in reused))
        keys = sorted({(i.stream, i.task) for i in items})
        self._many(c, "add_task", [{"stream": s, "task": t} for s, t in keys])
        found = self._all(c, "task_ids", {"streams": self._array(sorted({s for s, _ in keys})),
                                          "tasks": self._array(sorted({t for _, t in keys}))})
        ids = {(r["stream"], r["task"]): int(r["id"]) for r in found}
        place = batch.places
        self._many(c, "add_row", [
            {"id": i.row_id, "seq": place[i.row_id], "task_id": ids[(i.stream, i.task)],
             "kind": i.kind, "state": RowState.REJECTED.value if i.rejected
             else RowState.PENDING.value, "created_at": i.created_at,
             "finished_at": now if i.rejected else None, "reason": i.rejected,
             "request": None if i.rejected else i.request}
            for i in items
        ])
        newest: dict[tuple[int, str], int] = {}
        for i in sorted(items, key=lambda i: place[i.row_id]):
            if i.supersedes:
                newest[(ids[(i.stream, i.task)], i.kind)] = i.row_id
        self._many(c, "supersede", [
            {"now": now, "rid": str(rid), "tid": tid, "kind": kind, "seq": place[rid]}
            for (tid, kind), rid in sorted(newest.items())
        ])
        lanes = {(ids[(i.stream, i.task)], Kind(i.kind).lane.value) for i in items
                 if not i.rejected}
        self._many(c, "schedule_lane", [
            {"now": now, "id": tid, "kind": kind, "spacing": STATE_SPACING_SECONDS}
            for tid, kind in sorted(lanes)
        ])
        return len(items)

    # -- claims -------------------------------------------------------------------------------
    def next_wakeup(self) -> float | None:
        """When the earliest task or mapping check becomes due (None: nothing scheduled)."""
        with self._tx("read due time", write=False) as c:
            row = self._one(c, "next_wakeup")
        known = [float(row[k]) for k in ("due", "checks") if row[k] is not None]
        return min(known) if known else None

    def claim_due(self, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        """Lease up to `limit` due tasks, with their waiting rows in insertion order, their
        artifacts and lanes: their due time moves to the lease's end and they carry a fresh
        token that `record` and `release` must present."""
        token = uuid.uuid4().hex
        started = time.monotonic()  # before the database's now: a conservative lease end
        with self._tx("claim tasks") as c:
            tasks = self._all(c, "claim", {"now": self.clock(), "lease": lease_seconds,
                                           "token": token, "limit": limit})
            if not tasks:
                return []
            ids = {"ids": self._array([t["id"] for t in tasks])}
            rows = self._all(c, "pending_rows", ids)
            judged, unjudged = _requests(rows)
            if unjudged:
                # back to intake; their tasks are not claimed now, but become due again once
                # intake has taken the rows in (a claim must see all of a task's rows: an older
                # row judged later must not follow a newer one out)
                back = sorted({r["task_id"] for r in rows if r["id"] in set(unjudged)})
                c.execute(self.sql("unjudged_to_inbox"), {"ids": self._array(unjudged)})
                c.execute(self.sql("unjudged_forget"), {"ids": self._array(unjudged)})
                c.execute(self.sql("unclaim"), {"ids": self._array(back)})
                tasks = [t for t in tasks if t["id"] not in back]
                rows = [r for r in rows if r["task_id"] not in back]
                if not tasks:
                    return []
                ids = {"ids": self._array([t["id"] for t in tasks])}
            artifacts = self._all(c, "artifacts_of", ids)
            resources = self._all(c, "resources_of", ids)
            sources = self._all(c, "sources_of", ids)
            lanes = self._all(c, "lanes_of", ids)
            repairs = [t["id"] for t in tasks if t["resend"]]
            resends = self._all(c, "resends_of", {"ids": self._array(repairs)}) if repairs else []
        claimed = {
            t["id"]: ClaimedTask(t["id"], t["stream"], t["task"], token, bool(t["imported"]),
                                 t["last_state_seq"], t["last_attributes_seq"],
                                 last_update_time=t["update_time"])
            for t in tasks
        }
        self._leased(list(claimed), token, started + lease_seconds)
        for r in rows:  # in insertion order; request None: deleted by the tool after intake
            if r["present"] and r["id"] not in judged:
                continue  # back to intake
            claimed[r["task_id"]].rows.append(ClaimedRow(
                r["id"], r["seq"], r["attempts"], r["created_at"], judged.get(r["id"])))
        arns: dict[int, set[str]] = {}  # most tasks have none: they keep the shared empty set
        for a in artifacts:
            arns.setdefault(a["task_id"], set()).add(a["arn"])
        cids: dict[int, set[str]] = {}
        for m in resources:
            cids.setdefault(m["task_id"], set()).add(m["configuration_id"])
        for tid, found in arns.items():
            claimed[tid].associated = frozenset(found)
        for tid, found in cids.items():
            claimed[tid].resources = frozenset(found)
        names: dict[int, set[str]] = {}
        for n in sources:
            names.setdefault(n["task_id"], set()).add(n["name"])
        for tid, found in names.items():
            claimed[tid].sources = frozenset(found)
        for t in resends:
            tid = t["id"]
            state = None if t["status"] is None else SentState(
                -1, -1, t["status"], t["percent"], t["detail"], float(t["update_time"]),
                int(t["next_update_seconds"]))
            claimed[tid].resend = Resend(
                state, stored_pairs(t["attributes"]),
                tuple(sorted((a["arn"], a["description"]) for a in artifacts
                             if a["task_id"] == tid)),
                tuple(sorted((m["configuration_id"], m["description"]) for m in resources
                             if m["task_id"] == tid)),
                ResendScope(int(next(x["resend"] for x in tasks if x["id"] == tid))),
                tuple(sorted((n["name"], n["description"], n["detail"]) for n in sources
                             if n["task_id"] == tid)))
        for lane in lanes:
            if lane["kind"] in Kind.__members__.values():
                claimed[lane["task_id"]].lanes[Kind(lane["kind"])] = LaneState(
                    lane["attempts"], lane["retry_at"])
        return list(claimed.values())

    def release(self, leases: Sequence[Lease], due_at: float) -> None:
        """Hand leased tasks back untouched, due again at `due_at` (e.g. on a graceful stop)."""
        if leases:
            with self._tx("release tasks") as c:
                self._many(c, "release", [{"due": due_at, "id": lease.task_id,
                                           "lease": lease.token} for lease in leases])

    # -- outcomes -----------------------------------------------------------------------------
    def record(self, outcomes: Sequence[TaskOutcome]) -> None:
        """Record a pass's outcomes in one short transaction. An outcome whose lease is no
        longer the task's (another replica holds it, or it was released) records only facts:
        rows the Hub got, rows judged superseded or invalid, the import, the artifacts, and
        floors that only move forward; never the schedule or retry state of the task."""
        if not outcomes:
            return
        now = self.clock()
        lost: list[int] = []
        with self._tx("record outcomes") as c:
            tokens = {r["id"]: r["lease_token"] for r in self._all(
                c, "lease_tokens", {"ids": self._array([o.task_id for o in outcomes])})}
            for o in sorted(outcomes, key=lambda o: o.task_id):
                held = tokens.get(o.task_id) == o.lease
                if not held:
                    lost.append(o.task_id)
                self._record_one(c, o, now, held)
        self._ended(outcomes)
        if lost:
            structlog.get_logger("reporter.stores").warning(
                "lease_lost", tasks=len(lost), task_ids=lost[:20],
                hint="these tasks were released or taken over; only delivered facts were recorded")

    def _record_one(self, c: Any, o: TaskOutcome, now: float, held: bool) -> None:
        if o.sent:
            c.execute(self.sql("sent"), {"now": now, "ids": self._array(o.sent)})
        self._many(c, "superseded", [{"now": now, "reason": v.reason, "id": v.row}
                                     for v in o.superseded])
        self._many(c, "rejected", [{"now": now, "reason": v.reason, "id": v.row}
                                   for v in o.rejected])
        self._many(c, "artifact", [{"id": o.task_id, "arn": arn, "description": d, "now": now}
                                   for arn, d in o.artifacts])
        self._many(c, "artifact_removed", [{"id": o.task_id, "arn": arn}
                                           for arn in o.artifacts_removed])
        self._many(c, "resource", [{"id": o.task_id, "cid": cid, "description": d, "now": now}
                                   for cid, d in o.resources])
        self._many(c, "resource_removed", [{"id": o.task_id, "cid": cid}
                                           for cid in o.resources_removed])
        self._many(c, "source", [{"id": o.task_id, "name": n, "description": d, "detail": x,
                                  "now": now} for n, d, x in o.sources])
        self._many(c, "source_removed", [{"id": o.task_id, "name": n}
                                         for n in o.sources_removed])
        if o.imported:
            c.execute(self.sql("imported"), {"id": o.task_id, "now": now})
        if o.resent:
            c.execute(self.sql("resent"), {"id": o.task_id})
        if o.lost:
            c.execute(self.sql("lost"), {"id": o.task_id})
        if o.state is not None:
            s = o.state
            c.execute(self.sql("state"), {
                "row": s.row, "seq": s.seq, "status": s.status, "percent": s.percent,
                "detail": s.detail, "update_time": s.update_time,
                "next_update_seconds": s.next_update_seconds, "now": now, "id": o.task_id})
        if o.attributes_row is not None:
            c.execute(self.sql("attributes"), {
                "row": o.attributes_row, "seq": o.attributes_seq, "now": now,
                "attributes": None if o.attributes is None else json.dumps(o.attributes),
                "check_at": o.map_check_at, "id": o.task_id})
        if not held:
            return
        self._many(c, "attempted", [{"id": rid} for rid in o.failed_rows])
        for lane in o.lanes:
            params = {"id": o.task_id, "kind": lane.kind.value}
            if lane.attempts == 0 and lane.retry_at is None:
                c.execute(self.sql("lane_healthy"), params)
            else:
                c.execute(self.sql("lane"), {**params, "attempts": lane.attempts,
                                             "retry_at": lane.retry_at, "error": lane.error})
        c.execute(self.sql("reschedule"), {"id": o.task_id, "now": now, "lease": o.lease,
                                           "error": o.error, "spacing": STATE_SPACING_SECONDS,
                                           "retry_at": o.retry_at})

    def mark_stream_created(self, stream: str) -> None:
        """Remember that the Hub has this stream."""
        with self._tx("record stream") as c:
            c.execute(self.sql("mark_stream"), {"stream": stream, "now": self.clock()})

    def streams(self) -> set[str]:
        """Streams known to exist at the Hub."""
        with self._tx("read streams", write=False) as c:
            return {r["stream"] for r in self._all(c, "streams")}

    # -- mapping ----------------------------------------------------------------------------
    def due_mapping_checks(self, limit: int) -> list[MappingCheck]:
        """Tasks whose auto-mapping should be checked now; each is held for a minute so no
        other replica checks it at the same time (`record_mapping` sets the real next time)."""
        with self._tx("read mapping checks") as c:
            rows = self._all(c, "due_mapping_checks", {"now": self.clock(), "limit": limit})
        return [MappingCheck(r["id"], r["stream"], r["task"], r["attributes_at"],
                             r["map_checks"], bool(r["unmapped_reported"])) for r in rows]

    def record_mapping(self, task_id: int, mapped: bool | None, configuration_id: str | None,
                       next_check_at: float | None, unmapped_reported: bool) -> None:
        """Store the result of one ListDiscoveredResources check."""
        with self._tx("record mapping") as c:
            c.execute(self.sql("record_mapping"), {
                "mapped": mapped, "configuration_id": configuration_id,
                "next_check_at": next_check_at, "unmapped_reported": unmapped_reported,
                "id": task_id})

    # -- repair -------------------------------------------------------------------------------
    def due_verifications(self, limit: int) -> list[TaskRecord]:
        """The imported tasks read back longest ago; each moves to the back of the round."""
        with self._tx("read tasks to verify") as c:
            ids = [int(r["id"]) for r in self._all(c, "due_verifications",
                                                   {"now": self.clock(), "limit": limit})]
        return self._task_records(ids=ids) if ids else []

    def mark_resend(self, task_ids: Sequence[int], scope: ResendScope) -> None:
        """Send these tasks' newest state again (STATE), or import them and send it with the
        rest again (WHOLE), soon; a task already marked keeps the wider scope."""
        if task_ids:
            with self._tx("mark tasks for repair") as c:
                c.execute(self.sql("mark_resend"), {"now": self.clock(), "scope": int(scope),
                                                    "ids": self._array(task_ids)})



def _requests(rows: Sequence[Any]) -> tuple[dict[int, Request], list[int]]:
    """A claim's stored requests by row id, and the rows still in the outbox that have none
    intake stored (taken in by an older version) or none that reads back (another hand wrote
    it): those go back to intake, which judges them again."""
    judged: dict[int, Request] = {}
    unjudged: list[int] = []
    for r in rows:
        if not r["present"]:
            continue
        if r["request"] is not None:
            try:
                judged[r["id"]] = decode(r["request"])
                continue
            except ValueError:
                pass
        unjudged.append(r["id"])
    return judged, unjudged
