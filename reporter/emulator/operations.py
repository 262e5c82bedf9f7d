"""The emulator's Migration Hub operations: what each write does to the state and what each read
answers (with the service's errors for a missing stream or task)."""

from __future__ import annotations

from typing import Any

from reporter.emulator.history import HistoryOperations, page
from reporter.emulator.state import HubState, Server, TaskRecord, matchable
from reporter.emulator.validator import ATTRIBUTE_FORMATS, VM_FIELDS, ServiceError, ipv6

__all__ = ["Operations"]


class Operations(HistoryOperations):
    """The simulated operations, each `_op_<Name>(params) -> result`, over one state (the
    task's own writes and reads here, the rest in HistoryOperations)."""

    def __init__(self, state: HubState, clock: Any) -> None:
        self.state = state
        self.clock = clock

    def _stream(self, name: str) -> dict[str, TaskRecord]:
        try:
            return self.state.streams[name]
        except KeyError:
            raise ServiceError("ResourceNotFoundException", f"stream {name} not found") from None

    def _task(self, params: dict[str, Any]) -> TaskRecord:
        tasks = self._stream(params["ProgressUpdateStream"])
        try:
            return tasks[params["MigrationTaskName"]]
        except KeyError:
            raise ServiceError(
                "ResourceNotFoundException",
                f"migration task {params['MigrationTaskName']} not found",
            ) from None

    def _op_CreateProgressUpdateStream(self, p: dict[str, Any]) -> dict[str, Any]:
        self.state.streams.setdefault(p["ProgressUpdateStreamName"], {})
        return {}

    def _op_ListProgressUpdateStreams(self, p: dict[str, Any]) -> dict[str, Any]:
        names = [{"ProgressUpdateStreamName": n} for n in sorted(self.state.streams)]
        return page(names, p, "ProgressUpdateStreamSummaryList", 100)

    def _op_ImportMigrationTask(self, p: dict[str, Any]) -> dict[str, Any]:
        tasks = self._stream(p["ProgressUpdateStream"])
        tasks.setdefault(p["MigrationTaskName"], TaskRecord(p["MigrationTaskName"]))
        return {}

    def _op_NotifyMigrationTaskState(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        task.updates.append(
            {
                "Task": p["Task"],
                "UpdateDateTime": p["UpdateDateTime"],
                "NextUpdateSeconds": p["NextUpdateSeconds"],
                "ReceivedAt": self.clock(),
            }
        )
        return {}

    def _op_PutResourceAttributes(self, p: dict[str, Any]) -> dict[str, Any]:
        for item in p["ResourceAttributeList"]:
            kind, value = item["Type"], item["Value"]
            fmt = ATTRIBUTE_FORMATS.get(kind)
            bad = (fmt is not None and not fmt.fullmatch(value)) or (
                kind == "IPV6_ADDRESS" and not ipv6(value)
            )
            if bad:
                raise ServiceError(
                    "InvalidInputException", f"Invalid value {value!r} for attribute type {kind}"
                )
        task = self._task(p)
        given = list(p["ResourceAttributeList"])
        managed = any(a["Type"] == "VM_MANAGER_ID" for a in given)
        # The service discards the VM fields of a list without VM_MANAGER_ID.
        task.attributes = [a for a in given if managed or a["Type"] not in VM_FIELDS]
        task.attributes_at = self.clock()
        task.mapped_to = None
        return {}

    def _op_AssociateCreatedArtifact(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        artifact = p["CreatedArtifact"]
        task.artifacts[artifact["Name"]] = artifact.get("Description")
        return {}

    def _op_DisassociateCreatedArtifact(self, p: dict[str, Any]) -> dict[str, Any]:
        self._task(p).artifacts.pop(p["CreatedArtifactName"], None)
        return {}

    def _op_ListCreatedArtifacts(self, p: dict[str, Any]) -> dict[str, Any]:
        items = [
            {"Name": name, **({"Description": d} if d is not None else {})}
            for name, d in self._task(p).artifacts.items()
        ]
        return page(items, p, "CreatedArtifactList", 10)

    def _op_AssociateDiscoveredResource(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        resource = p["DiscoveredResource"]
        task.discovered[resource["ConfigurationId"]] = resource.get("Description")
        return {}

    def _op_DisassociateDiscoveredResource(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        task.discovered.pop(p["ConfigurationId"], None)
        if task.mapped_to == p["ConfigurationId"]:
            task.mapped_to = None
        return {}

    def _op_DescribeMigrationTask(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        described: dict[str, Any] = {
            "ProgressUpdateStream": p["ProgressUpdateStream"],
            "MigrationTaskName": task.name,
            "ResourceAttributeList": task.attributes,
        }
        if task.updates:
            described["Task"] = task.updates[-1]["Task"]
            described["UpdateDateTime"] = task.updates[-1]["UpdateDateTime"]
        return {"MigrationTask": described}

    def _op_ListMigrationTasks(self, p: dict[str, Any]) -> dict[str, Any]:
        summaries = []
        resource = p.get("ResourceName")
        for stream in sorted(self.state.streams):
            for task in self.state.streams[stream].values():
                if resource is not None and resource not in self._resources(task):
                    continue
                summary: dict[str, Any] = {
                    "ProgressUpdateStream": stream,
                    "MigrationTaskName": task.name,
                }
                if task.updates:
                    last = task.updates[-1]
                    summary.update({k: v for k, v in last["Task"].items()})
                    summary["UpdateDateTime"] = last["UpdateDateTime"]
                summaries.append(summary)
        return page(summaries, p, "MigrationTaskSummaryList", 100)

    def _op_ListDiscoveredResources(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        state = self.state
        if (
            task.mapped_to is None
            and task.attributes_at is not None
            and self.clock() >= task.attributes_at + state.map_delay
        ):
            usable = matchable(task.attributes)
            if usable:
                for server in state.servers:
                    if server.attributes & usable:
                        task.mapped_to = server.configuration_id
                        break
                else:
                    new_id = f"d-server-{len(state.servers) + 1:012x}"
                    state.servers.append(Server(new_id, usable, "added by Migration Hub"))
                    task.mapped_to = new_id
        resources = [
            {"ConfigurationId": c, **({"Description": d} if d is not None else {})}
            for c, d in self._resources(task).items()
        ]
        return page(resources, p, "DiscoveredResourceList", 10)

    @staticmethod
    def _resources(task: TaskRecord) -> dict[str, str | None]:
        """The manual associations, then the auto-mapping (when it is not one of them)."""
        found = dict(task.discovered)
        if task.mapped_to is not None:
            found.setdefault(task.mapped_to, None)
        return found
