"""`Versions`: which version of a file a read goes to, decided in one place and mostly from memory.

An open (or, in the kernel's no-open mode, the first read of an inode) asks `choose(inode)` once and gets
the `CachedObject` its reads go to and how to open the backend for that very version:
- where attributes identify the content (file systems) the version is size and mtime; a cheap backend is
  stat-ed again on every open, so an open sees the latest version;
- a snapshot pins every version in its manifest (`known_version`), so a cached file never asks the backend;
- on object stores the ETag is needed. The version book remembers the ETag seen for (path, size, mtime): in
  memory, and in the disk tier so a remounted node trusts its cached blocks too. An ETag is trusted only
  when it was seen at least TRUST_MARGIN_S after the object's modification time (a same-second rewrite
  keeps size and mtime); otherwise the object is opened now (one HEAD) and that reader is kept for the
  first miss instead of opening it again.
  Where the store can (`Backend.read_first`), that look is one GET of the object's first block, whose
  answer carries the ETag and size a HEAD would have given: a cold small file costs one request, and its
  block is in memory before the kernel asks for it.
A reader opened later must carry the chosen ETag, or the read fails with Stale and `on_replaced` makes the
next open look again (here and in the kernel): one read never mixes two versions.

Files about to be opened (the next ones of a directory read in order, see pfs/fs/ahead.py) can be made
ready ahead (`prefetch`): their version and first block, from the disk tier (the files started together
in one worker call) or with that one GET, inside the memory budget. The open of such a file waits for its
prefetch instead of asking again, and uses its answer only while it is younger than the metadata TTL and
matches the file's attributes; a prefetched file that is not opened is dropped (its block leaves memory)
once newer ones take its place.

Kept readers (one per inode) are closed when the last handle of the inode is released, or, where no
release ever comes (no-open mode), when more than MAX_IDLE_READERS have not been used for IDLE_S seconds.
Runs on the trio loop; backend and disk calls go through the `run_*` callables to worker threads. Never
fetches or stores blocks beyond the first block that comes with a version's answer, which it hands to the
cache (storing and evicting blocks is the cache's job).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import trio

from pfs.backends import Backend, Reader
from pfs.cache import BlockCache, CachedObject
from pfs.cache.disk import Block, Seen
from pfs.counters import Stats
from pfs.errors import NotFound, Stale
from pfs.fs.inodes import Inode

log = logging.getLogger(__name__)

Run = Callable[..., Awaitable[Any]]
OpenReader = Callable[[], Awaitable[Reader]]

# An ETag seen less than this long after the object's modification time may belong to a same-size rewrite
# in the same second (object stores give 1 s resolution), so it is only trusted after a fresh check.
TRUST_MARGIN_S = 2.0
MAX_SEEN_IN_MEMORY = 100_000  # versions seen by this mount kept in memory (all of them stay on disk)
MAX_IDLE_READERS = 64  # kept readers beyond this many are closed once idle (no-open mode has no release)
IDLE_S = 30.0  # far longer than any one ranged read of a fetch that may still use the reader
MAX_AHEAD = 256  # files made ready ahead and not opened yet; the oldest are dropped beyond this
HINTED_CHUNK = 2  # files readers named looked up in the disk tier in one worker call (see `_make_ready`)
NAMED_LOOKUPS = 4  # such calls at once: more would queue ahead of the opens' own calls
MAX_HINTED = 65_536  # the same for files readers named, which pfs/fs/hints.py bounds by bytes and drops
# Files made ready ahead lately that were opened, and that were dropped unopened, are counted (both halved
# once they add up to this) to tell whether making files ready pays (see `ahead_pays`).
AHEAD_MEMORY = 1024
AHEAD_SLACK = 32  # dropped files that never make it not pay (a reader that stopped early)


class Want(NamedTuple):
    """A file's identity as a listing tells it: what a version is chosen for, before any inode exists."""

    path: str
    size: int
    mtime_ns: int


@dataclass(eq=False)
class _Ahead:
    want: Want
    at: float  # monotonic time it was started
    nbytes: int  # room held in the memory budget until done
    done: trio.Event = field(default_factory=trio.Event)
    etag: str | None = None  # None until done, or when the look failed
    hinted: bool = False  # a reader named it (pfs/fs/hints.py)


