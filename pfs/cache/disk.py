"""The disk tier: cached blocks on local disk, shared by every pfs mount on the node and kept across remounts.

Built on diskcache (SQLite plus one file per block), which is safe for several threads and processes at once.
Every method blocks: the trio side calls them in worker threads. Each block carries a CRC32 per 64 KiB
chunk (diskcache's tag column), checked on every read, so a random read checks (and reads) only the chunks
it needs; a block failing it is dropped, counted and reported missing, so it is fetched again. Bounds are
enforced on insert, never by a background sweep: the byte budget (diskcache culls the oldest blocks on
every set, so the tier never exceeds it by more than one block) and a minimum ratio of free space on the
file system holding the cache.

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
import io
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import diskcache

from pfs.errors import PfsError

log = logging.getLogger(__name__)

# A block's value is stored as one file above this size; smaller ones live inside SQLite.
_MIN_FILE_SIZE = 64 * 1024
CHECK_CHUNK = 64 * 1024  # each block carries a CRC32 per chunk of this size
MAX_BLOCK = 64 << 20  # the largest block size a mount may use: no cached value is ever bigger
DATABASE = "cache.db"
WARN_EVERY_S = 600.0  # a disk that keeps failing and recovering warns at most this often
_ASIDE = "broken-"  # prefix of the subdirectories broken caches are moved into
# What a failing disk or database raises through diskcache: each only makes the tier miss.
_FAILURES = (OSError, sqlite3.Error, diskcache.Timeout)


class CacheUnavailable(PfsError):
    """The cache directory cannot be used at all (not writable, not creatable); the message is one line."""


@dataclass(frozen=True)
class Seen:
    """A version observed on the backend: the object's attributes then, its ETag, and when it was seen."""

    size: int
    mtime_ns: int
    etag: str
    seen_at: float  # wall-clock seconds


def _checksums(data: bytes | memoryview) -> bytes:
    """CRC32 of every CHECK_CHUNK of `data`, packed: a random read checks only the chunks it reads."""
    view = memoryview(data)
    return array.array(
        "I", (zlib.crc32(view[i : i + CHECK_CHUNK]) for i in range(0, len(view), CHECK_CHUNK))
    ).tobytes()


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
            if self._written.path is not None:
                with contextlib.suppress(OSError):
                    os.remove(self._written.path)
            raise

    def filename(self, key: Any = diskcache.core.UNKNOWN, value: Any = diskcache.core.UNKNOWN) -> tuple:
        name, full_path = super().filename(key, value)
        self._written.path = full_path
        return name, full_path


def _open_value_file(directory: str, filename: str, limit: int) -> tuple[BinaryIO, int] | None:
    """`filename` below `directory` opened for reading, with its size, or None unless every part of the
    path is what diskcache made: directories and then a regular file of at most `limit` bytes, none of
    them a link (a FIFO does not block the open either)."""
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
        fds.append(os.open(parts[-1], flags, dir_fd=fds[-1]))
        info = os.fstat(fds[-1])
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            log.warning("ignored %s in the cache: not a regular file of at most %d bytes", shown, limit)
            return None
        return os.fdopen(fds.pop(), "rb"), info.st_size
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise  # deleted by another process since it was looked up: diskcache reports a miss
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

    def get(self, key: str) -> bytes | None:
        try:
            value, crcs = self._cache.get(key, default=None, tag=True, retry=True)
        except _FAILURES as exc:
            self._failed("be read", exc)
            return None
        if value is None:
            return None
        if not isinstance(value, bytes) or crcs != _checksums(value):
            return self._drop_corrupt(key)
        return value

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of a block, reading and checking only the chunks that hold them."""
        try:
            handle, crcs = self._cache.get(key, default=None, read=True, tag=True, retry=True)
            if handle is None:
                return None
            with handle:
                first, last = start // CHECK_CHUNK, (end - 1) // CHECK_CHUNK
                handle.seek(first * CHECK_CHUNK)
                data = handle.read((last + 1 - first) * CHECK_CHUNK)
        except _FAILURES as exc:
            self._failed("be read", exc)
            return None
        expected = crcs[first * 4 : (last + 1) * 4] if isinstance(crcs, bytes) else None
        if expected is None or len(expected) != (last + 1 - first) * 4 or _checksums(data) != expected:
            return self._drop_corrupt(key)
        return data[start - first * CHECK_CHUNK : end - first * CHECK_CHUNK]

    def _drop_corrupt(self, key: str) -> None:
        with self._count_lock:  # called from several worker threads
            self.corrupt_blocks += 1
        log.warning("dropped a corrupt cached block %s; it will be fetched again", key)
        self.delete(key)

    def __contains__(self, key: str) -> bool:
        try:
            return key in self._cache
        except _FAILURES as exc:
            self._failed("be read", exc)
            return False

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store a block; a disk that cannot take it leaves it uncached (never an error)."""
        try:
            self._respect_free_space(len(data))
            # As a file object: diskcache writes plain bytes line by line (thousands of writes per block),
            # and a BytesIO would copy the block first.
            self._cache.set(key, _Chunks(data), read=True, tag=_checksums(data), retry=True)
        except _FAILURES as exc:
            self._failed("store blocks", exc)
        else:
            self._stored()

    def delete(self, key: str) -> None:
        try:
            self._cache.delete(key, retry=True)
        except _FAILURES as exc:
            self._failed("delete blocks", exc)

    def _respect_free_space(self, incoming: int) -> None:
        """Lower the effective size limit while the file system is short of free space, then cull to it."""
        usage = shutil.disk_usage(self.directory)
        reserve = int(usage.total * self.free_space_ratio)
        volume = self._cache.volume()
        room = volume + usage.free - reserve - incoming
        limit = max(0, min(self.size_limit, room))
        if limit != self._cache.size_limit:
            self._cache.reset("size_limit", limit)
            if volume > limit:
                self._cache.cull(retry=True)

    # ---- the version book --------------------------------------------------------------------------------

    def seen(self, object_key: str) -> Seen | None:
        try:
            value = self._cache.get("v|" + object_key, default=None, retry=True)
        except _FAILURES as exc:
            self._failed("be read", exc)
            return None
        return _parse_seen(value)

    def record(self, object_key: str, seen: Seen) -> None:
        """Remember a version; one that cannot be written is only asked for again after a remount."""
        try:
            # Plain text, never a pickle: nothing read from the cache directory is ever unpickled.
            value = f"{seen.size} {seen.mtime_ns} {seen.seen_at!r} {seen.etag}"
            self._cache.set("v|" + object_key, value, retry=True)
        except _FAILURES as exc:
            self._failed("record versions", exc)

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
        return self._cache.clear(retry=True)

    def close(self) -> None:
        self._cache.close()


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
