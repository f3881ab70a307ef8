"""`BlockCache.read` under trio without a kernel: what a read asks of the backend (a real file:// backend,
a real disk tier in a tmp dir)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
import trio

from pfs.backends import BackendOptions, open_backend
from pfs.cache import BlockCache, CacheConfig, DiskTier, Stream
from pfs.cache.blocks import (
    AHEAD_SHARE,
    DENSE_READS,
    FILL_AFTER_PIECES,
    PIECE,
    SWEEP_AFTER_BLOCKS,
    SWEEP_DISK_SHARE,
    SWEEP_SPREAD,
)
from pfs.counters import Stats

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

MiB = 1 << 20


async def _in_thread(fn: Callable, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


def _one_big_file(
    tmp_path, size: int, disk_limit: int = 1 << 30
) -> tuple[bytes, Any, Stats, DiskTier, BlockCache, Any]:
    """A file:// backend holding one file `big` of `size` random bytes, and a cache of 1 MiB blocks with a
    disk tier in `tmp_path`: (data, backend, stats, disk, cache, the file's cached object)."""
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(size)
    (root / "big").write_bytes(data)
    backend = open_backend(f"file://{root}", BackendOptions())
    stats = Stats()
    disk = DiskTier(str(tmp_path / "cache"), disk_limit)
    cache = BlockCache(CacheConfig(block_size=MiB), disk, stats, _in_thread, _in_thread)
    return data, backend, stats, disk, cache, cache.object(backend.id, "big", "v1", len(data))


def test_small_random_reads_keep_their_pieces_and_a_block_read_in_two_places_is_fetched_whole(tmp_path):
    data, backend, stats, disk, cache, obj = _one_big_file(tmp_path, 4 * MiB)

    async def opener():
        return await trio.to_thread.run_sync(backend.open_reader, "big", len(data))

    async def random_read(offset: int, size: int = 4096) -> None:
        got = await cache.read(obj, offset, size, opener, Stream())
        assert bytes(got) == data[offset : offset + size]

    def count(name: str) -> int:
        return stats.snapshot().get(name, 0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache.attach(nursery)
            await random_read(MiB + MiB // 2)
            assert count("cache_misses_partial") == 1
            assert count("backend_read_bytes") == PIECE  # its piece, not its block
            await trio.to_thread.run_sync(disk.flush)
            await random_read(MiB + MiB // 2 + 8192)  # the same piece: from the disk tier
            assert count("cache_misses_partial") == 1 and count("cache_hits_disk") == 1
            assert not count("fill_blocks")
            await random_read(3 * MiB + 5 * PIECE)  # another block: its piece only
            assert count("backend_read_bytes") == 2 * PIECE
            assert FILL_AFTER_PIECES == 2
            await random_read(MiB + MiB // 2 + PIECE - 2048, 4096)  # across two pieces: the second fetched
            assert count("cache_misses_partial") == 3
        assert count("fill_blocks") == 1  # a second piece of the block: the whole block follows
        cache.attach(None)  # no background work from here on
        reads = count("backend_reads")
        await random_read(MiB + 100)
        await random_read(3 * MiB + 5 * PIECE + 100)  # its piece, from the disk tier
        assert count("backend_reads") == reads
        # a read at offset 0 starts a sequential reader: whole blocks
        await cache.read(obj, 0, 4096, opener, Stream())
        assert count("cache_misses_partial") == 3
        # evicting the file drops its pieces with its blocks
        await cache.evict(obj)
        await trio.to_thread.run_sync(disk.flush)
        assert not [k for k in disk._cache.iterkeys() if str(k).startswith(obj.pieces_prefix)]
        await random_read(3 * MiB + 5 * PIECE)
        assert count("cache_misses_partial") == 4

    try:
        trio.run(main)
    finally:
        disk.close()
        backend.close()


@pytest.mark.parametrize("disk_limit", [1 << 30, 96 * MiB], ids=["file small for the tier", "file too big"])
def test_random_reads_spread_over_a_file_fetch_the_rest_of_it_behind_them(tmp_path, disk_limit):
    blocks = 40
    data, backend, stats, disk, cache, obj = _one_big_file(tmp_path, blocks * MiB, disk_limit)
    sweeps = disk_limit * SWEEP_DISK_SHARE >= len(data)  # 40 MiB against 256 or 24 MiB

    async def opener():
        return await trio.to_thread.run_sync(backend.open_reader, "big", len(data))

    async def random_read(offset: int) -> None:
        got = await cache.read(obj, offset, 4096, opener, Stream())
        assert bytes(got) == data[offset : offset + 4096]

    def count(name: str) -> int:
        return stats.snapshot().get(name, 0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache.attach(nursery)
            assert max(SWEEP_AFTER_BLOCKS, blocks // SWEEP_SPREAD) == SWEEP_AFTER_BLOCKS
            # Reads spread over fewer blocks, however many: pieces, never the whole file
            for i in range(SWEEP_AFTER_BLOCKS - 1):
                await random_read(3 * i * MiB // 2 + 8192)
                await random_read(3 * i * MiB // 2 + 8192 + 4096)  # the same block again
            assert not count("sweeps")
            await random_read(30 * MiB + 3 * PIECE)  # one more block
            assert count("sweeps") == int(sweeps)
            with trio.fail_after(30):
                while obj.digest in cache._sweeping:
                    await trio.sleep(0.01)
        cache.attach(None)
        await trio.to_thread.run_sync(disk.flush)
        cached = await cache.cached_bytes(obj)
        if not sweeps:
            assert cached < len(data) // 2  # pieces and a few filled blocks
            return
        assert cached == len(data)
        # every other block now comes from the disk tier, and no block was fetched twice
        assert count("backend_read_bytes") <= len(data) + 2 * SWEEP_AFTER_BLOCKS * PIECE
        reads = count("backend_reads")
        for i in range(blocks):
            await random_read(i * MiB + 5 * PIECE + 100)
        assert count("backend_reads") == reads

    try:
        trio.run(main)
    finally:
        disk.close()
        backend.close()


def _random_reads_from_disk(
    tmp_path, offsets: list[int], before: Callable[[DiskTier], None] = lambda d: None
):
    """Random 4 KiB reads at `offsets` of a 4 MiB file whose four blocks are all in the disk tier (`before`
    each); (the arguments of every worker call for the disk tier, the stats)."""
    data, backend, stats, disk, _, obj = _one_big_file(tmp_path, 4 * MiB)
    for index in range(4):
        disk.put(obj.key(index), data[index * MiB : (index + 1) * MiB])
    assert disk.flush(10)
    handed: list[tuple] = []

    async def run_disk(fn: Callable, *args: Any) -> Any:
        handed.append(args)
        return await _in_thread(fn, *args)

    cache = BlockCache(CacheConfig(block_size=MiB), disk, stats, _in_thread, run_disk)

    async def opener():
        raise AssertionError("every block is in the disk tier")

    async def main() -> None:
        for at in offsets:
            before(disk)
            got = await cache.read(obj, at, 4096, opener, Stream())
            assert bytes(got) == data[at : at + 4096]

    try:
        trio.run(main)
    finally:
        disk.close()
        backend.close()
    return handed, stats


def test_random_reads_of_a_block_in_the_page_cache_take_no_worker_thread(tmp_path):
    """The disk tier's first read of a block keeps its file open; the next ones are read on the loop from
    the page cache (a worker thread hand-off costs more than the read)."""
    offsets = [index * MiB + offset for offset in (100_000, 300_000, 700_000) for index in range(4)]
    handed, stats = _random_reads_from_disk(tmp_path, offsets)
    assert len(handed) == 4  # the first read of each block
    assert not any(args[2] for args in handed)  # blocks the tier knows: their pieces not looked for
    assert stats.snapshot()["cache_hits_disk_inline"] == 8


def test_blocks_are_read_ahead_whole_only_for_an_object_read_densely(tmp_path):
    """A reader sampling a file sparsely reads only its chunks from the disk tier; once the file had
    DENSE_READS random reads per block, a block read again is read ahead whole."""
    offsets = [(n % 4) * MiB + 4096 + (n * 20_011) % (MiB - 8192) for n in range(DENSE_READS * 4 + 1)]
    # Every read goes to a worker, as after the page cache was dropped.
    handed, _ = _random_reads_from_disk(tmp_path, offsets, lambda disk: disk._open_files.clear())
    assert [args[-1] for args in handed] == [False] * (DENSE_READS * 4 - 1) + [True, True]  # `dense`


def test_a_damaged_piece_is_dropped_and_fetched_again(tmp_path):
    data, backend, stats, disk, cache, obj = _one_big_file(tmp_path, 2 * MiB)
    offset = MiB + 3 * PIECE + 512

    async def opener():
        return await trio.to_thread.run_sync(backend.open_reader, "big", len(data))

    async def main() -> bytes:
        got = await cache.read(obj, offset, 4096, opener, Stream())
        await trio.to_thread.run_sync(disk.flush)
        return bytes(got)

    try:
        assert trio.run(main) == data[offset : offset + 4096]
        (name,) = [f for f in (tmp_path / "cache").rglob("*.val")]
        with open(name, "r+b") as f:  # flip a byte of the piece the next read needs
            f.seek(offset % PIECE)
            byte = f.read(1)
            f.seek(offset % PIECE)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert trio.run(main) == data[offset : offset + 4096]
        assert disk.corrupt_blocks == 1 and stats.snapshot()["cache_misses_partial"] == 2
    finally:
        disk.close()
        backend.close()


class _CountingReader:
    """A file:// reader that remembers which blocks each backend read covered."""

    fills_buffers = False

    def __init__(self, reader: Any, block: int, fetched: list[int]) -> None:
        self._reader, self._block, self._fetched = reader, block, fetched
        self.version = reader.version

    def read(self, offset: int, length: int) -> bytes:
        self._fetched.extend(range(offset // self._block, (offset + length - 1) // self._block + 1))
        return self._reader.read(offset, length)

    def close(self) -> None:
        self._reader.close()


def _read_streams(tmp_path, files: int, config: CacheConfig) -> tuple[BlockCache, dict[str, list[int]]]:
    """Read `files` files of 24 blocks in order, 1 MiB at a time, all at once (round robin), through a
    cache without a disk tier; checks every byte and returns the cache and the blocks fetched per file."""
    root = tmp_path / "root"
    root.mkdir()
    bs, size = config.block_size, 24 * config.block_size
    data = {f"f{i}": os.urandom(size) for i in range(files)}
    for name, content in data.items():
        (root / name).write_bytes(content)
    backend = open_backend(f"file://{root}", BackendOptions())
    cache = BlockCache(config, None, Stats(), _in_thread, _in_thread)
    fetched: dict[str, list[int]] = {name: [] for name in data}

    def opener(name: str) -> Callable:
        async def open_reader() -> _CountingReader:
            reader = await trio.to_thread.run_sync(backend.open_reader, name, size)
            return _CountingReader(reader, bs, fetched[name])

        return open_reader

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache.attach(nursery)
            streams = {name: Stream() for name in data}
            objects = {name: cache.object(backend.id, name, "v1", size) for name in data}
            for offset in range(0, size, MiB):
                for name in data:
                    got = await cache.read(objects[name], offset, MiB, opener(name), streams[name])
                    assert bytes(got) == data[name][offset : offset + MiB]
                    ahead = sum(max(0, s.prefetched_to * bs - s.next_offset) for s in streams.values())
                    assert ahead <= config.memory_limit * AHEAD_SHARE + files * bs
                    await trio.sleep(0.001)  # the prefetches started run
            cache.attach(None)

    try:
        trio.run(main)
    finally:
        backend.close()
    return cache, fetched


def _counted_file(
    tmp_path, size: int, config: CacheConfig
) -> tuple[bytes, Any, BlockCache, Any, Callable, list]:
    """A file:// backend holding one file `big` of `size` random bytes and a cache without a disk tier:
    (data, backend, cache, the file's cached object, its opener, the blocks each backend read covered)."""
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(size)
    (root / "big").write_bytes(data)
    backend = open_backend(f"file://{root}", BackendOptions())
    cache = BlockCache(config, None, Stats(), _in_thread, _in_thread)
    fetched: list[int] = []

    async def opener() -> _CountingReader:
        reader = await trio.to_thread.run_sync(backend.open_reader, "big", size)
        return _CountingReader(reader, config.block_size, fetched)

    return data, backend, cache, cache.object(backend.id, "big", "v1", size), opener, fetched


def test_a_window_with_a_block_already_on_its_way_fetches_only_the_others(tmp_path):
    """A stream reading ahead over a block another read is fetching (or has kept) asks only for the blocks
    on either side of it, in one request each, and every block is fetched once."""
    config = CacheConfig(block_size=MiB, fetch_blocks=4, prefetch_blocks=8, memory_limit=32 * MiB)
    data, backend, cache, obj, opener, fetched = _counted_file(tmp_path, 12 * MiB, config)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache.attach(nursery)
            got = await cache.read(obj, 7 * MiB, MiB, opener, Stream())  # block 7, read on its own
            assert bytes(got) == data[7 * MiB : 8 * MiB] and fetched == [7]
            stream = Stream()
            for offset in range(0, len(data), MiB):
                got = await cache.read(obj, offset, MiB, opener, stream)
                assert bytes(got) == data[offset : offset + MiB]
            cache.attach(None)

    try:
        trio.run(main)
    finally:
        backend.close()
    assert sorted(fetched) == list(range(12))


def test_a_read_waiting_for_room_takes_the_block_a_prefetch_started_meanwhile(tmp_path):
    """A read that waits for room in the budget and finds, once it has room, that a prefetch started its
    block meanwhile, waits for that fetch instead of fetching the block a second time."""
    config = CacheConfig(block_size=MiB, memory_limit=4 * MiB)
    data, backend, cache, obj, opener, fetched = _counted_file(tmp_path, 8 * MiB, config)

    async def main() -> None:
        got: list[bytes] = []

        async def read_block_5() -> None:
            got.append(bytes(await cache.read(obj, 5 * MiB, MiB, opener, Stream())))

        async with trio.open_nursery() as nursery:
            cache.attach(nursery)
            cache.memory.reserve(config.memory_limit)  # the budget held by fetches under way
            nursery.start_soon(read_block_5)
            await trio.sleep(0.05)  # the read waits for room
            cache.release_room(2 * MiB)  # room: the read may go on...
            assert cache._schedule(obj, 5, 1, opener)  # ...but a prefetch starts the same block first
            cache.release_room(config.memory_limit - 2 * MiB)
        assert got == [data[5 * MiB : 6 * MiB]]
        cache.attach(None)

    try:
        trio.run(main)
    finally:
        backend.close()
    assert fetched == [5]


def test_sequential_streams_share_the_budget_for_reading_ahead_and_never_fetch_a_block_twice(tmp_path):
    """Four streams whose windows would hold twice the budget: each gets a share of it, so no prefetch
    evicts blocks another stream fetched and has not read yet."""
    config = CacheConfig(block_size=MiB, fetch_blocks=4, prefetch_blocks=8, memory_limit=24 * MiB)
    cache, fetched = _read_streams(tmp_path, 4, config)
    for blocks in fetched.values():
        assert sorted(blocks) == list(range(24))
    assert cache.memory.peak <= config.memory_limit


def test_one_stream_reads_ahead_in_several_requests_within_the_budget(tmp_path):
    """Alone, a stream reads its whole window ahead, cut into requests of at most `fetch_blocks`, at least
    two per window, and never so far ahead that blocks it has not read yet are evicted."""
    config = CacheConfig(block_size=MiB, fetch_blocks=4, prefetch_blocks=4, memory_limit=8 * MiB)
    cache, fetched = _read_streams(tmp_path, 1, config)
    (blocks,) = fetched.values()
    assert sorted(blocks) == list(range(24))
    reads = cache.stats.snapshot()["backend_reads"]
    assert 24 / 2 <= reads < 24  # requests of two blocks (a window of four cut in two), the first alone
    assert cache.memory.peak <= config.memory_limit


def test_the_budget_held_by_disk_writes_comes_back_in_every_loop_that_used_the_cache(tmp_path):
    data, backend, _, disk, cache, obj = _one_big_file(tmp_path, 4 * MiB)

    async def opener():
        return await trio.to_thread.run_sync(backend.open_reader, "big", len(data))

    async def read_block(index: int) -> None:
        async with trio.open_nursery() as nursery:
            cache.attach(nursery)
            got = await cache.read(obj, index * MiB, MiB, opener, Stream())
            assert bytes(got) == data[index * MiB : (index + 1) * MiB]
            await trio.to_thread.run_sync(disk.flush)
            await trio.sleep(0.05)  # the writer's give-back runs on the loop
            assert cache.memory.reserved == 0
            cache.attach(None)

    try:
        for index in range(3):  # a fresh loop each time, as a remount's would be
            trio.run(read_block, index)
    finally:
        disk.close()
        backend.close()


def test_a_block_the_disk_tier_is_writing_is_counted_once_and_kept_until_written(tmp_path):
    """A fetched block is kept in memory and queued for the disk tier: one buffer, counted once in the
    budget, and not evicted while the writer holds it; a reader that finds the budget held by such blocks
    waits for the writer instead of going past the budget, and reads on once it has written."""
    data, backend, stats, disk, _, _ = _one_big_file(tmp_path, 12 * MiB)
    config = CacheConfig(block_size=MiB, fetch_blocks=2, prefetch_blocks=2, memory_limit=6 * MiB)
    cache = BlockCache(config, disk, stats, _in_thread, _in_thread)
    obj = cache.object(backend.id, "big", "v1", len(data))
    paused = threading.Event()
    write_batch = disk._write_batch

    def slow_write_batch(batch: list) -> None:
        paused.wait(10)
        write_batch(batch)

    disk._write_batch = slow_write_batch  # the real writer, held back: a disk slower than the backend

    async def opener():
        return await trio.to_thread.run_sync(backend.open_reader, "big", len(data))

    async def main() -> None:
        read_to = 0

        async def read_all() -> None:
            nonlocal read_to
            stream = Stream()
            for offset in range(0, len(data), MiB):
                got = await cache.read(obj, offset, MiB, opener, stream)
                assert bytes(got) == data[offset : offset + MiB]
                read_to = offset + MiB

        async with trio.open_nursery() as nursery:
            cache.attach(nursery)
            got = await cache.read(obj, 0, MiB, opener, Stream())
            assert bytes(got) == data[:MiB]
            assert cache.memory.used == MiB  # kept and being written: once, not twice
            nursery.start_soon(read_all)
            await trio.sleep(0.3)
            assert read_to < len(data)  # waiting for the writer: the budget is all blocks it holds
            assert cache.memory.used <= config.memory_limit
            assert all(obj.key(i) in cache.memory for i in range(read_to // MiB))  # none evicted
            paused.set()
        assert read_to == len(data) and cache.memory.peak <= config.memory_limit + MiB
        await trio.to_thread.run_sync(disk.flush)
        await trio.sleep(0.05)  # the writer's give-back runs on the loop
        assert cache.memory.reserved == 0 and not cache.memory.awaited
        cache.attach(None)

    try:
        trio.run(main)
    finally:
        paused.set()
        disk.close()
        backend.close()


def test_pages_the_kernel_lost_from_a_kept_file_are_read_alone(tmp_path):
    """Reading a file again whose pages the kernel kept but for a few asks for those few, small reads 1-2 MiB
    apart: each takes just its bytes from the disk tier, neither whole blocks nor a window ahead; a
    reader going through the file in order is still a stream that reads ahead."""
    data, backend, _, disk, warm, obj = _one_big_file(tmp_path, 16 * MiB)

    async def opener():
        return await trio.to_thread.run_sync(backend.open_reader, "big", len(data))

    async def fill() -> None:
        for offset in range(0, len(data), MiB):
            await warm.read(obj, offset, MiB, opener, Stream())
        await trio.to_thread.run_sync(disk.flush)

    stats = Stats()
    cache = BlockCache(CacheConfig(block_size=MiB), disk, stats, _in_thread, _in_thread)  # a remount's

    async def main() -> None:
        await fill()
        async with trio.open_nursery() as nursery:
            cache.attach(nursery)
            lost = Stream()
            for offset, size in [
                (3 * 4096, 4096),
                (367 * 4096, 32768),
                (701 * 4096, 4096),
                (1009 * 4096, 8192),
            ]:
                got = await cache.read(obj, offset, size, opener, lost)
                assert bytes(got) == data[offset : offset + size]
            await trio.sleep(0.05)
            assert stats.snapshot().get("prefetch_blocks", 0) == 0
            assert cache.memory.cached == 0  # no whole block was read for them
            assert stats.snapshot().get("backend_reads", 0) == 0
            ordered = Stream()
            for offset in range(8 * MiB, 12 * MiB, MiB):
                got = await cache.read(obj, offset, MiB, opener, ordered)
                assert bytes(got) == data[offset : offset + MiB]
            assert stats.snapshot().get("prefetch_blocks", 0) > 0
            cache.attach(None)

    try:
        trio.run(main)
    finally:
        disk.close()
        backend.close()
