"""The typed records that cross the store boundary, and the store's verbs as a `Protocol`.

The relay, gate, delivery, views and CLI speak only these types; `reporter/stores/` implements
`OutboxStore` once over two SQL dialects (SQLite, PostgreSQL). Two facts are deliberately not
part of the interface: that outbox ids commit in order (how a store finds rows not yet taken in
is its own business), and that one process owns every lease (claims carry a token that `record`
and `release` must present).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import NamedTuple, Protocol

from reporter.coalesce import Verdict
from reporter.hub_requests import Kind, Request
from reporter.rows import OutboxRow
from reporter.stores.errors import StoreError

__all__ = [
    "FATES",
    "AdminStore",
    "Backlog",
    "ClaimedRow",
    "ClaimedTask",
    "DeadLetter",
    "DeliveryStore",
    "FileHealthStore",
    "GateState",
    "Ingested",
    "LaneResult",
    "LaneState",
    "Lease",
    "MappingCheck",
    "NewRows",
    "OutboxStore",
    "Replica",
    "ReplicaStore",
    "Resend",
    "ResendScope",
    "RowCounts",
    "RowFate",
    "RowState",
    "SentState",
    "StoreError",
    "TakenIn",
    "TaskOutcome",
    "TaskRecord",
    "fate_of",
]


class RowState(StrEnum):
    """Where an outbox row is in delivery (the one definition the SQL uses too)."""

    PENDING = "pending"
    SENT = "sent"
    SUPERSEDED = "superseded"
    REJECTED = "rejected"
    DROPPED = "dropped"  # a dead letter a person dropped (`dead-letters drop`); pruned like sent


@dataclass(frozen=True)
class Ingested:
    """A new outbox row as the relay judged it at intake."""

    row_id: int
    stream: str
    task: str
    kind: str
    created_at: float
    rejected: str | None = None
    supersedes: bool = False
    request: str | None = None  # what delivery sends: the judged request (hub_requests.encode)


class TakenIn(NamedTuple):
    """What one `take_in` did: how many rows it took in, and whether others wait behind."""

    taken: int
    more: bool


@dataclass(frozen=True)
class NewRows:
    """A batch of outbox rows not taken in yet; `more` when others are waiting behind it."""

    rows: list[OutboxRow]
    more: bool
    seqs: Sequence[int] = ()  # the intake queue entries read (dequeued by `ingest`)
    places: dict[int, int] = field(default_factory=dict)  # row id -> its place in that queue


@dataclass(frozen=True)
class LaneState:
    """One (task, kind) lane's retry state: consecutive failures and when it may try again."""

    attempts: int = 0
    retry_at: float | None = None


class Lease(NamedTuple):
    """A claimed task's lease: what `record` and `release` must present."""

    task_id: int
    token: str


@dataclass(frozen=True)
class ClaimedRow:
    """A waiting row as claimed: its place in insertion order (`seq`: what "newer" means, as
    outbox ids may be reused), its attempts and when it was written, and the request intake
    judged it to be (None: the tool deleted the row from the outbox after intake)."""

    id: int
    seq: int
    attempts: int
    created_at: float
    request: Request | None


class ResendScope(IntEnum):
    """What a repair sends again (the tasks table's `resend`): nothing; the newest state only
    (the Hub is behind us on a task it still has); everything (the Hub lost the task or its
    stream: state, attribute list, artifacts and manual mappings)."""

    NONE = 0
    STATE = 1
    WHOLE = 2


@dataclass(frozen=True)
class Resend:
    """What a repair sends again (the Hub lost the task or its stream, or is behind us): the
    newest state, attribute list, artifacts and manual mappings the Hub had from us."""

    state: SentState | None
    attributes: tuple[tuple[str, str], ...] | None
    artifacts: tuple[tuple[str, str | None], ...] = ()  # (ARN, description)
    resources: tuple[tuple[str, str | None], ...] = ()  # (ConfigurationId, description)
    scope: ResendScope = ResendScope.WHOLE
    sources: tuple[tuple[str, str | None, str | None], ...] = ()  # (name, description, detail)


