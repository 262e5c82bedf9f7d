"""What the Migration Hub shows for a task, read back (DescribeMigrationTask and the paged
lists), and how it is compared with what the outbox last sent: field by field, with the
outbox's column names (pure comparison; the reads are the Hub adapter's)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from reporter.errors import HubError
from reporter.hub import Hub
from reporter.model import TaskRecord
from reporter.views import iso

__all__ = [
    "NOT_RECORDED",
    "Difference", "HubView", "compare", "delivered", "kept_by_hub", "read_view", "seconds"]

# What we sent is unknown (an attribute list delivered by a version that kept no copy, its row
# gone): never "matches"; not a difference at the Hub either (repair rounds leave it alone).
NOT_RECORDED = "not recorded"
# The service discards VM fields from a list without VM_MANAGER_ID (PutResourceAttributes).
VM_FIELDS = frozenset({"VM_MANAGED_OBJECT_REFERENCE", "VM_NAME", "VM_PATH"})
# The SDK sends UpdateDateTime as whole epoch seconds (botocore's JSON timestamps): it is
# compared, and judged newer or older, to the second.


class Difference(NamedTuple):
    """One field the Hub shows otherwise than we sent (`task`: the Hub lacks the task)."""

    field: str
    sent: Any
    hub: Any

    def to_json(self) -> dict[str, Any]:
        """CONTRACT §7's problem object."""
        return {"field": self.field, "sent": self.sent, "hub": self.hub}


@dataclass(frozen=True)
class HubView:
    """One task as the Hub shows it (None where a list was not read)."""

    status: str | None
    percent: int | None
    detail: str | None
    update_time: float | None
    attributes: frozenset[tuple[str, str]]
    artifacts: frozenset[str] | None = None
    resources: frozenset[str] | None = None


def delivered(record: TaskRecord) -> bool:
    """Whether the outbox has sent the Hub anything of this task (a state, an attribute list,
    an artifact or a manual mapping)."""
    return bool(record.status is not None or record.attributes or record.artifacts
                or record.resources)


def kept_by_hub(attributes: tuple[tuple[str, str], ...]) -> frozenset[tuple[str, str]]:
    """The attribute list as the Hub keeps it: VM fields are discarded without VM_MANAGER_ID."""
    managed = any(t == "VM_MANAGER_ID" for t, _ in attributes)
    return frozenset((t, v) for t, v in attributes if managed or t not in VM_FIELDS)


def compare(record: TaskRecord, view: HubView | None, missing: str = "") -> list[Difference]:
    """The fields where the Hub's view differs from what we last sent. An attribute list is
    compared as a set; our artifacts and manual mappings must be among the Hub's (another tool
    may add its own; an auto-mapping is never a difference)."""
    if view is None:
        return [Difference("task", record.task, missing or "not found")]
    found: list[Difference] = []
    if record.status is not None:
        for name, sent, hub in (("status", record.status, view.status),
                                ("progress_percent", record.percent, view.percent),
                                ("status_detail", record.detail, view.detail)):
            if sent != hub:
                found.append(Difference(name, sent, hub))
        if record.update_time is not None and (
            view.update_time is None or seconds(view.update_time) != seconds(record.update_time)
        ):
            found.append(Difference("update_date_time", iso(seconds(record.update_time)),
                                    iso(view.update_time)))
    if record.attributes is None and record.attributes_sent:  # sent by a version that kept
        found.append(Difference("resource_attributes", NOT_RECORDED,  # no copy: unknown
                                _pairs(view.attributes)))
    elif record.attributes is not None and kept_by_hub(record.attributes) != view.attributes:
        found.append(Difference("resource_attributes", _pairs(kept_by_hub(record.attributes)),
                                _pairs(view.attributes)))
    if view.artifacts is not None and not set(record.artifacts) <= view.artifacts:
        found.append(Difference("artifact_name", sorted(record.artifacts), sorted(view.artifacts)))
    if view.resources is not None and not set(record.resources) <= view.resources:
        found.append(Difference("configuration_id", sorted(record.resources),
                                sorted(view.resources)))
    return found


def seconds(epoch: float) -> int:
    """A time as the Hub keeps it: whole seconds."""
    return math.floor(epoch)


def read_view(hub: Hub, record: TaskRecord) -> HubView | None:
    """Read one task's Hub view: DescribeMigrationTask, then the artifact and discovered
    resource lists (every page) only when we delivered some. None: the Hub has no such task
    (or stream); other failures raise HubError."""
    key = {"ProgressUpdateStream": record.stream, "MigrationTaskName": record.task}
    try:
        described = hub.call("DescribeMigrationTask", key).get("MigrationTask", {})
    except HubError as err:
        if err.failure.code == "ResourceNotFoundException":
            return None
        raise
    task = described.get("Task") or {}
    when = described.get("UpdateDateTime")
    artifacts = resources = None
    if record.artifacts:
        artifacts = frozenset(a["Name"] for a in hub.pages(
            "ListCreatedArtifacts", key, "CreatedArtifactList", 10))
    if record.resources:
        resources = frozenset(r["ConfigurationId"] for r in hub.pages(
            "ListDiscoveredResources", key, "DiscoveredResourceList", 10))
    return HubView(
        status=task.get("Status"),
        percent=task.get("ProgressPercent"),
        detail=task.get("StatusDetail"),
        update_time=when.timestamp() if isinstance(when, datetime) else None,
        attributes=frozenset((a["Type"], a["Value"])
                             for a in described.get("ResourceAttributeList") or []),
        artifacts=artifacts,
        resources=resources,
    )


def _pairs(attributes: frozenset[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"Type": t, "Value": v} for t, v in sorted(attributes)]
