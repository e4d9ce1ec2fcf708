"""Pure bookkeeping of the worker loop, unit-tested with a fake clock.

* `Batcher`: dynamic batching. A batch closes when it holds `max_batch`
  items, or when its oldest item has waited `max_wait_s`.
* `OffsetTracker`: which offsets of a partition may be committed. Results
  finish out of order (fetches race), so the committable offset is the
  lowest offset still pending, never past it; it never moves backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Batcher(Generic[T]):
    max_batch: int
    max_wait_s: float
    _items: list[T] = field(default_factory=list)
    _opened_at: float | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, now: float) -> None:
        if not self._items:
            self._opened_at = now
        self._items.append(item)

    def ready(self, now: float) -> bool:
        """Whether a batch should run now."""
        if not self._items:
            return False
        return len(self._items) >= self.max_batch or now - self._opened_at >= self.max_wait_s  # type: ignore[operator]

    def time_left(self, now: float) -> float | None:
        """Seconds until the open batch is due; None when there is none."""
        if not self._items:
            return None
        return max(0.0, self._opened_at + self.max_wait_s - now)  # type: ignore[operator]

    def take(self, now: float) -> list[T]:
        """Up to `max_batch` items, oldest first; the rest open a new batch at `now`."""
        batch, self._items = self._items[: self.max_batch], self._items[self.max_batch :]
        self._opened_at = now if self._items else None
        return batch


class OffsetTracker:
    """Offsets of one partition: seen, finished, and the next one safe to commit."""

    def __init__(self, committed: int | None = None) -> None:
        self._pending: set[int] = set()
        self._next = committed  # offset after the highest one seen
        self._committed = committed

    def add(self, offset: int) -> None:
        self._pending.add(offset)
        if self._next is None or offset + 1 > self._next:
            self._next = offset + 1

    def done(self, offset: int) -> None:
        self._pending.discard(offset)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def polled_until(self) -> int | None:
        """The offset after the highest one seen."""
        return self._next

    def committable(self) -> int | None:
        """The offset to commit now, or None when it would not move forward."""
        if self._next is None:
            return None
        candidate = min(self._pending) if self._pending else self._next
        if self._committed is not None and candidate <= self._committed:
            return None
        return candidate

    def mark_committed(self, offset: int) -> None:
        if self._committed is not None and offset < self._committed:
            raise ValueError(f"offset {offset} would move the commit back from {self._committed}")
        self._committed = offset
