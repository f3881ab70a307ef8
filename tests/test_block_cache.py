"""`BlockCache` run under trio without a kernel: a real file:// backend, a real disk tier in a tmp dir.

Every read checks its bytes; requests are counted by the reader the test hands the cache (`CountingReader`)
and by the cache's own counters (`Stats`).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from pfs.backends import Backend, BackendOptions, Reader, open_backend
from pfs.cache import BlockCache, CacheConfig, DiskTier
from pfs.cache.blocks import PIECE, CachedObject, Stream
from pfs.counters import Stats

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

KiB = 1 << 10


async def _in_thread(fn: Callable, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


class CountingReader(Reader):
    """A backend reader that records every ranged read it serves (from worker threads)."""

    def __init__(self, inner: Reader) -> None:
        self.inner = inner
        self.version = inner.version
        self.reads: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            self.reads.append((offset, length))
        return self.inner.read(offset, length)

    def close(self) -> None:
        self.inner.close()


class Mount:
    """What a mount builds around the block cache, for one file of the backend root."""

    def __init__(self, backend: Backend, cache_dir: str, config: CacheConfig) -> None:
        self.backend = backend
        self.config = config
        self.stats = Stats()
        self.disk = DiskTier(cache_dir, 1 << 30)
        self.cache = BlockCache(config, self.disk, self.stats, _in_thread, _in_thread)
        self.opens = 0
        self.readers: list[CountingReader] = []

    def object(self, path: str) -> CachedObject:
        size = self.backend.stat(path).size
        return self.cache.object(self.backend.id, path, "v1", size)

    def opener(self, obj: CachedObject) -> Callable[[], Any]:
        """The simplest `OpenReader`: a new reader of `obj` for every call, each one counted."""

        async def open_reader() -> Reader:
            self.opens += 1
            reader = CountingReader(await _in_thread(self.backend.open_reader, obj.path, obj.size))
            self.readers.append(reader)
            return reader

        return open_reader

    def reads(self) -> list[tuple[int, int]]:
        return [read for reader in self.readers for read in reader.reads]

    def counter(self, name: str) -> int:
        return self.stats.snapshot().get(name, 0)

    async def settle(self) -> None:
        """Wait until no fetch holds bytes of the budget and every queued disk write is handed back."""
        with trio.fail_after(10):
            while self.cache.gauges()["memory_in_flight"]:
                await trio.sleep(0.001)
            await _in_thread(self.disk.flush)
            await trio.sleep(0.01)  # the writer's "written" callbacks run on the loop

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.disk.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def backend(root: Path):
    backend = open_backend(f"file://{root}", BackendOptions())
    yield backend
    backend.close()


@pytest.fixture
def new_mount(backend: Backend, tmp_path: Path):
    mounts: list[Mount] = []

    def make(config: CacheConfig) -> Mount:
        mount = Mount(backend, str(tmp_path / "cache"), config)  # every mount of a test shares the dir
        mounts.append(mount)
        return mount

    yield make
    for mount in mounts:
        mount.close()


def _file(root: Path, name: str, size: int) -> bytes:
    data = os.urandom(size)
    (root / name).write_bytes(data)
    return data


def test_concurrent_reads_of_a_cold_block_share_one_backend_read(root, new_mount):
    bs = 64 * KiB
    data = _file(root, "f", 3 * bs)
    mount = new_mount(CacheConfig(block_size=bs, memory_limit=16 * bs))
    obj = mount.object("f")
    opener = mount.opener(obj)
    ranges = [(0, bs), (0, 100), (bs // 2, bs // 2), (1000, 5000), (bs - 1, 1), (0, bs)]
    got: dict[int, bytes] = {}

    async def one(i: int, offset: int, size: int) -> None:
        got[i] = bytes(await mount.cache.read(obj, offset, size, opener, None))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i, (offset, size) in enumerate(ranges):
                nursery.start_soon(one, i, offset, size)

    trio.run(main)
    for i, (offset, size) in enumerate(ranges):
        assert got[i] == data[offset : offset + size]
    assert mount.reads() == [(0, bs)] and mount.opens == 1
    assert mount.counter("backend_reads") == 1 and mount.counter("cache_misses") == 1
    assert mount.counter("cache_waits") == len(ranges) - 1


def test_concurrent_sequential_readers_with_prefetch_fetch_every_block_once(root, new_mount):
    bs = 64 * KiB
    blocks = 24
    data = _file(root, "f", blocks * bs - 123)
    mount = new_mount(CacheConfig(block_size=bs, prefetch_blocks=4, memory_limit=64 * bs))
    obj = mount.object("f")

    async def reader(out: list[bytes]) -> None:
        stream, opener = Stream(), mount.opener(obj)
        for offset in range(0, obj.size, bs):
            out.append(bytes(await mount.cache.read(obj, offset, bs, opener, stream)))

    async def main() -> list[list[bytes]]:
        outs: list[list[bytes]] = [[] for _ in range(4)]
        async with trio.open_nursery() as nursery:
            mount.cache.attach(nursery)
            for out in outs:
                nursery.start_soon(reader, out)
        await mount.settle()
        return outs

    for out in trio.run(main):
        assert b"".join(out) == data
    fetched = sorted(mount.reads())
    assert sum(length for _, length in fetched) == obj.size  # no byte asked for twice
    assert mount.counter("backend_read_bytes") == obj.size


def test_a_sequential_reader_finds_the_blocks_ahead_of_it_prefetched(root, new_mount):
    bs = 64 * KiB
    blocks = 16
    data = _file(root, "f", blocks * bs)
    mount = new_mount(CacheConfig(block_size=bs, fetch_blocks=4, prefetch_blocks=4, memory_limit=32 * bs))
    obj = mount.object("f")

    async def main() -> list[bytes]:
        stream, opener, out = Stream(), mount.opener(obj), []
        async with trio.open_nursery() as nursery:
            mount.cache.attach(nursery)
            for offset in range(0, obj.size, bs):
                out.append(bytes(await mount.cache.read(obj, offset, bs, opener, stream)))
                await mount.settle()  # a reader slower than the backend: what is ahead is fetched
            mount.cache.attach(None)
        return out

    assert b"".join(trio.run(main)) == data
    # The first read starts the stream, the second continues it and sends the window ahead: every later
    # block was prefetched, several blocks a request, and found in memory.
    assert mount.counter("prefetch_blocks") == blocks - 2
    assert mount.counter("cache_hits_memory") == blocks - 2
    assert mount.counter("cache_misses") == blocks
    requests = mount.reads()
    assert len(requests) < blocks - 2 and max(length for _, length in requests) > bs
    assert sorted(requests) == sorted(set(requests))
    assert sum(length for _, length in requests) == obj.size


def test_a_random_reader_takes_pieces_and_no_window_ahead(root, new_mount):
    bs = 256 * KiB
    blocks = 32
    data = _file(root, "f", blocks * bs)
    mount = new_mount(CacheConfig(block_size=bs, prefetch_blocks=8, memory_limit=32 * bs))
    obj = mount.object("f")
    picked = [3, 17, 9, 28, 1]  # distinct blocks, fewer than a sweep needs, one piece each
    offsets = [index * bs + 1000 + 7 * index for index in picked]

    async def main() -> list[bytes]:
        stream, opener, out = Stream(), mount.opener(obj), []
        async with trio.open_nursery() as nursery:
            mount.cache.attach(nursery)
            for offset in offsets:
                out.append(bytes(await mount.cache.read(obj, offset, 4 * KiB, opener, stream)))
            await mount.settle()
            mount.cache.attach(None)
        return out

    assert trio.run(main) == [data[offset : offset + 4 * KiB] for offset in offsets]
    assert mount.counter("prefetch_blocks") == 0 and mount.counter("fill_blocks") == 0
    assert mount.counter("sweeps") == 0
    assert mount.reads() == [(offset - offset % PIECE, PIECE) for offset in offsets]
    assert mount.counter("backend_read_bytes") == len(picked) * PIECE


def test_random_reads_of_whole_blocks_far_apart_fetch_only_their_blocks(root, new_mount):
    bs = 128 * KiB
    blocks = 64
    data = _file(root, "f", blocks * bs)
    mount = new_mount(CacheConfig(block_size=bs, prefetch_blocks=8, memory_limit=64 * bs))
    obj = mount.object("f")
    picked = [40, 5, 60, 22, 50, 0, 31]  # each more than NEAR_BYTES (2 MiB) from the one before

    async def main() -> list[bytes]:
        stream, opener, out = Stream(), mount.opener(obj), []
        async with trio.open_nursery() as nursery:
            mount.cache.attach(nursery)
            for index in picked:
                out.append(bytes(await mount.cache.read(obj, index * bs, bs, opener, stream)))
            await mount.settle()
            mount.cache.attach(None)
        return out

    assert trio.run(main) == [data[index * bs : (index + 1) * bs] for index in picked]
    assert mount.counter("prefetch_blocks") == 0
    assert sorted(mount.reads()) == sorted((index * bs, bs) for index in picked)


def test_the_memory_budget_holds_under_many_readers_of_many_blocks(root, new_mount):
    bs = 64 * KiB
    limit = 6 * bs
    files = {f"f{i}": _file(root, f"f{i}", 40 * bs + 17 * i) for i in range(4)}
    mount = new_mount(CacheConfig(block_size=bs, fetch_blocks=2, prefetch_blocks=8, memory_limit=limit))
    highest = 0

    def watch() -> None:
        nonlocal highest
        highest = max(highest, mount.cache.memory.used)
        assert mount.cache.memory.used <= limit

    async def sequential(name: str) -> None:
        obj = mount.object(name)
        stream, opener, out = Stream(), mount.opener(obj), []
        for offset in range(0, obj.size, 48 * KiB):  # reads across block boundaries
            out.append(bytes(await mount.cache.read(obj, offset, 48 * KiB, opener, stream)))
            watch()
        assert b"".join(out) == files[name]

    async def scattered(name: str, seed: int) -> None:
        obj = mount.object(name)
        stream, opener, rng = Stream(), mount.opener(obj), random.Random(seed)
        for _ in range(60):
            offset = rng.randrange(obj.size)
            size = rng.choice([512, 4 * KiB, 100 * KiB, 2 * bs])
            got = await mount.cache.read(obj, offset, size, opener, stream)
            assert bytes(got) == files[name][offset : offset + size]
            watch()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            mount.cache.attach(nursery)
            for i, name in enumerate(files):
                nursery.start_soon(sequential, name)
                nursery.start_soon(scattered, name, i)
        await mount.settle()

    trio.run(main)
    gauges = mount.cache.gauges()
    assert 0 < highest <= limit
    assert mount.cache.memory.peak <= limit and gauges["memory_peak"] == mount.cache.memory.peak
    assert gauges["memory_in_flight"] == 0 and gauges["memory_cached"] <= limit
    assert mount.counter("backend_reads") > 0


def test_a_remount_reads_every_block_from_the_disk_tier_without_the_backend(root, new_mount):
    bs = 64 * KiB
    data = _file(root, "f", 5 * bs + 321)
    first = new_mount(CacheConfig(block_size=bs, memory_limit=16 * bs))
    obj = first.object("f")

    async def read_all(mount: Mount) -> bytes:
        async with trio.open_nursery() as nursery:
            mount.cache.attach(nursery)
            got = bytes(await mount.cache.read(obj, 0, obj.size, mount.opener(obj), None))
            await mount.settle()
            mount.cache.attach(None)
        return got

    assert trio.run(read_all, first) == data
    assert first.counter("cache_misses") == 6 and first.counter("backend_read_bytes") == len(data)
    first.close()  # writes what is queued and closes the database
    first.readers.clear()

    again = new_mount(CacheConfig(block_size=bs, memory_limit=16 * bs))
    assert again.object("f") == obj  # the same key: same backend, path, version, size and block size
    assert trio.run(read_all, again) == data
    assert again.opens == 0 and again.reads() == []
    assert again.counter("backend_reads") == 0 and again.counter("cache_hits_disk") == 6
    assert trio.run(again.cache.cached_bytes, obj) == len(data)


def test_a_remount_with_another_block_size_does_not_take_the_other_blocks(root, new_mount):
    data = _file(root, "f", 200 * KiB)
    first = new_mount(CacheConfig(block_size=64 * KiB, memory_limit=1 << 20))
    obj = first.object("f")
    assert bytes(trio.run(first.cache.read, obj, 0, obj.size, first.opener(obj), None)) == data
    first.disk.flush()

    other = new_mount(CacheConfig(block_size=128 * KiB, memory_limit=1 << 20))
    bigger = other.object("f")
    assert bigger.digest != obj.digest
    assert trio.run(other.cache.cached_bytes, bigger) == 0
    assert bytes(trio.run(other.cache.read, bigger, 0, bigger.size, other.opener(bigger), None)) == data
    assert other.counter("backend_read_bytes") == len(data)


def test_warm_caches_a_file_and_evict_drops_its_blocks(root, new_mount):
    bs = 64 * KiB
    data = _file(root, "f", 9 * bs + 5)
    mount = new_mount(CacheConfig(block_size=bs, fetch_blocks=4, memory_limit=16 * bs))
    obj = mount.object("f")
    opener = mount.opener(obj)

    async def main() -> None:
        assert await mount.cache.cached_bytes(obj) == 0
        assert await mount.cache.warm(obj, opener) == len(data)
        assert mount.counter("backend_read_bytes") == len(data)
        assert len(mount.reads()) == 3  # fetch_blocks blocks per request
        assert bytes(await mount.cache.read(obj, 0, obj.size, opener, None)) == data
        assert mount.counter("backend_read_bytes") == len(data)  # the read was all hits
        assert await mount.cache.warm(obj, opener) == len(data)  # nothing left to fetch
        assert len(mount.reads()) == 3

        await mount.cache.evict(obj)
        assert await mount.cache.cached_bytes(obj) == 0
        assert all(obj.key(i) not in mount.cache.memory for i in range(10))
        assert bytes(await mount.cache.read(obj, bs, 2 * bs, opener, None)) == data[bs : 3 * bs]
        assert mount.counter("backend_read_bytes") == len(data) + 2 * bs  # fetched again

    trio.run(main)


def test_evict_drops_blocks_in_memory_and_pieces_on_disk(root, new_mount):
    bs = 256 * KiB
    data = _file(root, "f", 8 * bs)
    mount = new_mount(CacheConfig(block_size=bs, memory_limit=32 * bs))
    obj = mount.object("f")
    offsets = [bs + 5000, 5 * bs + 70 * KiB]

    async def small_reads() -> None:
        stream, opener = Stream(), mount.opener(obj)
        async with trio.open_nursery() as nursery:
            mount.cache.attach(nursery)
            for offset in offsets:
                got = await mount.cache.read(obj, offset, 4 * KiB, opener, stream)
                assert bytes(got) == data[offset : offset + 4 * KiB]
            await mount.settle()
            mount.cache.attach(None)

    async def main() -> None:
        opener = mount.opener(obj)
        assert bytes(await mount.cache.read(obj, 0, bs, opener, None)) == data[:bs]  # block 0 in memory
        await small_reads()
        fetched = mount.counter("backend_read_bytes")
        assert fetched == bs + 2 * PIECE
        await small_reads()  # the pieces are on disk now
        assert mount.counter("backend_read_bytes") == fetched
        assert await mount.cache.cached_bytes(obj) == bs  # whole blocks only: block 0

        await mount.cache.evict(obj)
        assert await mount.cache.cached_bytes(obj) == 0
        assert mount.cache.gauges()["memory_cached"] == 0
        before = len(mount.reads())
        await small_reads()  # the pieces were dropped too: asked for again
        pieces = [(offset - offset % PIECE, PIECE) for offset in offsets]
        assert [read for read in mount.reads()[before:] if read in pieces] == pieces
        # (A block now read in two places is then fetched whole behind the reads: FILL_AFTER_PIECES.)
        assert mount.counter("backend_read_bytes") >= fetched + 2 * PIECE

    trio.run(main)


def test_prefetch_whole_fetches_a_small_file_as_it_is_opened(root, new_mount):
    bs = 64 * KiB
    small = _file(root, "small", 10 * KiB)
    _file(root, "big", 3 * bs)
    mount = new_mount(CacheConfig(block_size=bs, memory_limit=16 * bs))
    obj, big = mount.object("small"), mount.object("big")

    async def main() -> bytes:
        async with trio.open_nursery() as nursery:
            mount.cache.attach(nursery)
            mount.cache.prefetch_whole(obj, mount.opener(obj))
            mount.cache.prefetch_whole(big, mount.opener(big))  # more than one block: nothing
            got = bytes(await mount.cache.read(obj, 0, obj.size, mount.opener(obj), Stream()))
            await mount.settle()
            mount.cache.attach(None)
        return got

    assert trio.run(main) == small
    assert mount.reads() == [(0, len(small))] and mount.opens == 1
    assert mount.counter("prefetch_blocks") == 1
    assert mount.counter("cache_hits_memory") + mount.counter("cache_waits") == 1
