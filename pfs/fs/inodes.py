"""Inode numbers, paths and kernel lookup counts: the namespace of a live mount.

The kernel holds references to inodes (lookup counts); an inode may be forgotten only when its count drops
to zero and nothing of this mount still uses it (open handles, staged writes). Inode numbers are never reused
within a mount, so a generation number of 0 is enough. Pure bookkeeping: no I/O, no awaits, so callers on the
trio loop can rely on every method running without a checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyfuse3
import trio

from pfs.backends import Entry, Kind, Meta
from pfs.fs.staging import StagedFile

_SECOND = 1_000_000_000


@dataclass
class Overrides:
    """chmod/chown/utimens results the backend does not keep (`Backend.stored_meta`), and the attributes of a
    file not uploaded yet: they win over the backend's and last for the mount's lifetime."""

    mode: int | None = None  # permission bits only
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None  # when one of these (or the size) was last changed here: POSIX's ctime


@dataclass(eq=False)
class Inode:
    ino: int
    path: str
    kind: Kind
    size: int = 0
    mtime_ns: int = 0
    attrs_at: float = 0.0  # monotonic time the attributes were read from the backend
    lookups: int = 0
    open_handles: int = 0
    on_backend: bool = True  # False for a created file not uploaded yet
    detached: bool = False  # unlinked while open: its data lives under a hidden name until the last close
    staged: StagedFile | None = None
    symlink_target: str | None = None
    meta: Meta | None = None  # the POSIX attributes the backend keeps for it
    overrides: Overrides = field(default_factory=Overrides)
    # What identifies the content: the reader's version token (ETag) where the backend gives one.
    etag: str = ""
    # The version at the last open: unchanged means the kernel's page cache is still valid.
    opened_version: tuple[int, int, str] | None = None
    # Held across an upload so a second flush waits for the first instead of returning before it is durable.
    upload_lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def version(self) -> tuple[int, int, str]:
        # S3's modification times have 1 s resolution: the ETag tells same-size rewrites apart.
        return (self.size, self.mtime_ns, self.etag)

    def fresh(self, ttl: float) -> bool:
        return self.staged is not None or not self.on_backend or time.monotonic() - self.attrs_at < ttl

    def update(self, entry: Entry, seen_at: float | None = None) -> None:
        """Take the backend's view of this inode's attributes (as of monotonic time `seen_at`, default now)
        unless local writes are authoritative."""
        if self.staged is None and not self._another_reading(entry):
            if (entry.size, entry.mtime_ns) != self.version[:2]:
                self.symlink_target = None  # rewritten elsewhere: read the link again
                self.etag = ""  # unknown until the next open
            self.size = entry.size
            self.mtime_ns = entry.mtime_ns
        self.meta = entry.meta
        self.attrs_at = time.monotonic() if seen_at is None else seen_at
        self.on_backend = True

    def _another_reading(self, entry: Entry) -> bool:
        """`entry` tells the version already known, at another precision: object stores list modification
        times in ms but HEAD answers whole seconds. Where an ETag names the content (not the mtime), the
        known mtime stays: the kernel, which drops a file's pages when its mtime moves, keeps them."""
        new, old = entry.mtime_ns, self.mtime_ns
        if new == 0 and old and entry.size == self.size:
            return True  # a listing time the client could not read (see attrs.meta_of): nothing new
        return (
            bool(self.etag)
            and entry.size == self.size
            and new != old
            and (new % _SECOND == 0 or old % _SECOND == 0)
            and new // _SECOND == old // _SECOND
        )


