"""The outbox row and the Hub requests it becomes: validation and normalisation (pure; coalescing
is `coalesce`'s)."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    json_depth,
    stream_problem,
)

__all__ = [
    "APPLICATION_STATUSES",
    "ATTRIBUTE_TYPES",
    "MAX_COLUMN_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_NAME_CHARS",
    "MAX_ROW_BYTES",
    "SMALL_VALUE_BYTES",
    "STATUSES",
    "TERMINAL_STATUSES",
    "OutboxRow",
    "Problem",
    "check_stream",
    "check_task",
    "clip",
    "epoch_of",
    "judge",
    "key_of_row",
    "parse_timestamp",
    "stream_of",
    "to_request",
    "unread",
]

STATUSES = ("NOT_STARTED", "IN_PROGRESS", "FAILED", "COMPLETED")
APPLICATION_STATUSES = ("NOT_STARTED", "IN_PROGRESS", "COMPLETED")  # ApplicationStatus
TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED"})
ATTRIBUTE_TYPES = (
    "IPV4_ADDRESS",
    "IPV6_ADDRESS",
    "MAC_ADDRESS",
    "FQDN",
    "VM_MANAGER_ID",
    "VM_MANAGED_OBJECT_REFERENCE",
    "VM_NAME",
    "VM_PATH",
    "BIOS_ID",
    "MOTHERBOARD_SERIAL_NUMBER",
)
MAC_RE = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}([0-9A-Fa-f]{2})$")
IPV4_RE = re.compile(r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")
ARN_RE = re.compile(r"arn:[a-z-]+:[a-z0-9-]+:(?:[a-z0-9-]+|):(?:[0-9]{12}|):.*")
FQDN_FORBIDDEN = re.compile(r"[<>{}\\/?,=\x00-\x1f\x7f]")
# Java's "." (the service's patterns) stops at these line terminators.
LINE_BREAKS = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")
MAX_STATUS_DETAIL = 2500
# A task's state goes to the Hub at most this often: rows written in between wait and coalesce
# into the newest (a tool reporting 1,000 times a second costs a handful of calls, not 1,000).
STATE_SPACING_SECONDS = 0.25
MAX_DESCRIPTION = 500  # CreatedArtifact's and DiscoveredResource's Description
MAX_ID_CHARS = 1600  # an artifact's ARN, a ConfigurationId, an ApplicationId, a source's Name
MAX_ATTRIBUTES = 100
MAX_NEXT_UPDATE_SECONDS = 2_147_483_647  # the Hub's Integer
EARLIEST_UPDATE = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_SLACK_SECONDS = 24 * 3600  # update_date_time may run at most this far ahead of intake
# Bounds of our own: a column over MAX_COLUMN_BYTES, or a row whose text and BLOB columns total
# over MAX_ROW_BYTES, is a dead letter, measured by the store without reading the values (so no
# row can make us hold more than this of it); JSON nested deeper than this is refused before
# parsing.
MAX_COLUMN_BYTES = 1024 * 1024
MAX_ROW_BYTES = 1024 * 1024
# Of a row over MAX_ROW_BYTES, only values up to this size are read (to name its task).
SMALL_VALUE_BYTES = 1024
MAX_JSON_DEPTH = 32
# What a reason, a log field or a shown value may carry of a row's text.
MAX_SHOWN_CHARS = 200
MAX_NAME_CHARS = 256  # a task name's own limit: what a rejected row's task is named by
MAX_REASON_CHARS = 600
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Problem:
    """Why a row cannot be sent: the column (or attribute) and the rule it breaks."""

    field: str
    rule: str

    @property
    def reason(self) -> str:
        """One human sentence: `field: rule` (capped, printable: safe for logs and storage)."""
        return clip(f"{self.field}: {self.rule}", MAX_REASON_CHARS)


def clip(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """Any value as text safe to log, store or show: undecodable bytes as U+FFFD, cut to
    `limit` characters with the size of what was cut."""
    text = value if isinstance(value, str) else str(value)
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text):,} characters)"
    return text


@dataclass(frozen=True)
class OutboxRow:
    """One row of the `outbox` table, as SQLite returned it (types unchecked)."""

    id: int
    kind: Any
    migration_task_name: Any
    progress_update_stream: Any = None
    status: Any = None
    status_detail: Any = None
    progress_percent: Any = None
    next_update_seconds: Any = None
    update_date_time: Any = None
    resource_attributes: Any = None
    created_at: Any = None
    artifact_name: Any = None
    artifact_description: Any = None
    configuration_id: Any = None
    resource_description: Any = None
    application_id: Any = None
    source_resource_name: Any = None
    # Columns the store left unread because they exceed MAX_COLUMN_BYTES, or because the row
    # exceeds MAX_ROW_BYTES: (name, bytes).
    oversize: tuple[tuple[str, int], ...] = ()
    # The bytes of the row's text and BLOB columns, as the store measured them (0: not measured)
    row_bytes: int = 0

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> OutboxRow:
        """Build from a `sqlite3.Row`-like mapping, ignoring columns we do not know."""
        names = cls.__dataclass_fields__
        return cls(**{k: data[k] for k in data if k in names})


def check_stream(value: Any) -> Problem | None:
    """The ProgressUpdateStream rules (`stream_problem`), as a row's Problem."""
    problem = stream_problem(value)
    return None if problem is None else Problem("progress_update_stream", problem)


