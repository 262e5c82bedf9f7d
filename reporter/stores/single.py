"""What a store that one process owns answers for replicas (an SQLite file: its lock lets one
process deliver from it): no other replica to fence off, claim a stream from or beat for."""

from __future__ import annotations

from collections.abc import Sequence

from reporter.stores.contract import Replica, TaskOutcome

__all__ = ["SingleProcess"]


class SingleProcess:
    """The replica verbs of a store one process owns (mixed into its store)."""

    def _leased(self, ids: Sequence[int], token: str, ends: float) -> None:
        """Nothing to remember: no other process can take a lease from this one."""

    def _ended(self, outcomes: Sequence[TaskOutcome]) -> None:
        """Nothing to forget (see `_leased`)."""

    def hold(self, task_id: int, lease: str, need_seconds: float, lease_seconds: float) -> bool:
        """The fence: the lease is ours for as long as the file's lock is (always)."""
        return True

    def claim_stream(self, stream: str, seconds: float) -> bool:
        """The creation of `stream` is ours: no other process delivers from this file."""
        return True

    def heartbeat(self, me: Replica) -> list[Replica]:
        """The live replicas: this process alone (the file's lock says so)."""
        return [me]

    def replicas(self) -> list[Replica]:
        """None recorded: `status` finds the one delivering process by its lock."""
        return []

    def leave(self, replica_id: str) -> None:
        """Nothing recorded to forget (see `replicas`)."""
