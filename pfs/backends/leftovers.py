"""Files pfs leaves in a backend's reserved area while it works, and clearing those a dead process left.

Two kinds, each named with an owner tag of the process that made it:
- `tmp/<tag>-<random>.part` (file:// and HDFS): an upload being written; moved into place when complete.
- `detached/<tag>-<mount>-<ino>`: a file unlinked while a mount still had it open; deleted on its last close.

A process killed (SIGKILL, OOM, node crash) in between leaves them behind. Several live mounts, on other
nodes too, may share one backend, so only what is provably dead is removed:
- the owner is provably gone when the tag names this machine's current boot and this PID namespace, and
  no process with that pid and start time runs;
- a temporary file is also stale once it has not been written for `STALE_PART_S` (a live upload writes
  it continuously, and one that moves no data is abandoned after the backend's timeout).
A detached file of another node's (or an older boot's) mount is kept: its owner may still be reading it.
Incomplete multipart uploads on object stores are not visible through pyarrow: only a bucket lifecycle
rule (AbortIncompleteMultipartUpload) reclaims them.

Never removes anything outside `tmp/` and `detached/` of the reserved area, nor anything whose owner may live.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from dataclasses import dataclass

from pfs.backends.base import Backend
from pfs.errors import NotFound, PfsError

log = logging.getLogger(__name__)

STALE_PART_S = 24 * 3600
_TAG = re.compile(r"^o([0-9a-f]{8})\.(\d+)\.(\d+)\.(\d+)\.(\d+)-")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


@functools.cache
def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id").strip().replace("-", "")[:8] or "00000000"


@functools.cache
def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _start_time(pid: int) -> int | None:
    """Clock ticks after boot at which process `pid` started; None if there is no such process, or only
    its zombie (dead, waiting for a parent that may never reap it)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):  # field 3: state
        return None
    return int(fields[19])  # field 22: starttime


@functools.cache
def _owner(pid: int) -> str:
    return f"o{_boot_id()}.{_pid_namespace()}.{pid}.{_start_time(pid) or 0}"


def owner_tag() -> str:
    """'o<boot>.<pid namespace>.<pid>.<start>.<now>-': names a file as made now by this very process."""
    return f"{_owner(os.getpid())}.{int(time.time())}-"


def owner_is_gone(name: str) -> bool:
    """True only if the process that made `name` provably no longer runs."""
    tag = _TAG.match(name)
    if tag is None:
        return False
    boot, namespace, pid, start = tag.group(1), int(tag.group(2)), int(tag.group(3)), int(tag.group(4))
    if boot != _boot_id() or namespace != _pid_namespace():
        return False  # another node, an older boot, another container: cannot tell
    return _start_time(pid) != start


@dataclass
class Swept:
    files: int = 0
    bytes: int = 0


def sweep(reserved: Backend, now: float | None = None) -> Swept:
    """Remove the leftovers of dead processes from `reserved` (a backend's reserved area). Blocks."""
    now = time.time() if now is None else now
    swept = Swept()
    for folder in ("tmp", "detached"):
        try:
            entries = reserved.list_dir(folder)
        except NotFound:
            continue
        for entry in entries:
            stale_part = folder == "tmp" and now - entry.mtime_ns / 1e9 > STALE_PART_S
            if not (owner_is_gone(entry.name) or stale_part):
                continue
            try:
                reserved.remove_file(f"{folder}/{entry.name}")
            except PfsError as exc:  # removed by another mount meanwhile, or not ours to remove
                log.info("leftover %s/%s not removed: %s", folder, entry.name, exc)
                continue
            swept.files += 1
            swept.bytes += entry.size
    return swept
