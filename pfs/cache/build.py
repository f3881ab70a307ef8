"""The block cache a mount's options ask for, built the one way a mount and `pfs warmup --snapshot` both
use: the block size is part of every key, so warmed blocks are found only by mounts that build theirs
alike."""

from __future__ import annotations

from pfs.cache.blocks import BlockCache, CacheConfig, Run
from pfs.cache.disk import DiskTier
from pfs.counters import Stats
from pfs.options import MountOptions


def disk_tier(options: MountOptions) -> DiskTier | None:
    """The node's disk tier, bounded as `options` say; None when `cache_size=0` turns it off.

    Raises CacheUnavailable when the cache directory cannot be used."""
    if options.cache_size == 0:
        return None
    return DiskTier(options.cache_dir, options.cache_size, options.free_space_ratio, options.block_size)


def block_cache(
    options: MountOptions, disk: DiskTier | None, stats: Stats, run: Run, run_disk: Run
) -> BlockCache:
    """The cache in front of `disk` (made by `disk_tier`, or None), within the options' memory budget."""
    config = CacheConfig(
        block_size=options.block_size,
        prefetch_blocks=max(1, options.prefetch // options.block_size),
        memory_limit=options.memory_limit,
    )
    return BlockCache(config, disk, stats, run, run_disk)
