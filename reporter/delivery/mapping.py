"""Auto-mapping checks: after attributes reach the Hub, ask ListDiscoveredResources whether the
task maps to a discovered server, back off between checks, report a task that never maps."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import structlog

from reporter.config import MappingConfig
from reporter.hub.errors import HubError, Outcome
from reporter.stores.contract import MappingCheck, OutboxStore

__all__ = ["CHECKS_PER_PASS", "MappingChecker", "MappingSource"]

CHECKS_PER_PASS = 20
UNMAPPED_HINT = (
    "check the attributes match a discovered server; VM fields need VM_MANAGER_ID"
)


class MappingSource(Protocol):
    """Where mappings are read (the `Hub` adapter)."""

    def discovered_resources(self, stream: str, task: str) -> list[str]:
        """ConfigurationIds the task is mapped to."""


class MappingChecker:
    """Runs the checks that are due, a few per pass."""

    def __init__(
        self,
        store: OutboxStore,
        hub: MappingSource,
        config: MappingConfig,
        stop: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self._store, self._hub, self._config = store, hub, config
        self._stop, self._clock = stop, clock
        self._log = structlog.get_logger("reporter.mapping")

    def run(self) -> None:
        """Check the due tasks (stops early when delivery is blocked or stopping)."""
        for check in self._store.due_mapping_checks(CHECKS_PER_PASS):
            if self._stop.is_set():
                return
            try:
                found = self._hub.discovered_resources(check.stream, check.task)
            except HubError as err:
                if err.failure.outcome is Outcome.BLOCKED:
                    return
                found = []
            self._record(check, found)

    def _record(self, check: MappingCheck, found: list[str]) -> None:
        now, config = self._clock(), self._config
        if found:
            self._store.record_mapping(check.task_id, True, found[0], None, False)
            self._log.info(
                "task_mapped", stream=check.stream, task=check.task, configuration_id=found[0]
            )
            return
        unmapped = now - check.attributes_at >= config.unmapped_after_seconds
        interval = min(
            config.max_check_interval_seconds,
            max(config.check_after_seconds, 1.0) * 2 ** min(check.checks + 1, 20),
        )
        if unmapped and not check.unmapped_reported:
            self._log.warning(
                "task_unmapped",
                stream=check.stream,
                task=check.task,
                seconds_since_attributes=round(now - check.attributes_at),
                hint=UNMAPPED_HINT,
            )
        self._store.record_mapping(
            check.task_id, False if unmapped else None, None, now + interval, unmapped
        )
