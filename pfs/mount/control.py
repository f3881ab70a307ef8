"""The control surface of a running mount: extended attributes on its root directory.

Read with `getfattr -n NAME MOUNTPOINT` or `os.getxattr`; the CLI (`pfs umount`, `pfs stats`) and the CSI
plugin use exactly these, so whatever a tool can do to a mount, a person can do by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

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

# Hints, read with getxattr on a directory (so they work on read-only and snapshot mounts too): the name
# carries paths relative to that directory, newline-separated, which the caller opens next, in this order
# (pfs/fs/hints.py). `=` starts the caller's list over (a new epoch), `+` adds to it. The answer is how
# many paths were taken: fewer when the mount holds enough ahead of the reads, and the rest is posted later.
HINTS = b"user.pfs.hint"
HINTS_RESTART = HINTS + b"="
HINTS_MORE = HINTS + b"+"
NAME_MAX = 255  # the longest extended attribute name the kernel passes on
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


def parse_hint(name: bytes) -> tuple[bool, list[str], int] | None:
    """(starts over, paths, how many more were not plain relative paths) of a hint's attribute name; None
    when it is not one."""
    if name[: len(HINTS_RESTART)] not in (HINTS_RESTART, HINTS_MORE):
        return None
    given = [p for p in os.fsdecode(name[len(HINTS_RESTART) :]).split("\n") if p]
    paths = [p for p in given if not any(part in ("", ".", "..") for part in p.split("/"))]
    return name.startswith(HINTS_RESTART), paths, len(given) - len(paths)


def post_hints(directory: str, paths: Sequence[str], restart: bool) -> int:
    """Tell the mount holding `directory` that `paths` (relative to it) are opened next, in this order, in
    as few calls as the name length allows. Returns how many of `paths` were dealt with: posted, or
    skipped as too long to post; fewer than all when the mount took no more (post the rest later).
    OSError when `directory` is not in a pfs mount."""
    room = NAME_MAX - len(HINTS_RESTART)
    if restart and not paths:
        os.getxattr(directory, HINTS_RESTART)  # an empty list: the caller is done
    done = 0
    while done < len(paths):
        chunk: list[bytes] = []
        size = -1
        end = done
        while end < len(paths):
            encoded = os.fsencode(paths[end])
            if not encoded or len(encoded) > room or b"\n" in encoded:
                if chunk:
                    break
                end += 1  # cannot be named: never fetched ahead, read as usual
                done = end
                continue
            if size + 1 + len(encoded) > room:
                break
            chunk.append(encoded)
            size += 1 + len(encoded)
            end += 1
        if not chunk:
            break
        name = (HINTS_RESTART if restart else HINTS_MORE) + b"\n".join(chunk)
        taken = int(os.getxattr(directory, name))
        restart = False
        done += taken
        if taken < len(chunk):
            break
    return done
