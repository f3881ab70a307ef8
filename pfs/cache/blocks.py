"""The block cache: what a read of a live object goes through (memory tier, disk tier, then the backend).

Objects are cut into fixed-size blocks addressed by (backend id, path, version token, block index); a key
never changes meaning, so a changed object simply gets new keys and its old blocks age out. Reads that
follow each other through a file grow a prefetch window that fetches the next blocks with parallel ranged
reads, several blocks per request, inside the mount's memory budget. Concurrent readers of one block share
one fetch. Blocks fetched from the backend are written to the disk tier in the background.

Runs on the trio loop; disk and backend calls go to worker threads through the `run_*` callables. Methods
that touch `_inflight` and the memory tier do so without a checkpoint in between, which is what keeps a block
from being fetched twice.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from pfs.backends import Reader
from pfs.cache.buffers import BufferPool
from pfs.cache.disk import READERS, Block, DiskTier
from pfs.cache.memory import MemoryTier
from pfs.counters import Stats
from pfs.errors import ungrouped

log = logging.getLogger(__name__)

Run = Callable[..., Awaitable[Any]]
OpenReader = Callable[[], Awaitable[Reader]]

SMALL_READ_PART = 8  # a random read of at most 1/8 of a block that misses the cache takes just its pieces
# A small random read that misses both tiers fetches the aligned pieces of this size that hold it and keeps
# them in the disk tier, so the same read is a disk hit the next epoch: fetching the whole 4 MiB block for
# 4 KiB would pull in a whole file that an epoch reads sparsely (2,000 reads over a 1 GiB file fetched all
# of it), while the next records of an indexed format are often within the piece.
PIECE = 64 << 10
# A block of which this many pieces were fetched is fetched whole behind the reads (MAX_FILLS at once): a
# block read in two places is in the working set, and one ranged read of it costs less than the round trips
# of the pieces still to come (2,000 reads over a 1 GiB file: 1,829 piece requests instead of about 500 and
# 256 block reads, 0.75x the reads per second on a loopback server, and more on a store far away).
FILL_AFTER_PIECES = 2
# Random reads that have taken pieces of this many blocks of one object (and at least 1/SWEEP_SPREAD of its
# blocks) are reading it all over, as an epoch over an indexed format (LMDB, HDF5, TFRecord with an index)
# does: the rest of the object is then fetched in order behind them, a few big requests at a time, into the
# disk tier (`_sweep`), instead of a round trip per piece and a block per fill. A reader of a few records
# of a big file touches few of its blocks and never starts one.
SWEEP_AFTER_BLOCKS = 8
SWEEP_SPREAD = 32
SWEEP_DISK_SHARE = 0.25  # only objects this small against the disk tier's size: a sweep never churns it
SWEEP_REQUESTS = 4  # ranged requests of `fetch_blocks` blocks in flight for one sweep
SWEEP_MEMORY_SHARE = 0.25  # the most of the memory budget one request of a sweep holds
# A block read at random twice from the disk tier is read ahead whole (`DiskTier.get_range`) only once its
# object had this many random reads per block: it pays where reads come back to a block many times, as an
# epoch over an indexed format does (4 KiB records: a thousand reads a block), not for a reader sampling an
# object sparsely, for which it reads most of the object from disk for a few reads a block (2,000 reads
# over a 1 GiB file: 1,850 reads/s with it, 2,900-3,100 without; 5,000 reads: 3,600-4,100 with it).
DENSE_READS = 8
MAX_SPREAD_OBJECTS = 1024  # objects whose random readers' blocks are counted (least recently first out)
MAX_OBJECTS = 65536  # versions whose cache identity is kept made
MAX_FILLS = 2  # blocks fetched at once behind such reads: the rest of the backend's threads serve readers
TOUCHED_BLOCKS = 65536  # blocks whose pieces fetched are counted (least recently counted first out)
# What all sequential streams together may have ahead of their readers (asked for, fetched and not yet
# read), as a share of the memory budget: one stream alone reads up to its `prefetch_blocks` ahead, several
# share this, so that one stream's prefetch never evicts blocks another fetched and has not read yet.
AHEAD_SHARE = 0.5
# A read this close to where the last one ended continues a sequential stream: the kernel's readahead (1 MiB
# by default, `readahead_kb`) keeps up to two windows of requests in flight, which may arrive out of order.
# Any wider and a random reader passes for a sequential one now and then (two blocks either side, before:
# one read in 16 over a 256 MiB file), each time reading whole blocks and fetching a window ahead.
NEAR_BYTES = 2 << 20
# A read smaller than this that does not start where the last one ended is a one-off: it neither continues
# nor breaks a sequential stream, and takes just its bytes. The kernel keeps a file read whole in its page
# cache but for a few pages here and there (1 to 8 pages at a time, a few dozen per GiB on this kernel, with
# no memory pressure); reading it again asks for those alone, 1-4 MiB apart, which passed for a sequential
# stream: each read a whole 4 MiB block from the disk tier and a window fetched ahead, 164 MiB read from
# disk for 133 lost pages, where the kernel's own readahead requests are 1 MiB and in order.
ONE_OFF_BYTES = 128 << 10
ACTIVE_S = 1.0  # a sequential stream that read within this long shares the budget for reading ahead


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 4 << 20
    fetch_blocks: int = 4  # blocks per ranged request when prefetching
    prefetch_blocks: int = 8  # largest window a sequential stream fetches ahead
    memory_limit: int = 256 << 20


@dataclass(frozen=True)
class CachedObject:
    """One version of one object, as the cache addresses it (built by `BlockCache.object`)."""

    backend_id: str
    path: str
    version: str
    size: int
    block_size: int  # part of the key: mounts with other block sizes may share the disk tier
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        ident = f"{self.backend_id}\0{self.path}\0{self.version}\0{self.block_size}".encode()
        object.__setattr__(self, "digest", hashlib.blake2b(ident, digest_size=16).hexdigest())

    def key(self, index: int) -> str:
        return f"b|{self.digest}|{index}"

    def piece_key(self, offset: int, length: int) -> str:
        """The key of bytes [offset, offset+length) of the object kept as a piece (see PIECE)."""
        return f"{self.pieces_prefix}{offset}+{length}"

    @property
    def pieces_prefix(self) -> str:
        return f"p|{self.digest}|"


@dataclass(eq=False)
class Stream:
    """What one open file handle has read so far, to tell a sequential reader from a random one."""

    next_offset: int = -1
    streak: int = 0
    prefetched_to: int = 0  # blocks below this index have been asked for


@dataclass(eq=False)
class _Fetch:
    done: trio.Event = field(default_factory=trio.Event)
    blocks: dict[int, Block] = field(default_factory=dict)


class BlockCache:
    def __init__(
        self,
        config: CacheConfig,
        disk: DiskTier | None,
        stats: Stats,
        run_backend: Run,
        run_disk: Run,
    ) -> None:
        self.config = config
        self.disk = disk
        # Whole blocks read from the disk tier or fetched by a reader that fills buffers go into buffers
        # reused from one block to the next: as many as the budget holds, and one per disk reader.
        self.buffers = BufferPool(config.block_size, config.memory_limit // config.block_size + READERS)
        self.memory = MemoryTier(config.memory_limit, self.buffers)
        self.stats = stats
        self._run_backend = run_backend
        self._run_disk = run_disk
        self._inflight: dict[str, _Fetch] = {}
        self._nursery: trio.Nursery | None = None
        self._room = trio.Event()  # set whenever in-flight bytes are released
        self._fills = 0  # whole blocks being fetched behind small random reads
        self._touched: OrderedDict[str, int] = OrderedDict()  # block key -> pieces fetched (TOUCHED_BLOCKS)
        self._spread: OrderedDict[str, set[int]] = OrderedDict()  # object digest -> blocks pieces came from
        self._sweeping: set[str] = set()  # objects fetched whole behind their random readers
        self._random_reads: OrderedDict[str, int] = OrderedDict()  # object digest -> reads from the disk
        self._objects: dict[tuple[str, str, str, int], CachedObject] = {}
        self._streams: dict[Stream, float] = {}  # sequential streams reading now, by when they last read
        self._written: _Written | None = None  # blocks the disk tier's writer holds, given back once written

    def attach(self, nursery: trio.Nursery | None) -> None:
        """Background work (prefetch, disk writes) runs in `nursery`; without one it is done inline."""
        self._nursery = nursery

    def object(self, backend_id: str, path: str, version: str, size: int) -> CachedObject:
        ident = (backend_id, path, version, size)
        obj = self._objects.get(ident)
        if obj is None:  # made once per version: its digest is a hash, and opens ask for it every time
            if len(self._objects) >= MAX_OBJECTS:
                self._objects.clear()
            obj = self._objects[ident] = CachedObject(backend_id, path, version, size, self.config.block_size)
        return obj

    def keep_in_memory(self, obj: CachedObject, index: int, data: Block) -> None:
        """Offer a block read elsewhere (with a version lookup) to the memory tier."""
        self.memory.put(obj.key(index), data)

    def add_fetched(self, obj: CachedObject, index: int, data: Block) -> None:
        """A block fetched from the backend elsewhere (with its version, in one request): into memory now,
        into the disk tier in the background (its bytes held in the budget until written)."""
        self.stats.add("cache_misses", 1)
        self.stats.add("backend_reads", 1)
        self.stats.add("backend_read_bytes", len(data))
        key = obj.key(index)
        if self.disk is None:
            self.memory.put(key, data)
            return
        self.memory.reserve(len(data))
        if not self._keep_fetched(key, data):
            self.memory.put(key, data)
            self._release(len(data))

    def try_room(self, nbytes: int) -> bool:
        """Room in the budget for optional work (prefetch), released with `release_room`."""
        return self.memory.try_reserve(nbytes)

    def release_room(self, nbytes: int) -> None:
        self._release(nbytes)

    # ---- reads -------------------------------------------------------------------------------------------

    async def read(
        self, obj: CachedObject, offset: int, size: int, open_reader: OpenReader, stream: Stream | None
    ) -> bytes | memoryview:
        end = min(obj.size, offset + size)
        if offset >= end:
            return b""
        bs = self.config.block_size
        first, last = offset // bs, (end - 1) // bs
        sequential = stream is not None and self._follow(stream, obj, offset, end, last, open_reader)
        # A random read of a big file takes just its bytes from the disk tier (its pieces, or the block),
        # not whole blocks; a small one that misses both tiers takes just its pieces from the backend too,
        # so 4 KiB never waits for 4 MiB. A read at offset 0 is not random: sequential readers start there.
        random = stream is not None and not sequential and obj.size > bs
        small = random and offset > 0 and end - offset <= bs // SMALL_READ_PART
        parts: list[Block] = []
        for index in range(first, last + 1):
            lo, hi = max(offset - index * bs, 0), min(end - index * bs, bs)
            part = await self._part_from_disk(obj, index, lo, hi, small) if random else None
            if part is None and small and obj.key(index) not in self.memory:  # (a fill may be under way)
                part = await self._part_from_backend(obj, index, lo, hi, open_reader)
            if part is None:
                # A view, not a copy: pyfuse3 hands any buffer to the kernel as it is. A sequential reader
                # leaves the block where it was: blocks then leave memory in the order they were fetched,
                # those it has passed before those fetched ahead of it, and the blocks of one ranged read
                # together (they are views of one buffer, freed only once none is kept).
                part = memoryview(await self._block(obj, index, open_reader, touch=not sequential))[lo:hi]
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _pieces(self, obj: CachedObject, index: int, lo: int, hi: int) -> list[tuple[str, int, int]]:
        """The pieces holding bytes [lo, hi) of block `index`: (key, start in the block, length) each."""
        bs = self.config.block_size
        size, base = min(PIECE, bs), index * bs
        block_end = min(bs, obj.size - base)
        out = []
        for start in range(lo - lo % size, hi, size):
            length = min(size, block_end - start)
            out.append((obj.piece_key(base + start, length), start, length))
        return out

    async def _part_from_disk(
        self, obj: CachedObject, index: int, lo: int, hi: int, small: bool
    ) -> Block | None:
        key = obj.key(index)
        if self._known(key) or self.disk is None:
            return None
        part = self.disk.read_now(key, lo, hi)  # in the page cache: no worker thread
        reads = self._random_reads.pop(obj.digest, 0) + 1
        _keep_newest(self._random_reads, obj.digest, reads, MAX_SPREAD_OBJECTS)
        if part is not None:
            self.stats.add("cache_hits_disk_inline", 1)
        else:
            # A block the disk tier knows is read whole: its pieces are not looked for (a query each).
            pieces = self._pieces(obj, index, lo, hi) if small and not self.disk.knows(key) else []
            dense = reads >= DENSE_READS * -(-obj.size // self.config.block_size)
            part = await self._run_disk(_read_part, self.disk, key, pieces, lo, hi, dense)
        if part is not None:
            self.stats.add("cache_hits_disk", 1)
        return part

    async def _part_from_backend(
        self, obj: CachedObject, index: int, lo: int, hi: int, open_reader: OpenReader
    ) -> Block:
        """Bytes [lo, hi) of block `index`, fetched from the backend as the pieces that hold them (kept in the
        disk tier when the budget has room); once FILL_AFTER_PIECES pieces of a block were fetched, the whole
        block is fetched into the cache in the background, when few such fills are under way."""
        reader = await open_reader()
        key = obj.key(index)
        pieces = self._pieces(obj, index, lo, hi)
        start, end = pieces[0][1], pieces[-1][1] + pieces[-1][2]
        count = self._touched.pop(key, 0) + len(pieces)
        self._spread_to(obj, index, open_reader)
        if obj.digest in self._sweeping:
            pass  # the sweep brings the whole block
        elif count >= FILL_AFTER_PIECES and self._fills < MAX_FILLS:
            self._schedule(obj, index, 1, open_reader, fill=True)
        else:
            _keep_newest(self._touched, key, count, TOUCHED_BLOCKS)
        started = time.perf_counter()
        bs = self.config.block_size
        data = memoryview(await self._run_backend(reader.read, index * bs + start, end - start))
        self.stats.add("backend_reads", 1)
        self.stats.add("backend_read_bytes", len(data))
        self.stats.add("backend_read_us", int((time.perf_counter() - started) * 1e6))
        self.stats.add("cache_misses_partial", 1)
        for piece_key, piece_start, length in pieces:
            if len(data) < piece_start - start + length:  # shorter than its version said: never kept
                break
            if self.disk is not None and self.memory.try_reserve(length):
                piece = data[piece_start - start : piece_start - start + length]
                if not self.memory.hold_writing(piece_key, length):
                    self._release(length)
                elif not self._store_on_disk(piece_key, piece):
                    self.memory.written(piece_key)
        return data[lo - start : hi - start]

    def _spread_to(self, obj: CachedObject, index: int, open_reader: OpenReader) -> None:
        """Random reads took pieces of block `index` of `obj`: once they have spread over enough of its
        blocks, the rest of it is fetched behind them (see SWEEP_AFTER_BLOCKS)."""
        digest = obj.digest
        if digest in self._sweeping or self._nursery is None or self.disk is None:
            return
        bs = self.config.block_size
        if obj.size > self.disk.size_limit * SWEEP_DISK_SHARE or bs > self.memory.limit * SWEEP_MEMORY_SHARE:
            return
        blocks = self._spread.pop(digest, set())
        blocks.add(index)
        if len(blocks) < max(SWEEP_AFTER_BLOCKS, -(-obj.size // bs) // SWEEP_SPREAD):
            _keep_newest(self._spread, digest, blocks, MAX_SPREAD_OBJECTS)
            return
        self._sweeping.add(digest)
        self._nursery.start_soon(self._sweep, obj, open_reader)

    async def _sweep(self, obj: CachedObject, open_reader: OpenReader) -> None:
        """Fetch every block of `obj` not cached yet into the disk tier, in order, SWEEP_REQUESTS ranged
        requests at a time, each within the memory budget's room for optional work."""
        bs = self.config.block_size
        step = max(1, min(self.config.fetch_blocks, int(self.memory.limit * SWEEP_MEMORY_SHARE) // bs))
        blocks = -(-obj.size // bs)
        self.stats.add("sweeps", 1)
        limit = trio.CapacityLimiter(SWEEP_REQUESTS)

        async def one(first: int) -> None:
            async with limit:
                count = min(step, blocks - first)
                present = await self._present([obj.key(i) for i in range(first, first + count)])
                for run_first, run_count in _runs([first + i for i, here in enumerate(present) if not here]):
                    span = self._span(obj, run_first, run_count)
                    while not self.memory.try_reserve(span):  # readers come first (it fits: see step)
                        await self._room.wait()
                    try:
                        reader = await open_reader()
                        await self._fetch(reader, obj, run_first, run_count, store=True)
                    finally:
                        self._release(span)
                    self.stats.add("sweep_blocks", run_count)

        try:
            async with trio.open_nursery() as nursery:
                for first in range(0, blocks, step):
                    nursery.start_soon(one, first)
        except Exception as exc:  # the readers fetch what they need themselves, and report
            log.debug("fetching %s behind its random readers failed: %s", obj.path, exc)
        finally:
            self._sweeping.discard(obj.digest)

    def prefetch_whole(self, obj: CachedObject, open_reader: OpenReader) -> None:
        """Start fetching a small file's only block as it is opened: its first read is right behind."""
        if 0 < obj.size <= self.config.block_size:
            self._schedule(obj, 0, 1, open_reader)

    async def _block(
        self, obj: CachedObject, index: int, open_reader: OpenReader, touch: bool = True
    ) -> Block:
        key = obj.key(index)
        while True:
            data = self.memory.get(key, touch)
            if data is not None:
                self.stats.add("cache_hits_memory", 1)
                return data
            pending = self._inflight.get(key)
            if pending is not None:
                self.stats.add("cache_waits", 1)
                await pending.done.wait()
                if index in pending.blocks:
                    return pending.blocks[index]
                continue  # the shared fetch failed (a prefetch gave up): fetch it for this read
            nbytes = self._span(obj, index, 1)
            await self._reserve(nbytes)
            if not self._known(key):
                break
            # Kept or asked for while this read waited for room (four streams: 30 % of the blocks fetched
            # twice, by a prefetch and by a reader that went on to fetch it as well).
            self._release(nbytes)
        fetch = self._register(obj, index, 1)
        return (await self._load(obj, index, 1, open_reader, fetch))[index]

    async def _reserve(self, nbytes: int) -> None:
        """Room in the budget for a fetch a reader waits for: wait while in-flight fetches hold it all."""
        while not self.memory.try_reserve(nbytes, share=1.0):
            if not self.memory.awaited:  # nothing will be freed: a block bigger than the whole budget
                self.memory.reserve(nbytes)
                return
            await self._room.wait()

    def _release(self, nbytes: int) -> None:
        self.memory.release(nbytes)
        self._room.set()
        self._room = trio.Event()

    def _follow(
        self, stream: Stream, obj: CachedObject, offset: int, end: int, last: int, open_reader: OpenReader
    ) -> bool:
        """Track the reads of one handle and prefetch ahead of a sequential one; True when this read
        continues a sequential stream."""
        bs = self.config.block_size
        if offset != stream.next_offset and end - offset < ONE_OFF_BYTES:
            stream.next_offset = end  # (small reads one after the other are a stream from the second on)
            return False
        if stream.next_offset >= 0 and abs(offset - stream.next_offset) <= NEAR_BYTES:
            stream.streak += 1
        else:
            stream.streak = 0
            stream.prefetched_to = 0
        stream.next_offset = end
        if stream.streak == 0:
            return False
        window, step = self._window(stream)
        blocks = (obj.size + bs - 1) // bs
        start = max(stream.prefetched_to, last + 1)
        stop = min(last + 1 + window, blocks)
        # Whole requests of `step` blocks only (the window moves a block at a time), but the file's tail.
        while start < stop and (stop - start >= step or stop == blocks):
            count = min(step, stop - start)
            if not self._schedule(obj, start, count, open_reader):
                break
            start += count
        stream.prefetched_to = max(stream.prefetched_to, start)
        return True

    def _window(self, stream: Stream) -> tuple[int, int]:
        """(blocks ahead, blocks per request) for a sequential stream. The window doubles with every read in
        order up to `prefetch_blocks`, and the streams reading at once share AHEAD_SHARE of the budget; a
        window is cut into at least two requests, so that the next one is on its way while the reader
        takes the bytes of the one before."""
        now = time.monotonic()
        self._streams[stream] = now
        if len(self._streams) > 1:
            for other in [s for s, seen in self._streams.items() if now - seen > ACTIVE_S]:
                del self._streams[other]
        bs = self.config.block_size
        share = max(1, int(self.config.memory_limit * AHEAD_SHARE) // (bs * len(self._streams)))
        window = min(self.config.prefetch_blocks, 1 << min(stream.streak, 16), share)
        return window, max(1, min(self.config.fetch_blocks, window // 2))

    def _known(self, key: str) -> bool:
        return key in self.memory or key in self._inflight

    def _schedule(
        self, obj: CachedObject, first: int, count: int, open_reader: OpenReader, fill: bool = False
    ) -> bool:
        """Prefetch blocks [first, first+count) that are neither in memory nor on their way; False when the
        memory budget has no room (the caller stops asking)."""
        wanted = [i for i in range(first, first + count) if not self._known(obj.key(i))]
        if self._nursery is None:
            return True
        # Only the blocks wanted, one request per run of them: a block in between that is on its way already
        # was fetched a second time (four streams on a loopback server: 30 % of the blocks twice).
        for run_first, run_count in _runs(wanted):
            if not self.memory.try_reserve(self._span(obj, run_first, run_count)):
                return False
            fetch = self._register(obj, run_first, run_count)
            self._fills += fill
            self._nursery.start_soon(self._prefetch, obj, run_first, run_count, open_reader, fetch, fill)
        return True

    def _register(self, obj: CachedObject, first: int, count: int) -> _Fetch:
        """Announce a fetch of blocks [first, first+count), so that readers of them wait for it."""
        fetch = _Fetch()
        for index in range(first, first + count):
            self._inflight[obj.key(index)] = fetch
        return fetch

    async def _prefetch(
        self, obj: CachedObject, first: int, count: int, open_reader: OpenReader, fetch: _Fetch, fill: bool
    ) -> None:
        self.stats.add("fill_blocks" if fill else "prefetch_blocks", count)
        try:
            await self._load(obj, first, count, open_reader, fetch)
        except Exception as exc:  # the reader that needs these blocks fetches them itself and reports
            log.debug("prefetch of %s failed: %s", obj.path, exc)
        finally:
            self._fills -= fill

    async def _load(
        self, obj: CachedObject, first: int, count: int, open_reader: OpenReader, fetch: _Fetch
    ) -> dict[int, Block]:
        """Bring registered blocks [first, first+count), whose bytes are reserved in the memory budget, into
        memory from the disk tier or, failing that, the backend. Fetched blocks are handed to waiting readers
        first and written to the disk tier in the background; their bytes stay reserved until written, so
        a disk slower than the backend slows prefetch down instead of growing memory."""
        indices = range(first, first + count)
        keys = [obj.key(i) for i in indices]
        held = self._span(obj, first, count)
        try:
            if self.disk is not None:
                found = await self._run_disk(_read_blocks, self.disk, keys, first, self.buffers)
                self.stats.add("cache_hits_disk", len(found))
                fetch.blocks.update(found)
            for run_first, run_count in _runs([i for i in indices if i not in fetch.blocks]):
                reader = await open_reader()
                fetched = await self._fetch(reader, obj, run_first, run_count, store=False)
                fetch.blocks.update(fetched)
                for index, data in fetched.items():
                    if self._keep_fetched(obj.key(index), data):
                        held -= len(data)  # now the block's place in the memory tier
            return fetch.blocks
        finally:
            self._release(held)
            for index, key in zip(indices, keys, strict=True):
                if self._inflight.get(key) is fetch:
                    del self._inflight[key]
                if index in fetch.blocks:
                    self.memory.put(key, fetch.blocks[index])
            fetch.done.set()

    async def _fetch(
        self, reader: Reader, obj: CachedObject, first: int, count: int, store: bool
    ) -> dict[int, Block]:
        blocks, took = await self._run_backend(self._fetch_run, reader, obj, first, count, store)
        # Counted here, on the loop: counters are not safe to update from several threads.
        self.stats.add("cache_misses", count)
        self.stats.add("backend_reads", 1)
        self.stats.add("backend_read_bytes", sum(map(len, blocks.values())))
        self.stats.add("backend_read_us", took)
        return blocks

    def _fetch_run(
        self, reader: Reader, obj: CachedObject, first: int, count: int, store: bool
    ) -> tuple[dict[int, Block], int]:
        """One ranged read for consecutive blocks, cut into blocks, written to the disk tier with `store`
        (in a worker thread); also returns the microseconds the backend took."""
        bs = self.config.block_size
        started = time.perf_counter()
        span = self._span(obj, first, count)
        buffers = self._buffers_for(reader, span, count)
        data = reader.read(first * bs, span) if buffers is None else reader.read_into(first * bs, buffers)
        took = int((time.perf_counter() - started) * 1e6)
        blocks: dict[int, Block]
        if data is None:
            blocks = {first + i: buffer for i, buffer in enumerate(buffers or [])}
        else:
            view = memoryview(data)  # blocks are views of the one buffer read: no copies
            blocks = {first + i: view[i * bs : (i + 1) * bs] for i in range(count)}
        if store and self.disk is not None:
            for index, block in blocks.items():
                self.disk.put(obj.key(index), block, wait=True)  # warming waits for a lagging disk
        return blocks, took

    def _buffers_for(self, reader: Reader, span: int, count: int) -> list[memoryview] | None:
        """Reused buffers for `count` whole blocks fetched at once, where the reader reads into them (a
        fresh buffer costs a page fault per page); None otherwise."""
        if not reader.fills_buffers or span != count * self.config.block_size:
            return None
        buffers = []
        for _ in range(count):
            buffer = self.buffers.take(self.config.block_size)
            if buffer is None:
                return None  # those taken are free again with their views gone
            buffers.append(buffer)
        return buffers

    def _span(self, obj: CachedObject, first: int, count: int) -> int:
        bs = self.config.block_size
        return max(0, min(obj.size, (first + count) * bs) - first * bs)

    def _keep_fetched(self, key: str, data: Block) -> bool:
        """Keep a block just fetched in the memory tier and queue it for the disk tier; True when its
        reserved bytes are now its place in the memory tier, held there until it is written."""
        if self.disk is None:
            return False
        if self._nursery is None or not self.memory.put_writing(key, data):
            self.disk.put(key, data)
            return False
        self._store_on_disk(key, data)
        return True

    def _store_on_disk(self, key: str, data: Block) -> bool:
        """Queue bytes the memory tier counts as held by the writer (`put_writing`, `hold_writing`) for the
        disk tier (never blocks); the writer lets go of them on the loop once written. False (nothing
        queued) without a nursery: the caller lets go."""
        if self.disk is None:
            return False
        if self._nursery is None:
            self.disk.put(key, data)
            return False
        token = trio.lowlevel.current_trio_token()
        if self._written is None or self._written.token is not token:  # (tests run several loops)
            self._written = _Written(token, self._disk_wrote)
        self.disk.put(key, data, done=functools.partial(self._written.add, key))
        return True

    def _disk_wrote(self, keys: list[str]) -> None:
        for key in keys:
            self.memory.written(key)
        self._room.set()
        self._room = trio.Event()

    # ---- warmup and its relatives ------------------------------------------------------------------------

    async def warm(self, obj: CachedObject, open_reader: OpenReader) -> int:
        """Put every block of `obj` in the disk tier (or memory when there is none); returns bytes cached."""
        bs = self.config.block_size
        blocks = (obj.size + bs - 1) // bs
        step = self.config.fetch_blocks
        limit = trio.CapacityLimiter(4)

        async def one(first: int) -> None:
            async with limit:
                count = min(step, blocks - first)
                keys = [obj.key(i) for i in range(first, first + count)]
                present = await self._present(keys)
                missing = [first + i for i, here in enumerate(present) if not here]
                for run_first, run_count in _runs(missing):
                    reader = await open_reader()
                    await self._reserve(self._span(obj, run_first, run_count))
                    try:
                        fetched = await self._fetch(reader, obj, run_first, run_count, store=True)
                    finally:
                        self._release(self._span(obj, run_first, run_count))
                    if self.disk is None:
                        for index, data in fetched.items():
                            self.memory.put(obj.key(index), data)

        with ungrouped():
            async with trio.open_nursery() as nursery:
                for first in range(0, blocks, step):
                    nursery.start_soon(one, first)
        return await self.cached_bytes(obj)

    async def cached_bytes(self, obj: CachedObject) -> int:
        bs = self.config.block_size
        blocks = (obj.size + bs - 1) // bs
        present = await self._present([obj.key(i) for i in range(blocks)])
        return sum(self._span(obj, i, 1) for i, here in enumerate(present) if here)

    async def evict(self, obj: CachedObject) -> None:
        bs = self.config.block_size
        keys = [obj.key(i) for i in range((obj.size + bs - 1) // bs)]
        for key in keys:
            self.memory.discard(key)
        if self.disk is not None:
            await self._run_disk(_delete_blocks, self.disk, keys)
            await self._run_disk(self.disk.delete_prefix, obj.pieces_prefix)

    async def _present(self, keys: list[str]) -> list[bool]:
        if self.disk is None:
            return [key in self.memory for key in keys]
        disk = self.disk
        on_disk = await self._run_disk(lambda: [key in disk for key in keys])
        return [here or key in self.memory for key, here in zip(keys, on_disk, strict=True)]

    def gauges(self) -> dict[str, int]:
        return {
            "memory_limit": self.memory.limit,
            "memory_cached": self.memory.cached,
            "memory_in_flight": self.memory.reserved,
            "memory_peak": self.memory.peak,
            "cache_corrupt_blocks": self.disk.corrupt_blocks if self.disk is not None else 0,
        }


class _Written:
    """Keys the disk tier's writer thread has written, handed back to the memory tier on the loop: in one
    call for all written since the last, not one wake-up of the loop per block (the writer stores a batch at
    a time)."""

    def __init__(self, token: trio.lowlevel.TrioToken, give_back: Callable[[list[str]], None]) -> None:
        self.token = token
        self._give_back_keys = give_back
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._asked = False  # a call to `_give_back` is on its way to the loop

    def add(self, key: str) -> None:
        """Called in the writer thread for each write done (or given up)."""
        with self._lock:
            self._pending.append(key)
            if self._asked:
                return
            self._asked = True
        self.token.run_sync_soon(self._give_back)  # (a loop gone raises: the disk tier logs it)

    def _give_back(self) -> None:
        with self._lock:
            keys, self._pending, self._asked = self._pending, [], False
        self._give_back_keys(keys)


def _keep_newest(entries: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    """Put `key` last in `entries` (popped by the caller), dropping the oldest beyond `limit`."""
    entries[key] = value
    if len(entries) > limit:
        entries.popitem(last=False)


def _read_part(
    disk: DiskTier, key: str, pieces: list[tuple[str, int, int]], lo: int, hi: int, dense: bool
) -> Block | None:
    """Bytes [lo, hi) of block `key` from the disk tier: from the cached `pieces` that hold them, else
    from the block itself (read ahead whole where the object is read `dense`ly, see DENSE_READS)."""
    found = []
    for piece_key, start, length in pieces:
        got = disk.get_range(piece_key, max(lo, start) - start, min(hi, start + length) - start, piece=True)
        if got is None:
            break
        found.append(got)
    else:
        if found:
            return found[0] if len(found) == 1 else b"".join(found)
    return disk.get_range(key, lo, hi, read_ahead=dense)


def _read_blocks(disk: DiskTier, keys: list[str], first: int, buffers: BufferPool) -> dict[int, Block]:
    return {first + i: data for i, data in enumerate(disk.get_many(keys, buffers)) if data is not None}


def _delete_blocks(disk: DiskTier, keys: list[str]) -> None:
    for key in keys:
        disk.delete(key)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive stretches of sorted block indices, as (first, count)."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs
