"""The Python writer API for host tools: validated INSERTs into the outbox, nothing else.

    from reporter.outbox import Outbox
    box = Outbox("/var/lib/mgh-reporter/outbox.db")
    box.task_state("vm-042", "IN_PROGRESS", percent=40, detail="copying disk 2 of 3")
    box.resource_attributes("vm-042", [("IPV4_ADDRESS", "10.0.0.42"), ("FQDN", "db1.corp")])
    box.resource_attributes("vm-042", [{"Type": "IPV4_ADDRESS", "Value": "10.0.0.42"}])
    box.created_artifact("vm-042", "arn:aws:ec2:us-east-1:123456789012:instance/i-0abc")
    box.discovered_resource("vm-042", "d-server-0123456789abcd")  # a manual mapping
    box.source_resource("vm-042", "wave-3", description="wave 3 of the DC exit")
    box.application_state("d-application-0123456789abcd", "IN_PROGRESS")

Every method validates against the contract's limits first and raises `ValueError` naming the
field and the rule, so a bad update fails in the tool, not later in a dead letter. A PostgreSQL
outbox is named by its URL: `Outbox("postgresql://tool@db.example/migrations")`.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reporter import rows
from reporter.hub_requests import Kind
from reporter.stores import is_url, require_libpq
from reporter.stores.errors import StoreError

__all__ = ["Outbox", "OutboxValueError"]

PLACEHOLDER_STREAM = "default"
BUSY_RETRIES = 2  # extra tries when the write lock outlasts the busy timeout


class OutboxValueError(ValueError):
    """An update the Hub would refuse; `.problem` has the field and the rule."""

    def __init__(self, problem: rows.Problem) -> None:
        super().__init__(problem.reason)
        self.problem = problem


class Outbox:
    """A writer for one outbox file or database URL (a short-lived connection per call)."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout_ms: int = 5000) -> None:
        text = os.fspath(path)
        self.url = text if is_url(text) else None
        self.path = Path(text)
        self.busy_timeout_ms = busy_timeout_ms

    def _insert(self, values: dict[str, Any]) -> int:
        values = {k: v for k, v in values.items() if v is not None}
        now = datetime.now(UTC)
        checked = rows.judge(
            rows.OutboxRow(id=0, created_at=now.isoformat(), **values),
            PLACEHOLDER_STREAM,
            0,
            now.timestamp(),
        )
        if isinstance(checked, rows.Problem):
            raise OutboxValueError(checked)
        return self._write(values)

    def _write(self, values: dict[str, Any]) -> int:
        """One INSERT in its own transaction (a file: plain sqlite3, a writer needs no more)."""
        if self.url is not None:
            require_libpq()
            from reporter.stores.postgres import PostgresStore

            store = PostgresStore(self.url)
            try:
                return store.insert_row(values)
            finally:
                store.close()
        if not self.path.exists():
            raise StoreError(f"{self.path}: no outbox database here (run `mgh-reporter init`)")
        names = list(values)
        sql = f"INSERT INTO outbox ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        for attempt in range(BUSY_RETRIES + 1):
            try:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000)
                try:
                    with conn:
                        cursor = conn.execute(sql, [values[n] for n in names])
                finally:
                    conn.close()
                return int(cursor.lastrowid or 0)
            except sqlite3.DatabaseError as exc:
                busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
                # SQLite's lock is not fair: other writers in tight loops can outlast one busy
                # timeout. Only then (nothing was written) is trying again safe.
                if busy and attempt < BUSY_RETRIES:
                    continue
                if "has no column named" in str(exc):  # a table older than the kind
                    raise StoreError(
                        f"{self.path}: {exc}; run `mgh-reporter init` to add the column"
                    ) from None
                if "no such table" in str(exc):
                    raise StoreError(
                        f"{self.path}: not an mgh-reporter outbox (no outbox table); run init"
                    ) from None
                raise StoreError(f"{self.path}: cannot insert into outbox: {exc}", busy) from None
        raise AssertionError("unreachable")

    def task_state(
        self,
        task: str,
        status: str,
        *,
        percent: int | None = None,
        detail: str | None = None,
        next_update_seconds: int | None = None,
        update_date_time: datetime | str | None = None,
        stream: str | None = None,
    ) -> int:
        """Queue a NotifyMigrationTaskState; returns the outbox row id."""
        when = (
            update_date_time.isoformat()
            if isinstance(update_date_time, datetime)
            else update_date_time
        )
        return self._insert(
            {
                "kind": Kind.TASK_STATE.value,
                "migration_task_name": task,
                "progress_update_stream": stream,
                "status": status,
                "status_detail": detail,
                "progress_percent": percent,
                "next_update_seconds": next_update_seconds,
                "update_date_time": when,
            }
        )

    def resource_attributes(
        self,
        task: str,
        attributes: Iterable[tuple[str, str] | Mapping[str, str]],
        *,
        stream: str | None = None,
    ) -> int:
        """Queue a PutResourceAttributes with the full list of attributes, each a (Type, Value)
        pair or a {"Type": ..., "Value": ...} dict (the outbox column's JSON shape); returns the
        row id."""
        payload = json.dumps([_attribute(i, a) for i, a in enumerate(attributes)])
        return self._insert(
            {
                "kind": Kind.RESOURCE_ATTRIBUTES.value,
                "migration_task_name": task,
                "progress_update_stream": stream,
                "resource_attributes": payload,
            }
        )

    def created_artifact(
        self, task: str, arn: str, *, description: str | None = None, stream: str | None = None
    ) -> int:
        """Queue an AssociateCreatedArtifact; returns the row id."""
        return self._insert(
            {
                "kind": Kind.CREATED_ARTIFACT.value,
                "migration_task_name": task,
                "progress_update_stream": stream,
                "artifact_name": arn,
                "artifact_description": description,
            }
        )

    def created_artifact_removed(self, task: str, arn: str, *, stream: str | None = None) -> int:
        """Queue a DisassociateCreatedArtifact (after an association of the same ARN, in row
        order); returns the row id."""
        return self._insert({
            "kind": Kind.CREATED_ARTIFACT_REMOVED.value, "migration_task_name": task,
            "progress_update_stream": stream, "artifact_name": arn,
        })

    def discovered_resource(
        self, task: str, configuration_id: str, *, description: str | None = None,
        stream: str | None = None,
    ) -> int:
        """Queue an AssociateDiscoveredResource: map the task to a server of the discovery
        repository by hand (its ConfigurationId); returns the row id."""
        return self._insert({
            "kind": Kind.DISCOVERED_RESOURCE.value, "migration_task_name": task,
            "progress_update_stream": stream, "configuration_id": configuration_id,
            "resource_description": description,
        })

    def discovered_resource_removed(
        self, task: str, configuration_id: str, *, stream: str | None = None
    ) -> int:
        """Queue a DisassociateDiscoveredResource (undoes a manual mapping); returns the row
        id."""
        return self._insert({
            "kind": Kind.DISCOVERED_RESOURCE_REMOVED.value, "migration_task_name": task,
            "progress_update_stream": stream, "configuration_id": configuration_id,
        })

    def source_resource(
        self, task: str, name: str, *, description: str | None = None,
        detail: str | None = None, stream: str | None = None,
    ) -> int:
        """Queue an AssociateSourceResource: the server, application or wave the task belongs
        to (its name; a one-line description of at most 500 characters, a status detail);
        returns the row id."""
        return self._insert({
            "kind": Kind.SOURCE_RESOURCE.value, "migration_task_name": task,
            "progress_update_stream": stream, "source_resource_name": name,
            "resource_description": description, "status_detail": detail,
        })

    def source_resource_removed(self, task: str, name: str, *, stream: str | None = None) -> int:
        """Queue a DisassociateSourceResource; returns the row id."""
        return self._insert({
            "kind": Kind.SOURCE_RESOURCE_REMOVED.value, "migration_task_name": task,
            "progress_update_stream": stream, "source_resource_name": name,
        })

    def application_state(
        self, application: str, status: str, *,
        update_date_time: datetime | str | None = None,
    ) -> int:
        """Queue a NotifyApplicationState: the migration status (NOT_STARTED, IN_PROGRESS or
        COMPLETED) of an Application Discovery Service application, by its id; returns the row
        id. (The id goes in migration_task_name too, which the contract's table requires.)"""
        when = (update_date_time.isoformat() if isinstance(update_date_time, datetime)
                else update_date_time)
        return self._insert({
            "kind": Kind.APPLICATION_STATE.value, "migration_task_name": application,
            "application_id": application, "status": status, "update_date_time": when,
        })


ATTRIBUTE_SHAPE = 'each attribute is a (Type, Value) pair or a {"Type": ..., "Value": ...} dict'


def _attribute(index: int, item: object) -> dict[str, str]:
    """One attribute in the column's JSON shape, from a pair or a dict; the shape is named
    when it is neither."""
    where = f"attributes[{index}]"
    if isinstance(item, Mapping):
        if set(item) != {"Type", "Value"}:
            raise OutboxValueError(rows.Problem(
                where, f"{ATTRIBUTE_SHAPE} (got a dict with keys {sorted(map(str, item))})"
            ))
        return {"Type": item["Type"], "Value": item["Value"]}
    if isinstance(item, tuple | list) and len(item) == 2:
        return {"Type": item[0], "Value": item[1]}
    raise OutboxValueError(
        rows.Problem(where, f"{ATTRIBUTE_SHAPE} (got {type(item).__name__} {item!r:.80})")
    )
