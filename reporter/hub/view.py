"""What the Migration Hub shows for a task, read back (DescribeMigrationTask and the paged
lists), and its times as the Hub keeps them (whole seconds) and as we show them (ISO-8601)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from reporter.hub.client import Hub
from reporter.hub.errors import HubError

__all__ = ["HubView", "iso", "kept_by_hub", "read_view", "seconds"]

# The service discards VM fields from a list without VM_MANAGER_ID (PutResourceAttributes).
VM_FIELDS = frozenset({"VM_MANAGED_OBJECT_REFERENCE", "VM_NAME", "VM_PATH"})
# The SDK sends UpdateDateTime as whole epoch seconds (botocore's JSON timestamps): it is
# compared, and judged newer or older, to the second.


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC with Z (None stays None; a time no calendar holds, which
    only a row stored before the bounds were checked can carry, shows as its epoch number)."""
    if epoch is None:
        return None
    try:
        moment = datetime.fromtimestamp(epoch, UTC)
    except (ValueError, OverflowError, OSError):
        return f"@{epoch:.0f}"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


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
    sources: frozenset[str] | None = None  # the source resources' names
    history: tuple[float, ...] | None = None  # every recorded state's UpdateDateTime


def kept_by_hub(attributes: tuple[tuple[str, str], ...]) -> frozenset[tuple[str, str]]:
    """The attribute list as the Hub keeps it: VM fields are discarded without VM_MANAGER_ID."""
    managed = any(t == "VM_MANAGER_ID" for t, _ in attributes)
    return frozenset((t, v) for t, v in attributes if managed or t not in VM_FIELDS)


def seconds(epoch: float) -> int:
    """A time as the Hub keeps it: whole seconds."""
    return math.floor(epoch)


def read_view(hub: Hub, stream: str, task: str, artifacts: bool = False,
              resources: bool = False, history: bool = False,
              sources: bool = False) -> HubView | None:
    """Read one task's Hub view: DescribeMigrationTask, then the artifact, discovered resource
    and source resource lists and the task's update history (every page) when asked for (we
    delivered some). None: the Hub has no such task (or stream); other failures raise HubError."""
    key = {"ProgressUpdateStream": stream, "MigrationTaskName": task}
    try:
        described = hub.call("DescribeMigrationTask", key).get("MigrationTask", {})
    except HubError as err:
        if err.failure.code == "ResourceNotFoundException":
            return None
        raise
    state = described.get("Task") or {}
    when = described.get("UpdateDateTime")
    arns = ids = None
    if artifacts:
        arns = frozenset(a["Name"] for a in hub.pages(
            "ListCreatedArtifacts", key, "CreatedArtifactList", 10))
    if resources:
        ids = frozenset(r["ConfigurationId"] for r in hub.pages(
            "ListDiscoveredResources", key, "DiscoveredResourceList", 10))
    names = None
    if sources:
        names = frozenset(r["Name"] for r in hub.pages(
            "ListSourceResources", key, "SourceResourceList", 10))
    times = None
    if history:  # the list's order is not documented: only its dates are used
        times = tuple(u["UpdateDateTime"].timestamp() for u in hub.pages(
            "ListMigrationTaskUpdates", key, "MigrationTaskUpdateList", 100)
            if isinstance(u.get("UpdateDateTime"), datetime))
    return HubView(
        status=state.get("Status"),
        percent=state.get("ProgressPercent"),
        detail=state.get("StatusDetail"),
        update_time=when.timestamp() if isinstance(when, datetime) else None,
        attributes=frozenset((a["Type"], a["Value"])
                             for a in described.get("ResourceAttributeList") or []),
        artifacts=arns,
        resources=ids,
        sources=names,
        history=times,
    )
