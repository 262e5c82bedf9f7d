"""The delivery algorithm's SQL, as named statements in a neutral dialect (`:name` parameters,
`= ANY(:list)`, {table} names, {greatest}/{least}), and `Dialect`, which turns one into an
engine's SQL. An engine replaces only the statements it must write its own way."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from reporter.hub_requests import Kind
from reporter.stores.contract import GateState, RowState

__all__ = [
    "ADDED_COLUMNS",
    "GATE_COLUMNS",
    "OUTBOX_COLUMNS",
    "REQUIRED_COLUMNS",
    "STATEMENTS",
    "TABLES",
    "Dialect",
    "literals",
    "postgres_named",
    "sqlite_any",
]

# The contract's outbox columns (README: The outbox contract): those a table must have, and
# those init adds.
REQUIRED_COLUMNS = (
    "id",
    "kind",
    "migration_task_name",
    "progress_update_stream",
    "status",
    "status_detail",
    "progress_percent",
    "next_update_seconds",
    "update_date_time",
    "resource_attributes",
    "created_at",
)
ADDED_COLUMNS = (  # created_artifact's (§1), the manual mapping's (§7), the whole API's (§8)
    "artifact_name", "artifact_description", "configuration_id", "resource_description",
    "application_id", "source_resource_name")
OUTBOX_COLUMNS = REQUIRED_COLUMNS + ADDED_COLUMNS
TABLES = ("tasks", "rows", "inbox", "lanes", "gate", "streams", "artifacts", "resources",
          "sources")
GATE_COLUMNS = tuple(f.name for f in fields(GateState))


def literals() -> tuple[str, ...]:
    """The row states as SQL literals: PENDING, SENT, SUPERSEDED, REJECTED, DROPPED."""
    return tuple(f"'{s.value}'" for s in RowState)


PENDING, SENT, SUPERSEDED, REJECTED, DROPPED = literals()
STATE = f"'{Kind.TASK_STATE.value}'"
# The lane a row's kind travels in (Kind.lane, in SQL): a removal shares its association's.
LANE_OF = "CASE kind {} ELSE kind END".format(
    " ".join(f"WHEN '{k.value}' THEN '{k.lane.value}'" for k in Kind if k.lane is not k))

# When a lane with waiting rows may send: not before now, its retry time, nor (the state lane)
# STATE_SPACING_SECONDS after the task's last state was sent.
_LANE_DUE = (
    "{greatest}(:now, coalesce((SELECT retry_at FROM {lanes} WHERE task_id = :id"
    f" AND kind = :kind), 0), CASE WHEN :kind = {STATE} THEN coalesce(sent_at, 0) + :spacing"
    " ELSE 0 END)"
)

# The statements of the algorithm, in a neutral dialect: `:name` parameters, `= ANY(:list)`,
# {table} names and {greatest}/{least}. An engine replaces those it must write its own way.
STATEMENTS: dict[str, str] = {
    "gate": f"SELECT {', '.join(GATE_COLUMNS)} FROM {{gate}} WHERE id = 1",
    "save_gate": f"UPDATE {{gate}} SET {', '.join(f'{n} = :{n}' for n in GATE_COLUMNS)}"
    " WHERE id = 1",
    # intake: the queue the outbox's trigger fills, read from both ends ({order}); an engine
    # adds its value sizes ({sizes}) and its row locks ({hold}). Dequeuing says which entries
    # were still there: another process may have taken some in meanwhile.
    "inbox": "SELECT i.seq, i.row_id, o.id IS NOT NULL AS present{sizes} FROM {inbox} i"
    " LEFT JOIN {outbox} o ON o.id = i.row_id WHERE i.seq > :after ORDER BY i.seq {order}"
    " LIMIT :limit{hold}",
    "dequeue": "DELETE FROM {inbox} WHERE seq = ANY(:seqs) RETURNING seq",
    "forget_reused": "DELETE FROM {rows} WHERE id = ANY(:ids) RETURNING state",
    "add_task": "INSERT INTO {tasks}(stream, task) VALUES (:stream, :task) ON CONFLICT DO NOTHING",
    "task_ids": "SELECT id, stream, task FROM {tasks} WHERE stream = ANY(:streams)"
    " AND task = ANY(:tasks)",
    "add_row": "INSERT INTO {rows}(id, seq, task_id, kind, state, created_at, finished_at, reason,"
    " request) VALUES (:id, :seq, :task_id, :kind, :state, :created_at, :finished_at, :reason,"
    " :request)",
    "supersede": f"UPDATE {{rows}} SET state = {SUPERSEDED}, finished_at = :now,"
    " reason = 'superseded by row ' || :rid WHERE task_id = :tid AND kind = :kind"
    f" AND state = {PENDING} AND seq < :seq",
    "schedule_lane": f"UPDATE {{tasks}} SET due_at = {_LANE_DUE} WHERE id = :id"
    f" AND lease_token IS NULL AND (due_at IS NULL OR due_at > {_LANE_DUE})",
    "next_wakeup": "SELECT (SELECT min(due_at) FROM {tasks} WHERE due_at IS NOT NULL) AS due,"
    " (SELECT min(map_check_at) FROM {tasks} WHERE map_check_at IS NOT NULL) AS checks",
    # a claim's rows: the request intake judged, and whether the tool left the row in the outbox
    "pending_rows": "SELECT r.task_id, r.id, r.created_at, r.attempts, r.seq, r.request,"
    " o.id IS NOT NULL AS present FROM {rows} r LEFT JOIN {outbox} o ON o.id = r.id"
    f" WHERE r.state = {PENDING} AND r.task_id = ANY(:ids) ORDER BY r.seq",
    # rows with no request to send (an older version took them in) go back to intake, at their
    # place in the queue
    "unjudged_to_inbox": "INSERT INTO {inbox}(seq, row_id) SELECT seq, id FROM {rows}"
    f" WHERE id = ANY(:ids) AND state = {PENDING}",
    "unjudged_forget": f"DELETE FROM {{rows}} WHERE id = ANY(:ids) AND state = {PENDING}",
    "unclaim": "UPDATE {tasks} SET due_at = NULL, lease_token = NULL WHERE id = ANY(:ids)",
    "artifacts_of": "SELECT task_id, arn, description FROM {artifacts} WHERE task_id = ANY(:ids)",
    "resources_of": "SELECT task_id, configuration_id, description FROM {resources}"
    " WHERE task_id = ANY(:ids)",
    "sources_of": "SELECT task_id, name, description, detail FROM {sources}"
    " WHERE task_id = ANY(:ids)",
    "lanes_of": "SELECT task_id, kind, attempts, retry_at FROM {lanes} WHERE task_id = ANY(:ids)",
    # a lease: due at its end, under a token that record and release must present
    "claim": "UPDATE {tasks} SET due_at = {now} + :lease, lease_token = :token WHERE id IN"
    " (SELECT id FROM {tasks} WHERE due_at IS NOT NULL AND due_at <= {now} ORDER BY due_at"
    " LIMIT :limit{skip}) RETURNING id, stream, task, imported, last_state_seq,"
    " last_attributes_seq, update_time, resend",
    "resends_of": "SELECT id, status, percent, detail, update_time, next_update_seconds,"
    " attributes FROM {tasks} WHERE id = ANY(:ids)",
    "release": "UPDATE {tasks} SET due_at = :due, lease_token = NULL WHERE id = :id"
    " AND lease_token = :lease",
    "lease_tokens": "SELECT id, lease_token FROM {tasks} WHERE id = ANY(:ids) ORDER BY id{lock}",
    # outcomes: the state guards (a row only moves forward; the task's state only to a newer one)
    "sent": f"UPDATE {{rows}} SET state = {SENT}, finished_at = :now, reason = NULL"
    f" WHERE id = ANY(:ids) AND state IN ({PENDING}, {SUPERSEDED})",
    "superseded": f"UPDATE {{rows}} SET state = {SUPERSEDED}, finished_at = :now, reason = :reason"
    f" WHERE id = :id AND state = {PENDING}",
    "rejected": f"UPDATE {{rows}} SET state = {REJECTED}, finished_at = :now, reason = :reason"
    f" WHERE id = :id AND state = {PENDING}",
    "attempted": "UPDATE {rows} SET attempts = attempts + 1 WHERE id = :id",
    "artifact": "INSERT INTO {artifacts}(task_id, arn, description, associated_at)"
    " VALUES (:id, :arn, :description, :now) ON CONFLICT DO NOTHING",
    "artifact_removed": "DELETE FROM {artifacts} WHERE task_id = :id AND arn = :arn",
    "resource": "INSERT INTO {resources}(task_id, configuration_id, description, associated_at)"
    " VALUES (:id, :cid, :description, :now) ON CONFLICT DO NOTHING",
    "resource_removed": "DELETE FROM {resources} WHERE task_id = :id AND configuration_id = :cid",
    "source": "INSERT INTO {sources}(task_id, name, description, detail, associated_at)"
    " VALUES (:id, :name, :description, :detail, :now) ON CONFLICT DO NOTHING",
    "source_removed": "DELETE FROM {sources} WHERE task_id = :id AND name = :name",
    # imported: the Hub has the task, so repair rounds read it back from now on
    "imported": "UPDATE {tasks} SET imported = TRUE, verify_at = coalesce(verify_at, :now)"
    " WHERE id = :id",
    "resent": "UPDATE {tasks} SET resend = 0 WHERE id = :id",
    # a call found the task (or its stream) gone: after the import, restore it whole
    "lost": "UPDATE {tasks} SET resend = 2 WHERE id = :id",
    # repair: the Hub lost the task (or its stream): import it and send its newest state again
    # (due now, unless leased: the lease's outcome makes it due, see reschedule)
    "mark_resend": "UPDATE {tasks} SET resend = {greatest}(resend, :scope), imported = CASE"
    " WHEN :scope = 2 THEN FALSE ELSE imported END, due_at = CASE WHEN"
    " lease_token IS NULL THEN {least}(coalesce(due_at, :now), :now) ELSE due_at END"
    " WHERE id = ANY(:ids)",
    # repair rounds take the tasks read back longest ago (round-robin over the imported ones)
    "due_verifications": "UPDATE {tasks} SET verify_at = :now WHERE id IN (SELECT id"
    " FROM {tasks} WHERE verify_at IS NOT NULL ORDER BY verify_at LIMIT :limit{skip})"
    " RETURNING id",
    "state": "UPDATE {tasks} SET last_state_row = :row, last_state_seq = :seq, status = :status,"
    " percent = :percent, detail = :detail, update_time = :update_time,"
    " next_update_seconds = :next_update_seconds, sent_at = :now WHERE id = :id"
    " AND (last_state_seq IS NULL OR last_state_seq < :seq)",
    "attributes": "UPDATE {tasks} SET last_attributes_row = :row, last_attributes_seq = :seq,"
    " attributes = :attributes, attributes_at = :now, mapped = NULL, configuration_id = NULL,"
    " map_check_at = :check_at,"
    " map_checks = 0, unmapped_reported = FALSE WHERE id = :id"
    " AND (last_attributes_seq IS NULL OR last_attributes_seq < :seq)",
    "lane_healthy": "DELETE FROM {lanes} WHERE task_id = :id AND kind = :kind",
    "lane": "INSERT INTO {lanes}(task_id, kind, attempts, retry_at, last_error)"
    " VALUES (:id, :kind, :attempts, :retry_at, :error) ON CONFLICT (task_id, kind) DO UPDATE"
    " SET attempts = excluded.attempts, retry_at = excluded.retry_at,"
    " last_error = excluded.last_error",
    # Due again when the earliest lane with waiting rows may send; the lease ends here.
    "reschedule": "UPDATE {tasks} SET lease_token = NULL, last_error = coalesce(:error,"
    " (SELECT last_error FROM {lanes} WHERE task_id = :id AND last_error IS NOT NULL LIMIT 1)),"
    " due_at = coalesce((SELECT min({greatest}(coalesce(l.retry_at, 0), :now,"
    f" CASE WHEN k.kind = {STATE} THEN coalesce(sent_at, 0) + :spacing ELSE 0 END))"
    f" FROM (SELECT DISTINCT {LANE_OF} AS kind FROM {{rows}} WHERE task_id = :id"
    f" AND state = {PENDING}) AS k"
    " LEFT JOIN {lanes} l ON l.task_id = :id AND l.kind = k.kind),"
    # a repair still to do (it failed part-way, or was asked for during this lease)
    " CASE WHEN resend <> 0 THEN coalesce(:retry_at, :now) END)"
    " WHERE id = :id AND lease_token = :lease",
    "streams": "SELECT stream FROM {streams} WHERE created_at IS NOT NULL",
    # a stream deleted at the Hub (`streams delete`): what the Hub had of it is forgotten, so
    # later rows create it and import its tasks again; a task's ordering floors stay
    "forget_stream": "DELETE FROM {streams} WHERE stream = :stream",
    "forget_stream_artifacts": "DELETE FROM {artifacts} WHERE task_id IN"
    " (SELECT id FROM {tasks} WHERE stream = :stream)",
    "forget_stream_resources": "DELETE FROM {resources} WHERE task_id IN"
    " (SELECT id FROM {tasks} WHERE stream = :stream)",
    "forget_stream_sources": "DELETE FROM {sources} WHERE task_id IN"
    " (SELECT id FROM {tasks} WHERE stream = :stream)",
    "forget_stream_tasks": "UPDATE {tasks} SET imported = FALSE, status = NULL, percent = NULL,"
    " detail = NULL, update_time = NULL, next_update_seconds = NULL, sent_at = NULL,"
    " attributes = NULL, attributes_at = NULL, mapped = NULL, configuration_id = NULL,"
    " map_check_at = NULL, map_checks = 0, unmapped_reported = FALSE, verify_at = NULL,"
    " resend = 0 WHERE stream = :stream",
    "stream_task_count": "SELECT count(*) AS n FROM {tasks} WHERE stream = :stream",
    "record_mapping": "UPDATE {tasks} SET mapped = :mapped, configuration_id = :configuration_id,"
    " map_check_at = :next_check_at, map_checks = map_checks + 1,"
    " unmapped_reported = :unmapped_reported WHERE id = :id",
    # a row's fate: what delivery knows of it, and whether the outbox still has it
    "fates_known": "SELECT r.id, r.state, r.reason, r.finished_at, r.kind, t.stream, t.task"
    " FROM {rows} r JOIN {tasks} t ON t.id = r.task_id WHERE r.id = ANY(:ids)",
    "fates_present": "SELECT o.id FROM {outbox} o WHERE o.id = ANY(:ids)",
    "dead_letters": "SELECT r.id, r.reason, r.kind, t.stream, t.task, r.attempts, r.finished_at,"
    " o.id IS NOT NULL AS present FROM {rows} r JOIN {tasks} t ON t.id = r.task_id"
    " LEFT JOIN {outbox} o ON o.id = r.id WHERE r.state = {rejected} {only} ORDER BY r.id",
    "drop": f"UPDATE {{rows}} SET state = {DROPPED}, finished_at = :now WHERE state = {REJECTED}"
    " {only} {before} RETURNING id",
    # dead letters handed back to intake, in their old place in line (their lane's backoff
    # forgotten: a person asked for them again)
    "requeue_lane": "DELETE FROM {lanes} WHERE (task_id, kind) IN"
    f" (SELECT r.task_id, {LANE_OF.replace('kind', 'r.kind')} FROM {{rows}} r"
    " JOIN {outbox} o ON o.id = r.id"
    f" WHERE r.id = ANY(:ids) AND r.state = {REJECTED})",
    "requeue": "INSERT INTO {inbox}(seq, row_id) SELECT r.seq, r.id FROM {rows} r"
    f" JOIN {{outbox}} o ON o.id = r.id WHERE r.id = ANY(:ids) AND r.state = {REJECTED}"
    " RETURNING row_id",
    "requeue_forget": f"DELETE FROM {{rows}} WHERE id = ANY(:ids) AND state = {REJECTED}",
    "backlog": f"SELECT (SELECT count(*) FROM {{rows}} WHERE state = {PENDING}) AS queued,"
    f" (SELECT min(created_at) FROM {{rows}} WHERE state = {PENDING}) AS oldest,"
    f" (SELECT count(*) FROM {{rows}} WHERE state = {REJECTED}) AS dead",
    "work_left": f"SELECT (SELECT count(DISTINCT task_id) FROM {{rows}} WHERE state = {PENDING})"
    " AS tasks, (SELECT count(*) FROM {lanes} WHERE attempts > 0) AS retrying",
    "by_state": "SELECT state, count(*) AS n FROM {rows} GROUP BY state",
    # A superseded row whose lane still has a newer row waiting: not delivered yet.
    "overtaken": f"SELECT count(*) AS n FROM {{rows}} r WHERE r.state = {SUPERSEDED} AND EXISTS"
    f" (SELECT 1 FROM {{rows}} p WHERE p.task_id = r.task_id AND p.state = {PENDING}"
    " AND p.kind = r.kind AND p.seq > r.seq)",
    # Two index range scans, no sort (a GROUP BY would sort every row ever delivered).
    "finished": f"SELECT count(*) FILTER (WHERE state = {SENT}) AS sent,"
    f" count(*) FILTER (WHERE state = {SUPERSEDED}) AS superseded FROM {{rows}}"
    f" WHERE state IN ({SENT}, {SUPERSEDED}) AND finished_at >= :since",
    "finished_rejected": f"SELECT count(*) AS n FROM {{rows}} WHERE state = {REJECTED}"
    " AND finished_at >= :since",
    "tasks": f"SELECT t.*, (SELECT count(*) FROM {{rows}} r WHERE r.task_id = t.id AND r.state ="
    f" {PENDING}) AS pending, {{arns}} AS artifacts, {{cids}} AS resources, {{names}} AS sources"
    " FROM {tasks} t"
    " {only} {order}",
    "prunable": "SELECT id FROM (SELECT id FROM {rows} WHERE state IN"
    f" ({SENT}, {SUPERSEDED}) AND finished_at < :before LIMIT :chunk{{skip}}) AS delivered"
    f" UNION ALL SELECT id FROM (SELECT id FROM {{rows}} WHERE state = {DROPPED}"
    " AND finished_at < :before LIMIT :chunk{skip}) AS dropped",
    # held for a minute: no other replica checks it meanwhile (record_mapping sets the next time)
    "due_mapping_checks": "UPDATE {tasks} SET map_check_at = :now + 60 WHERE id IN (SELECT id"
    " FROM {tasks} WHERE map_check_at IS NOT NULL AND map_check_at <= :now"
    " ORDER BY map_check_at LIMIT :limit{skip}) RETURNING id, stream, task, attributes_at,"
    " map_checks, unmapped_reported",
    "mark_stream": "INSERT INTO {streams}(stream, created_at) VALUES (:stream, :now)"
    " ON CONFLICT (stream) DO UPDATE SET created_at = excluded.created_at",
    # never a reused id whose new row is still waiting for intake
    "prune_outbox": "DELETE FROM {outbox} AS x WHERE x.id = ANY(:ids)"
    " AND NOT EXISTS (SELECT 1 FROM {inbox} i WHERE i.row_id = x.id)",
    "prune_rows": "DELETE FROM {rows} WHERE id = ANY(:ids)",
}

_ANY = re.compile(r"= ANY\(:(\w+)\)")
_PARAM = re.compile(r"(?<![:\w]):([a-z_]\w*)")


@dataclass(frozen=True)
class Dialect:
    """How one engine writes the shared statements."""

    prefix: str  # tables: "mgh_" (SQLite) or "mgh_reporter." (PostgreSQL)
    greatest: str  # the scalar max and min
    least: str
    lock: str  # appended to a SELECT whose rows are about to change ("" on SQLite)
    skip: str  # ... and one that leaves rows another replica holds ("" on SQLite)
    now: str  # the clock leases are judged by, in SQL (SQLite: bound as :now)
    listing: str  # a task's {column}s of {table} as a sorted JSON array (t is the task)
    named: Callable[[str], str]  # `:name` parameters to the driver's style
    any_of: Callable[[str], str]  # `= ANY(:list)` to the engine's membership test
    array: Callable[[Sequence[Any]], Any]  # a list parameter as the driver binds it
    overrides: Mapping[str, str]  # statements this engine writes its own way

    def compile(self, template: str, outbox: str) -> str:
        """One statement, in this engine's SQL."""
        names = {t: f"{self.prefix}{t}" for t in TABLES}
        text = template.format(
            **names, outbox=outbox, greatest=self.greatest, least=self.least, lock=self.lock,
            skip=self.skip, now=self.now, rejected=REJECTED,
            arns=self.listing.format(table=names["artifacts"], column="arn"),
            cids=self.listing.format(table=names["resources"], column="configuration_id"),
            names=self.listing.format(table=names["sources"], column="name"),
            only="{only}", before="{before}", order="{order}", sizes="{sizes}", hold="{hold}")
        return self.named(_ANY.sub(lambda m: self.any_of(m.group(1)), text))


def sqlite_any(name: str) -> str:
    """SQLite has no arrays: a JSON list bound as text, read back by json_each."""
    return f"IN (SELECT value FROM json_each(:{name}))"


def postgres_named(text: str) -> str:
    """`:name` to psycopg's `%(name)s` (a literal % doubled)."""
    return _PARAM.sub(r"%(\1)s", text.replace("%", "%%"))


def fate_view(outbox: str, rows: str, iso: str) -> str:
    """The `outbox_fate` view tools may read (README: A row's fate): each outbox row's id, its
    fate (pending, sent, superseded or dead), the reason and when it was settled (`iso`: the
    engine's expression for epoch seconds `r.finished_at` as ISO-8601 UTC text)."""
    return (
        f"SELECT o.id AS id, CASE r.state WHEN {SENT} THEN 'sent' WHEN {SUPERSEDED}"
        f" THEN 'superseded' WHEN {REJECTED} THEN 'dead' WHEN {DROPPED} THEN 'dead'"
        " ELSE 'pending' END AS state, r.reason AS reason,"
        f" CASE WHEN r.finished_at IS NULL THEN NULL ELSE {iso} END AS at"
        f" FROM {outbox} o LEFT JOIN {rows} r ON r.id = o.id"
    )
