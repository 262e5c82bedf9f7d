"""What every SQL store is built on: the engine's connection, clock and transactions (each
engine supplies them) and the named statements of `statements`, compiled to its dialect."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from reporter.rows import OutboxRow
from reporter.stores.statements import STATEMENTS, Dialect

__all__ = ["SqlBase"]


class SqlBase(ABC):
    """An engine's connection, clock and transactions, and its compiled statements."""

    dialect: Dialect
    where: str  # the outbox, as messages name it
    _outbox = "outbox"

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, str], str] = {}

    # -- what an engine supplies ----------------------------------------------------------
    @abstractmethod
    def clock(self) -> float:
        """Now, by the clock leases are judged by."""

    @abstractmethod
    def _tx(
        self, doing: str, write: bool = True, snapshot: bool = False
    ) -> AbstractContextManager[Any]:
        """One transaction (`write`), or reads (that share one `snapshot` when asked); yields
        something with execute(sql, params) and executemany."""

    @abstractmethod
    def _contents(self, c: Any, ids: Sequence[int]) -> dict[int, OutboxRow]:
        """Outbox rows by id, never reading a value over MAX_COLUMN_BYTES."""

    # -- statements -----------------------------------------------------------------------
    def sql(self, name: str, **parts: str) -> str:
        """A named statement in this engine's SQL (with `{only}`-style parts filled in)."""
        key = (name, self._outbox)
        text = self._compiled.get(key)
        if text is None:
            template = self.dialect.overrides.get(name, STATEMENTS.get(name))
            if template is None:
                raise KeyError(name)
            text = self._compiled[key] = self.dialect.compile(template, self._outbox)
        return text.format(**parts) if parts else text

    def _all(self, c: Any, name: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        return list(c.execute(self.sql(name), params or {}).fetchall())

    def _one(self, c: Any, name: str, params: Mapping[str, Any] | None = None) -> Any:
        return c.execute(self.sql(name), params or {}).fetchone()

    def _many(self, c: Any, name: str, params: Sequence[Mapping[str, Any]]) -> None:
        if params:
            c.executemany(self.sql(name), params)

    def _array(self, values: Sequence[Any]) -> Any:
        return self.dialect.array(list(values))
