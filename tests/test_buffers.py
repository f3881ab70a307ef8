"""The pool of block buffers, in-process: a buffer anyone still reads is never handed out again, a free one
is reused, and the pool never maps more than it was given."""

from __future__ import annotations

import os

import pytest

from pfs.cache import buffers as buffers_module
from pfs.cache.buffers import BufferPool, pooled
from pfs.cache.disk import DiskTier
from pfs.cache.memory import MemoryTier

MiB = 1 << 20


def test_a_buffer_is_reused_only_once_no_view_of_it_is_left():
    pool = BufferPool(MiB, count=4)
    block = pool.take(MiB)
    block[:5] = b"first"
    part = block[1:3]  # a reader's slice, as a FUSE reply takes it
    buffer = pooled(block)
    del block
    pool.give_back(buffer)  # the holder let go, the slice did not
    other = pool.take(MiB)
    assert pooled(other) is not buffer and bytes(part) == b"ir"
    del part
    pool.give_back(buffer)
    assert pooled(pool.take(MiB)) is buffer


def test_buffers_freed_without_being_given_back_are_found_by_take():
    pool = BufferPool(MiB, count=2)
    first, second = pool.take(MiB), pool.take(MiB)
    assert pool.take(MiB) is None  # every buffer lent: the caller allocates its own
    kept = pooled(second)
    del first
    assert pooled(pool.take(MiB)) not in (None, kept)
    assert pool.mapped() == 2 * MiB


def test_only_whole_blocks_are_pooled():
    """A file's last block, shorter, would hold a whole buffer while the memory budget counts its length."""
    pool = BufferPool(4 * MiB, count=4)
    assert pool.take(128 << 10) is None and pool.take(3 * MiB) is None and pool.take(5 * MiB) is None
    assert len(pool.take(4 * MiB)) == 4 * MiB


def test_free_buffers_no_read_took_are_unmapped(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(buffers_module.time, "monotonic", lambda: now[0])
    pool = BufferPool(MiB, count=8)
    blocks = [pool.take(MiB) for _ in range(4)]
    buffers = [pooled(block) for block in blocks]
    del blocks
    for buffer in buffers[:3]:
        pool.give_back(buffer)
    now[0] = buffers_module.IDLE_S + 1
    pool.give_back(buffers[3])  # evictions go on, and nothing took the three freed before
    assert pool.mapped() == MiB and all(b.closed for b in buffers[:3])


def test_the_memory_tier_gives_evicted_blocks_back_and_kept_ones_stay_intact(tmp_path):
    """Blocks read from the disk tier through a small budget, one after another: each new block lands in a
    buffer an evicted one left, and a slice still held of an evicted block keeps its bytes."""
    pool = BufferPool(MiB, count=4)  # two blocks in memory, one held by a reader, one being read
    memory = MemoryTier(2 * MiB, pool)
    disk = DiskTier(str(tmp_path / "cache"), 64 * MiB, max_block=MiB)
    try:
        blocks = {f"b|x|{i}": os.urandom(MiB) for i in range(8)}
        for key, data in blocks.items():
            disk.put(key, data)
        assert disk.flush(10)
        disk._index.clear()
        held = None
        for key, data in blocks.items():
            (read,) = disk.get_many([key], pool)
            assert pooled(read) is not None and read == data
            memory.put(key, read)
            if key == "b|x|1":
                held = read[100:200]
            del read
        assert bytes(held) == blocks["b|x|1"][100:200]
        for key in list(memory._blocks):
            assert memory.get(key) == blocks[key]
        assert pool.mapped() <= 4 * MiB
    finally:
        disk.close()


@pytest.mark.parametrize("damage_at", [0, MiB - 1])
def test_a_corrupt_block_read_into_a_pool_buffer_is_dropped(tmp_path, damage_at):
    pool = BufferPool(MiB, count=2)
    disk = DiskTier(str(tmp_path / "cache"), 64 * MiB, max_block=MiB)
    try:
        data = os.urandom(MiB)
        disk.put("b|x|0", data)
        assert disk.flush(10)
        (path,) = [
            os.path.join(d, f) for d, _, fs in os.walk(disk.directory) for f in fs if f.endswith(".val")
        ]
        with open(path, "r+b") as f:
            f.seek(damage_at)
            f.write(bytes([data[damage_at] ^ 1]))
        assert disk.get_many(["b|x|0"], pool) == [None] and disk.corrupt_blocks == 1
    finally:
        disk.close()
