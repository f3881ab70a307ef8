"""Names the kernel holds for longer than the metadata TTL on a read-only mount, kept true by listing again.

In the kernel's no-open mode (read-only mounts) an inode's bytes and attributes never change: a changed file
is a new inode (`InodeTable.per_version`). What can go stale in the kernel is only which inode a name
points to. So the kernel is given file and directory names for HOLD_S instead of the metadata TTL, and an
epoch over files it holds never reaches the daemon (no LOOKUP per file once the TTL is over). The TTL's
promise is kept here instead: every metadata TTL, each directory with names in the kernel is listed again,
and a name whose version or kind changed, or which is gone, is dropped from the kernel (its next use asks
the daemon, which answers with the new version).

A directory is followed for HOLD_S after the daemon last handed the kernel one of its names; by then every
name handed out there has expired in the kernel, so nobody reading it any more costs listings for at most
HOLD_S (a name handed out after that is followed again). Pure bookkeeping: no I/O and no awaits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pfs.backends import Entry
from pfs.fs.inodes import Inode, InodeTable

HOLD_S = 600.0  # how long the kernel keeps a name it was handed on a read-only mount


@dataclass(eq=False)
class _Directory:
    checked_at: float  # monotonic time of the listing the held names were last compared with
    handed_at: float  # monotonic time a name of it was last handed to the kernel
    inodes: set[Inode] = field(default_factory=set)


class HeldNames:
    def __init__(self, inodes: InodeTable, ttl: float) -> None:
        self.ttl = ttl
        self._inodes = inodes
        self._directories: dict[str, _Directory] = {}

    def __len__(self) -> int:
        return len(self._directories)

    def handed(self, inode: Inode, now: float) -> None:
        """The kernel was just given `inode`'s name, for HOLD_S."""
        directory = inode.path.rpartition("/")[0]
        held = self._directories.get(directory)
        if held is None:
            held = self._directories[directory] = _Directory(checked_at=now, handed_at=now)
        held.handed_at = now
        held.inodes.add(inode)

    def due(self, now: float) -> list[str]:
        """The directories to list again now (compared more than a TTL ago). Directories whose names have
        all expired in the kernel are no longer followed."""
        due = []
        for directory, held in list(self._directories.items()):
            if now - held.handed_at >= HOLD_S:
                del self._directories[directory]
            elif now - held.checked_at >= self.ttl:
                due.append(directory)
        return due

    def compare(self, directory: str, entries: dict[str, Entry] | None, listed_at: float) -> list[Inode]:
        """The held inodes of `directory` whose names the kernel must drop, given its listing as of
        `listed_at` (None: the directory is gone). They are no longer held; neither are inodes the kernel
        forgot or whose name now shows another inode."""
        held = self._directories.get(directory)
        if held is None:
            return []
        held.checked_at = listed_at
        stale = []
        for inode in list(held.inodes):
            if inode.lookups <= 0 or self._inodes.at(inode.path) is not inode:
                held.inodes.discard(inode)
                continue
            entry = entries.get(inode.path.rpartition("/")[2]) if entries is not None else None
            if entry is None or entry.kind is not inode.kind or self._inodes.new_version(inode, entry):
                held.inodes.discard(inode)
                stale.append(inode)
        return stale
