"""Dead letters put back in line (rows valid now are requeued, the rest rejected again with
their current reason) or dropped by a person; the ages `--older-than` takes (no SQL: the store
does the writing)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from reporter import rows
from reporter.config import HubConfig
from reporter.delivery.courier import MISSING_ROW
from reporter.hub_requests import encode
from reporter.rows import Verdict
from reporter.stores.contract import OutboxStore

__all__ = ["Dropped", "Requeued", "drop_dead_letters", "parse_age", "requeue_dead_letters"]


@dataclass(frozen=True)
class Requeued:
    """What `dead-letters retry` did."""

    requeued: list[int] = field(default_factory=list)
    still_rejected: list[Verdict] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)


def requeue_dead_letters(
    store: OutboxStore, hub: HubConfig, ids: Sequence[int] | None
) -> Requeued:
    """Put dead letters back in line (all of them when `ids` is None)."""
    letters = {d.id: d for d in store.dead_letters(ids)}
    present = [i for i, d in letters.items() if d.present]
    contents = {r.id: r for r in store.outbox_rows(present)} if present else {}
    valid: list[tuple[int, str]] = []
    invalid: list[Verdict] = []
    for rid, letter in letters.items():
        row = contents.get(rid)
        if row is None:
            invalid.append(Verdict(rid, MISSING_ROW))
            continue
        checked = rows.judge(row, letter.stream, hub.next_update_seconds, time.time())
        if isinstance(checked, rows.Problem):
            invalid.append(Verdict(rid, checked.reason))
        else:
            valid.append((rid, encode(checked)))
    store.requeue(valid, invalid)
    return Requeued([rid for rid, _ in valid], invalid, sorted(set(ids or ()) - set(letters)))


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
