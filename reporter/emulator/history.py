"""The emulator's operations beyond a task's own writes: application states (with Application
Discovery Service's applications and the discovery role), source resources, a task's update
history, and stream deletion as the Hub does it (asynchronous, writes refused meanwhile)."""

from __future__ import annotations

from typing import Any

from reporter.emulator.state import HubState, TaskRecord
from reporter.emulator.validator import ServiceError

__all__ = ["POLICY_OPERATIONS", "STREAM_WRITES", "HistoryOperations", "page"]

# The operations that need the `migrationhub-discovery` role (PolicyErrorException without it).
POLICY_OPERATIONS = frozenset({"NotifyApplicationState", "DescribeApplicationState",
                               "AssociateDiscoveredResource", "ListMigrationTasks"})
# The writes a stream being deleted refuses (InvalidInputException).
STREAM_WRITES = frozenset({
    "CreateProgressUpdateStream", "ImportMigrationTask", "NotifyMigrationTaskState",
    "PutResourceAttributes", "AssociateCreatedArtifact", "DisassociateCreatedArtifact",
    "AssociateDiscoveredResource", "DisassociateDiscoveredResource",
    "AssociateSourceResource", "DisassociateSourceResource"})


def page(items: list[dict[str, Any]], p: dict[str, Any], key: str, most: int) -> dict[str, Any]:
    """One page of a list read: MaxResults items (at most `most`, the model's bound and the
    default) from where NextToken says; NextToken again while more remain."""
    token = p.get("NextToken") or "0"
    if not token.isdigit() or int(token) > len(items):
        raise ServiceError("InvalidInputException", f"invalid NextToken {token!r}")
    start, size = int(token), int(p.get("MaxResults") or most)
    result: dict[str, Any] = {key: items[start : start + size]}
    if start + size < len(items):
        result["NextToken"] = str(start + size)
    return result


class HistoryOperations:
    """`_op_<Name>(params) -> result` for the operations beyond a task's own writes."""

    state: HubState
    clock: Any

    def _task(self, params: dict[str, Any]) -> TaskRecord:
        raise NotImplementedError  # Operations has it

    def before(self, operation: str, params: dict[str, Any]) -> None:
        """What any operation meets first: finished deletions are done; a missing discovery
        role; a write to a stream whose deletion is still under way."""
        state = self.state
        now = self.clock()
        for name, until in list(state.deleting.items()):
            if now >= until:
                del state.deleting[name]
                state.streams.pop(name, None)
        if state.faults.no_discovery_role and operation in POLICY_OPERATIONS:
            raise ServiceError("PolicyErrorException",
                               "the migrationhub-discovery role is missing or misconfigured")
        stream = params.get("ProgressUpdateStream", params.get("ProgressUpdateStreamName"))
        if operation in STREAM_WRITES and stream in state.deleting:
            raise ServiceError("InvalidInputException",
                               f"progress update stream {stream} is being deleted")

    def _op_DeleteProgressUpdateStream(self, p: dict[str, Any]) -> dict[str, Any]:
        name = p["ProgressUpdateStreamName"]
        if name not in self.state.streams or name in self.state.deleting:
            raise ServiceError("ResourceNotFoundException", f"stream {name} not found")
        delay = self.state.faults.delete_seconds
        if delay > 0:
            self.state.deleting[name] = self.clock() + delay
        else:
            del self.state.streams[name]
        return {}

    # -- application states -----------------------------------------------------------------
    def _application(self, application: str) -> None:
        if application not in self.state.discovery_applications:
            raise ServiceError("ResourceNotFoundException",
                               f"application {application} not found in Application Discovery"
                               " Service")

    def _op_NotifyApplicationState(self, p: dict[str, Any]) -> dict[str, Any]:
        self._application(p["ApplicationId"])
        self.state.applications[p["ApplicationId"]] = {
            "ApplicationStatus": p["Status"],
            "LastUpdatedTime": p.get("UpdateDateTime", self.clock()),
        }
        self.state.application_updates.append(
            {"ApplicationId": p["ApplicationId"], "Status": p["Status"],
             "UpdateDateTime": p.get("UpdateDateTime")})
        return {}

    def _op_DescribeApplicationState(self, p: dict[str, Any]) -> dict[str, Any]:
        self._application(p["ApplicationId"])
        return dict(self.state.applications.get(p["ApplicationId"], {}))

    def _op_ListApplicationStates(self, p: dict[str, Any]) -> dict[str, Any]:
        wanted = p.get("ApplicationIds")
        items = [{"ApplicationId": a, **s} for a, s in sorted(self.state.applications.items())
                 if wanted is None or a in wanted]
        return page(items, p, "ApplicationStateList", 100)

    # -- source resources ------------------------------------------------------------------
    def _op_AssociateSourceResource(self, p: dict[str, Any]) -> dict[str, Any]:
        resource = dict(p["SourceResource"])
        self._task(p).sources[resource["Name"]] = resource
        return {}

    def _op_DisassociateSourceResource(self, p: dict[str, Any]) -> dict[str, Any]:
        self._task(p).sources.pop(p["SourceResourceName"], None)
        return {}

    def _op_ListSourceResources(self, p: dict[str, Any]) -> dict[str, Any]:
        items = list(self._task(p).sources.values())
        return page(items, p, "SourceResourceList", 10)

    # -- a task's history --------------------------------------------------------------------
    def _op_ListMigrationTaskUpdates(self, p: dict[str, Any]) -> dict[str, Any]:
        """Every state the task received; the service documents no order, so the newest
        received comes first here (a reader must judge by UpdateDateTime)."""
        items = [{"UpdateDateTime": u["UpdateDateTime"],
                  "UpdateType": "MIGRATION_TASK_STATE_UPDATED",
                  "MigrationTaskState": u["Task"]}
                 for u in reversed(self._task(p).updates)]
        return page(items, p, "MigrationTaskUpdateList", 100)
