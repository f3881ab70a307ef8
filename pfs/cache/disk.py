"""The disk tier: cached blocks on local disk, shared by every pfs mount on the node and kept across remounts.

Built on diskcache (SQLite plus one file per block), which is safe for several threads and processes at once.
Each block carries a checksum per 16 KiB chunk (diskcache's tag column), checked on every read, so a random
read checks (and reads) only the chunks it needs; a block failing it is dropped, counted and reported
missing, so it is fetched again. Bounds are enforced on insert, never by a background sweep: the byte
budget (diskcache culls the oldest blocks on every set, so the tier never exceeds it by more than a batch)
and a minimum ratio of free space on the file system holding the cache.

Reads block (the trio side calls them in worker threads) but skip SQLite once a block is known: an index in
memory (bounded, least recently used first out) says which file holds each block, its size and checksums,
filled at the first lookup of a key and at every write, so a read is a `pread` of the chunks it needs. The
index may be stale, as another process may have evicted the block since: a file gone is a miss (and the
key is looked up once more, in case it was stored again). Writes never block: blocks and versions queue
for one writer thread, which stores them a batch per SQLite transaction; queued ones are read from the
queue meanwhile, and `close` writes what is queued (for a bounded time).

The same directory also keeps a small version book: the version (ETag) last seen for each object, so a
remounted node can use its cached blocks without asking the backend for every file again.

The tier is an optimisation and never makes a read fail: a disk that is full, read-only or failing turns
reads into misses and writes into no-ops (one warning when it starts failing, one line when it works again),
a database that is not one is set aside and the tier starts empty, and a file in the directory is read
only when it is a regular file (never through a link) no bigger than a block, so whatever lies in the cache
directory cannot make the mount read without bound.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import functools
import io
import logging
import os
import resource
import shutil
import sqlite3
import stat
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import diskcache
from xxhash import xxh3_64_intdigest

from pfs.cache.buffers import BufferPool
from pfs.errors import PfsError

log = logging.getLogger(__name__)

# A block's value is stored as one file above this size; smaller ones live inside SQLite.
_MIN_FILE_SIZE = 64 * 1024
# Each block carries a checksum per chunk of this size. A random 4 KiB read from the disk tier reads (and
# checks) its whole chunk: after the page cache was dropped, random 64 KiB reads ran at 0.6x the rate of 4 KiB
# ones on the benchmark machine, 16 KiB ones at the same rate; a 4 MiB block then has 256 checksums (1 KiB).
CHECK_CHUNK = 16 * 1024
# The checksum is the low 32 bits of xxh3: zlib's CRC32 ran at 2.2-2.4 GiB/s here, a sixth of the daemon's
# CPU reading a warm 1 GiB file; xxh3 runs at 25-35 GiB/s. Its tags start with this mark. Blocks cached by
# earlier versions carry bare CRC32s, of 16 KiB or 64 KiB chunks: still read, and checked by them.
_XXH3_MARK = b"x3"
_OLD_CHECK_CHUNK = 64 * 1024
MAX_BLOCK = 64 << 20  # the largest block size a mount may use: no cached value is ever bigger
# Block files of at least this size leave the page cache once DROP_BEHIND newer ones were written; smaller
# ones (the blocks of small files) stay, for a remount to read them from memory.
DROP_BEHIND_BYTES = 1 << 20
DROP_BEHIND = 8
DATABASE = "cache.db"
WARN_EVERY_S = 600.0  # a disk that keeps failing and recovering warns at most this often
_ASIDE = "broken-"  # prefix of the subdirectories broken caches are moved into
# What a failing disk or database raises through diskcache: each only makes the tier miss.
_FAILURES = (OSError, sqlite3.Error, diskcache.Timeout)
INDEX_ENTRIES = 16384  # blocks whose file the index knows (~1 KiB each with 4 MiB blocks' checksums)
# Block files kept open for ranged reads, so a random read is one `pread` rather than the four opens, the
# `fstat` and the closes of a checked path (a 4 KiB read from the tier cost its thread 53 us, 14 of them
# opening). A file deleted meanwhile is noticed by its link count, never read, and closed at once. 512 files
# are 2 GiB of 4 MiB blocks; a low limit of open files keeps most of its room for other use.
OPEN_FILES = min(512, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)
NOW_BYTES = 64 * 1024  # the most `read_now` reads on the trio loop (page cache only: copy and check)
_NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux >= 4.14
# Pieces (parts of blocks kept for small random reads) the database did not have, remembered for a while so
# that a random reader asks SQLite once for each; one written here meanwhile is known at once, one written by
# another mount on the node after this many seconds. Blocks are always asked for: mounts share them.
ABSENT_S = 30.0
QUEUE_BYTES = 256 << 20  # writes queued beyond this are dropped (or wait, for callers that ask to)
BATCH_BYTES = 32 << 20  # the most one transaction writes, so other processes wait little for the database
READERS = 4  # threads reading the blocks of one `get_many` at once
CLOSE_WAIT_S = 20.0  # how long closing waits for queued writes

# The tier's own statements (diskcache's schema; its eviction policy "least-recently-stored").
_INSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
    " filename, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_OLDEST = "SELECT rowid, filename, size FROM Cache ORDER BY store_time LIMIT ?"
_CULL_ROWS = 16  # oldest entries looked at per statement while culling
_KEYS_PER_STATEMENT = 500  # under SQLite's smallest limit of parameters per statement (999)

Done = Callable[[], None]
Block = bytes | memoryview  # a view shares the buffer of the read it came from


class CacheUnavailable(PfsError):
    """The cache directory cannot be used at all (not writable, not creatable); the message is one line."""


@dataclass(frozen=True)
class Seen:
    """A version observed on the backend: the object's attributes then, its ETag, and when it was seen."""

    size: int
    mtime_ns: int
    etag: str
    seen_at: float  # wall-clock seconds


