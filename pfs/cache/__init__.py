"""The read cache of a mount: a memory tier and a disk tier in front of the backend (see blocks.py)."""

from pfs.cache.blocks import BlockCache, CacheConfig, CachedObject, Stream
from pfs.cache.disk import CacheUnavailable, DiskTier

__all__ = ["BlockCache", "CacheConfig", "CacheUnavailable", "CachedObject", "DiskTier", "Stream"]
