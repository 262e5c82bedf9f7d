"""The emulator's state: streams and tasks as the Hub holds them, the discovery repository
that auto-mapping matches against, every call made, and the faults a test injects."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from reporter.emulator.validator import CASE_FOLDED, VM_FIELDS

__all__ = ["GARBLE_KINDS", "Faults", "HubState", "Server", "TaskRecord", "matchable"]

GARBLE_KINDS = ("html", "truncated", "proxy502", "hang", "deep", "huge")


@dataclass
class Faults:
    """What the emulator does wrong on purpose (probabilities are per request)."""

    throttle: float = 0.0
    server_error: float = 0.0
    drop: float = 0.0
    latency: float = 0.0
    jitter: float = 0.0  # extra latency, uniform in [0, jitter] seconds
    outage: bool = False
    retry_after: int = 1
    deny: set[str] = field(default_factory=set)  # operation names, or "*"
    invalid: set[str] = field(default_factory=set)  # operations answered InvalidInputException
    fail_operations: set[str] = field(default_factory=set)  # operations answered 503, always
    # the next N calls of each named operation are throttled (then it is removed): a transient
    # failure exactly where a test wants one
    throttle_next: dict[str, int] = field(default_factory=dict)
    # A hostile network path, per request with probability `garble`: "html" (a proxy's 200 page),
    # "truncated" (200 with JSON cut short), "proxy502" (a proxy's HTML 502), "hang" (accepted,
    # never answered until the emulator stops or `hang_seconds` pass), "deep" (200, JSON nested
    # 100,000 levels), "huge" (200, 8 MiB of JSON). The Hub never sees it.
    garble: float = 0.0
    garble_kind: str = "html"
    garble_only: set[str] = field(default_factory=set)  # operations to garble (empty: all)
    hang_seconds: float = 60.0
    # list replies that never end: "repeat" (the same NextToken again), "endless" (a new one
    # each time, past the last item too); "" answers as the Hub does
    pages: str = ""
    # The account's Migration Hub rate, shared by every caller: a token bucket of this many
    # calls/s (a second's worth of burst); past it ThrottlingException with RetryAfterSeconds
    # (`retry_after`). 0: no limit. Migration Hub Config (GetHomeRegion) is not counted.
    account_rate: float = 0.0
    # DeleteProgressUpdateStream takes this long (it is asynchronous at the Hub): meanwhile
    # writes to the stream answer InvalidInputException
    delete_seconds: float = 0.0
    # the `migrationhub-discovery` role is missing: PolicyErrorException from the operations
    # that need it (application states, manual mappings, ListMigrationTasks)
    no_discovery_role: bool = False

    def update(self, **values: Any) -> None:
        """Change several faults at once (unknown names raise)."""
        for key, value in values.items():
            if not hasattr(self, key):
                raise ValueError(f"unknown fault {key!r}")
            if key == "garble_kind" and value not in GARBLE_KINDS:
                raise ValueError(f"garble_kind must be one of {', '.join(GARBLE_KINDS)}")
            sets = ("deny", "invalid", "fail_operations", "garble_only")
            if key == "throttle_next":
                value = {str(k): int(v) for k, v in dict(value).items()}
            setattr(self, key, set(value) if key in sets else value)


@dataclass
class TaskRecord:
    """One migration task as the Hub keeps it."""

    name: str
    updates: list[dict[str, Any]] = field(default_factory=list)
    attributes: list[dict[str, str]] = field(default_factory=list)
    attributes_at: float | None = None
    artifacts: dict[str, str | None] = field(default_factory=dict)
    mapped_to: str | None = None  # the auto-mapping
    discovered: dict[str, str | None] = field(default_factory=dict)  # manual: id -> description
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> the resource


@dataclass
class Server:
    """A server in the simulated Application Discovery Service repository."""

    configuration_id: str
    attributes: set[tuple[str, str]]
    description: str = ""


def _norm(kind: str, value: str) -> tuple[str, str]:
    return kind, value.lower() if kind in CASE_FOLDED else value


def matchable(attributes: list[dict[str, str]]) -> set[tuple[str, str]]:
    """Attributes usable for matching: VM fields count only beside VM_MANAGER_ID."""
    has_manager = any(a["Type"] == "VM_MANAGER_ID" for a in attributes)
    usable = {
        _norm(a["Type"], a["Value"])
        for a in attributes
        if has_manager or a["Type"] not in VM_FIELDS
    }
    if not any(t in VM_FIELDS for t, _ in usable):
        usable = {(t, v) for t, v in usable if t != "VM_MANAGER_ID"}
    return usable


class HubState:
    """Everything the emulator knows: home Region, streams, tasks, servers, faults, call log."""

    def __init__(self, home_region: str | None, map_delay: float, seed: int) -> None:
        self.home_region = home_region
        self.map_delay = map_delay
        self.streams: dict[str, dict[str, TaskRecord]] = {}
        self.servers: list[Server] = []
        self.faults = Faults()
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0  # requests being answered right now
        self.peak_in_flight = 0
        self.bucket = 0.0  # the account's tokens (faults.account_rate), and when counted
        self.bucket_at = 0.0
        self.deleting: dict[str, float] = {}  # stream -> when its deletion finishes
        # Application Discovery Service: the applications it knows, and their migration states
        self.discovery_applications: set[str] = set()
        self.applications: dict[str, dict[str, Any]] = {}
        self.application_updates: list[dict[str, Any]] = []  # every state received, in order
        self.lock = threading.RLock()
        self.rng = random.Random(seed)

    def add_server(self, configuration_id: str, description: str = "", **attrs: str) -> None:
        """Seed the discovery repository with a server (attrs: IPV4_ADDRESS=..., FQDN=...)."""
        with self.lock:
            pairs = {_norm(k, v) for k, v in attrs.items()}
            self.servers.append(Server(configuration_id, pairs, description))

    def add_application(self, application: str) -> None:
        """An application in Application Discovery Service (NotifyApplicationState needs one)."""
        with self.lock:
            self.discovery_applications.add(application)

    def task(self, stream: str, task: str) -> TaskRecord:
        """A task's record (KeyError when unknown)."""
        return self.streams[stream][task]

    # -- the Hub changed behind the reporter's back (an administrator, another tool, a loss) --
    def delete_stream(self, stream: str) -> None:
        """DeleteProgressUpdateStream by someone else: the stream and its tasks are gone."""
        with self.lock:
            self.streams.pop(stream)

    def lose_task(self, stream: str, task: str) -> None:
        """The Hub no longer has this task (its stream stays)."""
        with self.lock:
            self.streams[stream].pop(task)

    def change_task(
        self,
        stream: str,
        task: str,
        task_fields: dict[str, Any] | None = None,
        update_date_time: float | None = None,
        attributes: list[dict[str, str]] | None = None,
        artifacts: list[str] | None = None,
        discovered: list[str] | None = None,
    ) -> None:
        """Another client's writes to a task: a state update (`task_fields` merged over the
        last one's Status/StatusDetail/ProgressPercent, at `update_date_time`, epoch seconds),
        a new attribute list, its artifacts or manual associations replaced by these."""
        with self.lock:
            record = self.streams[stream][task]
            if task_fields is not None or update_date_time is not None:
                last = record.updates[-1] if record.updates else None
                fields = {**(last["Task"] if last else {}), **(task_fields or {})}
                fields = {k: v for k, v in fields.items() if v is not None}
                when = update_date_time if update_date_time is not None else (
                    last["UpdateDateTime"] if last else 0.0)
                record.updates.append({"Task": fields, "UpdateDateTime": when,
                                       "NextUpdateSeconds": 0, "ReceivedAt": None})
            if attributes is not None:
                record.attributes = list(attributes)
            if artifacts is not None:
                record.artifacts = {a: record.artifacts.get(a) for a in artifacts}
            if discovered is not None:
                record.discovered = {c: record.discovered.get(c) for c in discovered}

    def op_count(self, operation: str) -> int:
        """How many requests of this operation arrived (any outcome)."""
        with self.lock:
            return sum(1 for c in self.calls if c["operation"] == operation)

    def summary(self) -> dict[str, Any]:
        """A JSON-able picture of the Hub (for `/_emulator/state`, the demo, benchmarks)."""
        with self.lock:
            streams: dict[str, Any] = {}
            for name, tasks in self.streams.items():
                streams[name] = {
                    t.name: {
                        "updates": len(t.updates),
                        "last": t.updates[-1] if t.updates else None,
                        "attributes": t.attributes,
                        "artifacts": sorted(t.artifacts),
                        "mapped_to": t.mapped_to,
                        "discovered": sorted(t.discovered),
                        "sources": sorted(t.sources),
                    }
                    for t in tasks.values()
                }
            ops: dict[str, int] = {}
            throttled: dict[str, int] = {}
            for c in self.calls:
                ops[c["operation"]] = ops.get(c["operation"], 0) + 1
                if c.get("error") == "ThrottlingException":
                    throttled[c["operation"]] = throttled.get(c["operation"], 0) + 1
            return {
                "home_region": self.home_region,
                "streams": streams,
                "operations": ops,
                "throttled": throttled,
                "applications": {a: dict(v) for a, v in self.applications.items()},
                "application_updates": [dict(u) for u in self.application_updates],
                "deleting": sorted(self.deleting),
                "first_call_at": min((c["time"] for c in self.calls), default=None),
                "peak_in_flight": self.peak_in_flight,
                "faults": {
                    k: sorted(v) if isinstance(v, set) else v
                    for k, v in vars(self.faults).items()
                },
            }

    def updates(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Every NotifyMigrationTaskState each task received, in arrival order, with ReceivedAt."""
        with self.lock:
            return {
                name: {t.name: list(t.updates) for t in tasks.values()}
                for name, tasks in self.streams.items()
            }
