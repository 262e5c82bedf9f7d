"""Coalescing one task's waiting requests (pure): the newest state and attribute list, per key
the newest association or removal, nothing older than what the Hub has from us, and a state's
time never going backwards."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import NamedTuple

from reporter.hub_requests import (
    ArtifactAssociation,
    ArtifactRemoval,
    Keyed,
    Kind,
    Request,
    ResourceAssociation,
    ResourceRemoval,
    SourceAssociation,
    SourceRemoval,
    Stateful,
    key_of,
)
from reporter.rows import Problem

__all__ = ["Plan", "Verdict", "not_before", "plan_task"]


def not_before(checked: Request, last: float | None) -> Request:
    """A task's UpdateDateTime never goes backwards at the Hub: a state row that left
    `update_date_time` NULL (its time is its `created_at`, stamped by the writer's clock, which
    may have stepped back) gets the later of that and the time last sent."""
    if (
        isinstance(checked, Stateful)
        and checked.stamped
        and last is not None
        and checked.update_time.timestamp() < last
    ):
        return replace(checked, update_time=datetime.fromtimestamp(last, UTC))
    return checked


class Verdict(NamedTuple):
    """A row judged not to be sent, and why (superseded, or rejected): one meaning wherever it
    goes (a plan, an outcome, a requeue)."""

    row: int
    reason: str


@dataclass
class Plan:
    """What to do with one task's waiting rows: send (in row order), supersede, reject."""

    send: list[Request] = field(default_factory=list)
    superseded: list[Verdict] = field(default_factory=list)
    rejected: list[Verdict] = field(default_factory=list)


def plan_task(
    pending: Iterable[tuple[int, Request | Problem]],
    state_floor: int | None,
    attributes_floor: int | None,
    associated: frozenset[str] | set[str],
    order: Mapping[int, int] | None = None,
    resources: frozenset[str] | set[str] = frozenset(),
    sources: frozenset[str] | set[str] = frozenset(),
) -> Plan:
    """Coalesce one task's pending rows: the newest valid state and attribute list, and per
    ARN (ConfigurationId, source resource name) the newest association or removal; an
    application's newest state, as a task's.

    Rows are (row id, request); "newer" is insertion order: `order` maps a row id to its place
    in it (row ids themselves when None, true while ids only grow). A state or attribute row
    older than the one already sent (its place: `state_floor`, `attributes_floor`) is
    superseded, never sent, so the Hub never sees an older state after a newer one. An
    association the Hub already has from us (`associated` ARNs, `resources` ids, `sources`
    names) is not made again, unless a waiting removal of it came first (that removal may have
    reached the Hub before a crash); a removal is always sent (the Hub's removal is
    idempotent).
    """
    def place(row_id: int) -> int:
        return order[row_id] if order is not None else row_id

    plan = Plan()
    newest: dict[type, Request] = {}
    keyed: dict[tuple[Kind, str], Keyed] = {}
    # keys whose waiting removal a later association replaces: that removal may have reached
    # the Hub already (a crash before its outcome was recorded), so what we recorded as
    # associated may be gone there, and the association is made again
    unsure: set[tuple[Kind, str]] = set()
    removals = ArtifactRemoval | ResourceRemoval | SourceRemoval
    ordered: Sequence[tuple[int, Request | Problem]] = sorted(pending, key=lambda p: place(p[0]))
    for row_id, item in ordered:
        if isinstance(item, Problem):
            plan.rejected.append(Verdict(row_id, item.reason))
        elif isinstance(item, Keyed):
            slot = (item.kind.lane, key_of(item))
            earlier = keyed.get(slot)
            if earlier is not None:
                same = type(earlier) is type(item)
                why = "repeated by a later row" if same else f"superseded by row {row_id}"
                plan.superseded.append(Verdict(earlier.row_id, why))
                if isinstance(earlier, removals):
                    unsure.add(slot)
            keyed[slot] = item
        else:
            previous = newest.get(type(item))
            if previous is not None:
                plan.superseded.append(Verdict(previous.row_id, f"superseded by row {row_id}"))
            newest[type(item)] = item
    for item in newest.values():
        state = isinstance(item, Stateful)
        floor = state_floor if state else attributes_floor
        if floor is not None and place(item.row_id) < floor:
            what = "state" if state else "attribute list"
            plan.superseded.append(Verdict(item.row_id, f"older than the {what} already sent"))
        else:
            plan.send.append(item)
    held = {Kind.CREATED_ARTIFACT: (associated, "artifact"),
            Kind.DISCOVERED_RESOURCE: (resources, "discovered resource"),
            Kind.SOURCE_RESOURCE: (sources, "source resource")}
    for (lane, key), keyed_item in keyed.items():
        has, what = held[lane]
        made = ArtifactAssociation | ResourceAssociation | SourceAssociation
        if isinstance(keyed_item, made) and key in has and (lane, key) not in unsure:
            plan.superseded.append(Verdict(keyed_item.row_id, f"{what} already associated"))
        else:
            plan.send.append(keyed_item)
    plan.send.sort(key=lambda r: place(r.row_id))
    return plan
