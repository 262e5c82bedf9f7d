"""What a repair sends (pure): decided from the Hub's current state of a task that repair rounds
marked, the calls that send again its newest state, attribute list, artifacts, manual
mappings and source resources (never over a newer state someone else wrote), and whether it
must be imported first."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import NamedTuple

from reporter.coalesce import Verdict
from reporter.hub.client import HubTask
from reporter.hub.view import iso, seconds
from reporter.hub_requests import (
    ArtifactAssociation,
    ArtifactRemoval,
    AttributesUpdate,
    Kind,
    Request,
    ResourceAssociation,
    ResourceRemoval,
    SourceAssociation,
    SourceRemoval,
    StateUpdate,
    key_of,
)
from reporter.stores.contract import ClaimedTask, ResendScope

__all__ = ["NO_REPAIR", "RepairPlan", "plan_repair"]


class RepairPlan(NamedTuple):
    """What one repair try does, decided from the Hub's current state of the task (read just
    before): the calls sent again (negative row ids), whether the task must be imported first,
    waiting state rows older than the Hub's state (superseded, never sent), and the Hub's
    state when it is newer than ours (reported, never overwritten)."""

    calls: list[Request]
    import_first: bool
    superseded: list[Verdict]
    newer_at_hub: HubTask | None


def plan_repair(task: ClaimedTask, planned: list[Request], hub: HubTask | None,
                found: bool) -> RepairPlan:
    """A repair's calls, before the task's waiting rows (they are older than any of those).

    `found` False: the Hub lacks the task (or its stream), so it is imported and sent
    everything again. Else the newest state is sent again only when ours is newer than the
    Hub's (to the second, as the Hub keeps it); a later state (someone else's) is never
    overwritten, and waiting state rows older than it are superseded. The attribute list,
    artifacts and manual mappings carry no date at the Hub: they go again only to a task that
    was lost (scope WHOLE), unless a waiting row replaces or removes them."""
    again = task.resend
    if again is None:
        return RepairPlan([], False, [], None)
    hub_time = None if hub is None or hub.update_time is None else seconds(hub.update_time)
    ours = again.state
    # a waiting row as new as the Hub's state may be the one that put it there (a send whose
    # outcome was not recorded: a replica that lost its database): then it is not someone else's
    ours_waiting = any(isinstance(r, StateUpdate) and hub_time is not None
                       and seconds(r.update_time.timestamp()) >= hub_time for r in planned)
    newer = hub if hub_time is not None and not ours_waiting and (
        ours is None or hub_time > seconds(ours.update_time)) else None
    superseded = [Verdict(r.row_id, f"the Hub holds a newer state (dated {iso(hub_time)}) than"
                          " this row's: an older state is never sent after a newer one")
                  for r in planned if isinstance(r, StateUpdate) and hub_time is not None
                  and seconds(r.update_time.timestamp()) < hub_time]
    gone = {v.row for v in superseded}
    kinds = {type(r) for r in planned if r.row_id not in gone}
    calls: list[Request] = []
    if (ours is not None and StateUpdate not in kinds
            and (hub_time is None or seconds(ours.update_time) > hub_time)):
        calls.append(StateUpdate(0, task.stream, task.task, ours.status, ours.detail,
                                      ours.percent, datetime.fromtimestamp(ours.update_time, UTC),
                                      ours.next_update_seconds))
    if not found or again.scope is ResendScope.WHOLE:
        removed = {(r.kind.lane, key_of(r)) for r in planned
                   if isinstance(r, ArtifactRemoval | ResourceRemoval | SourceRemoval)}
        if again.attributes and AttributesUpdate not in kinds:
            calls.append(AttributesUpdate(0, task.stream, task.task, again.attributes))
        calls += [ArtifactAssociation(0, task.stream, task.task, arn, description)
                  for arn, description in again.artifacts
                  if (Kind.CREATED_ARTIFACT, arn) not in removed]
        calls += [ResourceAssociation(0, task.stream, task.task, cid, description)
                  for cid, description in again.resources
                  if (Kind.DISCOVERED_RESOURCE, cid) not in removed]
        calls += [SourceAssociation(0, task.stream, task.task, name, description, detail)
                  for name, description, detail in again.sources
                  if (Kind.SOURCE_RESOURCE, name) not in removed]
    return RepairPlan([replace(call, row_id=-n) for n, call in enumerate(calls, start=1)],
                      not found, superseded, newer)


NO_REPAIR = RepairPlan([], False, [], None)
