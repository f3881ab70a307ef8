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
"""

from __future__ import annotations

import array
import logging
import os
import shutil
import threading
import zlib
from dataclasses import dataclass

import diskcache

log = logging.getLogger(__name__)

# A block's value is stored as one file above this size; smaller ones live inside SQLite.
_MIN_FILE_SIZE = 64 * 1024
CHECK_CHUNK = 64 * 1024  # each block carries a CRC32 per chunk of this size


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


class DiskTier:
    def __init__(self, directory: str, size_limit: int | None, free_space_ratio: float = 0.0) -> None:
        """Open (or create) the tier in `directory`; `size_limit` None keeps the limit the last mount set
        (for tools that inspect or clear a cache without changing its settings)."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        settings = {} if size_limit is None else {"size_limit": size_limit}
        self.directory = directory
        self.free_space_ratio = free_space_ratio
        self.corrupt_blocks = 0
        self._count_lock = threading.Lock()
        self._cache = diskcache.Cache(
            directory,
            # Least-recently-*used* would make every read a SQLite write (147 us per get instead of 31 us
            # here); blocks are evicted in the order they were stored instead.
            eviction_policy="least-recently-stored",
            cull_limit=16,
            disk_min_file_size=_MIN_FILE_SIZE,
            sqlite_mmap_size=0,
            timeout=30,
            **settings,
        )
        self.size_limit = self._cache.size_limit if size_limit is None else size_limit

    # ---- blocks ------------------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        value, crcs = self._cache.get(key, default=None, tag=True, retry=True)
        if value is None:
            return None
        if not isinstance(value, bytes) or crcs != _checksums(value):
            return self._drop_corrupt(key)
        return value

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of a block, reading and checking only the chunks that hold them."""
        handle, crcs = self._cache.get(key, default=None, read=True, tag=True, retry=True)
        if handle is None:
            return None
        with handle:
            first, last = start // CHECK_CHUNK, (end - 1) // CHECK_CHUNK
            handle.seek(first * CHECK_CHUNK)
            data = handle.read((last + 1 - first) * CHECK_CHUNK)
        expected = crcs[first * 4 : (last + 1) * 4] if isinstance(crcs, bytes) else None
        if expected is None or len(expected) != (last + 1 - first) * 4 or _checksums(data) != expected:
            return self._drop_corrupt(key)
        return data[start - first * CHECK_CHUNK : end - first * CHECK_CHUNK]

    def _drop_corrupt(self, key: str) -> None:
        with self._count_lock:  # called from several worker threads
            self.corrupt_blocks += 1
        log.warning("dropped a corrupt cached block %s; it will be fetched again", key)
        self._cache.delete(key, retry=True)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._respect_free_space(len(data))
        # As a file object: diskcache writes plain bytes line by line (thousands of writes per block), and
        # a BytesIO would copy the block first.
        self._cache.set(key, _Chunks(data), read=True, tag=_checksums(data), retry=True)

    def delete(self, key: str) -> None:
        self._cache.delete(key, retry=True)

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
        value = self._cache.get("v|" + object_key, default=None, retry=True)
        return Seen(*value) if isinstance(value, tuple) else None

    def record(self, object_key: str, seen: Seen) -> None:
        self._cache.set("v|" + object_key, (seen.size, seen.mtime_ns, seen.etag, seen.seen_at), retry=True)

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
        return self._cache.clear(retry=True)

    def close(self) -> None:
        self._cache.close()
