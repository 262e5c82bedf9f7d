"""Intake: every new outbox row is judged once (`rows.judge`, the one judge) and taken into
delivery state with the request it becomes, a batch per store call, for a bounded time per pass
(no SQL: the store reads and writes)."""

from __future__ import annotations

import time
from collections.abc import Callable

from reporter import rows
from reporter.config import Config
from reporter.delivery.conditions import Conditions
from reporter.hub_requests import AttributesUpdate, Stateful, encode
from reporter.stores.contract import Ingested, OutboxStore

__all__ = ["INTAKE_SECONDS", "Intake"]

# A pass takes in every new row before claiming (so a backlog coalesces to one call per task),
# but stops after this long so a torrent of inserts cannot starve delivery.
INTAKE_SECONDS = 5.0


class Intake:
    """Takes new rows in; `behind` says rows were left for the next pass."""

    def __init__(
        self,
        store: OutboxStore,
        config: Config,
        on_progress: Callable[[], None],
        conditions: Conditions | None = None,
    ) -> None:
        self._store, self._config = store, config
        self._on_progress = on_progress
        self._conditions = conditions or Conditions(config.log.summary_seconds, time.time)
        self.behind = False
        self.rejected = 0  # rows the last run rejected

    def run(self, now: float) -> int:
        """Take in new rows until none are left or the time is up; returns how many."""
        batch = self._config.outbox.batch_size
        until = time.monotonic() + INTAKE_SECONDS
        total = 0
        self.behind, self.rejected = False, 0
        while True:
            taken = self._store.take_in(batch, lambda row: self._judge(row, now))
            total += taken.taken
            self._on_progress()
            if not taken.more:
                return total
            if time.monotonic() >= until:
                self.behind = True
                return total

    def _judge(self, row: rows.OutboxRow, now: float) -> Ingested:
        hub = self._config.hub
        checked = rows.judge(row, hub.progress_update_stream, hub.next_update_seconds, now)
        stream, task = rows.key_of_row(row, hub.progress_update_stream)
        rejected = checked.reason if isinstance(checked, rows.Problem) else None
        if rejected:
            # A rejected row still names its task, as printable text of bounded size (the
            # names of a valid row are kept exactly: they are its task's key).
            stream, task = rows.clip(stream, rows.MAX_NAME_CHARS), rows.clip(
                task, rows.MAX_NAME_CHARS
            )
            self.rejected += 1
            self._conditions.rejected(rejected, row=row.id, task=task, stream=stream)
        return Ingested(
            row.id,
            str(stream),
            str(task),
            rows.clip(row.kind, rows.MAX_NAME_CHARS),
            rows.epoch_of(row.created_at, now),
            rejected,
            supersedes=isinstance(checked, Stateful | AttributesUpdate),
            request=None if isinstance(checked, rows.Problem) else encode(checked),
        )
