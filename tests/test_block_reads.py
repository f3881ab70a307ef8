"""`BlockCache.read` under trio without a kernel: what a read asks of the backend (a real file:// backend,
a real disk tier in a tmp dir)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import trio

from pfs.backends import BackendOptions, open_backend
from pfs.cache import BlockCache, CacheConfig, DiskTier, Stream
from pfs.stats import Stats

MiB = 1 << 20


async def _in_thread(fn: Callable, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


def test_a_small_random_read_that_misses_takes_just_its_bytes_and_the_block_follows_at_its_second(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(4 * MiB)
    (root / "big").write_bytes(data)
    backend = open_backend(f"file://{root}", BackendOptions())
    stats = Stats()
    disk = DiskTier(str(tmp_path / "cache"), 1 << 30)
    cache = BlockCache(CacheConfig(block_size=MiB), disk, stats, _in_thread, _in_thread)
    obj = cache.object(backend.id, "big", "v1", len(data))

    async def opener():
        return await trio.to_thread.run_sync(backend.open_reader, "big", len(data))

    async def random_read(offset: int) -> None:
        got = await cache.read(obj, offset, 4096, opener, Stream())
        assert bytes(got) == data[offset : offset + 4096]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache.attach(nursery)
            await random_read(MiB + MiB // 2)
            assert stats.snapshot().get("cache_misses_partial") == 1
            assert not stats.snapshot().get("fill_blocks")  # touched once: only its bytes
            await random_read(MiB + 4096)
            assert stats.snapshot().get("cache_misses_partial") == 2
        assert stats.snapshot().get("fill_blocks") == 1  # touched twice: fetched whole behind the read
        cache.attach(None)  # no background work from here on
        reads = stats.snapshot()["backend_reads"]
        await random_read(MiB + 100)
        assert stats.snapshot()["backend_reads"] == reads
        # a read at offset 0 starts a sequential reader: whole blocks
        await cache.read(obj, 0, 4096, opener, Stream())
        assert stats.snapshot().get("cache_misses_partial") == 2

    try:
        trio.run(main)
    finally:
        disk.close()
        backend.close()
