"""The control surface of a running mount: extended attributes on its root directory.

Read with `getfattr -n NAME MOUNTPOINT` or `os.getxattr`; the CLI (`pfs umount`, `pfs stats`) and the CSI
plugin use exactly these, so whatever a tool can do to a mount, a person can do by hand.
"""

from __future__ import annotations

import json
import os

PID = b"user.pfs.pid"  # the daemon's process id
BACKEND = b"user.pfs.backend"  # the backend id (no secrets)
STATS = b"user.pfs.stats"  # JSON counters
FLUSH = b"user.pfs.flush"  # write anything: upload pending writes, store blocks queued for the disk tier
DISCARD = b"user.pfs.discard"  # write anything: drop every pending write whose upload failed
READABLE = (PID, BACKEND, STATS)

# Commands on one file, read with getxattr (so they work on read-only mounts too); each answers
# 'CACHED_BYTES SIZE'. They are not listed by listxattr: they are commands, not attributes.
WARMUP = b"user.pfs.warmup"  # fetch every block of the file into the disk cache
CACHED = b"user.pfs.cached"  # how much of the file is cached
EVICT = b"user.pfs.evict"  # drop the file's blocks from the cache
FILE_COMMANDS = (WARMUP, CACHED, EVICT)
PREFIX = b"user.pfs."  # every name above: any other extended attribute is not supported (ENOTSUP)


def daemon_pid(mountpoint: str) -> int:
    return int(os.getxattr(mountpoint, PID))


def stats(mountpoint: str) -> dict:
    return json.loads(os.getxattr(mountpoint, STATS))


def file_command(path: str, command: bytes) -> tuple[int, int]:
    """Run a file command; returns (cached bytes, file size)."""
    cached, size = os.getxattr(path, command).split()
    return int(cached), int(size)


def flush(mountpoint: str) -> None:
    os.setxattr(mountpoint, FLUSH, b"1")


def discard_failed(mountpoint: str) -> None:
    os.setxattr(mountpoint, DISCARD, b"1")