Digest = Callable[[memoryview], int]


def _xxh3_32(chunk: memoryview) -> int:
    return xxh3_64_intdigest(chunk) & 0xFFFFFFFF


def _sums(data: bytes | bytearray | memoryview, chunk: int, digest: Digest) -> bytes:
    """The digest of every `chunk` bytes of `data`, packed 4 bytes each."""
    view = memoryview(data)
    return array.array("I", [digest(view[i : i + chunk]) for i in range(0, len(view), chunk)]).tobytes()


def _checksums(data: bytes | memoryview) -> bytes:
    """The tag a block is stored with: a random read checks only the chunks it reads."""
    return _XXH3_MARK + _sums(data, CHECK_CHUNK, _xxh3_32)


@dataclass(frozen=True, slots=True)
class _Check:
    """How a stored block's tag checks its bytes: `sums` has a 32-bit `digest` per `chunk` bytes."""

    sums: bytes
    chunk: int
    digest: Digest

    @classmethod
    def of(cls, size: int, tag: bytes) -> _Check:
        """The check of a block of `size` bytes stored with `tag` (by this version, or an earlier one; a
        count of sums that fits neither fails every check, as a damaged tag should)."""
        if tag.startswith(_XXH3_MARK) and len(tag) % 4 == len(_XXH3_MARK):  # bare CRC32s are 4n bytes
            return cls(tag[len(_XXH3_MARK) :], CHECK_CHUNK, _xxh3_32)
        count = len(tag) // 4
        old = count != -(-size // CHECK_CHUNK) and count == -(-size // _OLD_CHECK_CHUNK)
        return cls(tag, _OLD_CHECK_CHUNK if old else CHECK_CHUNK, zlib.crc32)

    def intact(self, data: bytes | bytearray | memoryview, first: int = 0, last: int | None = None) -> bool:
        """Whether `data`, chunks [first, last] of the block (all of it by default), matches."""
        count = len(self.sums) // 4 - first if last is None else last + 1 - first
        expected = self.sums[first * 4 : (first + count) * 4]
        return len(expected) == count * 4 and _sums(data, self.chunk, self.digest) == expected


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a cached block lives: its file (relative to the cache directory), size and check."""

    filename: str
    size: int
    check: _Check


_INLINE = _Where("", 0, _Check(b"", CHECK_CHUNK, _xxh3_32))  # a small block kept inside the database


class _Index:
    """Key -> `_Where` for the most recently used INDEX_ENTRIES blocks; safe for several threads."""

    def __init__(self, limit: int = INDEX_ENTRIES) -> None:
        self._limit = limit
        self._entries: OrderedDict[str, _Where] = OrderedDict()
        self._absent: OrderedDict[str, float] = OrderedDict()  # key -> when the database had none
        self._lock = threading.Lock()

    def get(self, key: str) -> _Where | None:
        with self._lock:
            where = self._entries.get(key)
            if where is not None:
                self._entries.move_to_end(key)
            return where

    def absent(self, key: str) -> bool:
        """Whether the database said `key` was not there, less than ABSENT_S ago."""
        since = self._absent.get(key)  # one dict lookup: atomic
        return since is not None and time.monotonic() - since < ABSENT_S

    def mark_absent(self, key: str) -> None:
        with self._lock:
            self._absent[key] = time.monotonic()
            self._absent.move_to_end(key)
            if len(self._absent) > self._limit:
                self._absent.popitem(last=False)

    def put(self, key: str, where: _Where) -> None:
        with self._lock:
            self._absent.pop(key, None)
            self._entries[key] = where
            self._entries.move_to_end(key)
            if len(self._entries) > self._limit:
                self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._absent.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(eq=False, slots=True)
class _Open:
    fd: int
    users: int = 1
    reads: int = 0
    read_whole: bool = False  # its whole file was read ahead
    closing: bool = False


class _OpenFiles:
    """Block files kept open for ranged reads, by file name, least recently used first out; safe for
    several threads. A descriptor is closed only once no read holds it: a number closed under a reader
    could be reused by another file."""

    def __init__(self, limit: int = OPEN_FILES) -> None:
        self._limit = limit
        self._files: OrderedDict[str, _Open] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, filename: str, counted: bool = True) -> _Open | None:
        """The descriptor kept for `filename`, held until given back; `counted`: a read that counts as
        the file's next (see `DiskTier._read_kept_open`)."""
        with self._lock:
            held = self._files.get(filename)
            if held is not None:
                held.users += 1
                held.reads += counted
                self._files.move_to_end(filename)
            return held

    def add(self, filename: str, fd: int) -> _Open:
        """Keep `fd` open for `filename` (or the one another thread opened for it meanwhile), taken."""
        with self._lock:
            held = self._files.get(filename)
            if held is not None:
                held.users += 1
                os.close(fd)
                return held
            held = self._files[filename] = _Open(fd)
            while len(self._files) > self._limit:
                self._close(self._files.popitem(last=False)[1])
            return held

    def hold(self, held: _Open) -> None:
        """One more holder of a descriptor already held (given back with `give`)."""
        with self._lock:
            held.users += 1

    def give(self, held: _Open) -> None:
        with self._lock:
            held.users -= 1
            if held.closing and not held.users:
                os.close(held.fd)

    def drop(self, filename: str) -> None:
        with self._lock:
            held = self._files.pop(filename, None)
            if held is not None:
                self._close(held)

    def clear(self) -> None:
        with self._lock:
            while self._files:
                self._close(self._files.popitem()[1])

    @staticmethod
    def _close(held: _Open) -> None:
        held.closing = True
        if not held.users:
            os.close(held.fd)


class _Queue:
    """Writes waiting for the writer thread, by key (a block's bytes or a version's text), each with what
    to call once it is written or given up. Entries stay readable until written."""

    def __init__(self, limit: int = QUEUE_BYTES) -> None:
        self._limit = limit
        self._items: dict[str, tuple[Block | str, Done | None]] = {}
        self._taken: set[str] = set()  # being written now
        self._bytes = 0
        self._closed = False
        self._changed = threading.Condition()

    def get(self, key: str) -> Block | str | None:
        item = self._items.get(key)  # one dict lookup: atomic, no lock needed
        return None if item is None else item[0]

    def add(self, key: str, value: Block | str, done: Done | None, wait: bool) -> bool:
        """Queue a write; False (nothing queued) when closed, or full and not `wait`ing for room."""
        with self._changed:
            if key in self._items:  # a key never changes meaning: the one queued is the same
                return False
            while not self._closed and self._bytes + len(value) > self._limit and self._items:
                if not wait:
                    return False
                self._changed.wait()
            if self._closed:
                return False
            self._items[key] = (value, done)
            self._bytes += len(value)
            self._changed.notify_all()
            return True

    def take(self, max_bytes: int) -> list[tuple[str, Block | str]]:
        """The next batch to write (waits for one); empty once closed and drained."""
        with self._changed:
            while len(self._taken) == len(self._items) and not self._closed:
                self._changed.wait()
            batch: list[tuple[str, Block | str]] = []
            size = 0
            for key, (value, _) in self._items.items():
                if key not in self._taken and (not batch or size + len(value) <= max_bytes):
                    batch.append((key, value))
                    size += len(value)
            self._taken.update(key for key, _ in batch)
            return batch

    def finish(self, keys: list[str]) -> list[Done]:
        """Forget written (or given up) entries; returns what to call for them."""
        with self._changed:
            dones = [self._pop(key) for key in keys]
            self._taken.difference_update(keys)
            self._changed.notify_all()
        return [done for done in dones if done is not None]

    def keys_starting(self, prefix: str) -> list[str]:
        with self._changed:
            return [key for key in self._items if key.startswith(prefix)]

    def wait_written(self, key: str, timeout: float) -> None:
        """Wait while `key` is being written (bounded by `timeout`)."""
        with self._changed:
            self._changed.wait_for(lambda: key not in self._taken, timeout)

    def discard(self, key: str) -> Done | None:
        """Drop a queued write not yet being written (one being written lands anyway)."""
        with self._changed:
            if key in self._taken:
                return None
            done = self._pop(key)
            self._changed.notify_all()
            return done

    def _pop(self, key: str) -> Done | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self._bytes -= len(item[0])
        return item[1]

    def wait_empty(self, timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: not self._items, timeout)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class _Chunks:
    """A block as the file-like object diskcache reads in chunks, without copying it."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data)
        self._at = 0

    def read(self, size: int) -> memoryview:
        chunk = self._view[self._at : self._at + size]
        self._at += len(chunk)
        return chunk


class _BoundedDisk(diskcache.Disk):
    """diskcache's storage of values, reading a value's file only when it is a regular file inside the
    cache directory (no link followed on the way) of at most `max_value` bytes. Anything else reads as an
    empty value, which fails its checksum and is dropped by the tier like any corrupt block. Pickles are
    never loaded (the tier stores only bytes and text): they read as missing."""

    max_value = MAX_BLOCK

    def __init__(self, directory: str, **settings: Any) -> None:
        super().__init__(directory, **settings)
        self._written = threading.local()  # the file a store in this thread is writing
        self._behind: deque[str] = deque()  # big block files written last, whose pages go once written
        self._behind_lock = threading.Lock()

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:  # the tier stores none: a pickle here was put by someone else
            return None
        if mode != diskcache.core.MODE_BINARY or not filename:
            return super().fetch(mode, filename, value, read)
        opened = _open_value_file(self._directory, filename, self.max_value)
        if opened is None:
            return io.BytesIO() if read else b""
        file, size = opened
        if read:
            return file
        with file:
            return file.read(size)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        self._written.path = None
        try:
            return super().store(value, read, key=key)
        except OSError:  # a full disk: leave no partial file behind
            self.remove_written()
            raise

    def filename(self, key: Any = diskcache.core.UNKNOWN, value: Any = diskcache.core.UNKNOWN) -> tuple:
        # One level of 256 directories, not diskcache's two of 65,536: there nearly every new block made
        # two directories and every eviction removed them (a third of a small block's write time).
        hex_name = os.urandom(16).hex()
        name = f"{hex_name[:2]}/{hex_name[2:]}.val"
        full_path = os.path.join(self._directory, name)
        self._written.path = full_path
        self._written.name = name
        return name, full_path

    def _write(self, full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> int:
        # Buffered: the kernel takes a block at memory speed and writes it back behind the reader. Written
        # with O_DIRECT (no second page-cache copy), the writer went at the disk's pace, one write at a
        # time, and held fetched blocks in the memory budget meanwhile: a cold 1 GiB read through the
        # harness at 228-230 MiB/s against 385-402 buffered, back to back, with the same system CPU.
        # Open first: the directory nearly always exists, and diskcache tries to make it before every file.
        try:
            writer = open(full_path, mode, encoding=encoding)  # noqa: SIM115 (closed just below)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            writer = open(full_path, mode, encoding=encoding)  # noqa: SIM115
        size = 0
        with writer:
            for chunk in iterator:
                size += len(chunk)
                writer.write(chunk)
            if size >= DROP_BEHIND_BYTES and "b" in mode:
                writer.flush()
                self._drop_behind(writer.fileno(), full_path)
        return size

    def _drop_behind(self, fd: int, path: str) -> None:
        """Start writing a big block's file out now, and give its pages back to the kernel once DROP_BEHIND
        newer ones were written (without waiting: pages still on their way to the disk stay). The reader
        has these bytes in the FUSE file's page cache already; kept here too, every cold read of a big
        file filled memory with a second copy, and on the benchmark VM writing into pages not recently
        used cost about 2 ms per MiB: 56 % of the daemon's CPU reading a cold 1 GiB file (scratch, 1 GiB
        of 4 MiB files written after a drop of the page cache: 335-375 MiB/s, 2.7-3.0 s of CPU, and
        2,354 MiB/s, 0.36 s, with the pages given back). The file is opened again by its name for that,
        never kept open: an open file evicted meanwhile would keep its space, which the tier's size and
        free-space bounds count as freed."""
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # dirty pages: starts their writeback
        except OSError:
            return  # only an optimisation: the pages stay
        with self._behind_lock:
            self._behind.append(path)
            old = self._behind.popleft() if len(self._behind) > DROP_BEHIND else None
        if old is not None:
            _give_back_pages(old)

    def let_go(self) -> None:
        """Give back the pages of the last block files written (the tier is closing)."""
        with self._behind_lock:
            paths, self._behind = list(self._behind), deque()
        for path in paths:
            _give_back_pages(path)

    def written(self) -> str | None:
        """The file (relative to the directory) the last store in this thread wrote, if any."""
        return self._written.name if getattr(self._written, "path", None) else None

    def remove_written(self) -> None:
        if getattr(self._written, "path", None) is not None:
            with contextlib.suppress(OSError):
                os.remove(self._written.path)


def _drop_row(sql: Callable, disk: diskcache.Disk, rowid: int, filename: str | None) -> None:
    # Its file goes now, as each `set` of a batch did, not at the commit: culled at the commit, the files of
    # a whole batch would be on disk beside those they replace, past the size limit. A rollback then leaves
    # rows without files, which read as misses.
    sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
    if filename is not None:
        disk.remove(filename)


def _cull(sql: Callable, disk: diskcache.Disk, volume: int, limit: int) -> int:
    """Drop the oldest entries until `volume` is under `limit`, and return the volume left. Only as many as
    that: diskcache's cull drops its `cull_limit` at a time, which on a small file system kept short of
    free space left 3 MiB cached of the 11 it had room for."""
    while volume >= limit:
        oldest = sql(_OLDEST, (_CULL_ROWS,)).fetchall()
        if not oldest:
            break
        for rowid, filename, size in oldest:
            if volume < limit:
                break
            _drop_row(sql, disk, rowid, filename)
            volume -= size
    return volume


def _give_back_pages(path: str) -> None:
    """Drop the clean pages of the block file `path` from the page cache (nothing if it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return  # evicted since (or not a file of ours any more): nothing to give back
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # only advice: the pages stay
    finally:
        os.close(fd)


def _read_past_page_cache(fd: int, buffer: memoryview, offset: int) -> int:
    """Read a big block's file from `offset` into `buffer` (page-aligned: a pool buffer) with O_DIRECT,
    where the file system allows it. Such a block's pages leave the page cache once written
    (`_drop_behind`), so a buffered read only filled fresh pages to copy out of: with four readers of warm
    1 GiB files that was half the daemon's CPU (system time 4.5-5.0 s against 2.2 s direct) and the rate
    went 497-576 -> 666-791 MiB/s (scratch, back to back). A file system without O_DIRECT (tmpfs) is read
    as before."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
        return os.preadv(fd, [buffer], offset)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # refused the flag or this buffer's alignment: read it buffered
            raise
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
    return os.preadv(fd, [buffer], offset)


def _open_value_file(directory: str, filename: str, limit: int) -> tuple[BinaryIO, int] | None:
    """`filename` below `directory` opened for reading, with its size (see `_open_value_fd`)."""
    opened = _open_value_fd(directory, filename, limit)
    if opened is None:
        return None
    fd, size = opened
    return os.fdopen(fd, "rb"), size


def _open_value_fd(directory: str, filename: str, limit: int) -> tuple[int, int] | None:
    """`filename` below `directory` opened for reading, with its size, or None unless every part of the
    path is what diskcache made: directories and then a regular file of at most `limit` bytes, none of
    them a link (a FIFO does not block the open either). FileNotFoundError when it is gone."""
    parts = filename.split("/")
    shown = os.path.join(directory, filename)
    if filename.startswith("/") or ".." in parts:
        log.warning("ignored a cache entry naming %r, outside the cache directory", filename)
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fds: list[int] = []
    try:
        fds.append(os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for part in parts[:-1]:
            fds.append(os.open(part, flags | os.O_DIRECTORY, dir_fd=fds[-1]))
        try:  # no access time to write: a read from the page cache then never waits for the journal
            fds.append(os.open(parts[-1], flags | os.O_NOATIME, dir_fd=fds[-1]))
        except PermissionError:  # a file another user's mount stored: only its owner may ask that
            fds.append(os.open(parts[-1], flags, dir_fd=fds[-1]))
        info = os.fstat(fds[-1])
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            log.warning("ignored %s in the cache: not a regular file of at most %d bytes", shown, limit)
            return None
        return fds.pop(), info.st_size
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise  # deleted by another process since it was looked up: a miss
        log.warning("ignored %s in the cache: %s", shown, exc.strerror)
        return None
    finally:
        for fd in fds:
            os.close(fd)


class DiskTier:
    def __init__(
        self,
        directory: str,
        size_limit: int | None,
        free_space_ratio: float = 0.0,
        max_block: int = MAX_BLOCK,
    ) -> None:
        """Open (or create) the tier in `directory`; `size_limit` None keeps the limit the last mount set
        (for tools that inspect or clear a cache without changing its settings). No cached value bigger
        than `max_block` is ever read. A database that is not one is set aside and the tier starts empty;
        CacheUnavailable when the directory cannot be used at all."""
        self.directory = directory
        self.free_space_ratio = free_space_ratio
        self.corrupt_blocks = 0
        self._count_lock = threading.Lock()
        self._failing = False
        self._warned_at = -WARN_EVERY_S
        self._max_block = max_block
        self._index = _Index()
        self._open_files = _OpenFiles()
        self._queue = _Queue()
        self._writer: threading.Thread | None = None
        self._threads_lock = threading.Lock()
        self._readers: ThreadPoolExecutor | None = None
        disk = type("BoundedDisk", (_BoundedDisk,), {"max_value": max_block})
        try:
            self._cache = self._open(disk, size_limit)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # not writable, full, locked: nothing to set aside
                raise _unavailable(directory, exc) from None
            try:
                _set_aside(directory, exc)
                self._cache = self._open(disk, size_limit)
            except _FAILURES as again:
                raise _unavailable(directory, again) from None
        except _FAILURES as exc:
            raise _unavailable(directory, exc) from None
        self.size_limit = self._cache.size_limit if size_limit is None else size_limit

    def _open(self, disk: type[diskcache.Disk], size_limit: int | None) -> diskcache.Cache:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        settings = {} if size_limit is None else {"size_limit": size_limit}
        return diskcache.Cache(
            self.directory,
            disk=disk,
            # Least-recently-*used* would make every read a SQLite write (147 us per get instead of 31 us
            # here); blocks are evicted in the order they were stored instead.
            eviction_policy="least-recently-stored",
            cull_limit=16,
            disk_min_file_size=_MIN_FILE_SIZE,
            sqlite_mmap_size=0,
            timeout=30,
            **settings,
        )

    def _failed(self, what: str, exc: BaseException) -> None:
        """Note that the disk could not do `what`: one warning when it starts failing (at most one every
        WARN_EVERY_S, however often it recovers and fails again), never one per block."""
        with self._count_lock:
            now = time.monotonic()
            quiet = self._failing or now - self._warned_at < WARN_EVERY_S
            self._failing = True
            if not quiet:
                self._warned_at = now
        if not quiet:
            log.warning(
                "the disk cache %s cannot %s (%s): reads go to the backend until it can; "
                "free space there, or mount with another --cache-dir (or --cache-size 0)",
                self.directory,
                what,
                _reason(exc),
            )

    def _stored(self) -> None:
        if self._failing:
            with self._count_lock:
                again, self._failing = self._failing, False
            if again:
                log.info("the disk cache %s stores blocks again", self.directory)

    # ---- blocks ------------------------------------------------------------------------------------------

    def get(self, key: str) -> Block | None:
        return self._read(key, 0, None)

    def get_many(self, keys: list[str], buffers: BufferPool | None = None) -> list[Block | None]:
        """Several blocks, read in parallel (a disk serves several reads at once), into buffers taken from
        `buffers` where it has them."""
        read = functools.partial(self._read, start=0, end=None, buffers=buffers)
        if len(keys) < 2:
            return [read(key) for key in keys]
        return list(self._pool().map(read, keys))

    def knows(self, key: str) -> bool:
        """Whether the index says which file holds `key`'s block (it may have been evicted since)."""
        return self._index.get(key) is not None

    def get_range(
        self, key: str, start: int, end: int, piece: bool = False, read_ahead: bool = False
    ) -> Block | None:
        """Bytes [start, end) of a block, reading and checking only the chunks that hold them; `piece`: a
        part of a block, which the database is not asked for again for ABSENT_S once it had none;
        `read_ahead`: a block read at random before is read ahead whole (see `_read_kept_open`)."""
        return self._read(key, start, end, piece, read_ahead=read_ahead)

    def _read(
        self,
        key: str,
        start: int,
        end: int | None,
        piece: bool = False,
        buffers: BufferPool | None = None,
        read_ahead: bool = False,
    ) -> Block | None:
        queued = self._queue.get(key)
        if queued is not None:
            return None if isinstance(queued, str) else memoryview(queued)[start:end]
        for _ in range(2):  # a file gone since it was indexed: the key may have been stored again
            where = self._locate(key, piece)
            if where is None:
                return None
            if where is _INLINE:
                return self._read_inline(key, start, end)
            try:
                if end is None:  # a whole block: read once, its file not kept open
                    return self._read_file(key, where, 0, where.size, buffers, keep_open=False)
                return self._read_file(key, where, start, end, read_ahead=read_ahead)
            except FileNotFoundError:  # evicted (by another process, or by this one's own writes)
                self._index.discard(key)
            except OSError as exc:
                self._failed("be read", exc)
                return None
        return None

    def _locate(self, key: str, piece: bool = False) -> _Where | None:
        """Where `key`'s block lives: from the index, else from the database (then indexed)."""
        where = self._index.get(key)
        if where is not None or (piece and self._index.absent(key)):
            return where
        try:
            row = self._cache._sql(  # one indexed lookup, without reading the value as `get` would
                "SELECT filename, size, mode, tag FROM Cache WHERE key = ? AND raw = 1", (key,)
            ).fetchone()
        except _FAILURES as exc:
            self._failed("be read", exc)
            return None
        if row is None:
            if piece:
                self._index.mark_absent(key)
            return None
        filename, size, mode, tag = row
        if mode != diskcache.core.MODE_BINARY or not filename:
            return _INLINE
        where = _Where(filename, size, _Check.of(size, tag if isinstance(tag, bytes) else b""))
        self._index.put(key, where)
        return where

    def _read_file(
        self,
        key: str,
        where: _Where,
        start: int,
        end: int,
        buffers: BufferPool | None = None,
        keep_open: bool = True,
        read_ahead: bool = False,
    ) -> Block | None:
        chunk = where.check.chunk
        first, last = start // chunk, (end - 1) // chunk
        offset, length = first * chunk, (last + 1 - first) * chunk
        data: Block | None
        if keep_open:
            data = self._read_kept_open(key, where, offset, length, read_ahead)
        else:
            data = self._read_once(key, where, offset, length, buffers)
        if data is None:
            return None
        if not where.check.intact(data, first, last):
            self._drop_corrupt(key)
            return None
        if start == offset and end - start == len(data):
            return data
        return memoryview(data)[start - offset : end - offset]

    def _read_kept_open(
        self, key: str, where: _Where, offset: int, length: int, read_ahead: bool
    ) -> bytes | None:
        """A ranged read, through the descriptor kept open for the block's file (opened and checked first
        if there is none); with `read_ahead`, a block read before is read ahead whole. FileNotFoundError
        when the file was deleted."""
        held = self._open_files.take(where.filename)
        if held is None:
            fd = self._open_checked(key, where)
            if fd is None:
                return None
            held = self._open_files.add(where.filename, fd)
        try:
            if os.fstat(held.fd).st_nlink == 0:  # evicted since it was opened (by any process)
                self._open_files.drop(where.filename)
                raise FileNotFoundError(errno.ENOENT, "evicted from the cache", where.filename)
            if length > where.check.chunk:  # all at once: the kernel would read it ahead piece by piece
                os.posix_fadvise(held.fd, offset, length, os.POSIX_FADV_WILLNEED)
            data = os.pread(held.fd, length, offset)
            if read_ahead and held.reads and not held.read_whole:
                # A block read at random twice is likely read again: the kernel reads it all ahead, so
                # its next reads find their bytes in the page cache (`read_now`, without a thread). The
                # advice waits for the disk to take the requests (0.4-0.8 ms for 4 MiB here): not this read.
                held.read_whole = True
                self._open_files.hold(held)
                self._pool().submit(self._read_ahead_whole, held)
            return data
        finally:
            self._open_files.give(held)

    def _read_ahead_whole(self, held: _Open) -> None:
        try:
            os.posix_fadvise(held.fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # only advice
        finally:
            self._open_files.give(held)

    def _pool(self) -> ThreadPoolExecutor:
        with self._threads_lock:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="pfs-disk-reader")
            return self._readers

    def _open_checked(self, key: str, where: _Where) -> int | None:
        """A descriptor of the block's file, or None (the block dropped as corrupt) unless it is what
        diskcache made, of the size the index knows. FileNotFoundError when it is gone."""
        opened = _open_value_fd(self.directory, where.filename, self._max_block)
        if opened is None:
            self._drop_corrupt(key)
            return None
        fd, size = opened
        if size != where.size:
            os.close(fd)
            self._drop_corrupt(key)
            return None
        return fd

    def _read_once(
        self, key: str, where: _Where, offset: int, length: int, buffers: BufferPool | None
    ) -> Block | None:
        """A read through a descriptor of its own, into a pool buffer where `buffers` has one (a big
        block's file then bypasses the page cache: the descriptor is switched to O_DIRECT)."""
        fd = self._open_checked(key, where)
        if fd is None:
            return None
        try:
            buffer = buffers.take(length) if buffers is not None else None
            direct = buffer is not None and where.size >= DROP_BEHIND_BYTES
            if length > where.check.chunk and not direct:
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            if buffer is None:
                return os.pread(fd, length, offset)
            if direct:
                return buffer[: _read_past_page_cache(fd, buffer, offset)]
            return buffer[: os.preadv(fd, [buffer], offset)]
        finally:
            os.close(fd)

    def read_now(self, key: str, start: int, end: int) -> Block | None:
        """Bytes [start, end) of a block if they can be had without waiting for the disk, for the trio
        loop to call: from the write queue, or from the page cache (RWF_NOWAIT) through the descriptor a
        ranged read left open. None otherwise, or when anything is amiss: `get_range`, in a worker
        thread, then reads (and reports) it as always."""
        queued = self._queue.get(key)
        if queued is not None:
            return None if isinstance(queued, str) else memoryview(queued)[start:end]
        where = self._index.get(key)
        if where is None or where is _INLINE or _NOWAIT is None or end - start > NOW_BYTES:
            return None
        held = self._open_files.take(where.filename, counted=False)
        if held is None:
            return None
        chunk = where.check.chunk
        first, last = start // chunk, (end - 1) // chunk
        offset = first * chunk
        buffer = bytearray(min((last + 1 - first) * chunk, where.size - offset))
        try:
            if os.fstat(held.fd).st_nlink == 0:
                return None
            got = os.preadv(held.fd, [buffer], offset, _NOWAIT)
        except OSError:  # BlockingIOError: not all of it in the page cache
            return None
        finally:
            self._open_files.give(held)
        if got != len(buffer) or not where.check.intact(buffer, first, last):
            return None
        return memoryview(buffer)[start - offset : end - offset]

    def _read_inline(self, key: str, start: int, end: int | None) -> Block | None:
        """A block kept inside the database (smaller than a file is worth): read whole through diskcache."""
        try:
            value, tag = self._cache.get(key, default=None, tag=True, retry=True)
        except _FAILURES as exc:
            self._failed("be read", exc)
            return None
        if value is None:
            return None
        if not (
            isinstance(value, bytes) and isinstance(tag, bytes) and _Check.of(len(value), tag).intact(value)
        ):
            self._drop_corrupt(key)
            return None
        return value if start == 0 and end is None else memoryview(value)[start:end]

    def _drop_corrupt(self, key: str) -> None:
        with self._count_lock:  # called from several worker threads
            self.corrupt_blocks += 1
        log.warning("dropped a corrupt cached block %s; it will be fetched again", key)
        self.delete(key)

    def __contains__(self, key: str) -> bool:
        if self._queue.get(key) is not None or self._index.get(key) is not None:
            return True
        try:
            return key in self._cache
        except _FAILURES as exc:
            self._failed("be read", exc)
            return False

    def put(self, key: str, data: Block, done: Done | None = None, wait: bool = False) -> None:
        """Queue a block for the writer; never an error, and never blocks unless `wait` (for room in the
        queue). A write that cannot happen (queue full, disk full) leaves it uncached. `done` is called
        (in some thread) once the block is written or given up; `data` must not change until then."""
        self._enqueue(key, data, done, wait)

    def delete(self, key: str) -> None:
        where = self._index.get(key)
        if where is not None:
            self._open_files.drop(where.filename)
        self._index.discard(key)
        _call(self._queue.discard(key))
        # A write the writer has taken lands anyway: wait for it, so that it does not outlive the delete.
        self._queue.wait_written(key, CLOSE_WAIT_S)
        self._index.discard(key)
        try:
            self._cache.delete(key, retry=True)
        except _FAILURES as exc:
            self._failed("delete blocks", exc)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every entry whose key starts with `prefix` (the pieces of one version of an object)."""
        try:
            rows = self._cache._sql(  # the key column is indexed: a range of it, without the values
                "SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1",
                (prefix, prefix + "\U0010ffff"),
            ).fetchall()
        except _FAILURES as exc:
            self._failed("be read", exc)
            rows = []
        for key in {key for (key,) in rows} | set(self._queue.keys_starting(prefix)):
            self.delete(key)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is done (or given up); False when `timeout` passed first."""
        return self._queue.wait_empty(timeout)

    def _enqueue(self, key: str, value: Block | str, done: Done | None, wait: bool) -> None:
        if not self._queue.add(key, value, done, wait):
            _call(done)
            return
        if self._writer is None:
            with self._threads_lock:
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_queued, name="pfs-disk-writer", daemon=True
                    )
                    self._writer.start()

    def _write_queued(self) -> None:
        """The writer thread: batches from the queue until it is closed and drained."""
        while batch := self._queue.take(BATCH_BYTES):
            try:
                self._write_batch(batch)
            except Exception:  # never let the writer die: the rest of the queue still gets written
                log.exception("the disk cache writer failed on a batch")
            for done in self._queue.finish([key for key, _ in batch]):
                _call(done)

    def _write_batch(self, batch: list[tuple[str, Block | str]]) -> None:
        """One transaction for the batch; on failure it is rolled back and its files removed (a no-op)."""
        written: list[tuple[str, _Where]] = []
        try:
            self._respect_free_space(max((len(v) for _, v in batch if not isinstance(v, str)), default=0))
            self._insert(batch, written)
        except _FAILURES as exc:
            for _, where in written:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.directory, where.filename))
            self._failed("store blocks", exc)
            return
        self._stored()
        for key, where in written:
            self._index.put(key, where)

    def _insert(self, batch: list[tuple[str, Block | str]], written: list[tuple[str, _Where]]) -> None:
        """Store the batch in one transaction as diskcache's `set` would, entry by entry (a key stored
        again replaces its entry; while the tier is over its size limit, each entry stored culls the oldest
        until it is back under it), with a few statements per entry instead of five, and the tier's size
        kept here instead of asked for after each. Appends the block files written to `written`."""
        cache = self._cache
        disk = cache.disk
        with cache._transact(retry=True) as (sql, _):
            for start in range(0, len(batch), _KEYS_PER_STATEMENT):
                keys = [key for key, _ in batch[start : start + _KEYS_PER_STATEMENT]]
                marks = ",".join("?" * len(keys))
                for rowid, filename in sql(
                    f"SELECT rowid, filename FROM Cache WHERE raw = 1 AND key IN ({marks})", keys
                ).fetchall():
                    _drop_row(sql, disk, rowid, filename)
            volume, limit = cache.volume(), cache.size_limit
            for key, value in batch:
                if isinstance(value, str):
                    # Plain text, never a pickle: nothing read from the cache directory is unpickled.
                    tag = None
                    size, mode, filename, db_value = disk.store(value, False, key=key)
                else:
                    tag = _checksums(value)
                    # As a file object: diskcache writes plain bytes line by line (thousands of writes per
                    # block), and a BytesIO would copy the block first.
                    size, mode, filename, db_value = disk.store(_Chunks(value), True, key=key)
                    if filename is not None:
                        written.append((key, _Where(filename, len(value), _Check.of(len(value), tag))))
                now = time.time()  # one each, in order: the oldest are culled first
                sql(_INSERT, (key, 1, now, None, now, 0, tag, size, mode, filename, db_value))
                volume += size
                if volume >= limit:
                    volume = _cull(sql, disk, volume, limit)

    def _respect_free_space(self, incoming: int) -> None:
        """Lower the effective size limit while the file system is short of free space, then cull to it.
        `incoming`: the largest block about to be written. diskcache culls back to the limit after each
        block it stores, so room for one is enough; room for a whole batch would empty the cache to make
        room for blocks that then push each other out."""
        usage = shutil.disk_usage(self.directory)
        reserve = int(usage.total * self.free_space_ratio)
        volume = self._cache.volume()
        room = volume + usage.free - reserve - incoming
        limit = max(0, min(self.size_limit, room))
        if limit != self._cache.size_limit:
            self._cache.reset("size_limit", limit)
            if volume > limit:
                with self._cache._transact(retry=True) as (sql, _):
                    _cull(sql, self._cache.disk, volume, limit)

    # ---- the version book --------------------------------------------------------------------------------

    def seen(self, object_key: str) -> Seen | None:
        queued = self._queue.get("v|" + object_key)
        if queued is not None:
            return _parse_seen(queued)
        try:
            value = self._cache.get("v|" + object_key, default=None, retry=True)
        except _FAILURES as exc:
            self._failed("be read", exc)
            return None
        return _parse_seen(value)

    def record(self, object_key: str, seen: Seen) -> None:
        """Queue a version for the writer (never blocks); one that cannot be written is only asked for
        again after a remount."""
        self._enqueue(
            "v|" + object_key, f"{seen.size} {seen.mtime_ns} {seen.seen_at!r} {seen.etag}", None, False
        )

    # ---- upkeep ------------------------------------------------------------------------------------------

    def info(self) -> dict:
        usage = shutil.disk_usage(self.directory)
        return {
            "directory": self.directory,
            "bytes": self._cache.volume(),
            "entries": len(self._cache),
            "size_limit": self.size_limit,
            "effective_limit": self._cache.size_limit,
            "fs_free_bytes": usage.free,
            "fs_total_bytes": usage.total,
        }

    def clear(self) -> int:
        """Drop every entry, and the broken caches set aside here before."""
        for name in os.listdir(self.directory):
            if name.startswith(_ASIDE):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        self._index.clear()
        self._open_files.clear()
        return self._cache.clear(retry=True)

    def close(self) -> None:
        """Write what is queued (for at most CLOSE_WAIT_S) and close the database."""
        self._open_files.clear()
        if self._readers is not None:
            self._readers.shutdown()
        self._queue.close()
        if self._writer is not None:
            self._writer.join(CLOSE_WAIT_S)
            if self._writer.is_alive():
                log.warning("the disk cache %s: closed before every queued block was written", self.directory)
                return  # the writer still uses the database; it ends with the process
        self._cache.disk.let_go()
        self._cache.close()


