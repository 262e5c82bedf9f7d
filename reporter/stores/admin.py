"""The store's verbs for people and their commands, shared by both engines over the named
statements: dead letters (list, hand back to intake, drop), a row's fate, the views `status`,
`tasks` and the gauges show, and pruning."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from reporter.hub_requests import APPLICATIONS
from reporter.rows import OutboxRow, epoch_of
from reporter.stores.contract import (
    Backlog,
    DeadLetter,
    RowCounts,
    RowFate,
    RowState,
    TaskRecord,
    WorkLeft,
    fate_of,
)
from reporter.stores.sqlbase import SqlBase

__all__ = ["AdminSql", "stored_pairs"]


class AdminSql(SqlBase):
    """The admin verbs (AdminStore) over an engine's connection."""

    # -- dead letters -----------------------------------------------------------------------
    def dead_letters(self, ids: Sequence[int] | None = None) -> list[DeadLetter]:
        """Rejected rows (all, or those of `ids`) with their reasons."""
        only = "" if ids is None else self.dialect.named(self.dialect.any_of("ids"))
        with self._tx("read dead letters", write=False) as c:
            rows = c.execute(self.sql("dead_letters", only=f"AND r.id {only}" if only else ""),
                             {"ids": self._array(ids or [])}).fetchall()
        return [DeadLetter(r["id"], r["reason"] or "", r["kind"], r["stream"], r["task"],
                           r["attempts"], r["finished_at"], bool(r["present"])) for r in rows]

    def fates(self, ids: Sequence[int]) -> list[RowFate]:
        """What became of each of these outbox rows, in the order asked (one read)."""
        chosen = {"ids": self._array(list(ids))}
        with self._tx("read rows' fates", write=False, snapshot=True) as c:
            known = {int(r["id"]): r for r in self._all(c, "fates_known", chosen)}
            present = {int(r["id"]) for r in self._all(c, "fates_present", chosen)}
        found = []
        for rid in ids:
            r = known.get(rid)
            if r is None:
                found.append(RowFate(rid, "pending" if rid in present else "unknown"))
                continue
            state, reason = fate_of(r["state"], r["reason"])
            at = None if r["finished_at"] is None else float(r["finished_at"])
            found.append(RowFate(rid, state, reason, at, r["kind"], r["stream"], r["task"]))
        return found

    def outbox_rows(self, ids: Sequence[int]) -> list[OutboxRow]:
        """The outbox content of some rows."""
        with self._tx("read outbox", write=False, snapshot=True) as c:
            contents = self._contents(c, list(ids))
        return [contents[i] for i in sorted(contents)]

    def drop(self, ids: Sequence[int] | None, rejected_before: float | None) -> list[int]:
        """Drop dead letters (of `ids` or all, rejected before `rejected_before` when given)."""
        only = "" if ids is None else "AND id " + self.dialect.named(self.dialect.any_of("ids"))
        before = "" if rejected_before is None else self.dialect.named(
            "AND coalesce(finished_at, 0) < :before")
        with self._tx("drop dead letters") as c:
            rows = c.execute(self.sql("drop", only=only, before=before), {
                "now": self.clock(), "ids": self._array(ids or []),
                "before": rejected_before}).fetchall()
        return sorted(int(r["id"]) for r in rows)

    def requeue(self, ids: Sequence[int] | None) -> list[int]:
        """Hand dead letters (of `ids`, or all) back to intake in their old place in line, their
        lane's backoff forgotten; the next `take_in` judges them again."""
        if ids is None:
            ids = [d.id for d in self.dead_letters()]
        if not ids:
            return []
        with self._tx("requeue dead letters") as c:
            chosen = {"ids": self._array(list(ids))}
            c.execute(self.sql("requeue_lane"), chosen)
            back = sorted(int(r["row_id"]) for r in self._all(c, "requeue", chosen))
            c.execute(self.sql("requeue_forget"), {"ids": self._array(back)})
        return back

    # -- views --------------------------------------------------------------------------------
    def backlog(self) -> Backlog:
        """Cheap (indexed) totals: rows not taken in, rows waiting, the oldest, dead letters."""
        with self._tx("read backlog", write=False) as c:
            r = self._one(c, "backlog")
            w = self._one(c, "waiting")
        first = w["first"]
        if isinstance(first, str):
            first = epoch_of(first, self.clock())
        times = [float(t) for t in (r["oldest"], first) if t is not None]
        return Backlog(int(w["waiting"]), int(r["queued"]), min(times) if times else None,
                       int(r["dead"]))

    def work_left(self) -> WorkLeft:
        """Tasks with pending rows, and (task, kind) lanes backing off after a failure."""
        with self._tx("read progress", write=False) as c:
            r = self._one(c, "work_left")
        return WorkLeft(int(r["tasks"]), int(r["retrying"]))

    def counts(self) -> RowCounts:
        """Row totals; a row superseded by a newer row that is still waiting counts as pending
        (its lane's content has not reached the Hub yet)."""
        backlog = self.backlog()
        with self._tx("read counts", write=False) as c:
            by_state = {r["state"]: int(r["n"]) for r in self._all(c, "by_state")}
            overtaken = int(self._one(c, "overtaken")["n"])
        oldest = backlog.oldest_created_at
        return RowCounts(
            pending=backlog.pending + overtaken,
            sent=by_state.get(RowState.SENT.value, 0),
            superseded=by_state.get(RowState.SUPERSEDED.value, 0) - overtaken,
            dead_letters=backlog.dead_letters,
            oldest_pending_seconds=None if oldest is None
            else round(max(0.0, self.clock() - oldest), 3),
            dropped=by_state.get(RowState.DROPPED.value, 0),
        )

    def finished_since(self, since: float) -> dict[str, int]:
        """Rows sent, superseded or rejected at or after `since` (by anyone), by state."""
        with self._tx("read finished rows", write=False) as c:
            done = self._one(c, "finished", {"since": since})
            rejected = self._one(c, "finished_rejected", {"since": since})
        return {RowState.SENT.value: int(done["sent"] or 0),
                RowState.SUPERSEDED.value: int(done["superseded"] or 0),
                RowState.REJECTED.value: int(rejected["n"])}

    def forget_stream(self, stream: str) -> int:
        """The Hub deleted `stream`: forget that it exists, that its tasks are imported, and
        what they were sent (states, attribute lists, artifacts, mappings), so later rows
        create and import them again and no repair brings back what a person deleted. Each
        task's ordering floors stay (never an older row after a newer one). Returns how many
        tasks the outbox has of it."""
        params = {"stream": stream}
        with self._tx("forget a stream") as c:
            for name in ("forget_stream_artifacts", "forget_stream_resources",
                         "forget_stream_sources", "forget_stream_tasks", "forget_stream"):
                c.execute(self.sql(name), params)
            return int(self._one(c, "stream_task_count", params)["n"])

    def tasks(self, stream: str | None = None) -> list[TaskRecord]:
        """One record per task: last state sent, pending count, mapping, artifacts (sorted)."""
        return self._task_records(stream=stream)

    def applications(self) -> list[TaskRecord]:
        """One record per application: its id (`task`), the state last sent, pending rows."""
        return self._task_records(stream=APPLICATIONS)

    def task_pages(self, stream: str | None = None, size: int = 500) -> Iterator[TaskRecord]:
        """Every task (of `stream`), read `size` at a time in id order: memory stays flat
        however many there are (`verify`)."""
        after = 0
        while True:
            page = self._task_records(stream=stream, after=after, limit=size)
            yield from page
            if len(page) < size:
                return
            after = page[-1].task_id

    def _task_records(self, stream: str | None = None, ids: Sequence[int] | None = None,
                      after: int | None = None, limit: int = 0) -> list[TaskRecord]:
        # applications travel as tasks of a pseudo-stream; they are read only by name
        where = ["t.stream = :stream"] if stream else ["t.stream <> :stream"]
        if ids is not None:
            where.append("t.id " + self.dialect.any_of("ids"))
        if after is not None:
            where.append("t.id > :after")
        only = self.dialect.named(f"WHERE {' AND '.join(where)}") if where else ""
        order = "ORDER BY t.id LIMIT :limit" if after is not None else "ORDER BY t.stream, t.task"
        with self._tx("read tasks", write=False) as c:
            rows = c.execute(self.sql("tasks", only=only, order=self.dialect.named(order)),
                             {"stream": stream or APPLICATIONS, "ids": self._array(ids or []),
                              "after": after, "limit": limit}).fetchall()
        return [
            TaskRecord(
                stream=r["stream"], task=r["task"], status=r["status"], percent=r["percent"],
                detail=r["detail"], update_time=r["update_time"],
                next_update_seconds=r["next_update_seconds"], sent_at=r["sent_at"],
                pending=int(r["pending"]),
                mapped=None if r["mapped"] is None else bool(r["mapped"]),
                configuration_id=r["configuration_id"],
                artifacts=tuple(_json_list(r["artifacts"])), last_error=r["last_error"],
                resources=tuple(_json_list(r["resources"])),
                sources=tuple(_json_list(r["sources"])),
                attributes=stored_pairs(r["attributes"]), task_id=int(r["id"]),
                attributes_sent=r["last_attributes_row"] is not None,
            )
            for r in rows
        ]

    # -- maintenance --------------------------------------------------------------------------
    def prune(self, before: float, chunk: int = 2000) -> int:
        """Delete delivered and dropped rows finished before `before` (and their outbox rows),
        in short transactions; returns the count."""
        total = 0
        while True:
            with self._tx("prune delivered rows") as c:
                ids = [int(r["id"]) for r in self._all(c, "prunable",
                                                       {"before": before, "chunk": chunk})]
                if ids:
                    c.execute(self.sql("prune_outbox"), {"ids": self._array(ids)})
                    c.execute(self.sql("prune_rows"), {"ids": self._array(ids)})
            total += len(ids)
            if len(ids) < chunk:
                return total


def _json_list(value: Any) -> Iterator[str]:
    """A JSON array as the driver returns it (text on SQLite, a list on PostgreSQL)."""
    items = value if isinstance(value, list) else json.loads(value or "[]")
    return (str(i) for i in items)


def stored_pairs(value: str | None) -> tuple[tuple[str, str], ...] | None:
    """An attribute list as stored (JSON pairs), or None when none was recorded."""
    return None if value is None else tuple((str(t), str(v)) for t, v in json.loads(value))