def check_task(value: Any) -> Problem | None:
    """The MigrationTaskName rules: 1–256 chars, no `:` or `|`."""
    if not isinstance(value, str):
        return Problem("migration_task_name", "must be text")
    if not 1 <= len(value) <= 256:
        return Problem("migration_task_name", f"must be 1-256 characters (got {len(value)})")
    if ":" in value or "|" in value:
        return Problem("migration_task_name", "must not contain : or |")
    return None


def parse_timestamp(value: str) -> datetime | None:
    """ISO-8601 with `Z` or an offset, as an aware UTC datetime; None if not such a string."""
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            return None
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # 9999-12-31T23:59:59-14:00 is past datetime.max in UTC
        return None


def _iso_out_of_range(text: str) -> bool:
    try:
        datetime.fromisoformat(text.strip()).astimezone(UTC)
    except OverflowError:
        return True
    except ValueError:
        return False
    return False


def epoch_of(value: Any, fallback: float) -> float:
    """An ISO-8601 text as epoch seconds, or `fallback` when it is not one."""
    parsed = parse_timestamp(value) if isinstance(value, str) else None
    return parsed.timestamp() if parsed else fallback


def _int(value: Any, name: str, low: int, high: int | None) -> int | Problem:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            return Problem(name, f"must be an integer (got {value!r})")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        return Problem(name, f"must be {bound} (got {value})")
    return int(value)


def normalise_detail(text: str) -> str:
    """The Hub's rules for StatusDetail: line breaks become spaces, cut to 2,500 chars."""
    return LINE_BREAKS.sub(" ", text)[:MAX_STATUS_DETAIL]


def _state(
    row: OutboxRow, stream: str, task: str, default_nus: int, now: float | None
) -> StateUpdate | Problem:
    if row.status not in STATUSES:
        return Problem("status", f"must be one of {', '.join(STATUSES)} (got {row.status!r})")
    detail = _detail(row.status_detail)
    if isinstance(detail, Problem):
        return detail
    percent = None
    if row.progress_percent is not None:
        checked = _int(row.progress_percent, "progress_percent", 0, 100)
        if isinstance(checked, Problem):
            return checked
        percent = checked
    nus = default_nus
    if row.next_update_seconds is not None:
        checked = _int(row.next_update_seconds, "next_update_seconds", 0, MAX_NEXT_UPDATE_SECONDS)
        if isinstance(checked, Problem):
            return checked
        nus = checked
    when = _update_time(row, now)
    if isinstance(when, Problem):
        return when
    return StateUpdate(row.id, stream, task, row.status, detail, percent, when, nus,
                       stamped=row.update_date_time is None)


