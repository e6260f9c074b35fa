"""The retention window of received/sent MCASTs, indexed by ring sequence number.

corosync keeps a 16384-slot circular array (``sq.h``) starting at ``head`` (the lowest
seq not yet released).  A seq outside ``[head, head + 16384)`` is *out of range*: it is
neither stored nor requested for retransmission.  We keep the same window semantics
(other nodes size their flow control against it, §3.5 step 12) but store only the slots
that are in use, in a dict: a ring normally holds a few dozen messages, so a dict is both
smaller and faster than a 16384-entry list, and releasing is proportional to what is held.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .seq import ROLLOVER_POINT, ROLLOVER_VALUE, U32

QUEUE_SIZE = 16384  # QUEUE_RTR_ITEMS_SIZE_MAX

T = TypeVar("T")


class SortQueue(Generic[T]):
    """Items by 32-bit seq inside a sliding window, plus per-seq miss counters."""

    __slots__ = ("head", "items", "miss")

    def __init__(self, head: int = 0) -> None:
        self.head = head & U32
        self.items: dict[int, T] = {}
        self.miss: dict[int, int] = {}

    def in_range(self, seq: int) -> bool:
        """corosync ``sq_in_range``, including its rollover shift."""
        head = self.head
        if head > ROLLOVER_POINT:
            s = (seq - ROLLOVER_VALUE) & U32
            h = (head - ROLLOVER_VALUE) & U32
            return h <= s < h + QUEUE_SIZE
        return head <= seq < head + QUEUE_SIZE

    def get(self, seq: int) -> T | None:
        return self.items.get(seq)

    def add(self, seq: int, item: T) -> None:
        self.items[seq] = item
        self.miss.pop(seq, None)

    def miss_increment(self, seq: int) -> int:
        """Count one more token visit on which ``seq`` was missing; return the count."""
        count = self.miss.get(seq, 0) + 1
        self.miss[seq] = count
        return count

    def release_to(self, seq: int) -> None:
        """Forget everything up to and including ``seq``; the window starts after it."""
        count = (seq - self.head + 1) & U32
        if count == 0 or count > ROLLOVER_POINT:
            return  # seq is before the window: nothing to release
        items, miss = self.items, self.miss
        if count > QUEUE_SIZE:  # far past the window: everything held goes
            items.clear()
            miss.clear()
        elif items or miss:
            if len(items) + len(miss) < count:
                lo = self.head
                for key in [k for k in items if ((k - lo) & U32) < count]:
                    del items[key]
                for key in [k for k in miss if ((k - lo) & U32) < count]:
                    del miss[key]
            else:
                s = self.head
                pop = items.pop
                if miss:
                    for _ in range(count):
                        pop(s, None)
                        miss.pop(s, None)
                        s = (s + 1) & U32
                elif s + count <= U32:  # no wrap inside the released range
                    for key in range(s, s + count):
                        pop(key, None)
                else:
                    for _ in range(count):
                        pop(s, None)
                        s = (s + 1) & U32
        self.head = (seq + 1) & U32

    def in_order_from(self, start: int) -> Iterator[int]:
        """Seqs held, in ring order starting at ``start`` (used to re-send old messages)."""
        return iter(sorted(self.items, key=lambda k: (k - start) & U32))

    def __len__(self) -> int:
        return len(self.items)
