"""Dead letters handed back to intake by a person (intake judges them again: valid rows go out,
the rest are dead letters again with their current reason) or dropped; the ages
`--older-than` takes (no SQL: the store does the writing)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from reporter.coalesce import Verdict
from reporter.config import Config
from reporter.delivery.courier import MISSING_ROW
from reporter.delivery.intake import Intake
from reporter.stores.contract import OutboxStore

__all__ = ["Dropped", "Requeued", "drop_dead_letters", "parse_age", "requeue_dead_letters"]


@dataclass(frozen=True)
class Requeued:
    """What `dead-letters retry` did."""

    requeued: list[int] = field(default_factory=list)
    still_rejected: list[Verdict] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)


def requeue_dead_letters(
    store: OutboxStore, config: Config, ids: Sequence[int] | None
) -> Requeued:
    """Hand dead letters (all of them when `ids` is None) back to intake and let it judge them
    at once (the daemon's intake may get there first: the store takes each row in once);
    what intake rejected again is reported with its reason. A dead letter whose outbox row
    is gone stays one."""
    letters = {d.id: d for d in store.dead_letters(ids)}
    back = store.requeue(sorted(letters))
    Intake(store, config, on_progress=lambda: None).run(time.time())
    again = {d.id: d.reason for d in store.dead_letters(back)} if back else {}
    invalid = [Verdict(rid, again[rid]) for rid in back if rid in again]
    invalid += [Verdict(rid, MISSING_ROW) for rid in sorted(set(letters) - set(back))]
    return Requeued([rid for rid in back if rid not in again], sorted(invalid),
                    sorted(set(ids or ()) - set(letters)))


_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds in a duration like `30m`, `12h`, `7d`, `1w`, `90s` or `1d12h`; ValueError naming
    the rule otherwise."""
    compact = text.strip().lower()
    parts = _AGE.findall(compact)
    if not compact or "".join(f"{n}{u}" for n, u in parts) != compact.replace(" ", ""):
        raise ValueError(
            f"{text!r} is not a duration: a number and a unit (s, m, h, d, w), "
            "like 30m, 12h, 7d or 1d12h"
        )
    return sum(float(n) * _UNIT[u] for n, u in parts)


@dataclass(frozen=True)
class Dropped:
    """What `dead-letters drop` did."""

    dropped: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)


def drop_dead_letters(
    store: OutboxStore, ids: Sequence[int] | None, older_than: float | None
) -> Dropped:
    """Drop dead letters: those of `ids` (all when None), only those rejected more than
    `older_than` seconds ago when given. Unknown ids (not dead letters) are named back."""
    before = None if older_than is None else store.clock() - older_than
    dropped = store.drop(ids, before)
    return Dropped(dropped, sorted(set(ids or ()) - set(dropped)))
