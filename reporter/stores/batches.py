"""How much one intake batch reads: a budget of value bytes, and the newest rows taken beside a
backlog's oldest (pure; both engines' intake)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["INTAKE_BATCH_BYTES", "fitting", "tail_size"]

# An intake batch reads at most this many bytes of outbox values (and at least one row), so a
# batch of rows near the 1 MiB bounds costs what a few of them cost, not what 500 do.
INTAKE_BATCH_BYTES = 4 * 1024 * 1024


def fitting(costs: Sequence[int], budget: int = INTAKE_BATCH_BYTES) -> int:
    """How many of `costs`, taken in order, fit in `budget` (always at least one, when any)."""
    spent = 0
    for taken, cost in enumerate(costs):
        spent += cost
        if spent > budget and taken:
            return taken
    return len(costs)


def tail_size(batch: int) -> int:
    """Behind a backlog, each intake batch also takes this many of the newest queued rows: a
    task written now reaches the Hub within a pass or two, not after the whole backlog was taken
    in first-in-first-out. Safe in any order: a row older than one already taken in is
    superseded by it, never sent after it. Kept small: every tail row taken early leaves an
    older row of its task to take in and supersede later (a tail of 100 cost 15 MiB over a
    200,000-row drain; 10 costs nothing measurable)."""
    return max(1, min(10, batch // 50))