class InodeTable:
    def __init__(self, root_mtime_ns: int) -> None:
        root = Inode(pyfuse3.ROOT_INODE, "", Kind.DIR, mtime_ns=root_mtime_ns, lookups=1)
        self._by_ino: dict[int, Inode] = {root.ino: root}
        self._by_path: dict[str, Inode] = {"": root}
        self._overrides: dict[str, Overrides] = {}
        # Files with several names (hard links, file://): the store's inode number -> the one inode of all
        # its names, and that inode's names, so that each name shows the same inode to the kernel.
        self._by_store_ino: dict[int, Inode] = {}
        self._names: dict[int, set[str]] = {}
        self._next_ino = root.ino + 1
        # A file whose size or mtime changed gets a new inode, so an inode's bytes never change: what the
        # kernel's no-open mode needs, where it keeps every page of an inode and never reopens it.
        self.per_version = False

    def __getitem__(self, ino: int) -> Inode:
        return self._by_ino[ino]

    def get(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def at(self, path: str) -> Inode | None:
        return self._by_path.get(path)

    def add(self, path: str, entry: Entry, seen_at: float | None = None) -> Inode:
        """The inode for `path`, created or refreshed from `entry`; a changed kind gets a new inode."""
        inode = self._by_path.get(path)
        if inode is not None and inode.kind is entry.kind and not self.new_version(inode, entry):
            inode.update(entry, seen_at)
            self._index(inode)
            return inode
        if inode is not None:
            self._unbind(inode)
        linked = self._linked(entry)
        if linked is not None:
            self.bind(linked, path, entry)
            return linked
        inode = Inode(
            self._next_ino, path, entry.kind, overrides=self._overrides.setdefault(path, Overrides())
        )
        self._next_ino += 1
        inode.update(entry, seen_at)
        self._by_ino[inode.ino] = inode
        self._by_path[path] = inode
        self._index(inode)
        return inode

    def bind(self, inode: Inode, path: str, entry: Entry) -> None:
        """Give `inode` the further name `path` (a hard link), with attributes from `entry`."""
        names = self._names.setdefault(inode.ino, {inode.path})
        names.add(path)
        self._by_path[path] = inode
        self._overrides[path] = inode.overrides
        inode.update(entry)
        self._index(inode)

    def _index(self, inode: Inode) -> None:
        meta = inode.meta
        if inode.kind is not Kind.DIR and meta is not None and meta.ino and (meta.nlink or 1) > 1:
            self._by_store_ino[meta.ino] = inode

    def _linked(self, entry: Entry) -> Inode | None:
        """The live inode of another name of the same file as `entry`, if this mount knows one."""
        meta = entry.meta
        if entry.kind is Kind.DIR or meta is None or not meta.ino or (meta.nlink or 1) < 2:
            return None
        inode = self._by_store_ino.get(meta.ino)
        if inode is None or self._by_ino.get(inode.ino) is not inode or inode.kind is not entry.kind:
            return None
        return inode

    def new_version(self, inode: Inode, entry: Entry) -> bool:
        if not self.per_version or inode.kind is not Kind.FILE:
            return False
        # Object stores list modification times in ms but HEAD answers in whole seconds: compare those.
        a, b = entry.mtime_ns, inode.mtime_ns
        coarse = a % _SECOND == 0 or b % _SECOND == 0
        same_mtime = a == b or (coarse and a // _SECOND == b // _SECOND) or a == 0  # 0: not told
        return entry.size != inode.size or not same_mtime

    def remove_path(self, path: str) -> None:
        """The name is gone; its inode lives on while the kernel or a handle still references it."""
        inode = self._by_path.pop(path, None)
        self._overrides.pop(path, None)
        if inode is not None:
            self._rename_within(inode, path, None)
            self._drop_if_unused(inode)

    def _rename_within(self, inode: Inode, old: str, new: str | None) -> None:
        """Name `old` of a file with several names became `new` (None: removed); its other names stay."""
        names = self._names.get(inode.ino)
        if names is None:
            return
        names.discard(old)
        if new is not None:
            names.add(new)
        if inode.path == old:
            inode.path = new if new is not None else next(iter(names), old)
        if len(names) <= 1:
            del self._names[inode.ino]

    def move(self, src: str, dst: str, tree: bool) -> list[Inode]:
        """Rename `src` to `dst` (with `tree`, everything below it too); returns the inodes moved.

        Only a directory's rename walks the table; a file's touches two entries."""
        self.remove_path(dst)
        prefix = src + "/"
        paths = [p for p in self._by_path if p == src or p.startswith(prefix)] if tree else [src]
        moved = []
        for path in paths:
            inode = self._by_path.pop(path, None)
            if inode is not None:
                new = dst + path[len(src) :]
                if inode.ino in self._names:
                    self._rename_within(inode, path, new)
                inode.path = new
                self._by_path[new] = inode
                moved.append(inode)
        overrides = [p for p in self._overrides if p == src or p.startswith(prefix)] if tree else [src]
        for path in overrides:
            if path in self._overrides:
                self._overrides[dst + path[len(src) :]] = self._overrides.pop(path)
        return moved

    def forget(self, ino: int, count: int) -> None:
        inode = self._by_ino.get(ino)
        if inode is None or ino == pyfuse3.ROOT_INODE:
            return
        inode.lookups -= count
        self._drop_if_unused(inode)

    def prune(self, inode: Inode) -> None:
        """Forget `inode` if neither the kernel nor this mount references it any more."""
        self._drop_if_unused(inode)

    def _drop_if_unused(self, inode: Inode) -> None:
        named = self._by_path.get(inode.path) is inode
        if inode.lookups > 0 or inode.open_handles > 0 or inode.staged is not None:
            return
        if not named or inode.on_backend:
            self._by_ino.pop(inode.ino, None)
            if named:
                del self._by_path[inode.path]
            for name in self._names.pop(inode.ino, ()):
                if self._by_path.get(name) is inode:
                    del self._by_path[name]
            if inode.meta is not None and self._by_store_ino.get(inode.meta.ino or 0) is inode:
                del self._by_store_ino[inode.meta.ino or 0]

    def _unbind(self, inode: Inode) -> None:
        if self._by_path.get(inode.path) is inode:
            del self._by_path[inode.path]
        self._drop_if_unused(inode)
