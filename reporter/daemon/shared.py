"""What the daemon's roles share, and nothing of the roles themselves: the config (a reload
replaces it), the parts (replaced when the outbox is reopened), the metrics, the stop and reload
flags, and the lock that a pass, upkeep and a reload hold so that they never overlap."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from reporter.config import Config
from reporter.daemon.metrics import Metrics
from reporter.delivery.parts import Parts

__all__ = ["Shared"]


@dataclass
class Shared:
    """The state one delivering process's roles read (and the few that replace it)."""

    config: Config
    config_path: Path | None
    parts: Parts
    metrics: Metrics
    stop: threading.Event = field(default_factory=threading.Event)
    reload_requested: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
