"""The only code that shells out to unmount or reads the kernel's mount table and readahead settings.

Mounting itself happens inside the daemon through pyfuse3 (libfuse); everything else a mount's lifecycle needs
from the system (is it mounted, is it stale, unmount it, tune it, wait for it) is here.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from dataclasses import dataclass

from pfs.errors import UsageError


@dataclass(frozen=True)
class MountEntry:
    device: str  # "major:minor"
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, rest = left.split(), right.split()
            entries.append(MountEntry(parts[2], _unescape(parts[4]), rest[0], _unescape(rest[1])))
    return entries


def mount_at(path: str) -> MountEntry | None:
    path = os.path.abspath(path)  # no realpath: resolving would stat, and a stat may call into this mount
    found = [m for m in mounts() if m.mountpoint == path]
    return found[-1] if found else None


def is_stale(path: str) -> bool:
    """True when a FUSE mount is still in the table but its daemon is gone ("not connected")."""
    try:
        os.statvfs(path)  # unlike stat, never answered from the kernel's attribute cache
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def check_mountpoint(path: str) -> str:
    """The absolute mountpoint, or a one-line UsageError saying why it cannot be mounted on."""
    absolute = os.path.realpath(path)  # the kernel's mount table holds resolved paths
    if is_stale(absolute):
        raise UsageError(f"{path} holds a dead mount (its daemon is gone); run 'pfs umount {path}' first")
    if not os.path.isdir(absolute):
        raise UsageError(f"mountpoint {path} does not exist or is not a directory")
    if mount_at(absolute) is not None:
        raise UsageError(f"{path} is already a mountpoint")
    if not os.path.exists("/dev/fuse"):
        raise UsageError(
            "/dev/fuse is missing: install fuse3 (apt-get install fuse3) or load the fuse module"
        )
    return absolute


def unmount(path: str, lazy: bool = False) -> None:
    command = ["fusermount3", "-u", *(["-z"] if lazy else []), path]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        if "busy" in reason.lower():
            raise UsageError(f"{path} is busy (files are open there); close them or use --lazy")
        raise UsageError(f"cannot unmount {path}: {reason}")


def set_readahead(mountpoint: str, kilobytes: int) -> None:
    """Raise the mount's readahead so the kernel sends large reads (1 MiB instead of 128 KiB)."""
    entry = mount_at(mountpoint)
    if entry is None:
        raise OSError(f"{mountpoint} is not mounted")
    with open(f"/sys/class/bdi/{entry.device}/read_ahead_kb", "w") as f:
        f.write(str(kilobytes))


def wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        # A zombie leader may still have threads finishing their exit (holding its files, /dev/fuse too).
        return state != "Z" or len(os.listdir(f"/proc/{pid}/task")) > 1
    except FileNotFoundError:
        return False
