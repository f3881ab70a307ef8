"""The memory tier and the one memory budget of a mount.

The budget covers every block a mount holds in memory: blocks in the memory tier, blocks being fetched and
blocks waiting to be written to the disk tier, however many files are open. The memory tier is the only
part that can shrink on demand, so it evicts least-recently-used blocks to make room; prefetch asks for
room with `try_reserve` and is simply skipped when the budget is taken.

Used only on the trio loop: no method awaits, so each runs without a checkpoint (nothing else can interleave
between reading and updating the LRU order or the byte counts).
"""

from __future__ import annotations

from collections import OrderedDict


class MemoryTier:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cached = 0  # bytes of blocks in the LRU
        self.reserved = 0  # bytes in flight: being fetched, or waiting for the disk tier
        self.peak = 0  # the most ever held at once
        self._blocks: OrderedDict[str, bytes | memoryview] = OrderedDict()

    @property
    def used(self) -> int:
        return self.cached + self.reserved

    def get(self, key: str, touch: bool = True) -> bytes | memoryview | None:
        """A kept block; `touch` makes it the last to be evicted (else it keeps its place)."""
        data = self._blocks.get(key)
        if data is not None and touch:
            self._blocks.move_to_end(key)
        return data

    def __contains__(self, key: str) -> bool:
        return key in self._blocks

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Keep `data` if it fits once older blocks are evicted; otherwise drop it (it is also on disk)."""
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return
        if not self._make_room(len(data)):
            return
        self._blocks[key] = data
        self.cached += len(data)

    def discard(self, key: str) -> None:
        data = self._blocks.pop(key, None)
        if data is not None:
            self.cached -= len(data)

    def reserve(self, amount: int) -> None:
        """Room for a fetch that must happen (a read is waiting): may overshoot while nothing is evictable."""
        self._make_room(amount)
        self.reserved += amount
        self.peak = max(self.peak, self.used)

    def try_reserve(self, amount: int, share: float = 0.75) -> bool:
        """Room for optional work (prefetch): only while in-flight bytes stay under `share` of the budget."""
        if self.reserved + amount > self.limit * share or not self._make_room(amount):
            return False
        self.reserved += amount
        return True

    def release(self, amount: int) -> None:
        self.reserved -= amount

    def _make_room(self, amount: int) -> bool:
        while self._blocks and self.used + amount > self.limit:
            _, evicted = self._blocks.popitem(last=False)
            self.cached -= len(evicted)
        fits = self.used + amount <= self.limit
        self.peak = max(self.peak, self.used + amount if fits else self.used)
        return fits
