"""Renames on a store whose rename refuses an existing destination (HDFS), without ever losing a file.

HDFS replaces atomically only through Java's `FileContext.rename(..., OVERWRITE)`; libhdfs, and so pyarrow,
offer the plain rename, which fails when the destination exists and reports every failure alike ("HDFS
Rename failed", EIO). So replacing `dst` by `src` takes three NameNode calls:

1. the current `dst` is moved aside, to `<root>/.pfs/replacing/<digest of dst>.<time>.<random>`;
2. `src` is moved to `dst`;
3. the aside copy is deleted.

If step 2 fails, the aside copy is moved back: a failure leaves the old file, never no file. Between steps 1
and 2 (two calls, about a millisecond apart on a healthy cluster) the name is absent. A pfs reader that finds
a name missing asks `in_flight()` whether it is being replaced and then waits for it to come back
(ArrowBackend._lookup), so readers through pfs see the old file or the new one. Other HDFS clients can
see the name missing for that moment.

A failed rename is explained by looking again (source gone -> NotFound, destination's directory gone ->
NotFound, taken by someone else -> AlreadyExists), since HDFS's answer says nothing. A rename whose caller
has stopped waiting (the watchdog gave up on a frozen cluster) is not made: a late publish could replace a
newer version. This module never deletes anything but its own aside copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid

import pyarrow.fs as pafs

from pfs.backends.watchdog import abandoned
from pfs.errors import AlreadyExists, NotFound, Transient

ATTEMPTS = 3  # another client publishing the same name at the same moment: last writer wins
# An aside copy older than this is litter of a replace that died half-way (its restore failed too), not a
# replace in flight: readers stop waiting for its name.
IN_FLIGHT_SECONDS = 30.0


def _digest(dst: str) -> str:
    return hashlib.sha1(dst.encode("utf-8", "surrogateescape")).hexdigest()


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _still_wanted(dst: str) -> None:
    # A publish the caller gave up on (pfs.backends.watchdog) must not land later over a newer version.
    if abandoned():
        raise Transient(f"{dst}: not renamed, the caller stopped waiting")


def move(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Rename `src` to the free name `dst`; a refusal is explained with a typed error."""
    _still_wanted(dst)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            fs.move(src, dst)
            return
        except OSError:
            if not _exists(fs, src):
                raise NotFound(f"{src}: no such file or directory") from None
            if not _exists(fs, dst.rpartition("/")[0] or "/"):
                raise NotFound(f"{dst}: the directory does not exist") from None
            if _exists(fs, dst):
                raise AlreadyExists(f"{dst}: already exists") from None
            # Nothing stands in the way now: the cause went meanwhile (another thread or client made the
            # missing directory, as `pfs sync` does for a new tree). Try again.
            if attempt == ATTEMPTS:
                raise


def replace(fs: pafs.FileSystem, aside_dir: str, src: str, dst: str) -> None:
    """Rename `src` to `dst`, replacing a file there (see the module docstring for the window)."""
    for attempt in range(1, ATTEMPTS + 1):
        _still_wanted(dst)
        aside = _move_aside(fs, aside_dir, dst)
        try:
            move(fs, src, dst)
        except AlreadyExists:
            # Someone published `dst` between our two moves: theirs is newer than what we set aside.
            if aside:
                fs.delete_file(aside)
            if attempt == ATTEMPTS:
                raise
            continue
        except BaseException:
            if aside:
                with contextlib.suppress(Exception):  # failing already; the aside copy is then kept
                    fs.move(aside, dst)
            raise
        if aside:
            with contextlib.suppress(Exception):  # only litter in .pfs/replacing if this fails
                fs.delete_file(aside)
        return


def _move_aside(fs: pafs.FileSystem, aside_dir: str, dst: str) -> str:
    """Move the file at `dst` aside and return where it went; '' when there was nothing to move."""
    if fs.get_file_info(dst).type != pafs.FileType.File:
        return ""
    fs.create_dir(aside_dir, recursive=True)
    aside = f"{aside_dir}/{_digest(dst)}.{time.time_ns() // 1_000_000}.{uuid.uuid4().hex[:12]}"
    try:
        fs.move(dst, aside)
    except OSError:
        if _exists(fs, dst):
            raise
        return ""  # another client moved or removed it meanwhile: the name is free now
    return aside


def in_flight(fs: pafs.FileSystem, aside_dir: str, dst: str) -> bool:
    """Whether `dst` is being replaced right now (its old file is set aside)."""
    prefix = f"{_digest(dst)}."
    oldest_ms = (time.time_ns() // 1_000_000) - int(IN_FLIGHT_SECONDS * 1000)
    for info in fs.get_file_info(pafs.FileSelector(aside_dir, allow_not_found=True)):
        if info.base_name.startswith(prefix):
            stamp = info.base_name[len(prefix) :].partition(".")[0]
            if stamp.isdigit() and int(stamp) >= oldest_ms:
                return True
    return False
