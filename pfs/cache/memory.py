"""The memory tier and the one memory budget of a mount.

The budget covers every block a mount holds in memory: blocks in the memory tier, blocks being fetched and
blocks waiting to be written to the disk tier, however many files are open, each byte counted once. The
memory tier is the only part that can shrink on demand, so it evicts least-recently-used blocks to make
room; prefetch asks for room with `try_reserve` and is simply skipped when the budget is taken.

A block fetched from the backend is both kept here and queued for the disk tier: one buffer, counted once,
and not evicted while the disk tier's writer holds it (that would free nothing). Counted twice, as it was,
the blocks of a cold sequential read filled the budget while the disk caught up, prefetch found no room and
the reader fetched block after block itself (40 of the 256 blocks of a 1 GiB file prefetched).

Used only on the trio loop: no method awaits, so each runs without a checkpoint (nothing else can interleave
between reading and updating the LRU order or the byte counts).
"""

from __future__ import annotations

from collections import OrderedDict

from pfs.cache.buffers import BufferPool, pooled


class MemoryTier:
    def __init__(self, limit: int, buffers: BufferPool | None = None) -> None:
        self.limit = limit
        self.buffers = buffers  # where the buffers of evicted blocks read from the disk tier go back
        self.cached = 0  # bytes of blocks in the LRU
        self.reserved = 0  # bytes in flight: being fetched, or held by the disk tier's writer alone
        self.peak = 0  # the most ever held at once
        self._blocks: OrderedDict[str, bytes | memoryview] = OrderedDict()
        self._writing: dict[str, int] = {}  # key -> bytes the disk tier's writer holds, until `written`
        self._outside: set[str] = set()  # those of `_writing` counted in `reserved`, not in the LRU

    @property
    def used(self) -> int:
        return self.cached + self.reserved

    @property
    def awaited(self) -> bool:
        """Whether bytes will come back without evicting anything: fetches or disk writes under way."""
        return bool(self.reserved or self._writing)

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

    def put_writing(self, key: str, data: bytes | memoryview) -> bool:
        """Keep a block whose bytes the caller reserved and the disk tier's writer now holds too: the
        reservation becomes the block's place in the LRU, where it stays until `written(key)`. False, and
        nothing taken over, when the key is kept or being written already."""
        if key in self._blocks or key in self._writing:
            if key in self._blocks:
                self._blocks.move_to_end(key)
            return False
        self._writing[key] = len(data)
        self.reserved -= len(data)
        self.cached += len(data)
        self._blocks[key] = data
        return True

    def hold_writing(self, key: str, nbytes: int) -> bool:
        """Reserved bytes the disk tier's writer holds alone (a piece, never kept here), until
        `written(key)`. False, and nothing taken over, when the key is being written already."""
        if key in self._writing:
            return False
        self._writing[key] = nbytes
        self._outside.add(key)
        return True

    def written(self, key: str) -> None:
        """The disk tier's writer let go of `key` (written, or given up)."""
        nbytes = self._writing.pop(key, 0)
        if key in self._outside:
            self._outside.discard(key)
            self.reserved -= nbytes

    def discard(self, key: str) -> None:
        if key not in self._blocks:
            return
        nbytes = self._drop(key)
        if key in self._writing:  # gone from the LRU, still held by the writer
            self._outside.add(key)
            self.reserved += nbytes

    def _drop(self, key: str) -> int:
        """Take `key`'s block out of the LRU (its buffer back to the pool if no one else reads it)."""
        data = self._blocks.pop(key)
        nbytes, buffer = len(data), pooled(data)
        self.cached -= nbytes
        del data
        if buffer is not None and self.buffers is not None:
            self.buffers.give_back(buffer)
        return nbytes

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
        while self.used + amount > self.limit:
            # The oldest block the writer does not hold (it holds few: its queue is bounded).
            victim = next((key for key in self._blocks if key not in self._writing), None)
            if victim is None:
                break
            self._drop(victim)
        fits = self.used + amount <= self.limit
        self.peak = max(self.peak, self.used + amount if fits else self.used)
        return fits