def _update_time(row: OutboxRow, now: float | None) -> datetime | Problem:
    """A state's UpdateDateTime: the row's `update_date_time`, else its `created_at`."""
    when_text = row.update_date_time if row.update_date_time is not None else row.created_at
    name = "update_date_time" if row.update_date_time is not None else "created_at"
    when = parse_timestamp(when_text) if isinstance(when_text, str) else None
    if when is None:
        if isinstance(when_text, str) and _iso_out_of_range(when_text):
            return Problem(name, f"is out of range for a date (got {when_text!r})")
        return Problem(name, f"must be an ISO-8601 time with Z or an offset (got {when_text!r})")
    if when < EARLIEST_UPDATE:
        return Problem(name, f"must not be earlier than 2000-01-01T00:00:00Z (got {when_text!r})")
    if now is not None and when.timestamp() > now + FUTURE_SLACK_SECONDS:
        return Problem(name, f"must not be more than 24 h in the future (got {when_text!r})")
    return when


def _one_line_id(value: Any, name: str, what: str) -> str | Problem:
    """An id of 1-1600 characters on one line (the model's `^.{1,1600}$`)."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        return Problem(name, f"is required: {what} of 1-{MAX_ID_CHARS} characters")
    if LINE_BREAKS.search(value):
        return Problem(name, "must be a single line")
    return value


def _application(row: OutboxRow, now: float | None) -> ApplicationStateUpdate | Problem:
    """An application's state: `application_id` (an ADS application), `status` among
    APPLICATION_STATUSES, UpdateDateTime as for a task's state."""
    app = _one_line_id(row.application_id, "application_id",
                       "an Application Discovery Service application's id")
    if isinstance(app, Problem):
        return app
    if row.status not in APPLICATION_STATUSES:
        return Problem("status", f"must be one of {', '.join(APPLICATION_STATUSES)} for an"
                       f" application (got {row.status!r})")
    when = _update_time(row, now)
    if isinstance(when, Problem):
        return when
    return ApplicationStateUpdate(row.id, APPLICATIONS, app, row.status, when,
                                  stamped=row.update_date_time is None)


def _source(row: OutboxRow, stream: str, task: str) -> SourceAssociation | SourceRemoval | Problem:
    """A source resource's association (its Name, optional Description of at most 500
    characters on one line, optional StatusDetail) or its removal."""
    name = _one_line_id(row.source_resource_name, "source_resource_name",
                        "a source resource's name")
    if isinstance(name, Problem):
        return name
    if row.kind == Kind.SOURCE_RESOURCE_REMOVED:
        return SourceRemoval(row.id, stream, task, name)
    description = _description(row.resource_description, "resource_description")
    if isinstance(description, Problem):
        return description
    detail = _detail(row.status_detail)
    if isinstance(detail, Problem):
        return detail
    return SourceAssociation(row.id, stream, task, name, description, detail)


def _detail(value: Any) -> str | Problem | None:
    """An optional StatusDetail (a task's state, a source resource), as the Hub keeps it."""
    if value is None:
        return None
    if not isinstance(value, str):
        return Problem("status_detail", "must be text")
    return normalise_detail(value)


def _attribute(index: int, item: Any) -> tuple[str, str] | Problem:
    where = f"resource_attributes[{index}]"
    if not isinstance(item, dict):
        return Problem(where, 'must be an object {"Type": ..., "Value": ...}')
    extra = set(item) - {"Type", "Value"}
    if extra:
        return Problem(where, f"unknown keys {sorted(extra)} (only Type and Value)")
    kind, value = item.get("Type"), item.get("Value")
    if kind not in ATTRIBUTE_TYPES:
        return Problem(
            f"{where}.Type", f"must be one of {', '.join(ATTRIBUTE_TYPES)} (got {kind!r})"
        )
    if not isinstance(value, str) or not 1 <= len(value) <= 256:
        return Problem(f"{where}.Value", "must be text of 1-256 characters")
    if LINE_BREAKS.search(value):
        return Problem(f"{where}.Value", "must be a single line")
    if kind == "IPV4_ADDRESS" and not IPV4_RE.match(value):
        return Problem(f"{where}.Value", f"must be a dotted-quad IPv4 address (got {value!r})")
    if kind == "IPV6_ADDRESS":
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            return Problem(f"{where}.Value", f"must be an IPv6 address (got {value!r})")
    if kind == "FQDN" and FQDN_FORBIDDEN.search(value):
        return Problem(
            f"{where}.Value",
            f"an FQDN must not contain < > {{ }} \\ / ? , = or control characters (got {value!r})",
        )
    if kind == "MAC_ADDRESS" and not MAC_RE.match(value):
        return Problem(
            f"{where}.Value", f"must be a MAC address like 00:1A:2B:3C:4D:5E (got {value!r})"
        )
    return kind, value