def _call(done: Done | None) -> None:
    """Tell a writer's caller its write is over; a caller gone (its loop ended) no longer cares."""
    if done is not None:
        try:
            done()
        except Exception as exc:
            log.debug("a disk write's completion could not be delivered: %s", exc)


def _parse_seen(value: object) -> Seen | None:
    """The version book's text back into a `Seen`; None for anything else (a version is then asked for)."""
    if not isinstance(value, str):
        return None
    try:
        size, mtime_ns, seen_at, etag = value.split(" ", 3)
        return Seen(int(size), int(mtime_ns), etag, float(seen_at))
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _unavailable(directory: str, exc: BaseException) -> CacheUnavailable:
    return CacheUnavailable(
        f"cannot use the disk cache {directory} ({_reason(exc)}): make it writable, "
        "or use another --cache-dir (or --cache-size 0 for none)"
    )


def _set_aside(directory: str, exc: BaseException) -> None:
    """Move a broken cache (its database and block files) into a subdirectory of its own, so the tier can
    start empty in place (the directory itself may be a mount point) and the old one can be inspected."""
    aside = os.path.join(directory, f"{_ASIDE}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.makedirs(aside, mode=0o700)
    for name in os.listdir(directory):
        if name != os.path.basename(aside) and not name.startswith(_ASIDE):
            os.rename(os.path.join(directory, name), os.path.join(aside, name))
    log.warning(
        "the disk cache database %s is unreadable (%s): set it aside in %s and started an empty cache "
        "('pfs cache clear' deletes it)",
        os.path.join(directory, DATABASE),
        _reason(exc),
        aside,
    )
