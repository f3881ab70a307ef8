"""Warm a node's disk cache with a snapshot's files without mounting it: `pfs warmup --snapshot NAME URI`.

Blocks land under exactly the keys a mount of the same snapshot reads (the live backend's id, the path, the
manifest's version token, the block size), so an init container or each of N training workers
(`--partition I/N`) can fill the shared cache directory before the job mounts it. Every object is verified
against the manifest as a mount would (SnapshotBackend.open_reader): a changed object is reported, never
cached under the snapshot's keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from pfs.backends import Backend, Kind, Reader
from pfs.cache import DiskTier
from pfs.cache.build import block_cache, disk_tier
from pfs.counters import Stats
from pfs.datasets.partition import Share
from pfs.errors import PfsError, UsageError, ungrouped
from pfs.options import MountOptions
from pfs.snapshots.backend import SnapshotBackend


def files_of(view: SnapshotBackend, share: Share) -> list[tuple[str, int]]:
    return [(p, e.size) for p, e in view.walk("") if e.kind is Kind.FILE and share.has(p)]


def warm(
    view: SnapshotBackend,
    files: list[tuple[str, int]],
    options: MountOptions,
    threads: int,
    check: bool,
    done: Callable[[str, int, int, str | None], None],
) -> None:
    """Warm (or with `check`, only measure) `files`; `done(path, size, cached, error)` after each."""
    # Unlike a mount, which serves without a disk tier it cannot use, warming has nothing else to do: a
    # cache directory that cannot be used (CacheUnavailable) or is turned off is the command's error.
    disk = disk_tier(options)
    if disk is None:
        raise UsageError("cache_size=0 leaves no disk cache to warm")
    try:
        trio.run(_warm_all, view, files, options, disk, threads, check, done)
    finally:
        disk.close()


async def _warm_all(
    view: Backend,
    files: list[tuple[str, int]],
    options: MountOptions,
    disk: DiskTier,
    threads: int,
    check: bool,
    done: Callable[[str, int, int, str | None], None],
) -> None:
    limiter = trio.CapacityLimiter(max(threads, 4))

    async def run(fn: Callable, *args: object) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    cache = block_cache(options, disk, Stats(), run, run)
    files_at_once = trio.CapacityLimiter(threads)

    async def one(path: str, size: int) -> None:
        async with files_at_once:
            version = view.known_version(path, size, 0)
            assert version is not None  # a snapshot knows every version
            obj = cache.object(view.id, path, version, size)
            readers: list[Reader] = []

            async def open_reader() -> Reader:
                if not readers:
                    readers.append(await run(view.open_reader, path, size))
                return readers[0]

            try:
                cached = await (cache.cached_bytes(obj) if check else cache.warm(obj, open_reader))
                done(path, size, cached, None)
            except PfsError as exc:
                done(path, size, 0, str(exc))
            finally:
                for reader in readers:
                    await run(reader.close)

    with ungrouped():
        async with trio.open_nursery() as nursery:
            for path, size in files:
                nursery.start_soon(one, path, size)
