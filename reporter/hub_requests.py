"""The Migration Hub requests outbox rows become (one type per operation, stored by intake as
JSON), the kinds and lanes of rows, and the Hub's own rules for names a config also uses: the
stream's and the Region's (pure; rows, config, the stores and the Hub adapter build on it)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "APPLICATIONS",
    "ApplicationStateUpdate",
    "ArtifactAssociation",
    "ArtifactRemoval",
    "AttributesUpdate",
    "Keyed",
    "Kind",
    "Request",
    "ResourceAssociation",
    "ResourceRemoval",
    "SourceAssociation",
    "SourceRemoval",
    "StateUpdate",
    "Stateful",
    "decode",
    "encode",
    "key_of",
]


class Kind(StrEnum):
    """The kinds of outbox row (README: The outbox contract)."""

    TASK_STATE = "task_state"
    RESOURCE_ATTRIBUTES = "resource_attributes"
    CREATED_ARTIFACT = "created_artifact"
    CREATED_ARTIFACT_REMOVED = "created_artifact_removed"
    DISCOVERED_RESOURCE = "discovered_resource"
    DISCOVERED_RESOURCE_REMOVED = "discovered_resource_removed"
    APPLICATION_STATE = "application_state"
    SOURCE_RESOURCE = "source_resource"
    SOURCE_RESOURCE_REMOVED = "source_resource_removed"

    @property
    def lane(self) -> Kind:
        """The ordered lane rows of this kind travel in: an association and its removal share
        one, so they reach the Hub in row order (a failing lane holds back only itself)."""
        return _LANES.get(self, self)


_LANES = {
    Kind.CREATED_ARTIFACT_REMOVED: Kind.CREATED_ARTIFACT,
    Kind.DISCOVERED_RESOURCE_REMOVED: Kind.DISCOVERED_RESOURCE,
    Kind.SOURCE_RESOURCE_REMOVED: Kind.SOURCE_RESOURCE,
}

# An application's states travel as a task of this pseudo-stream, named by the application's
# id: one ordered lane per application, coalesced like a task's states. No real stream has this
# name (a stream may not contain ':'), so it never meets a task's.
APPLICATIONS = ":application"



@dataclass(frozen=True)
class StateUpdate:
    """A `NotifyMigrationTaskState` call."""

    row_id: int
    stream: str
    task: str
    status: str
    detail: str | None
    percent: int | None
    update_time: datetime
    next_update_seconds: int
    # update_time is the row's created_at (the tool left update_date_time NULL): a time of
    # the writer's clock, which `not_before` may move forward
    stamped: bool = False

    operation = "NotifyMigrationTaskState"
    kind = Kind.TASK_STATE

    def params(self) -> dict[str, Any]:
        """boto3 keyword arguments."""
        task: dict[str, Any] = {"Status": self.status}
        if self.detail is not None:
            task["StatusDetail"] = self.detail
        if self.percent is not None:
            task["ProgressPercent"] = self.percent
        return {
            "ProgressUpdateStream": self.stream,
            "MigrationTaskName": self.task,
            "Task": task,
            "UpdateDateTime": self.update_time,
            "NextUpdateSeconds": self.next_update_seconds,
        }


@dataclass(frozen=True)
class AttributesUpdate:
    """A `PutResourceAttributes` call (replaces the task's attributes at the Hub)."""

    row_id: int
    stream: str
    task: str
    attributes: tuple[tuple[str, str], ...]

    operation = "PutResourceAttributes"
    kind = Kind.RESOURCE_ATTRIBUTES

    def params(self) -> dict[str, Any]:
        """boto3 keyword arguments."""
        return {
            "ProgressUpdateStream": self.stream,
            "MigrationTaskName": self.task,
            "ResourceAttributeList": [{"Type": t, "Value": v} for t, v in self.attributes],
        }


@dataclass(frozen=True)
class ArtifactAssociation:
    """An `AssociateCreatedArtifact` call."""

    row_id: int
    stream: str
    task: str
    arn: str
    description: str | None

    operation = "AssociateCreatedArtifact"
    kind = Kind.CREATED_ARTIFACT

    def params(self) -> dict[str, Any]:
        """boto3 keyword arguments."""
        artifact: dict[str, Any] = {"Name": self.arn}
        if self.description is not None:
            artifact["Description"] = self.description
        return {
            "ProgressUpdateStream": self.stream,
            "MigrationTaskName": self.task,
            "CreatedArtifact": artifact,
        }


@dataclass(frozen=True)
class ArtifactRemoval:
    """A `DisassociateCreatedArtifact` call."""

    row_id: int
    stream: str
    task: str
    arn: str

    operation = "DisassociateCreatedArtifact"
    kind = Kind.CREATED_ARTIFACT_REMOVED

    def params(self) -> dict[str, Any]:
        """boto3 keyword arguments."""
        return {"ProgressUpdateStream": self.stream, "MigrationTaskName": self.task,
                "CreatedArtifactName": self.arn}


@dataclass(frozen=True)
class ResourceAssociation:
    """An `AssociateDiscoveredResource` call (a manual mapping)."""

    row_id: int
    stream: str
    task: str
    configuration_id: str
    description: str | None

    operation = "AssociateDiscoveredResource"
    kind = Kind.DISCOVERED_RESOURCE

    def params(self) -> dict[str, Any]:
        """boto3 keyword arguments."""
        resource: dict[str, Any] = {"ConfigurationId": self.configuration_id}
        if self.description is not None:
            resource["Description"] = self.description
        return {"ProgressUpdateStream": self.stream, "MigrationTaskName": self.task,
                "DiscoveredResource": resource}


@dataclass(frozen=True)
class ResourceRemoval:
    """A `DisassociateDiscoveredResource` call (undoes a manual mapping)."""

    row_id: int
    stream: str
    task: str
    configuration_id: str

    operation = "DisassociateDiscoveredResource"
    kind = Kind.DISCOVERED_RESOURCE_REMOVED

    def params(self) -> dict[str, Any]:
        """boto3 keyword arguments."""
        return {"ProgressUpdateStream": self.stream, "MigrationTaskName": self.task,
                "ConfigurationId": self.configuration_id}


@dataclass(frozen=True)
class SourceAssociation:
    """An `AssociateSourceResource` call: the server, application or wave the task belongs to."""

    row_id: int
    stream: str
    task: str
    name: str
    description: str | None
    detail: str | None

    operation = "AssociateSourceResource"
    kind = Kind.SOURCE_RESOURCE

    def params(self) -> dict[str, Any]:
        """boto3 keyword arguments."""
        resource: dict[str, Any] = {"Name": self.name}
        if self.description is not None:
            resource["Description"] = self.description
        if self.detail is not None:
            resource["StatusDetail"] = self.detail
        return {"ProgressUpdateStream": self.stream, "MigrationTaskName": self.task,
                "SourceResource": resource}


@dataclass(frozen=True)
class SourceRemoval:
    """A `DisassociateSourceResource` call."""

    row_id: int
    stream: str
    task: str
    name: str

    operation = "DisassociateSourceResource"
    kind = Kind.SOURCE_RESOURCE_REMOVED

    def params(self) -> dict[str, Any]:
        """boto3 keyword arguments."""
        return {"ProgressUpdateStream": self.stream, "MigrationTaskName": self.task,
                "SourceResourceName": self.name}


@dataclass(frozen=True)
class ApplicationStateUpdate:
    """A `NotifyApplicationState` call. It travels as a task of the APPLICATIONS pseudo-stream
    named by the application's id (`task`): no stream, no import."""

    row_id: int
    stream: str  # always APPLICATIONS
    task: str  # the ApplicationId
    status: str
    update_time: datetime
    stamped: bool = False  # as StateUpdate's: the row's created_at, which not_before may move

    operation = "NotifyApplicationState"
    kind = Kind.APPLICATION_STATE

    @property
    def application(self) -> str:
        """The Application Discovery Service application's id."""
        return self.task

    def params(self) -> dict[str, Any]:
        """boto3 keyword arguments."""
        return {"ApplicationId": self.task, "Status": self.status,
                "UpdateDateTime": self.update_time}


Request = (
    StateUpdate | AttributesUpdate | ArtifactAssociation | ArtifactRemoval | ResourceAssociation
    | ResourceRemoval | SourceAssociation | SourceRemoval | ApplicationStateUpdate
)
# The keyed lanes: each call sets or clears one thing (an ARN, a ConfigurationId, a source
# resource's name) of the task.
Keyed = (ArtifactAssociation | ArtifactRemoval | ResourceAssociation | ResourceRemoval
         | SourceAssociation | SourceRemoval)
# The requests that set a state, coalesced to the newest and never sent after a newer one.
Stateful = StateUpdate | ApplicationStateUpdate


def key_of(request: Keyed) -> str:
    """What a keyed call sets or clears: its ARN, ConfigurationId or source resource name."""
    if isinstance(request, ArtifactAssociation | ArtifactRemoval):
        return request.arn
    if isinstance(request, SourceAssociation | SourceRemoval):
        return request.name
    return request.configuration_id


_TYPES: dict[str, type[Request]] = {
    t.kind.value: t for t in (StateUpdate, AttributesUpdate, ArtifactAssociation,
                              ArtifactRemoval, ResourceAssociation, ResourceRemoval,
                              SourceAssociation, SourceRemoval, ApplicationStateUpdate)
}


_FIELDS: dict[type, tuple[str, ...]] = {
    t: tuple(f.name for f in fields(t)) for t in _TYPES.values()
}


def encode(request: Request) -> str:
    """A judged request as the JSON intake stores and delivery sends from (`decode`). Its
    fields are plain values (no nested dataclass), so a shallow copy is the whole of it: on
    the intake path, where `asdict`'s deep copy cost more than the judging."""
    data: dict[str, Any] = {"kind": request.kind.value}
    for name in _FIELDS[type(request)]:
        data[name] = getattr(request, name)
    if isinstance(request, Stateful):
        data["update_time"] = request.update_time.isoformat()
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def decode(text: str) -> Request:
    """The request `encode` stored (ValueError when the text is not one)."""
    try:
        data = json.loads(text)
        cls = _TYPES[data.pop("kind")]
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if cls is StateUpdate or cls is ApplicationStateUpdate:
            values["update_time"] = datetime.fromisoformat(values["update_time"])
        if cls is AttributesUpdate:
            values["attributes"] = tuple((t, v) for t, v in values["attributes"])
        return cls(**values)
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a stored request ({type(exc).__name__}: {exc})"[:300]) from exc


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deeply JSON text nests arrays and objects, counted without parsing it (brackets
    inside strings do not count), so hostile nesting never reaches the recursive parser."""
    depth = deepest = 0
    for bracket in _JSON_BRACKETS.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if bracket.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


# The ProgressUpdateStream rules (botocore's model: 1-50 characters, pattern [^/:|\000-\037]+).
STREAM_FORBIDDEN = re.compile(r"[/:|\x00-\x1f]")
REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")


def stream_problem(value: object) -> str | None:
    """Why `value` cannot name a ProgressUpdateStream (None: it can)."""
    if not isinstance(value, str):
        return "must be text"
    if not 1 <= len(value) <= 50:
        return f"must be 1-50 characters (got {len(value)})"
    if STREAM_FORBIDDEN.search(value):
        return "must not contain / : | or control characters"
    return None
