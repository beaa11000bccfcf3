"""Per-batch snapshots and the per-chunk unit of work of the processing hot path.

A worker handles a claimed batch in chunks, one transaction each (healthsync.pipeline). Two kinds of state
make that cheaper without changing what is written:

- A *batch snapshot* (`batch_snapshot()`, `snapshot(key, load)`) reads governed configuration that rarely
  changes (payer reimbursement rates, which chargemaster codes are stocked items, code tables) once per batch
  instead of once per message, like the mapping configuration and the outbound connectors: a change deployed
  meanwhile counts from the next batch on. Outside a batch, `snapshot` simply calls `load`.
- A *unit of work* (`unit_of_work()`, `current()`) lets the workflows keep the rows a chunk has read (an identity
  map: a later message of the same encounter in the same chunk sees the run the earlier one changed) and defer
  writes that nothing reads back within the chunk (run updates, new steps, KPI dirty marks) to one statement
  each at the chunk's end. Deferred writes still commit in the chunk's transaction, so they are exactly as
  durable as before; code that must read the database state of something deferred calls `flush()` first.

Only the fast pass of a chunk has a unit of work. The careful pass (one savepoint per message, after a
failure) runs without one, because a savepoint rolled back could not take back what sits in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

_SNAPSHOT: ContextVar[dict[Hashable, Any] | None] = ContextVar("healthsync_batch_snapshot", default=None)
_UNIT: ContextVar[UnitOfWork | None] = ContextVar("healthsync_unit_of_work", default=None)


@contextmanager
def batch_snapshot() -> Iterator[None]:
    """Within the block, `snapshot(key, load)` calls `load` once per key."""
    token = _SNAPSHOT.set({})
    try:
        yield
    finally:
        _SNAPSHOT.reset(token)


def snapshot(key: Hashable, load: Callable[[], T]) -> T:
    """`load()`, read once per batch when a batch snapshot is active (else every time)."""
    cache = _SNAPSHOT.get()
    if cache is None:
        return load()
    if key not in cache:
        cache[key] = load()
    return cache[key]  # type: ignore[no-any-return]


class UnitOfWork:
    """What a chunk has read (identity maps by name) and what it still has to write (pending by name)."""

    def __init__(self) -> None:
        # The new canonical events the chunk routes, in order: a workflow may read ahead what it will need.
        self.events: list[Any] = []
        self._maps: dict[str, dict[Any, Any]] = {}
        # name -> (pending collection, flusher, order); flushed by order, then in the order first used.
        self._pending: dict[str, tuple[Any, Callable[[Any], None], int]] = {}

    def identity_map(self, name: str) -> dict[Any, Any]:
        """The chunk's map `name` (e.g. a workflow's runs by business key), created empty on first use."""
        return self._maps.setdefault(name, {})

    def pending(
        self, name: str, factory: Callable[[], T], flusher: Callable[[T], None], *, order: int = 0
    ) -> T:
        """The collection of deferred writes `name`; `flusher(collection)` writes it at the next flush.

        A higher `order` is written later: writes derived from others (dirty marks from run updates) wait for
        them, so that they go in one statement.
        """
        entry = self._pending.get(name)
        if entry is None:
            entry = (factory(), flusher, order)
            self._pending[name] = entry
        return entry[0]  # type: ignore[no-any-return]

    def flush(self) -> None:
        """Write everything deferred so far; a flusher may defer more (a run update marks the run dirty)."""
        while self._pending:
            name = min(self._pending, key=lambda key: self._pending[key][2])
            collection, flusher, _ = self._pending.pop(name)
            flusher(collection)


def current() -> UnitOfWork | None:
    """The unit of work of the chunk being processed, None outside the fast pass of a chunk."""
    return _UNIT.get()


def flush() -> None:
    """Write the current unit of work's deferred writes now (before reading their rows back through the ORM)."""
    unit = _UNIT.get()
    if unit is not None:
        unit.flush()


@contextmanager
def unit_of_work() -> Iterator[UnitOfWork]:
    """A unit of work for the block; the caller flushes it before the transaction commits.

    Nothing is flushed when the block raises: the transaction around it is rolled back anyway.
    """
    unit = UnitOfWork()
    token = _UNIT.set(unit)
    try:
        yield unit
    finally:
        _UNIT.reset(token)