@dataclass
class ClaimedTask:
    """A task leased for one pass, with its waiting rows and what the Hub already has."""

    id: int
    stream: str
    task: str
    lease: str
    imported: bool = False
    state_floor: int | None = None  # insertion place of the state the Hub has
    attributes_floor: int | None = None  # ... and of its attribute list
    rows: list[ClaimedRow] = field(default_factory=list)  # in insertion order
    associated: frozenset[str] = frozenset()  # artifact ARNs the Hub has from us
    resources: frozenset[str] = frozenset()  # ... and manual mappings' ConfigurationIds
    sources: frozenset[str] = frozenset()  # ... and source resources' names
    lanes: dict[Kind, LaneState] = field(default_factory=dict)
    last_update_time: float | None = None  # the UpdateDateTime the Hub has (epoch seconds)
    resend: Resend | None = None  # a repair: send this again after importing the task

    @property
    def leased(self) -> Lease:
        """This claim's lease."""
        return Lease(self.id, self.lease)

    def lane(self, kind: Kind) -> LaneState:
        """The retry state of one lane (a fresh lane when none was recorded)."""
        return self.lanes.get(kind, LaneState())

    def row(self, row_id: int) -> ClaimedRow:
        """One of the claimed rows."""
        return next(r for r in self.rows if r.id == row_id)

    @property
    def requests(self) -> list[Request]:
        """The judged requests of the rows still in the outbox."""
        return [r.request for r in self.rows if r.request is not None]

    @property
    def missing(self) -> list[int]:
        """Rows the tool deleted from the outbox after intake."""
        return [r.id for r in self.rows if r.request is None]

    def order(self) -> dict[int, int]:
        """Row id to insertion place, for coalescing."""
        return {r.id: r.seq for r in self.rows}


@dataclass(frozen=True)
class SentState:
    """The task state the Hub now has (what `tasks` shows)."""

    row: int
    seq: int
    status: str
    percent: int | None
    detail: str | None
    update_time: float
    next_update_seconds: int


@dataclass(frozen=True)
class LaneResult:
    """A lane's new retry state after a pass (attempts 0 and no retry time: healthy)."""

    kind: Kind
    attempts: int
    retry_at: float | None
    error: str | None = None


@dataclass
class TaskOutcome:
    """What happened to one claimed task, recorded in one transaction with the pass's others."""

    task_id: int
    lease: str
    sent: list[int] = field(default_factory=list)
    superseded: list[Verdict] = field(default_factory=list)
    rejected: list[Verdict] = field(default_factory=list)
    failed_rows: list[int] = field(default_factory=list)
    imported: bool = False
    state: SentState | None = None
    attributes_row: int | None = None
    attributes_seq: int | None = None
    map_check_at: float | None = None
    attributes: tuple[tuple[str, str], ...] | None = None  # the list sent (attributes_row)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)  # (ARN, description)
    artifacts_removed: list[str] = field(default_factory=list)
    resources: list[tuple[str, str | None]] = field(default_factory=list)  # (id, description)
    resources_removed: list[str] = field(default_factory=list)
    sources: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    sources_removed: list[str] = field(default_factory=list)
    lanes: list[LaneResult] = field(default_factory=list)
    error: str | None = None
    resent: bool = False  # a repair's calls all went through
    lost: bool = False  # a call found the task (or its stream) gone: restore it whole
    retry_at: float | None = None  # a repair that failed part-way: when to try again


@dataclass(frozen=True)
class GateState:
    """The gate's persisted record: blocked and its recheck, the home Region and its lookup's
    backoff, the outage brake, and the last successful call."""

    blocked_code: str | None = None
    blocked_reason: str | None = None
    blocked_since: float | None = None
    recheck_at: float = 0.0
    home_region: str | None = None
    region_attempts: int = 0
    region_retry_at: float = 0.0
    brake_attempts: int = 0
    brake_until: float = 0.0
    last_success_at: float | None = None


