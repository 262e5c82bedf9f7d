"""What the Hub shows for a task compared with what the outbox last sent: field by field, with
the outbox's column names (pure; `verify` and repair rounds read the Hub, then compare)."""

from __future__ import annotations

from typing import Any, NamedTuple

from reporter.hub.client import Hub
from reporter.hub.view import HubView, iso, kept_by_hub, read_view, seconds
from reporter.stores.contract import TaskRecord

__all__ = ["NOT_RECORDED", "Difference", "compare", "delivered", "view_of"]

# What we sent is unknown (an attribute list delivered by a version that kept no copy, its row
# gone): never "matches"; not a difference at the Hub either (repair rounds leave it alone).
NOT_RECORDED = "not recorded"


class Difference(NamedTuple):
    """One field the Hub shows otherwise than we sent (`task`: the Hub lacks the task)."""

    field: str
    sent: Any
    hub: Any

    def to_json(self) -> dict[str, Any]:
        """The problem object `verify --json` prints (README: Verifying what the Hub shows)."""
        return {"field": self.field, "sent": self.sent, "hub": self.hub}


def delivered(record: TaskRecord) -> bool:
    """Whether the outbox has sent the Hub anything of this task (a state, an attribute list,
    an artifact, a manual mapping or a source resource)."""
    return bool(record.status is not None or record.attributes or record.artifacts
                or record.resources or record.sources)


def compare(record: TaskRecord, view: HubView | None, missing: str = "") -> list[Difference]:
    """The fields where the Hub's view differs from what we last sent. An attribute list is
    compared as a set; our artifacts, manual mappings and source resources must be among the
    Hub's (another tool may add its own; an auto-mapping is never a difference)."""
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
    if view.sources is not None and not set(record.sources) <= view.sources:
        found.append(Difference("source_resource_name", sorted(record.sources),
                                sorted(view.sources)))
    found += _history(record, view)
    return found


def _history(record: TaskRecord, view: HubView) -> list[Difference]:
    """The Hub's own record of the task's states (when read): its current state must be its
    newest (an older state applied after a newer one shows as a current state dated earlier
    than one it recorded; judged by UpdateDateTime, the list's order being undocumented), and
    it must hold the last state we sent."""
    if view.history is None or record.status is None or record.update_time is None:
        return []
    recorded = {seconds(t) for t in view.history}
    newest = max(recorded, default=None)
    current = None if view.update_time is None else seconds(view.update_time)
    sent = seconds(record.update_time)
    if newest is not None and current is not None and current < newest:
        return [Difference("history", iso(sent),
                           f"current state dated {iso(current)}, older than the state dated "
                           f"{iso(newest)} it recorded: an older state was applied after a "
                           "newer one")]
    if sent not in recorded:
        return [Difference("history", iso(sent),
                           f"not among the {len(recorded)} states the Hub recorded")]
    return []


def view_of(hub: Hub, record: TaskRecord, history: bool = False) -> HubView | None:
    """The Hub's view of a task we sent to: its lists read only when we delivered some (and
    with `history`, every state it recorded, when we sent one)."""
    return read_view(hub, record.stream, record.task, bool(record.artifacts),
                     bool(record.resources), history and record.status is not None,
                     bool(record.sources))


def _pairs(attributes: frozenset[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"Type": t, "Value": v} for t, v in sorted(attributes)]
