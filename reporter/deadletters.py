"""Dead letters put back in line: rows that are valid now are requeued, the rest are rejected
again with their current reason (no SQL: the store does the writing)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from reporter import rows
from reporter.config import HubConfig
from reporter.delivery import MISSING_ROW
from reporter.model import OutboxStore

__all__ = ["Requeued", "requeue_dead_letters"]


@dataclass(frozen=True)
class Requeued:
    """What `dead-letters retry` did."""

    requeued: list[int] = field(default_factory=list)
    still_rejected: list[tuple[int, str]] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)


def requeue_dead_letters(
    store: OutboxStore, hub: HubConfig, ids: Sequence[int] | None
) -> Requeued:
    """Put dead letters back in line (all of them when `ids` is None)."""
    letters = {d.id: d for d in store.dead_letters(ids)}
    present = [i for i, d in letters.items() if d.present]
    contents = {r.id: r for r in store.outbox_rows(present)} if present else {}
    valid: list[int] = []
    invalid: list[tuple[int, str]] = []
    for rid, letter in letters.items():
        row = contents.get(rid)
        if row is None:
            invalid.append((rid, MISSING_ROW))
            continue
        checked = rows.judge(row, letter.stream, hub.next_update_seconds, time.time())
        if isinstance(checked, rows.Problem):
            invalid.append((rid, checked.reason))
        else:
            valid.append(rid)
    store.requeue(valid, invalid)
    return Requeued(valid, invalid, sorted(set(ids or ()) - set(letters)))
