"""Block buffers reused from one block to the next: blocks read from the disk tier, and blocks fetched
from an object store whose reader reads a GET's body into them (`Reader.fills_buffers`).

A fresh multi-MiB buffer costs a page fault for each of its 4 KiB pages when it is first written, and an
munmap when it is freed (the daemon's malloc gives every buffer above about 1 MiB a mapping of its own, so
that freed blocks go back to the system: see pfs/mount/lifecycle.py). On the benchmark machine a fault costs
about 4 us: a warm read of a 1 GiB file took 263,000 faults and about a second of system time for them,
where the buffer a block was read into before is already mapped; a cold one as many (41,600 and 43,000
now, the first budget's worth of buffers).

Buffers are anonymous mappings lent out as memoryviews. A buffer is free again once no view of it is
left, and the pool learns that from the mapping itself (one that is exported cannot be resized), never
from reference counts: a buffer still read by anyone is never handed out again. The memory tier gives a
block's buffer back when it evicts the block (`give_back`); buffers freed otherwise are found by `take`.
At most `count` buffers exist (the memory budget's worth of blocks and one per disk reader). A free buffer
no read took within IDLE_S is unmapped: evictions make room for the reads right behind them, which take
the buffers freed, but when those reads come from the backend (in buffers of their own) the freed ones
would be kept beside them, up to twice the budget.

`take` is called from worker threads, `give_back` on the trio loop: both under one lock.
"""

from __future__ import annotations

import mmap
import threading
import time
from collections import deque

IDLE_S = 1.0  # a free buffer no read took for this long is unmapped
PROBE = 8  # buffers lent out that `take` looks at for one that is free again


class BufferPool:
    def __init__(self, size: int, count: int) -> None:
        self.size = size  # bytes per buffer
        self.count = count  # the most buffers mapped at once
        self._free: deque[tuple[float, mmap.mmap]] = deque()  # (when freed, buffer), oldest first
        self._lent: deque[mmap.mmap] = deque()  # oldest lent first
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> memoryview | None:
        """A writable view of a whole buffer (`nbytes` must be its size) that no one else holds; None for
        any other size or when every buffer is in use (the caller allocates one of its own). Only whole
        blocks: the memory budget counts a block's length, and a file's last block in a buffer of a whole
        block would hold more than it counts (small blocks come from malloc's heap, reused already)."""
        if nbytes != self.size:
            return None
        with self._lock:
            buffer = self._free.pop()[1] if self._free else self._unused_lent()
            if buffer is None:
                if len(self._lent) >= self.count:
                    return None
                buffer = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # not shmem
            self._lent.append(buffer)
            return memoryview(buffer)  # exported before the lock goes: no one else can take it

    def give_back(self, buffer: mmap.mmap) -> None:
        """`buffer` (a block's `obj`) lost its holder: free for the next `take` if no view of it is left."""
        with self._lock:
            if not _unused(buffer) or buffer not in self._lent:
                return
            self._lent.remove(buffer)
            now = time.monotonic()
            self._free.append((now, buffer))
            while now - self._free[0][0] > IDLE_S:
                self._free.popleft()[1].close()

    def _unused_lent(self) -> mmap.mmap | None:
        for _ in range(min(PROBE, len(self._lent))):
            buffer = self._lent.popleft()
            if _unused(buffer):
                return buffer
            self._lent.append(buffer)
        return None

    def mapped(self) -> int:
        """Bytes of buffers mapped now (lent out or free)."""
        with self._lock:
            return (len(self._lent) + len(self._free)) * self.size


def pooled(block: object) -> mmap.mmap | None:
    """The pool buffer `block` is a view of, if it is one."""
    if isinstance(block, memoryview) and isinstance(block.obj, mmap.mmap):
        return block.obj
    return None


def _unused(buffer: mmap.mmap) -> bool:
    """No view of `buffer` is left: resizing a mapping (to its own size, which changes nothing) is refused
    while any buffer of it is exported."""
    try:
        buffer.resize(len(buffer))
    except BufferError:
        return False
    return True