@dataclass(frozen=True)
class Backlog:
    """What is not delivered yet: rows not taken in (`waiting`) and rows taken in (`queued`)."""

    waiting: int
    queued: int
    oldest_created_at: float | None
    dead_letters: int

    @property
    def pending(self) -> int:
        """Every row that is neither delivered nor rejected."""
        return self.waiting + self.queued


@dataclass(frozen=True)
class WorkLeft:
    """What a drain still has to do: tasks with rows pending, and lanes waiting to retry."""

    tasks: int
    retrying: int


@dataclass(frozen=True)
class RowCounts:
    """Row totals for `status`: delivered only once the row or a newer one of its lane was sent."""

    pending: int
    sent: int
    superseded: int
    dead_letters: int
    oldest_pending_seconds: float | None
    dropped: int = 0  # dead letters dropped by a person, until pruned with the delivered rows

    @property
    def delivered(self) -> int:
        """Rows whose content (or a newer one's) has reached the Hub."""
        return self.sent + self.superseded


@dataclass(frozen=True)
class MappingCheck:
    """A task whose auto-mapping should be checked now."""

    task_id: int
    stream: str
    task: str
    attributes_at: float
    checks: int
    unmapped_reported: bool


# What became of a row, as a tool asks (`rows`, the `outbox_fate` view): its delivery state
# in four words, whatever the daemon's finer ones.
FATES = ("pending", "sent", "superseded", "dead")