def parse_attributes(text: Any) -> tuple[tuple[str, str], ...] | Problem:
    """The `resource_attributes` JSON column as validated (Type, Value) pairs."""
    if not isinstance(text, str):
        return Problem("resource_attributes", "is required: a JSON list of {Type, Value}")
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        return Problem(
            "resource_attributes", f"JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH})"
        )
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        return Problem("resource_attributes", f"is not valid JSON ({exc.msg})")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ATTRIBUTES:
        return Problem(
            "resource_attributes", f"must be a JSON list of 1-{MAX_ATTRIBUTES} attributes"
        )
    pairs = []
    for index, item in enumerate(items):
        checked = _attribute(index, item)
        if isinstance(checked, Problem):
            return checked
        pairs.append(checked)
    return tuple(pairs)


def _arn(arn: Any) -> str | Problem:
    if not isinstance(arn, str) or not 1 <= len(arn) <= MAX_ID_CHARS:
        return Problem("artifact_name", f"is required: an ARN of 1-{MAX_ID_CHARS} characters")
    if not ARN_RE.fullmatch(arn):
        return Problem(
            "artifact_name",
            f"must be an ARN like arn:aws:ec2:us-east-1:123456789012:instance/i-0abc (got {arn!r})",
        )
    return arn


def _description(value: Any, name: str) -> str | Problem | None:
    """An optional Description (CreatedArtifact, DiscoveredResource): one line, <= 500 chars."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        return Problem(name, f"must be text of at most {MAX_DESCRIPTION} characters")
    if LINE_BREAKS.search(value):
        return Problem(name, "must be a single line")
    return value


def _artifact(row: OutboxRow, stream: str, task: str) -> ArtifactAssociation | Problem:
    arn = _arn(row.artifact_name)
    if isinstance(arn, Problem):
        return arn
    description = _description(row.artifact_description, "artifact_description")
    if isinstance(description, Problem):
        return description
    return ArtifactAssociation(row.id, stream, task, arn, description)


def _resource(
    row: OutboxRow, stream: str, task: str
) -> ResourceAssociation | ResourceRemoval | Problem:
    """A manual mapping or its removal: ConfigurationId is 1-1600 characters on one line
    (the model's `^.{1,1600}$`)."""
    cid = _one_line_id(row.configuration_id, "configuration_id", "a discovered resource's id")
    if isinstance(cid, Problem):
        return cid
    if row.kind == Kind.DISCOVERED_RESOURCE_REMOVED:
        return ResourceRemoval(row.id, stream, task, cid)
    description = _description(row.resource_description, "resource_description")
    if isinstance(description, Problem):
        return description
    return ResourceAssociation(row.id, stream, task, cid, description)


def stream_of(row: OutboxRow, default_stream: str) -> Any:
    """The row's stream: its own, or the configured default when it left it NULL."""
    return row.progress_update_stream if row.progress_update_stream is not None else default_stream


def key_of_row(row: OutboxRow, default_stream: str) -> tuple[Any, Any]:
    """The (stream, task) a row travels under: an application's state under the APPLICATIONS
    pseudo-stream and its application's id, any other row under its task. (A row of another
    kind that names the pseudo-stream is invalid, and kept apart from the applications.)"""
    if row.kind == Kind.APPLICATION_STATE:
        return APPLICATIONS, row.application_id
    stream = stream_of(row, default_stream)
    return (f"{stream} " if stream == APPLICATIONS else stream), row.migration_task_name


def to_request(
    row: OutboxRow, default_stream: str, default_nus: int, now: float | None = None
) -> Request | Problem:
    """Validate and normalise one row into the call it becomes, or say why it cannot be sent.

    `now` (epoch seconds) bounds `update_date_time` to at most 24 h ahead; intake and writers
    pass it, later re-checks of a row already taken in may leave it out.
    """
    if row.kind == Kind.APPLICATION_STATE:
        return _application(row, now)
    stream = stream_of(row, default_stream)
    problem = check_stream(stream) or check_task(row.migration_task_name)
    if problem:
        return problem
    task: str = row.migration_task_name
    if row.kind == Kind.TASK_STATE:
        return _state(row, stream, task, default_nus, now)
    if row.kind == Kind.RESOURCE_ATTRIBUTES:
        attrs = parse_attributes(row.resource_attributes)
        return (
            attrs if isinstance(attrs, Problem) else AttributesUpdate(row.id, stream, task, attrs)
        )
    if row.kind == Kind.CREATED_ARTIFACT:
        return _artifact(row, stream, task)
    if row.kind == Kind.CREATED_ARTIFACT_REMOVED:
        arn = _arn(row.artifact_name)
        return arn if isinstance(arn, Problem) else ArtifactRemoval(row.id, stream, task, arn)
    if row.kind in (Kind.DISCOVERED_RESOURCE, Kind.DISCOVERED_RESOURCE_REMOVED):
        return _resource(row, stream, task)
    if row.kind in (Kind.SOURCE_RESOURCE, Kind.SOURCE_RESOURCE_REMOVED):
        return _source(row, stream, task)
    return Problem("kind", f"must be one of {', '.join(k.value for k in Kind)} (got {row.kind!r})")


_TEXT_COLUMNS = (
    "kind",
    "migration_task_name",
    "progress_update_stream",
    "status",
    "status_detail",
    "update_date_time",
    "resource_attributes",
    "created_at",
    "artifact_name",
    "artifact_description",
    "configuration_id",
    "resource_description",
    "application_id",
    "source_resource_name",
)


def unread(sizes: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """The values of a row (text and BLOB column: bytes) a store must leave unread: any over
    MAX_COLUMN_BYTES and, of a row over MAX_ROW_BYTES in all, any over SMALL_VALUE_BYTES."""
    whole = sum(sizes.values()) > MAX_ROW_BYTES
    return tuple(
        (name, size) for name, size in sizes.items()
        if size > MAX_COLUMN_BYTES or (whole and size > SMALL_VALUE_BYTES)
    )


def _unreadable(row: OutboxRow) -> Problem | None:
    """The contract's bounds checked before anything else: no column over MAX_COLUMN_BYTES,
    no row over MAX_ROW_BYTES in all, no text that is not valid UTF-8 (the store decodes it
    with surrogate escapes)."""
    for name, size in row.oversize:
        if size > MAX_COLUMN_BYTES:
            return Problem(
                name, f"is {size:,} bytes; a column may hold at most {MAX_COLUMN_BYTES:,} (1 MiB)"
            )
    if row.row_bytes > MAX_ROW_BYTES or row.oversize:
        largest = max(row.oversize, key=lambda item: item[1], default=None)
        biggest = f" (the largest: {largest[0]}, {largest[1]:,} bytes)" if largest else ""
        return Problem(
            "row", f"its columns total {row.row_bytes:,} bytes{biggest}; a row may hold at most"
            f" {MAX_ROW_BYTES:,} (1 MiB) in all"
        )
    for name in _TEXT_COLUMNS:
        value = getattr(row, name)
        if isinstance(value, str) and _SURROGATE.search(value):
            return Problem(name, "is not valid UTF-8 text")
        if isinstance(value, bytes):
            return Problem(name, "must be text (got a BLOB)")
    return None


def judge(
    row: OutboxRow, default_stream: str, default_nus: int, now: float | None = None
) -> Request | Problem:
    """`to_request` that never raises: a row that breaks any bound, or that our checks cannot
    digest for any reason, is a Problem naming why, never an exception that stops a pass."""
    try:
        return _unreadable(row) or to_request(row, default_stream, default_nus, now)
    except Exception as exc:
        return Problem("row", f"cannot be judged ({type(exc).__name__}: {clip(exc)})")
