"""The pool of block buffers, in-process: a buffer anyone still reads is never handed out again, a free one
is reused, and the pool never maps more than it was given."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from pfs.backends import BackendOptions, Reader, open_backend
from pfs.cache import BlockCache, CacheConfig
from pfs.cache import buffers as buffers_module
from pfs.cache import disk as disk_module
from pfs.cache.blocks import Stream
from pfs.cache.buffers import BufferPool, pooled
from pfs.cache.disk import DiskTier
from pfs.cache.memory import MemoryTier
from pfs.counters import Stats
from tests.conftest import s3_case
from tests.pagecache import drop_pages, resident_bytes
from testservers.s3 import start_s3_server

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

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
        path = stored_block(disk, "b|x|0", data)
        with open(path, "r+b") as f:
            f.seek(damage_at)
            f.write(bytes([data[damage_at] ^ 1]))
        assert disk.get_many(["b|x|0"], pool) == [None] and disk.corrupt_blocks == 1
    finally:
        disk.close()


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "file system without it"])
def test_a_big_block_read_into_a_pool_buffer_bypasses_the_page_cache(tmp_path, monkeypatch, direct):
    """Big blocks' pages leave the page cache once written: reading one whole into a pool buffer goes past
    the page cache (O_DIRECT), or, where the file system refuses the flag, is read as before."""
    if not direct:
        fcntl = disk_module.fcntl.fcntl

        def refuse(fd: int, command: int, *args: int) -> int:
            if command == disk_module.fcntl.F_SETFL and args and args[0] & os.O_DIRECT:
                raise OSError(errno.EINVAL, "not supported")
            return fcntl(fd, command, *args)

        monkeypatch.setattr(disk_module.fcntl, "fcntl", refuse)
    pool = BufferPool(MiB, count=2)
    disk = DiskTier(str(tmp_path / "cache"), 64 * MiB, max_block=MiB)
    try:
        data = os.urandom(MiB)
        path = stored_block(disk, "b|x|0", data)
        drop_pages(path)
        (read,) = disk.get_many(["b|x|0"], pool)
        assert pooled(read) and read == data and disk.corrupt_blocks == 0
        fd = os.open(path, os.O_RDONLY)
        try:
            resident = resident_bytes(fd, MiB)
        finally:
            os.close(fd)
        assert resident == 0 if direct else resident == MiB
    finally:
        disk.close()


def stored_block(disk: DiskTier, key: str, data: bytes) -> str:
    """Store `data` as the tier's only block; the path of its file."""
    disk.put(key, data)
    assert disk.flush(10)
    (path,) = [os.path.join(d, f) for d, _, fs in os.walk(disk.directory) for f in fs if f.endswith(".val")]
    return path


@pytest.mark.parametrize("server", ["seaweedfs", "rclone"])  # a 206, and a 200 with Content-Range
def test_blocks_fetched_from_an_object_store_land_in_reused_buffers_with_their_bytes(
    request, tmp_path, server
):
    """A cold sequential read through a budget of four blocks: the ranged GETs' bodies are read into pool
    buffers, reused as blocks leave memory, and every byte read is the object's."""
    if server == "seaweedfs":
        case = s3_case(request)
        backend, put = open_backend(case.uri, case.options), case.raw.put
    else:
        (tmp_path / "srv" / "data" / "bkt").mkdir(parents=True)
        rclone = start_s3_server("rclone", str(tmp_path / "srv"))
        request.addfinalizer(rclone.stop)
        options = BackendOptions(access_key=rclone.access_key, secret_key=rclone.secret_key)
        backend = open_backend(rclone.uri("bkt"), options)
        put = lambda name, data: (tmp_path / "srv" / "data" / "bkt" / name).write_bytes(data)  # noqa: E731
    data = os.urandom(12 * MiB + 1000)  # a short last block: never pooled
    put("obj", data)
    cache = BlockCache(CacheConfig(block_size=MiB, memory_limit=4 * MiB), None, Stats(), _thread, _thread)
    reader = backend.open_reader("obj", len(data))
    assert reader.fills_buffers
    obj = cache.object(backend.id, "obj", reader.version, len(data))
    seen: list[bool] = []

    async def opener() -> Reader:
        return reader

    async def main() -> bytes:
        out = bytearray()
        async with trio.open_nursery() as nursery:
            cache.attach(nursery)
            stream = Stream()
            while len(out) < len(data):
                part = await cache.read(obj, len(out), 256 << 10, opener, stream)
                block = cache.memory.get(obj.key(len(out) // MiB), touch=False)
                seen.append(block is not None and pooled(block) is not None)
                out += part
            cache.attach(None)
        return bytes(out)

    try:
        assert trio.run(main) == data
    finally:
        reader.close()
        backend.close()
    assert sum(seen) > len(seen) // 2 and cache.buffers.mapped() <= cache.buffers.count * MiB


def test_a_ranged_get_that_does_not_fit_the_buffers_is_returned_as_bytes(request):
    case = s3_case(request)
    backend = open_backend(case.uri, case.options)
    data = os.urandom(3 * MiB)
    case.raw.put("obj", data)
    reader = backend.open_reader("obj", len(data))
    try:
        views = [memoryview(bytearray(MiB)) for _ in range(2)]
        assert reader.read_into(0, views) is None and b"".join(views) == data[: 2 * MiB]
        assert reader.read_into(2 * MiB, views) == data[2 * MiB :]  # past the end: read as bytes
    finally:
        reader.close()
        backend.close()


async def _thread(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)