class Versions:
    def __init__(
        self,
        backend: Backend,
        cache: BlockCache,
        stats: Stats,
        run: Run,
        run_disk: Run,
        on_replaced: Callable[[Inode], None] = lambda inode: None,
        fresh_s: float = 1.0,
    ) -> None:
        self.backend = backend
        self.reserved = backend.reserved_area()  # where files unlinked while open are read from
        self.cache = cache
        self.stats = stats
        self._run = run
        self._run_disk = run_disk
        self._on_replaced = on_replaced
        self._seen: dict[str, Seen] = {}  # the version book's in-memory part
        self._kept: OrderedDict[int, tuple[CachedObject, Reader, float]] = OrderedDict()  # by inode
        self._ahead: OrderedDict[str, _Ahead] = OrderedDict()  # by path: files made ready ahead of their open
        self._hinted: OrderedDict[str, _Ahead] = OrderedDict()  # the same for files a reader named
        self._batch: list[_Ahead] = []  # started ahead since the loop last ran the task that looks them up
        self._ahead_used = self._ahead_dropped = 0  # lately (see AHEAD_MEMORY)
        self._fresh_s = fresh_s  # how long a look made ahead stands for an open (the metadata TTL)
        self._nursery: trio.Nursery | None = None
        self._named_lookups = trio.CapacityLimiter(NAMED_LOOKUPS)

    def attach(self, nursery: trio.Nursery) -> None:
        """Readers are closed in `nursery`, after the request that let them go is answered."""
        self._nursery = nursery

    # ---- choosing --------------------------------------------------------------------------------------

    async def choose(self, inode: Inode, first_block: bool = True) -> tuple[CachedObject, OpenReader]:
        """The version of `inode` its reads go to (close-to-open), and how the cache opens it on a miss.
        `first_block`: where the object must be asked, its first block may come with the answer (not for a
        question about the cache itself, which must not change what it asks about)."""
        if self.backend.cheap_open:  # revalidate now: it costs nothing, and an open sees the latest version
            inode.update(await self._run(self.backend.stat, inode.path))
        if self.backend.known_version(inode.path, inode.size, inode.mtime_ns) is not None:
            await self._made_ready(inode)  # its first block may be on its way: not fetched twice
        else:
            etag = await self._made_ready(inode)
            if etag is None and first_block and not inode.detached:
                etag = await self._booked_else_first(inode)
            elif etag is None:
                etag = await self.trusted_etag(inode)
            if etag is None:
                reader = await self.open_reader(inode)  # may refresh the attributes of a replaced object
                # No token at all (a file just changed on HDFS): what this open reads is its own version.
                etag = inode.etag = reader.version or f"open-{uuid.uuid4().hex}"
                self._keep(inode, self.object(inode), reader)
                await self.saw_etag(inode, etag)
            inode.etag = etag
        obj = self.object(inode)
        return obj, self.opener(inode, obj)

    def object(self, inode: Inode) -> CachedObject:
        version = self.backend.known_version(inode.path, inode.size, inode.mtime_ns) or inode.etag
        return self.cache.object(self.backend.id, inode.path, version, inode.size)

    async def _made_ready(self, inode: Inode) -> str | None:
        """The ETag a prefetch of this very file found, while it still stands for an open."""
        ahead = self._ahead.pop(inode.path, None) if self._ahead else None
        hinted = ahead is None and bool(self._hinted)
        if hinted:
            ahead = self._hinted.pop(inode.path, None)
        if ahead is None or inode.detached:
            return None
        await ahead.done.wait()
        if ahead.etag is None or not _same(ahead.want, inode):
            return None
        if time.monotonic() - ahead.at >= self._fresh_s:
            return None
        self.stats.add("prefetch_files_used", 1)
        if not hinted:
            self._count_ahead(used=1)
        return ahead.etag

    def ahead_pays(self) -> bool:
        """Whether files made ready ahead of their open are being opened: not once more of them were
        dropped unopened than were opened, lately (a shuffled reader's chance order of names made them)."""
        return self._ahead_dropped <= max(self._ahead_used, AHEAD_SLACK)

    def _count_ahead(self, used: int = 0, dropped: int = 0) -> None:
        self._ahead_used += used
        self._ahead_dropped += dropped
        if self._ahead_used + self._ahead_dropped > AHEAD_MEMORY:
            self._ahead_used //= 2
            self._ahead_dropped //= 2

    async def _booked_else_first(self, inode: Inode) -> str | None:
        """The ETag the version book trusts (memory, else the disk tier's, with a small file's block), else
        the one of a GET of the first block (which goes to the cache): the book and the GET in one worker
        call, as a file the node never read has nothing in the book and a hand-off costs the loop more than
        the look. None where the store cannot answer both at once, or the object changed since it was
        listed (the open then looks again)."""
        want = Want(inode.path, inode.size, inode.mtime_ns)
        key = _object_key(self.backend.id, inode.path)
        seen = self._seen.get(key)
        if seen is not None or self.cache.disk is None:
            etag = _trusted_etag(seen, want)
            if etag is not None:
                return etag
            try:
                return await self._read_first(want)
            except Stale:
                return None
        try:
            seen, block, got = await self._run(self._booked_else_read_first, key, want)
        except Stale:
            return None
        if seen is not None:
            self._remember(key, seen)
        if got is None:
            if block is not None:
                self.stats.add("cache_hits_disk", 1)
                self.cache.keep_in_memory(self._object_for(want, seen.etag), 0, block)
            return _trusted_etag(seen, want)
        return await self._took_first(want, got)

    def _booked_else_read_first(
        self, key: str, want: Want
    ) -> tuple[Seen | None, Block | None, tuple[Block, str] | None]:
        """In a worker thread: (the disk tier's book entry, a small file's block from the disk tier where
        that entry is trusted, else the backend's answer to a GET of the first block)."""
        seen, block = self._recall(key, want, 0 < want.size <= self.cache.config.block_size)
        if _trusted_etag(seen, want) is not None or want.size <= 0:
            return seen, block, None
        return seen, None, self.backend.read_first(want.path, want.size, self.cache.config.block_size)

    async def _read_first(self, want: Want, pinned: str | None = None) -> str | None:
        """`pinned`: the version a snapshot pinned, which the backend checks the answer against; it is not
        an ETag seen, so the ETag book is left alone."""
        if want.size <= 0:
            return None
        length = self.cache.config.block_size
        if pinned is not None and not self.backend.reads_first:  # a file system: a reader's first read
            got = await self._run(self._first_by_reader, want, length, pinned)
        else:
            got = await self._run(self.backend.read_first, want.path, want.size, length)
        return await self._took_first(want, got, pinned)

    def _first_by_reader(self, want: Want, length: int, version: str) -> tuple[Block, str]:
        """In a worker thread: the first `length` bytes of a file whose version its attributes tell."""
        reader = self.backend.open_reader(want.path, want.size)
        try:
            return reader.read(0, min(length, want.size)), version
        finally:
            reader.close()

    async def _took_first(
        self, want: Want, got: tuple[Block, str] | None, pinned: str | None = None
    ) -> str | None:
        """Keep what a GET of the first block brought: its bytes in the cache, its ETag in the book."""
        if got is None or not got[1]:
            return None
        data, etag = got
        self.stats.add("backend_first_reads", 1)
        self.cache.add_fetched(self._object_for(want, pinned or etag), 0, data)
        if pinned is None:
            await self.saw_etag(want, etag)
        return pinned or etag

    # ---- ahead of opens ---------------------------------------------------------------------------------

    def prefetch(self, want: Want, hinted: bool = False) -> bool:
        """Start making `want`'s version and first block ready for its open, in the background; False when
        the memory budget has no room for it (the caller stops asking for more). `hinted`: a reader named
        the file (pfs/fs/hints.py), which bounds these and drops them itself (`drop_hinted`)."""
        if self._nursery is None or want.size <= 0 or want.path in self._ahead or want.path in self._hinted:
            return True
        etag = self.backend.known_version(*want)  # pinned (a snapshot): only its first block to fetch
        if etag is None:
            etag = _trusted_etag(self._seen.get(_object_key(self.backend.id, want.path)), want)
        elif not self.backend.reads_first and not hinted:
            return True  # a reader checks the version at the first read: nothing to do ahead
        if etag is not None and self._object_for(want, etag).key(0) in self.cache.memory:
            return True
        nbytes = min(want.size, self.cache.config.block_size)
        if not self.cache.try_room(nbytes):
            return False
        ahead = _Ahead(want, time.monotonic(), nbytes, hinted=hinted)
        if hinted:
            self._hinted[want.path] = ahead
            while len(self._hinted) > MAX_HINTED:  # opened where no version is chosen again (kept handles)
                self.drop_hinted(next(iter(self._hinted)))
        else:
            self._ahead[want.path] = ahead
            while len(self._ahead) > MAX_AHEAD:
                self._drop(next(iter(self._ahead)))
        self.stats.add("prefetch_files", 1)
        if not self._batch:
            self._nursery.start_soon(self._make_ready)
        self._batch.append(ahead)
        return True

    async def _make_ready(self) -> None:
        """Make the files started ahead since the last pass ready: what the disk tier holds of them, the
        rest with one GET each, all at once. Files made ready for a directory's order are looked up in one
        disk-tier call (a thread hand-off costs the loop more than a small file's lookups); files readers
        named, a few per call in backend threads, as an open's own lookup is, and only NAMED_LOOKUPS calls
        at once: a window of them read one after another in one call kept the first ones waiting, and
        all at once they queued ahead of the opens' own lookups (a warm epoch with hints went 869 files/s
        in one call per pass, 991 in calls of 8 in backend threads, 1,107 in calls of 2, against 1,223
        without hints; read-only, 1,191 against 1,508 with the calls unbounded, 1,289 against 1,298
        with four at once)."""
        batch, self._batch = self._batch, []
        assert self._nursery is not None
        named = [ahead for ahead in batch if ahead.hinted]
        for start in range(0, len(named), HINTED_CHUNK):
            self._nursery.start_soon(self._make_named_ready, named[start : start + HINTED_CHUNK])
        guessed = [ahead for ahead in batch if not ahead.hinted]
        if guessed:
            await self._make_chunk_ready(guessed, self._run_disk)

    async def _make_named_ready(self, batch: list[_Ahead]) -> None:
        async with self._named_lookups:
            await self._make_chunk_ready(batch, self._run)

    async def _make_chunk_ready(self, batch: list[_Ahead], run: Run) -> None:
        try:
            recalled = await self._recall_ahead(batch, run)
        except BaseException:
            for ahead in batch:
                self._made(ahead, None)
            raise
        assert self._nursery is not None
        for ahead, etag in zip(batch, recalled, strict=True):
            if etag is None:
                self._nursery.start_soon(self._fetch_ahead, ahead)
            else:
                self._made(ahead, etag)

    async def _recall_ahead(self, batch: list[_Ahead], run: Run) -> list[str | None]:
        """The trusted ETag of each file of `batch` that memory or the disk tier knows, its first block
        put in memory from the disk tier (where it is not there yet)."""
        wants = [ahead.want for ahead in batch]
        keys = [_object_key(self.backend.id, want.path) for want in wants]
        known = [self._seen.get(key) for key in keys]
        pinned = [self.backend.known_version(*want) for want in wants]
        disk = self.cache.disk
        if disk is not None:
            try:
                found = await run(self._recall_many, wants, keys, known, pinned)
            except Exception as exc:  # each open asks for itself and reports
                log.debug("prefetch of %d files from the disk tier failed: %s", len(wants), exc)
                found = [(seen, None) for seen in known]
        else:
            found = [(seen, None) for seen in known]
        etags: list[str | None] = []
        for ahead, key, before, pin, (seen, block) in zip(batch, keys, known, pinned, found, strict=True):
            want = ahead.want
            if seen is not None and before is None:
                self._remember(key, seen)
            version = pin or _trusted_etag(seen, want)
            if version is not None and block is not None:
                self.stats.add("cache_hits_disk", 1)
                self.cache.keep_in_memory(self._object_for(want, version), 0, block)
            # A pinned or named file not on disk is fetched ahead; another trusted ETag is ready as it is.
            etags.append(None if (pin is not None or ahead.hinted) and block is None else version)
        return etags

    def _recall_many(
        self, wants: list[Want], keys: list[str], known: list[Seen | None], pinned: list[str | None]
    ) -> list[tuple[Seen | None, Block | None]]:
        """In a worker thread: for each file, its version (`pinned`, else from `known`, else the disk tier's
        book) and, where that version is trusted, its first block from the disk (not in memory, or
        `prefetch` would not have started it)."""
        disk = self.cache.disk
        assert disk is not None
        found: list[tuple[Seen | None, Block | None]] = []
        for want, key, seen, pin in zip(wants, keys, known, pinned, strict=True):
            if seen is None and pin is None:
                seen = disk.seen(key)
            version = pin or _trusted_etag(seen, want)
            found.append((seen, disk.get(self._object_for(want, version).key(0)) if version else None))
        return found

    async def _fetch_ahead(self, ahead: _Ahead) -> None:
        etag = None
        try:
            etag = await self._read_first(ahead.want, self.backend.known_version(*ahead.want))
        except Exception as exc:  # the open asks for itself and reports
            log.debug("prefetch of %s failed: %s", ahead.want.path, exc)
        finally:
            self._made(ahead, etag)

    def _made(self, ahead: _Ahead, etag: str | None) -> None:
        ahead.etag = etag
        self.cache.release_room(ahead.nbytes)
        ahead.done.set()

    def _drop(self, path: str) -> None:
        """Forget a file made ready that was not opened; its block leaves memory (it stays on disk)."""
        ahead = self._ahead.pop(path)
        self._count_ahead(dropped=1)
        if ahead.etag is not None:
            self.cache.memory.discard(self._object_for(ahead.want, ahead.etag).key(0))
            self.stats.add("prefetch_files_dropped", 1)

    def drop_hinted(self, path: str) -> None:
        """A file a reader named was not opened after all: its block leaves memory (it stays on disk)."""
        ahead = self._hinted.pop(path, None)
        if ahead is not None and ahead.etag is not None:
            self.cache.memory.discard(self._object_for(ahead.want, ahead.etag).key(0))

    # ---- the version book ------------------------------------------------------------------------------

    async def trusted_etag(self, inode: Inode | Want) -> str | None:
        """The ETag of `inode`'s object with its current attributes, if one was seen and can be relied on.

        From memory; else from the disk tier (once per object and mount), in the same worker call as the
        object's first block when it is a small file: its first read is about to ask for it."""
        key = _object_key(self.backend.id, inode.path)
        seen = self._seen.get(key)
        disk = self.cache.disk
        if seen is None and disk is not None:
            small = 0 < inode.size <= self.cache.config.block_size
            seen, block = await self._run_disk(self._recall, key, inode, small)
            if seen is not None:
                self._remember(key, seen)
                if block is not None:
                    self.stats.add("cache_hits_disk", 1)
                    self.cache.keep_in_memory(self._object_for(inode, seen.etag), 0, block)
        return _trusted_etag(seen, inode)

    def _recall(self, key: str, inode: Inode | Want, small: bool) -> tuple[Seen | None, Block | None]:
        disk = self.cache.disk
        assert disk is not None
        seen = disk.seen(key)
        if seen is None or not small or not _trusted(seen, inode.size, inode.mtime_ns):
            return seen, None
        return seen, disk.get(self._object_for(inode, seen.etag).key(0))

    def _object_for(self, inode: Inode | Want, etag: str) -> CachedObject:
        return self.cache.object(self.backend.id, inode.path, etag, inode.size)

    async def saw_etag(self, inode: Inode | Want, etag: str) -> None:
        """Remember an ETag just seen: in memory now, and queued for the disk tier (for remounts)."""
        key = _object_key(self.backend.id, inode.path)
        seen = Seen(inode.size, inode.mtime_ns, etag, time.time())
        self._remember(key, seen)
        if self.cache.disk is not None:
            self.cache.disk.record(key, seen)  # queued for the disk tier's writer: never blocks

    def _remember(self, key: str, seen: Seen) -> None:
        if len(self._seen) >= MAX_SEEN_IN_MEMORY:
            self._seen.clear()
        self._seen[key] = seen

    # ---- readers ---------------------------------------------------------------------------------------

    def opener(self, inode: Inode, obj: CachedObject) -> OpenReader:
        """How the cache opens `obj` on its first miss: once per inode, checked to be that very version."""

        async def open_reader() -> Reader:
            kept = self._kept.get(inode.ino)
            if kept is not None and kept[0] == obj:
                self._kept[inode.ino] = (obj, kept[1], time.monotonic())
                self._kept.move_to_end(inode.ino)
                return kept[1]
            try:
                self.stats.add("backend_opens", 1)
                reader = await self._run(self.backend.open_reader, obj.path, obj.size)
                if reader.version and reader.version != obj.version:
                    await self._run(reader.close)
                    raise Stale(f"{obj.path} was replaced")
            except (Stale, NotFound):
                # The version this mount trusted (within the metadata TTL) is gone and not all cached: fail
                # this read, and make the next open look again.
                log.warning("%s changed on the backend since it was opened; reopen it to read it", obj.path)
                inode.attrs_at = 0.0
                self._on_replaced(inode)
                raise Stale(f"{obj.path} changed since it was opened") from None
            return self._keep(inode, obj, reader)

        return open_reader

    async def open_reader(self, inode: Inode) -> Reader:
        """A reader of `inode`'s object as it is now, past the cache (files unlinked while open use it)."""
        self.stats.add("backend_opens", 1)
        store = self.reserved if inode.detached else self.backend
        try:
            return await self._run(store.open_reader, inode.path, inode.size)
        except Stale:
            if inode.detached:
                raise
        # Replaced by another writer since our attributes were read: take the new version whole.
        inode.update(await self._run(self.backend.stat, inode.path))
        return await self._run(store.open_reader, inode.path, inode.size)

    def _keep(self, inode: Inode, obj: CachedObject, reader: Reader) -> Reader:
        """Keep `reader` as the inode's reader of `obj`, unless one is already kept (then close ours)."""
        kept = self._kept.get(inode.ino)
        if kept is not None and kept[0] == obj:
            self._close(reader)
            return kept[1]
        self._kept[inode.ino] = (obj, reader, time.monotonic())
        self._kept.move_to_end(inode.ino)
        if kept is not None:
            self._close(kept[1])
        self._close_idle()
        return reader

    def release(self, inode: Inode) -> None:
        """`inode` has no open handle left: its kept reader is closed (in the background)."""
        kept = self._kept.pop(inode.ino, None)
        if kept is not None:
            self._close(kept[1])

    def _close_idle(self) -> None:
        now = time.monotonic()
        while len(self._kept) > MAX_IDLE_READERS:
            ino, (_, reader, used_at) = next(iter(self._kept.items()))
            if now - used_at < IDLE_S:
                return
            del self._kept[ino]
            self._close(reader)

    def _close(self, reader: Reader) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._close_quietly, reader)
        else:
            reader.close()

    async def _close_quietly(self, reader: Reader) -> None:
        """A reader that fails to close has nothing left to give: log it, never end the mount for it."""
        try:
            await self._run(reader.close)
        except Exception as exc:
            log.warning("could not close a reader: %s", exc)


def _same(want: Want, inode: Inode) -> bool:
    """Whether `inode`'s attributes are those `want` was fetched for: to the second, as a listing and a
    HEAD of one object tell its modification time to the millisecond and to the second."""
    return want.size == inode.size and want.mtime_ns // 10**9 == inode.mtime_ns // 10**9


def _trusted(seen: Seen, size: int, mtime_ns: int) -> bool:
    if seen.size != size or seen.mtime_ns // 10**9 != mtime_ns // 10**9:
        return False
    return seen.seen_at - seen.mtime_ns / 1e9 >= TRUST_MARGIN_S


def _trusted_etag(seen: Seen | None, want: Inode | Want) -> str | None:
    return seen.etag if seen is not None and _trusted(seen, want.size, want.mtime_ns) else None


@functools.lru_cache(maxsize=65536)  # asked at every open: a hash per open is measurable
def _object_key(backend_id: str, path: str) -> str:
    return hashlib.blake2b(f"{backend_id}\0{path}".encode(), digest_size=16).hexdigest()