@dataclass(frozen=True)
class RowFate:
    """What became of one outbox row (`state`: one of FATES, or "unknown": never written, or
    pruned after delivery); `at` when it was settled (epoch seconds)."""

    id: int
    state: str
    reason: str | None = None
    at: float | None = None
    kind: str | None = None
    stream: str | None = None
    task: str | None = None

    def to_json(self) -> dict[str, object]:
        """The object `rows --json` prints (`at` as ISO-8601 UTC)."""
        when = None if self.at is None else datetime.fromtimestamp(self.at, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        return {"id": self.id, "state": self.state, "reason": self.reason, "at": when,
                "kind": self.kind, "stream": self.stream, "task": self.task}


def fate_of(state: str | None, reason: str | None) -> tuple[str, str | None]:
    """A row's fate from its delivery state (None: not taken in yet) and reason."""
    if state is None or state == RowState.PENDING:
        return "pending", reason
    if state == RowState.REJECTED:
        return "dead", reason
    if state == RowState.DROPPED:
        return "dead", f"dropped by a person (rejected: {reason})" if reason else (
            "dropped by a person")
    return str(state), reason


@dataclass(frozen=True)
class DeadLetter:
    """A rejected row with its reason (and whether its outbox content is still there)."""

    id: int
    reason: str
    kind: str
    stream: str
    task: str
    attempts: int
    rejected_at: float | None
    present: bool


@dataclass(frozen=True)
class TaskRecord:
    """One task as `tasks` and the staleness views see it."""

    stream: str
    task: str
    status: str | None = None
    percent: int | None = None
    detail: str | None = None
    update_time: float | None = None
    next_update_seconds: int | None = None
    sent_at: float | None = None
    pending: int = 0
    mapped: bool | None = None
    configuration_id: str | None = None
    artifacts: tuple[str, ...] = ()
    last_error: str | None = None
    resources: tuple[str, ...] = ()  # manual mappings (ConfigurationIds) the Hub has from us
    attributes: tuple[tuple[str, str], ...] | None = None  # the list last sent (None: unknown)
    task_id: int = 0  # the store's id of the task
    attributes_sent: bool = False  # an attribute list was delivered (recorded or not)
    sources: tuple[str, ...] = ()  # source resources' names the Hub has from us


@dataclass(frozen=True)
class Replica:
    """One delivering process of a shared outbox, as its heartbeat row describes it."""

    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    every_seconds: float  # how often it promises a heartbeat
    rate: float  # its [publish] max_requests_per_second (0: no cap)
    role: str = "run"  # "run" or "drain"


class DeliveryStore(Protocol):
    """What delivery needs (the relay, intake, the gate, the courier, repair rounds, mapping
    checks): intake, claims and their outcomes, the gate's record, streams, mapping and
    repair."""

    def close(self) -> None:
        """Release the connection."""

    def clock(self) -> float:
        """Now, in epoch seconds, by the clock leases are judged by (the database's, when
        several processes share the outbox)."""

    def data_version(self) -> int:
        """A token that changes whenever another connection commits (cheap idle check)."""

    def load_gate(self) -> GateState:
        """The gate's persisted record (defaults when none was saved)."""

    def save_gate(self, state: GateState) -> None:
        """Persist the gate's record."""

    def take_in(self, limit: int, judge: Callable[[OutboxRow], Ingested]) -> TakenIn:
        """Intake, one verb that owns its transaction: up to `limit` outbox rows not yet taken
        in (in insertion order, never by id alone: ids may be reused or commit out of order;
        at most INTAKE_BATCH_BYTES of values), each judged by `judge`, taken into delivery
        state. A row is taken in once, whoever else takes rows in meanwhile."""

    def next_wakeup(self) -> float | None:
        """When the earliest task or mapping check becomes due (None: nothing scheduled)."""

    def claim_due(self, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        """Lease up to `limit` due tasks for `lease_seconds`, with their waiting rows."""

    def release(self, leases: Sequence[Lease], due_at: float) -> None:
        """Hand leased (task id, lease) pairs back untouched, due again at `due_at`."""

    def record(self, outcomes: Sequence[TaskOutcome]) -> None:
        """Record a pass's outcomes and end their leases."""

    def mark_stream_created(self, stream: str) -> None:
        """Remember that the Hub has this stream."""

    def streams(self) -> set[str]:
        """Streams known to exist at the Hub."""

    def task_pages(self, stream: str | None = None, size: int = 500) -> Iterator[TaskRecord]:
        """Every task (of `stream`) in id order, read a page at a time."""

    def due_verifications(self, limit: int) -> list[TaskRecord]:
        """The imported tasks read back longest ago (a repair round's next few)."""

    def mark_resend(self, task_ids: Sequence[int], scope: ResendScope) -> None:
        """The Hub lost these tasks (WHOLE: import them and send their newest state, attribute
        list, artifacts and manual mappings again) or is behind us (STATE: our newest state
        again), as soon as possible; a task already marked keeps the wider scope."""

    def due_mapping_checks(self, limit: int) -> list[MappingCheck]:
        """Tasks whose auto-mapping should be checked now."""

    def record_mapping(
        self,
        task_id: int,
        mapped: bool | None,
        configuration_id: str | None,
        next_check_at: float | None,
        unmapped_reported: bool,
    ) -> None:
        """Store the result of one ListDiscoveredResources check."""

    def rebase(self, delta: float) -> None:
        """The local wall clock stepped by `delta` seconds: keep every stored wait (due times,
        retries, spacing, mapping checks) as far away as it was."""


class ReplicaStore(Protocol):
    """What several processes sharing one outbox need (PostgreSQL; one process owning an SQLite
    file answers for itself alone): the fence, stream claims, heartbeats."""

    def hold(self, task_id: int, lease: str, need_seconds: float, lease_seconds: float) -> bool:
        """The fence before a Hub call: True when this lease still has at least `need_seconds`
        left (renewing it for `lease_seconds` when less remains); False when it was lost, and
        the caller must make no further call for the task."""

    def claim_stream(self, stream: str, seconds: float) -> bool:
        """True when this process should create `stream` now (no one created it, and no one
        else is creating it); the claim lapses after `seconds`."""

    def heartbeat(self, me: Replica) -> list[Replica]:
        """Say this process is alive; returns the live replicas (itself included)."""

    def replicas(self) -> list[Replica]:
        """The live replicas (heartbeat fresher than three of their promised periods)."""

    def leave(self, replica_id: str) -> None:
        """This process stops delivering: drop its heartbeat row."""


class FileHealthStore(Protocol):
    """What the daemon tends of an outbox that is a file of ours (SQLite; a database server
    keeps its own log and files, so PostgreSQL answers that all is well)."""

    def checkpoint(self, mode: str = "PASSIVE", busy_ms: int | None = None) -> bool:
        """Engine housekeeping (SQLite: fold the WAL back); True when nothing was left over."""

    def wal_bytes(self) -> int:
        """Bytes of write-ahead log not folded back (0 where the engine has no such file)."""

    def damage(self) -> str | None:
        """Why the open file can no longer be trusted (its -wal deleted or replaced under us),
        or None; cheap enough for every pass."""

    def integrity(self) -> str | None:
        """`PRAGMA quick_check`: None when the file is sound, else what is wrong."""

    def file_problem(self) -> str | None:
        """Why the store no longer reaches the outbox its config names (deleted, replaced)."""

    def disown(self) -> str | None:
        """The outbox at its path is no longer the file we have open: remove the companion
        files of ours still at that path. None once none is left, else why one cannot go."""


class AdminStore(Protocol):
    """What people and their commands read and change: dead letters, the views `status`,
    `tasks` and the gauges show, pruning."""

    def fates(self, ids: Sequence[int]) -> list[RowFate]:
        """What became of each of these outbox rows, in the order asked."""

    def dead_letters(self, ids: Sequence[int] | None = None) -> list[DeadLetter]:
        """Rejected rows (all, or those of `ids`)."""

    def outbox_rows(self, ids: Sequence[int]) -> list[OutboxRow]:
        """The outbox content of some rows."""

    def drop(self, ids: Sequence[int] | None, rejected_before: float | None) -> list[int]:
        """Drop dead letters (those of `ids`, or all; only those rejected before
        `rejected_before` when given): they leave the dead letters and are pruned with the
        delivered rows. Returns the ids dropped."""

    def forget_stream(self, stream: str) -> int:
        """The Hub deleted `stream`: later rows create it and import its tasks again; no
        repair restores it. Returns how many tasks the outbox has of it."""

    def requeue(self, ids: Sequence[int] | None) -> list[int]:
        """Hand dead letters (those of `ids`, or all) back to intake, in their old place in
        line: the next `take_in` judges them again. Returns the ids handed back (a dead letter
        whose outbox row is gone stays one)."""

    def backlog(self) -> Backlog:
        """Cheap totals of what is not delivered yet (the hot-path view)."""

    def work_left(self) -> WorkLeft:
        """Tasks with pending rows, and (task, kind) lanes backing off after a failure."""

    def counts(self) -> RowCounts:
        """Row totals for `status`."""

    def tasks(self, stream: str | None = None) -> list[TaskRecord]:
        """One record per task (applications are not tasks: `applications`)."""

    def applications(self) -> list[TaskRecord]:
        """One record per application that rows named (`task` is its id; the state last sent
        in `status` and `update_time`)."""

    def finished_since(self, since: float) -> dict[str, int]:
        """Rows sent, superseded or rejected at or after `since` (by anyone), by state."""

    def prune(self, before: float, chunk: int = 2000) -> int:
        """Delete delivered rows finished before `before`; returns the count."""


class OutboxStore(DeliveryStore, ReplicaStore, FileHealthStore, AdminStore, Protocol):
    """The verbs the relay, gate, delivery, views and CLI use; one implementation per engine."""
