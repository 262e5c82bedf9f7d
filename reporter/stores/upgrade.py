"""What an upgrade recovers that an older version did not record: the attribute list each task
last sent and its artifacts' descriptions, read back from the outbox rows still present (one
routine for both engines; a task whose row is gone keeps NULL, which `verify` shows as "not
recorded")."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from reporter.rows import Problem, parse_attributes
from reporter.stores.contract import RowState

__all__ = ["Query", "recover_sent"]

# One statement with `?` parameters; returns its rows as tuples (each engine adapts its cursor).
Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def recover_sent(query: Query, tasks: str, rows: str, outbox: str, artifacts: str) -> int:
    """Fill `attributes` of tasks that sent a list before the column existed, from the very
    row that was sent (same id and insertion place, same task, still in the outbox), and the
    NULL descriptions of associated artifacts from the newest delivered row for that ARN.
    Rows a tool made unreadable are skipped, never fatal. Returns the lists recovered."""
    found = query(
        f"SELECT t.id, o.resource_attributes FROM {tasks} t"
        f" JOIN {rows} r ON r.id = t.last_attributes_row AND r.seq = t.last_attributes_seq"
        f" JOIN {outbox} o ON o.id = r.id"
        " WHERE t.attributes IS NULL AND t.last_attributes_row IS NOT NULL"
        " AND o.kind = 'resource_attributes' AND o.migration_task_name = t.task", ())
    recovered = 0
    for task_id, text in found:
        pairs = parse_attributes(text)
        if isinstance(pairs, Problem):
            continue
        query(f"UPDATE {tasks} SET attributes = ? WHERE id = ?", (json.dumps(pairs), task_id))
        recovered += 1
    query(
        f"UPDATE {artifacts} SET description = (SELECT o.artifact_description FROM {outbox} o"
        f" JOIN {rows} r ON r.id = o.id WHERE r.task_id = {artifacts}.task_id"
        f" AND o.kind = 'created_artifact' AND o.artifact_name = {artifacts}.arn"
        f" AND r.state = '{RowState.SENT.value}' ORDER BY r.seq DESC LIMIT 1)"
        " WHERE description IS NULL", ())
    return recovered
