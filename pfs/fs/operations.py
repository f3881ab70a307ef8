"""The pyfuse3 request handlers of a live mount.

Thin by design: each handler resolves inodes, runs blocking backend or staging work in a worker thread
(never on the trio loop) and turns pfs errors into errno in exactly one place (`_fuse_error`). Consistency
is close-to-open: attributes are trusted for `metadata_ttl` seconds, a file written here is uploaded on
flush/fsync/close, and `keep_cache` is granted only when a file's version is unchanged since its last open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import io
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from pfs.backends import Backend, Entry, Kind, Meta, MetaChange, Reader, first_given
from pfs.backends.leftovers import owner_tag
from pfs.cache import CachedObject, CacheUnavailable, Stream
from pfs.cache.build import block_cache, disk_tier
from pfs.counters import Stats, rss_bytes
from pfs.errors import (
    AlreadyExists,
    InvalidName,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
    PfsError,
    ReadOnly,
    Refused,
    Stale,
    Unsupported,
    errno_of,
)
from pfs.fs import fuse_table
from pfs.fs.ahead import ReadAhead
from pfs.fs.flights import Flights
from pfs.fs.held import HOLD_S, HeldNames
from pfs.fs.hints import Hints
from pfs.fs.inodes import Inode, InodeTable
from pfs.fs.journal import Journal
from pfs.fs.names import MAX_LISTING_ENTRIES, NameCache
from pfs.fs.versions import Versions, Want
from pfs.fs.workers import Workers
from pfs.fs.writeback import WriteBack
from pfs.mount import control
from pfs.options import MountOptions

log = logging.getLogger(__name__)

NAME_MAX = 255
RESERVED_ROOT_NAME = ".pfs"  # the backend's own area (snapshots, temporary and detached objects)
DISK_THREADS = 4  # disk-tier reads at once: more only queue in the disk
MAX_HINTED_DIRECTORIES = 16  # listings of hinted files too big for the name cache, kept while hinted
HINT_LISTINGS = 8  # directories of hinted files listed at once, ahead of the fetching
FIRST_HINTS = 64  # paths of a new list whose directories its posts wait for
DISK_FLUSH_S = 10.0  # a flush waits at most this long for the disk tier: a slow cache disk must not hang it


def _fuse_error(op: str, stats: Stats, exc: Exception) -> pyfuse3.FUSEError:
    """The one place where exceptions become errno for the kernel."""
    if isinstance(exc, PfsError):
        code = errno_of(exc)
        if code == errno.EIO:
            log.warning("%s failed: %s", op, exc)
        if code in (errno.EIO, errno.ESTALE):
            stats.backend_failed(f"{op}: {exc}")
        return pyfuse3.FUSEError(code)
    log.error("%s failed unexpectedly", op, exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


def handler(fn: Callable) -> Callable:
    op = fn.__name__.lstrip("_")  # `_getxattr` serves getxattr requests

    # Every request goes through here: a plain try (no context manager object per request), the counter
    # bumped in place and the latency added to plain lists (~0.2 us a request, perf_counter included).
    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        self.stats.ops[op] += 1
        start = time.perf_counter()
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise _fuse_error(op, self.stats, exc) from None
        finally:
            self.stats.fuse_op(op, time.perf_counter() - start)

    return wrapper


def _invalidate_kernel_inode(ino: int) -> None:
    with contextlib.suppress(OSError):  # the kernel has already forgotten it
        pyfuse3.invalidate_inode(ino)


@dataclass(eq=False)
class Handle:
    inode: Inode
    writable: bool
    obj: CachedObject | None = None  # the version this handle reads through the cache
    reader: Reader | None = None  # only for a file unlinked while open: read past the cache
    stream: Stream = field(default_factory=Stream)
    kept_pages: bool = False  # opened with keep_cache: a read means the kernel lost the pages meanwhile


@dataclass(eq=False)
class DirHandle:
    inode: Inode
    entries: list[Entry] = field(default_factory=list)


_NO_META = Meta()
_NO_XATTRS = errno_of(Unsupported("extended attributes and ACLs are not supported"))
_FORMAT = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.FIFO: stat.S_IFIFO,
    Kind.SOCKET: stat.S_IFSOCK,
    Kind.CHAR_DEVICE: stat.S_IFCHR,
    Kind.BLOCK_DEVICE: stat.S_IFBLK,
}
_KIND_OF_FORMAT = {fmt: kind for kind, fmt in _FORMAT.items()}


def _changed(change: MetaChange) -> list[tuple[str, Any]]:
    return [(f.name, v) for f in dataclasses.fields(change) if (v := getattr(change, f.name)) is not None]


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, backend: Backend, options: MountOptions) -> None:
        super().__init__()
        self.backend = backend
        self.reserved = backend.reserved_area()  # holds files unlinked while open, as detached/<id>
        self.options = options
        self.stats = Stats()
        # The reserved area is a backend of its own: its requests are timed in the same histogram.
        backend.on_request = self.reserved.on_request = self.stats.backend_request
        self._mounted_at_ns = time.time_ns()
        self.inodes = InodeTable(root_mtime_ns=self._mounted_at_ns)
        self._backend_threads = Workers(options.threads, "pfs-backend")
        self._disk_threads = Workers(DISK_THREADS, "pfs-disk")
        disk = None
        try:
            disk = disk_tier(options)
        except CacheUnavailable as exc:  # the cache is an optimisation: serve without it
            log.warning("%s; mounted without a disk cache", exc)
        self.cache = block_cache(options, disk, self.stats, self._run, self._run_disk)
        replaced = lambda inode: self._forget_in_kernel(inode.ino)  # noqa: E731
        self.versions = Versions(
            backend, self.cache, self.stats, self._run, self._run_disk, replaced, options.metadata_ttl
        )
        self.names = NameCache(options.metadata_ttl)
        # Files of a directory read in order are made ready ahead where an open asks the store anything.
        self._ahead = (
            None
            if backend.cheap_open
            else ReadAhead(self._prefetch_file, self.cache.config.block_size, pays=self.versions.ahead_pays)
        )
        # Files a reader said it opens next (pfs/fs/hints.py), fetched inside the sequential prefetch window.
        self._hints = Hints(
            options.prefetch,
            options.block_size,
            self.stats,
            self._hinted_entry,
            lambda path, entry: self._prefetch_file(path, entry, hinted=True),
            self.versions.drop_hinted,
        )
        self._hint_listings: dict[str, dict[str, Entry]] = {}  # hinted directories too big for `names`
        self._hint_listers = trio.CapacityLimiter(HINT_LISTINGS)
        self._hint_listing: set[str] = set()  # directories being listed for hinted files
        self._nursery: trio.Nursery | None = None
        self._flights = Flights()  # stats and listings in flight, shared by everyone asking the same
        self._handles: dict[int, Handle | DirHandle] = {}
        # The kernel's no-open mode (read-only mounts, where pfs/fs/fuse_table.py works): no OPEN, FLUSH or
        # RELEASE; reads carry fh 0 and use one handle per inode. See `serve_without_open`.
        self.no_open = False
        self._kernel_handles: dict[int, Handle] = {}
        self._held: HeldNames | None = None  # names handed to the kernel for HOLD_S (pfs/fs/held.py)
        self._kernel_ttl = options.metadata_ttl  # how long the kernel keeps a name and a file's attributes
        self.writes = WriteBack(
            backend,
            self._store_of,
            options.staging_dir,
            self._run,
            self.stats,
            self._discarded,
            lambda inode, entry: self.names.created(inode.path, entry),
            keep_failed=options.failed_uploads == "keep",
            journal=Journal(options.staging_dir, backend.id) if options.writeback else None,
            memory=self.cache.memory,
        )
        self._next_fh = 1
        self._mount_id = uuid.uuid4().hex[:12]
        # The backend keeps owners (file://): new entries belong to their creator, with the caller's mode
        # (the kernel has applied the caller's umask), and the kernel checks permissions by them.

    def serve_without_open(self) -> None:
        """Use the kernel's no-open mode (set before serving, on read-only mounts only): each version of a
        file is its own inode, so names may stay in the kernel for HOLD_S while directories with names there
        are listed again every metadata TTL (pfs/fs/held.py)."""
        self.no_open = self.inodes.per_version = True
        if 0 < self.options.metadata_ttl < HOLD_S:
            self._held = HeldNames(self.inodes, self.options.metadata_ttl)
            self._kernel_ttl = HOLD_S

    def attach(self, nursery: trio.Nursery) -> None:
        """Background work (prefetch, disk writes, kernel invalidations) runs in `nursery`."""
        self._nursery = nursery
        self.cache.attach(nursery)
        self.versions.attach(nursery)
        self.writes.attach(nursery)
        nursery.start_soon(self._hints.run)
        if self._held is not None:
            nursery.start_soon(self._follow_held_names)

    def counters(self) -> dict:
        gauges = self.cache.gauges()
        return self.stats.snapshot(rss_bytes=rss_bytes(), **self.writes.counters(), **gauges)

    def close(self) -> None:
        if self.cache.disk is not None:
            self.cache.disk.close()

    # ---- plumbing ---------------------------------------------------------------------------------------

    async def _run(self, fn: Callable, *args: Any, cancellable: bool = False) -> Any:
        """`fn(*args)` in a backend thread (see `Workers.run` for `cancellable`)."""
        return await self._backend_threads.run(fn, *args, cancellable=cancellable)

    async def _run_disk(self, fn: Callable, *args: Any) -> Any:
        return await self._disk_threads.run(fn, *args)

    def _child_path(self, parent: Inode, name: bytes) -> str:
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            # Object keys and HDFS paths are UTF-8: such a name could never be uploaded.
            raise InvalidName(f"{os.fsdecode(name)!r}: names must be valid UTF-8") from None
        if len(name) > NAME_MAX:
            raise NameTooLong(text[:40] + "...")
        if parent.kind is not Kind.DIR:
            raise NotADirectory(parent.path)
        if (not parent.path and text == RESERVED_ROOT_NAME) or text in self.backend.reserved_names:
            raise PermissionDenied(f"{text} is reserved")
        return f"{parent.path}/{text}" if parent.path else text

    def _check_writable(self) -> None:
        if self.options.read_only:
            raise ReadOnly("mounted read-only")

    def _attrs(self, inode: Inode) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        ov = inode.overrides
        meta = inode.meta or _NO_META
        if inode.kind is Kind.SYMLINK:  # a symlink's own mode means nothing: always rwxrwxrwx
            bits = 0o777
        else:
            default = 0o777 if inode.kind is Kind.DIR else 0o666
            bits = first_given(ov.mode, meta.mode, default & ~self.options.umask)
        mode = _FORMAT[inode.kind] | bits
        size = inode.staged.size if inode.staged is not None else inode.size
        mtime = first_given(ov.mtime_ns, meta.mtime_ns) or inode.mtime_ns or self._mounted_at_ns
        attrs.st_ino = inode.ino
        attrs.generation = 0
        attrs.st_mode = mode
        # An unlinked file still open here has no name left: POSIX says its link count is 0.
        attrs.st_nlink = 0 if inode.detached else first_given(meta.nlink, 2 if inode.kind is Kind.DIR else 1)
        attrs.st_rdev = meta.rdev or 0
        attrs.st_uid = first_given(ov.uid, meta.uid, self.options.uid)
        attrs.st_gid = first_given(ov.gid, meta.gid, self.options.gid)
        attrs.st_size = size
        attrs.st_blksize = 1 << 20
        attrs.st_blocks = (size + 511) // 512
        attrs.st_mtime_ns = mtime
        attrs.st_ctime_ns = max(mtime, ov.ctime_ns or 0, meta.ctime_ns or 0)
        attrs.st_atime_ns = first_given(ov.atime_ns, meta.atime_ns, mtime)
        attrs.entry_timeout = self._kernel_ttl
        # A directory's own attributes change with its names; a file's in no-open mode never (per version).
        attrs.attr_timeout = self.options.metadata_ttl if inode.kind is Kind.DIR else self._kernel_ttl
        return attrs

    def _handed(self, inode: Inode) -> None:
        """`inode`'s attributes go to the kernel with its name: one more kernel reference."""
        inode.lookups += 1
        if self._held is not None:
            self._held.handed(inode, time.monotonic())

    async def _follow_held_names(self) -> None:
        """Keep the names the kernel holds for HOLD_S true to the metadata TTL."""
        assert self._held is not None
        while True:
            await trio.sleep(min(1.0, self._held.ttl / 4))
            due = self._held.due(time.monotonic())
            if due:
                async with trio.open_nursery() as nursery:  # the backend limiter bounds these
                    for directory in due:
                        nursery.start_soon(self._check_held, directory)

    async def _check_held(self, directory: str) -> None:
        """List `directory` again and make the kernel drop its names that changed or are gone."""
        assert self._held is not None
        listed_at = time.monotonic()
        try:
            entries: dict[str, Entry] | None = await self._list_backend(directory)
        except NotFound:
            entries = None
        except PfsError as exc:  # compared again at the next round; until then the kernel keeps them
            log.debug("listing %s again failed: %s", directory, exc)
            return
        parent = self.inodes.at(directory)
        for inode in self._held.compare(directory, entries, listed_at):
            if parent is not None:
                name = os.fsencode(inode.path.rpartition("/")[2])
                pyfuse3.invalidate_entry_async(parent.ino, name, ignore_enoent=True)

    async def _refresh(self, inode: Inode) -> Inode:
        """`inode` with attributes no older than the metadata TTL (the root and detached files are local).

        Stale when its name now holds something else (replaced by a rename, or by another kind of entry)."""
        stale = not inode.fresh(self.options.metadata_ttl)
        if inode.ino == pyfuse3.ROOT_INODE and self.backend.posix and stale:
            inode.update(await self._run(self.backend.stat, ""))  # the root directory's own attributes
        if inode.ino == pyfuse3.ROOT_INODE or inode.detached:
            return inode
        current = await self._stat(inode.path)
        if current is not inode and not (self.no_open and current.kind is inode.kind is Kind.FILE):
            raise Stale(inode.path)
        return inode  # in no-open mode an older version of a file keeps its own attributes

    async def _stat(self, path: str) -> Inode:
        """The inode at `path`: from the table while fresh, else from a fresh listing of its directory or a
        fresh negative entry, else from the backend."""
        inode = self.inodes.at(path)
        ttl = self.options.metadata_ttl
        if inode is not None and inode.fresh(ttl):
            return inode
        now = time.monotonic()
        parent, _, name = path.rpartition("/")
        if self.names.worth_relisting(parent, now):
            await self._relist(parent)
        listed = self.names.listing(parent, now)
        if listed is not None:
            ahead = self.names.walk_ahead(parent, listed, now)
            if ahead is not None and self._nursery is not None:
                self._nursery.start_soon(self._relist_quietly, ahead)
            entry = listed.entries.get(name)
            if entry is not None:
                return self.inodes.add(path, entry, seen_at=listed.at)
            return self._gone(inode, path)
        if self.names.is_missing(path, now):
            return self._gone(inode, path)
        self.names.stat_ed(parent, now)
        try:
            entry = await self._shared(("stat", path), self.backend.stat, path)
        except NotFound:
            self.names.mark_missing(path, now)
            return self._gone(inode, path)
        return self.inodes.add(path, entry)

    async def _relist(self, path: str) -> None:
        """List directory `path` again for lookups (once for all the lookups asking at the same time)."""
        try:
            await self._list_backend(path)
        except NotFound:
            self.names.forget_directory(path)

    async def _relist_quietly(self, path: str) -> None:
        """`_relist` in the background, ahead of a walker: a failure is the walker's to meet and report."""
        try:
            await self._relist(path)
        except Exception as exc:
            log.debug("listing %s ahead failed: %s", path, exc)

    async def _shared(self, what: tuple[str, str], fn: Callable, *args: Any) -> Any:
        """`fn(*args)` in a worker thread, shared with every request asking `what` at the same time, unless
        this mount changed a name since it was asked."""
        return await self._flights.run((*what, self.names.generation), lambda: self._run(fn, *args))

    def _gone(self, inode: Inode | None, path: str) -> Inode:
        if inode is not None and inode.open_handles:
            return inode  # another writer removed it; our open handles keep their view
        self.inodes.remove_path(path)
        raise NotFound(path)

    def _new_fh(self, handle: Handle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _file_handle(self, fh: int) -> Handle:
        handle = self._handles[fh]
        assert isinstance(handle, Handle)
        return handle

    def _changed(self, path: str) -> None:
        """A name changed: forget listings and missing names around it, and (where stats are cheap) the
        parent directory's attributes, whose mtime, ctime and link count moved."""
        self.names.changed(path)
        self._parent_changed(path)

    def _parent_changed(self, path: str) -> None:
        """An entry appeared in or left the directory of `path`: its attributes moved (where stats are
        cheap, they are asked again)."""
        parent_path = path.rpartition("/")[0]
        parent = self.inodes.at(parent_path)
        if parent is not None and self.backend.cheap_open:
            parent.attrs_at = 0.0
            if parent_path:  # the listing that holds the parent's entry holds its old attributes too
                self.names.forget_directory(parent_path.rpartition("/")[0])

    async def _owner(self, parent: Inode, mode: int, ctx: pyfuse3.RequestContext, kind: Kind) -> MetaChange:
        """Owner and mode of an entry a caller creates: the caller's. On a POSIX store all of them (in a
        setgid directory its group, and a new directory is setgid too); elsewhere only what differs from
        the mount's defaults (uid, gid, umask), so that entries made as the mount's user need no record."""
        bits = stat.S_IMODE(mode)
        if not self.backend.posix:
            o = self.options
            default = 0o777 if kind is Kind.DIR else 0o666
            bits &= ~o.umask
            return MetaChange(
                mode=bits if kind is not Kind.SYMLINK and bits != default & ~o.umask else None,
                uid=ctx.uid if ctx.uid != o.uid else None,
                gid=ctx.gid if ctx.gid != o.gid else None,
            )
        attrs = self._attrs(await self._refresh(parent))
        gid = ctx.gid
        if attrs.st_mode & stat.S_ISGID:
            gid = attrs.st_gid
            if kind is Kind.DIR:
                bits |= stat.S_ISGID
        return MetaChange(mode=None if kind is Kind.SYMLINK else bits, uid=ctx.uid, gid=gid)

    async def _give(self, path: str, owner: MetaChange) -> Inode:
        """Store `owner` on the entry just made at `path` (file://) and take its attributes."""
        entry = await self._run(self.backend.set_meta, path, owner)
        return self.inodes.add(path, entry)

    @staticmethod
    def _other_names(inode: Inode) -> bool:
        return inode.kind is not Kind.DIR and ((inode.meta or _NO_META).nlink or 1) > 1

    # ---- metadata ---------------------------------------------------------------------------------------

    @handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext):
        parent = self.inodes[parent_inode]
        try:
            inode = await self._stat(self._child_path(parent, name))
        except (NotFound, PermissionDenied, InvalidName):  # names that cannot exist are simply missing
            missing = pyfuse3.EntryAttributes()
            missing.st_ino = 0  # a negative entry: the kernel trusts the absence for the TTL too
            missing.entry_timeout = self.options.metadata_ttl
            return missing
        self._handed(inode)
        return self._attrs(inode)

    @handler
    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.inodes.forget(ino, count)
            if ino in self._kernel_handles and self.inodes.get(ino) is None:
                self.versions.release(self._kernel_handles.pop(ino).inode)

    @handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext):
        return self._attrs(await self._refresh(self.inodes[inode]))

    @handler
    async def setattr(self, inode: int, attr, fields, fh, ctx: pyfuse3.RequestContext):
        node = self.inodes[inode]
        if fields.update_size:
            self._check_writable()
            if node.kind is Kind.DIR:
                raise IsADirectory(node.path)
            async with self.writes.pinned(node):
                staged = await self.writes.stage(node, empty=attr.st_size == 0)
                await self.writes.check_growth(node, attr.st_size, staged.size)
                await self._run(staged.truncate, attr.st_size)
                if node.open_handles == 1:  # a truncate(2) of a file nobody has open: publish now
                    await self.writes.upload(node)
        change = MetaChange(
            mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        if any(v is not None for k, v in _changed(change) if k != "atime_ns"):
            self._check_writable()
        await self._set_meta(node, change)
        ov = node.overrides
        ov.ctime_ns = time.time_ns()  # any change of attributes is a status change, whatever times were given
        return self._attrs(node)

    @handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext):
        node = self.inodes[inode]
        if node.symlink_target is None:
            node.symlink_target = await self._run(self.backend.read_symlink, node.path)
        return os.fsencode(node.symlink_target)

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext):
        space = await self._run(self.backend.space)
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = space.total_bytes // 4096
        data.f_bfree = data.f_bavail = space.free_bytes // 4096
        data.f_files = data.f_ffree = data.f_favail = 1 << 40
        data.f_namemax = NAME_MAX
        return data

    # ---- directories ------------------------------------------------------------------------------------

    @handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext):
        node = self.inodes[inode]
        if node.kind is not Kind.DIR:
            raise NotADirectory(node.path)
        return self._new_fh(DirHandle(node))

    async def _list_backend(self, path: str) -> dict[str, Entry]:
        """The backend's listing of directory `path`, kept for lookups of its names for the metadata TTL."""

        async def list_now() -> dict[str, Entry]:
            listed_at, generation = time.monotonic(), self.names.generation
            entries = {e.name: e for e in await self._run(self.backend.list_dir, path)}
            if self.names.generation == generation:  # else a name changed here meanwhile: it may miss it
                self.names.keep(path, entries, listed_at)
            return entries

        return await self._flights.run(("list", path, self.names.generation), list_now)

    async def _list(self, node: Inode) -> list[Entry]:
        # Files not uploaded before the listing too: one whose upload ended while the backend was listed
        # may be missing from that listing, and is no longer pending after it.
        pending = self.writes.unpublished_below(node.path, direct=True)
        entries = dict(await self._list_backend(node.path))
        for child in {*pending, *self.writes.unpublished_below(node.path, direct=True)}:
            if self.inodes.at(child.path) is not child:
                continue  # renamed or removed meanwhile
            name = child.path.rpartition("/")[2]  # uploaded meanwhile: what the upload made it
            entries.setdefault(name, Entry(name, child.kind, child.size, child.mtime_ns, child.meta))
        return sorted(entries.values(), key=lambda e: e.name)

    @handler
    async def readdir(self, fh: int, start_id: int, token):
        handle = self._handles[fh]
        assert isinstance(handle, DirHandle)
        if start_id == 0:  # first call, or rewinddir: take a fresh listing; offsets index into it
            handle.entries = await self._list(handle.inode)
        prefix = handle.inode.path + "/" if handle.inode.path else ""
        for index in range(start_id, len(handle.entries)):
            entry = handle.entries[index]
            path = prefix + entry.name
            inode = self.inodes.at(path)
            if inode is None or inode.on_backend:
                inode = self.inodes.add(path, entry)
            if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), self._attrs(inode), index + 1):
                self.inodes.prune(inode)  # not handed to the kernel: the next readdir call starts here
                break
            self._handed(inode)

    @handler
    async def releasedir(self, fh: int):
        del self._handles[fh]

    @handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext):
        self._check_writable()
        parent = self.inodes[parent_inode]
        path = self._child_path(parent, name)
        owner = await self._owner(parent, mode, ctx, Kind.DIR)
        await self._run(self.backend.make_dir, path)
        self._changed(path)
        if self.backend.posix:
            inode = await self._give(path, owner)
        else:
            inode = self.inodes.add(path, Entry(os.fsdecode(name), Kind.DIR, mtime_ns=time.time_ns()))
            await self._set_meta(inode, owner)
        inode.lookups += 1
        return self._attrs(inode)

    async def _set_meta(self, inode: Inode, change: MetaChange) -> None:
        """What the backend keeps goes there, also for a file open but unchanged (touch's futimens: no
        upload will carry it); a file with bytes to upload (or not uploaded yet) keeps it here until its
        upload carries it. The rest lives in the overrides for the mount's lifetime."""
        pending = inode.staged is not None and inode.staged.modified
        stored = self.backend.stored_meta if inode.on_backend and not pending else frozenset()
        kept = {k: v for k, v in _changed(change) if k in stored}
        if kept:
            inode.update(await self._run(self.backend.set_meta, inode.path, MetaChange(**kept)))
            self.names.changed(inode.path)
        for key, value in _changed(change):
            setattr(inode.overrides, key, None if key in kept else value)  # what the backend now keeps wins

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext):
        self._check_writable()
        path = self._child_path(self.inodes[parent_inode], name)
        inode = await self._stat(path)
        if inode.kind is not Kind.DIR:
            raise NotADirectory(path)
        if self.writes.unpublished_below(path, direct=True):
            raise NotEmpty(path)
        await self._run(self.backend.remove_dir, path)
        self._changed(path)
        self.inodes.remove_path(path)

    # ---- names ------------------------------------------------------------------------------------------

    @handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext):
        self._check_writable()
        parent = self.inodes[parent_inode]
        path = self._child_path(parent, name)
        owner = await self._owner(parent, 0o777, ctx, Kind.SYMLINK)
        entry = await self._run(self.backend.write_symlink, path, os.fsdecode(target))
        self._changed(path)
        inode = await self._give(path, owner) if self.backend.posix else self.inodes.add(path, entry)
        inode.symlink_target = os.fsdecode(target)
        if not self.backend.posix:
            await self._set_meta(inode, owner)
        inode.lookups += 1
        return self._attrs(inode)

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext):
        self._check_writable()
        path = self._child_path(self.inodes[parent_inode], name)
        inode = await self._stat(path)
        if inode.kind is Kind.DIR:
            raise IsADirectory(path)
        await self._remove(inode, path)

    async def _remove(self, inode: Inode, path: str) -> None:
        """Remove a file's name; an open file stays readable (under a hidden name) until its last close.
        A file with other names (hard links) just loses this one."""
        await self.writes.settled(inode)
        self._changed(path)
        if self._other_names(inode):
            await self._run(self.backend.remove_file, path)
            inode.attrs_at = 0.0  # its link count and ctime changed
        elif inode.on_backend and inode.open_handles:
            await self._detach(inode)
        elif inode.on_backend:
            await self._run(self.backend.remove_file, path)
            if inode.staged is not None:  # closed, its upload still pending (write-back): never lands
                inode.on_backend, inode.detached = False, True
        else:
            inode.detached = True  # never uploaded: its staged bytes serve the open handles, then vanish
        self.inodes.remove_path(path)

    async def _detach(self, inode: Inode) -> None:
        hidden = f"detached/{owner_tag()}{self._mount_id}-{inode.ino}"  # see pfs/backends/leftovers.py
        await self._run(self.backend.move_to_reserved, inode.path, hidden)
        self.inodes.remove_path(inode.path)
        inode.path = hidden
        inode.detached = True
        await self._repoint(inode)

    async def _repoint(self, inode: Inode) -> None:
        """After the object moved, reopen readers lazily at its new path."""
        for handle in self._handles.values():
            if isinstance(handle, Handle) and handle.inode is inode and handle.reader is not None:
                reader, handle.reader = handle.reader, None
                await self._run(reader.close)
        self.writes.rebase(inode)

    @handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._check_writable()
        src = self._child_path(self.inodes[parent_inode_old], name_old)
        dst = self._child_path(self.inodes[parent_inode_new], name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            await self._exchange(src, dst)
            return
        inode = await self._stat(src)
        try:
            target: Inode | None = await self._stat(dst)
        except NotFound:
            target = None
        for node in (inode, target):
            await self.writes.settled(node)
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise AlreadyExists(dst)
            if target is inode:
                return
            if target.kind is Kind.DIR and inode.kind is not Kind.DIR:
                raise IsADirectory(dst)
            if target.kind is not Kind.DIR and inode.kind is Kind.DIR:
                raise NotADirectory(dst)
            if self._other_names(target):
                target.attrs_at = 0.0  # loses a name: its link count and ctime change
            elif target.kind is not Kind.DIR and target.open_handles and target.on_backend:
                await self._detach(target)
            elif not target.on_backend:
                target.detached = True  # its pending bytes must never land on the new file
        if inode.kind is Kind.DIR and self.writes.unpublished_below(src, direct=False):
            await self.writes.flush_all()  # files created inside and not uploaded yet must move with the tree
        if not inode.on_backend:
            # Publish first, so that the backend renames (atomically on file://) over the old target.
            await self.writes.upload(inode)
        await self._run(self.backend.rename, src, dst)
        self._changed(src)
        self._changed(dst)
        inode.attrs_at = 0.0  # a rename changes the ctime
        if inode.kind is Kind.DIR:
            self.names.clear_listings()  # every directory below moved
        moved = self.inodes.move(src, dst, tree=inode.kind is Kind.DIR)
        if target is not None:
            self.inodes.prune(target)
        for node in moved:
            await self._repoint(node)

    async def _exchange(self, src: str, dst: str) -> None:
        """renameat2's RENAME_EXCHANGE: both names exist and swap their entries (file:// only)."""
        a, b = await self._stat(src), await self._stat(dst)
        for inode in (a, b):
            if inode.kind is Kind.DIR and self.writes.unpublished_below(inode.path, direct=False):
                await self.writes.flush_all()
            elif not inode.on_backend:
                await self.writes.upload(inode)
        await self._run(self.backend.exchange, src, dst)
        self._changed(src)
        self._changed(dst)
        if Kind.DIR in (a.kind, b.kind):
            self.names.clear_listings()
        aside = f"{src}\0{self._mount_id}"  # a name no entry can have
        moved = self.inodes.move(src, aside, tree=a.kind is Kind.DIR)
        moved += self.inodes.move(dst, src, tree=b.kind is Kind.DIR)
        moved += self.inodes.move(aside, dst, tree=a.kind is Kind.DIR)
        for node in moved:
            node.attrs_at = 0.0
            await self._repoint(node)

    @handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext):
        self._check_writable()
        node = self.inodes[inode]
        path = self._child_path(self.inodes[new_parent_inode], new_name)
        if node.staged is not None or not node.on_backend:
            await self._publish(node)  # the new name names the bytes written so far
        entry = await self._run(self.backend.link, node.path, path)
        self._changed(path)
        self.inodes.bind(node, path, entry)
        node.lookups += 1
        return self._attrs(node)

    @handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext):
        self._check_writable()
        parent = self.inodes[parent_inode]
        path = self._child_path(parent, name)
        kind = _KIND_OF_FORMAT.get(stat.S_IFMT(mode))
        if kind is None or kind in (Kind.DIR, Kind.SYMLINK):
            raise Refused(f"{path}: mknod of mode {mode:o}", errno.EINVAL)
        with contextlib.suppress(NotFound):
            await self._stat(path)
            raise AlreadyExists(path)
        owner = await self._owner(parent, mode, ctx, kind)
        if kind is Kind.FILE:
            meta = Meta(mode=owner.mode, uid=owner.uid, gid=owner.gid)
            entry = await self._run(self.backend.write_file, path, io.BytesIO(), 0, None, meta)
        else:
            entry = await self._run(self.backend.make_node, path, kind, rdev)
        self._changed(path)
        inode = await self._give(path, owner) if self.backend.posix else self.inodes.add(path, entry)
        if not self.backend.posix:
            await self._set_meta(inode, owner)
        inode.lookups += 1
        return self._attrs(inode)

    # ---- files ------------------------------------------------------------------------------------------

    def _store_of(self, inode: Inode) -> Backend:
        return self.reserved if inode.detached else self.backend

    def _file_info(self, inode: Inode, fh: int) -> pyfuse3.FileInfo:
        keep = inode.staged is None and inode.opened_version == inode.version
        inode.opened_version = inode.version
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=False)

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext):
        if self.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel's no-open mode from now on
        node = self.inodes[inode]
        if node.kind is Kind.DIR:
            raise IsADirectory(node.path)
        hinted = self._hints.opened(node.path)
        node = await self._refresh(node)
        writable = flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if writable:
            self._check_writable()
            async with self.writes.pinned(node):
                staged = await self.writes.stage(node, empty=bool(flags & os.O_TRUNC))
                if flags & os.O_TRUNC:
                    await self._run(staged.truncate, 0)
                node.open_handles += 1  # before the pin ends: the staged file must stay
            return self._file_info(node, self._new_fh(Handle(node, writable=True)))
        if node.staged is not None:  # being written here: reads see the staged bytes
            node.open_handles += 1
            return self._file_info(node, self._new_fh(Handle(node, writable=False)))
        handle = Handle(node, writable=False)
        if node.detached:
            handle.reader = await self.versions.open_reader(node)
        else:
            handle.obj, opener = await self.versions.choose(node)
        node.open_handles += 1
        info = self._file_info(node, self._new_fh(handle))
        if handle.obj is not None and not info.keep_cache:  # kept pages need no block, nor files ahead
            self.cache.prefetch_whole(handle.obj, opener)
            if not hinted:  # the reader said what comes next: no guessing from the directory's order
                self._read_ahead(node)
        handle.kept_pages = info.keep_cache
        return info

    def _read_ahead(self, inode: Inode) -> None:
        """`inode` is being opened: the next files of its directory may be read next."""
        if self._ahead is not None:
            listed = self.names.listing(inode.path.rpartition("/")[0], time.monotonic())
            if listed is not None:
                self._ahead.opened(inode.path, listed)

    def _prefetch_file(self, path: str, entry: Entry, hinted: bool = False) -> bool:
        inode = self.inodes.at(path)
        if inode is not None and (inode.staged is not None or inode.detached):
            return True  # its bytes are here: nothing to fetch
        if hinted and inode is not None and self._kernel_keeps(inode):
            return True  # read through this mount before: the kernel has its pages, nothing to fetch
        return self.versions.prefetch(Want(path, entry.size, entry.mtime_ns), hinted)

    def _kernel_keeps(self, inode: Inode) -> bool:
        """Whether the kernel keeps the pages of `inode`'s current version (unless memory pressure took
        them): an open grants `keep_cache` (see `_file_info`), a no-open mount read the inode before."""
        if self.no_open:
            return inode.ino in self._kernel_handles
        return inode.opened_version == inode.version

    async def _hinted_entry(self, path: str) -> Entry | None:
        """What a listing of its directory says of a file a reader named, to fetch it ahead; None where no
        such file is listed."""
        directory, _, name = path.rpartition("/")
        entry = (await self._hinted_listing(directory)).get(name)
        return entry if entry is not None and entry.kind is Kind.FILE else None

    async def _hinted_listing(self, directory: str) -> dict[str, Entry]:
        """The listing of a directory with hinted files. One of any age does (the open checks what was
        fetched against the file's attributes); one too big for the name cache is kept here while it has
        names hinted."""
        entries = self._hint_listings.get(directory)
        if entries is not None:
            return entries
        kept = self.names.kept_listing(directory)
        if kept is not None:
            return kept.entries
        try:
            async with self._hint_listers:
                entries = await self._list_backend(directory)
        except (NotFound, NotADirectory):
            entries = {}
        if len(entries) > MAX_LISTING_ENTRIES:
            if len(self._hint_listings) >= MAX_HINTED_DIRECTORIES:
                self._hint_listings.pop(next(iter(self._hint_listings)))
            self._hint_listings[directory] = entries
        return entries

    async def _list_for_hints(self, directory: str) -> None:
        """List a directory of hinted files in the background, before the fetching gets to them."""
        try:
            await self._hinted_listing(directory)
        except PfsError as exc:  # the fetching asks again, and a failure there only skips the file
            log.debug("listing %s for hinted files failed: %s", directory, exc)
        finally:
            self._hint_listing.discard(directory)

    def _forget_in_kernel(self, ino: int) -> None:
        """Make the kernel drop its attributes and pages of `ino`, once the current request is answered:
        invalidating from inside a read would wait for the page that read holds locked (a deadlock)."""
        if self._nursery is not None:
            self._nursery.start_soon(trio.to_thread.run_sync, _invalidate_kernel_inode, ino)

    @handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx):
        self._check_writable()
        parent = self.inodes[parent_inode]
        path = self._child_path(parent, name)
        inode = self.inodes.at(path)
        if inode is not None and flags & os.O_EXCL:
            raise AlreadyExists(path)
        if inode is None:
            owner = await self._owner(parent, mode, ctx, Kind.FILE)
            inode = self.inodes.add(path, Entry(os.fsdecode(name), Kind.FILE, 0, time.time_ns()))
            inode.on_backend = False
            await self._set_meta(inode, owner)  # not uploaded yet: its upload carries them
        async with self.writes.pinned(inode):
            staged = await self.writes.stage(inode, empty=True)
            if staged.size:
                await self._run(staged.truncate, 0)  # also marks it modified
            else:
                staged.modified = True  # nothing to cut, but an empty new file is published too
            inode.open_handles += 1
        inode.lookups += 1
        fh = self._new_fh(Handle(inode, writable=True))
        return self._file_info(inode, fh), self._attrs(inode)

    @handler
    async def read(self, fh: int, off: int, size: int):
        # No-open mode: fh 0, the inode's own handle (taken before any await: see pfs/fs/fuse_table.py).
        if fh:
            handle = self._file_handle(fh)
        else:
            ino = fuse_table.current
            # No OPEN comes: the read of a file's start tells the hints instead.
            hinted = off == 0 and self._hints.posted and self._hints.opened(self.inodes[ino].path)
            handle = await self._kernel_handle(ino, read_ahead=not hinted)
        inode = handle.inode
        data: bytes | memoryview
        if inode.staged is not None and inode.staged.in_memory:
            data = inode.staged.read(off, size)  # in memory, never a base object: nothing blocks
        elif inode.staged is not None:
            data = await self._run(inode.staged.read, off, size)
        elif handle.obj is not None and not inode.detached:
            if handle.obj.path != inode.path:  # renamed while open: same version, new name
                handle.obj = dataclasses.replace(handle.obj, path=inode.path)
            if handle.kept_pages:  # memory pressure took the pages: the next files may have lost theirs
                handle.kept_pages = False
                self._read_ahead(inode)
            opener = self.versions.opener(inode, handle.obj)
            data = await self.cache.read(handle.obj, off, size, opener, handle.stream)
        else:
            if handle.reader is None:  # moved since it was opened (rename, unlink)
                handle.reader = await self.versions.open_reader(inode)
            data = await self._run(handle.reader.read, off, size)
        self.stats.add("bytes_read", len(data))
        return data

    @handler
    async def write(self, fh: int, off: int, buf: bytes):
        handle = self._file_handle(fh)
        if not handle.writable:
            raise PermissionDenied("file not open for writing")
        written = await self.writes.write(handle.inode, off, buf)
        self.stats.add("bytes_written", written)
        return written

    def _discarded(self, inode: Inode) -> None:
        """Bytes written here were dropped unpublished: the name shows the backend's version again, or
        nothing if it never was uploaded, and the kernel forgets the pages of the dropped bytes."""
        inode.opened_version = None
        inode.attrs_at = 0.0
        if not inode.on_backend and self.inodes.at(inode.path) is inode:
            self.inodes.remove_path(inode.path)
            self.names.changed(inode.path)
        self._forget_in_kernel(inode.ino)

    async def _publish(self, inode: Inode, again: bool = True, closing: bool = False) -> None:
        """Upload the inode's staged bytes; `closing` (flush, release): write-back mode may queue them."""
        if inode.staged is None:
            return  # nothing written: nothing to upload
        was_new = not inode.on_backend
        await (self.writes.close(inode, again) if closing else self.writes.upload(inode, again))
        if was_new and inode.on_backend:
            # Its directory's kept listing gained it already (`NameCache.created`): dropping that listing
            # would cost every next new name there a request again.
            self._parent_changed(inode.path)

    async def _kernel_handle(self, ino: int, read_ahead: bool = True) -> Handle:
        """The one handle of inode `ino` in no-open mode, made on its first read: the version chosen then
        is the inode's for good (a changed object gets a new inode: see `InodeTable.per_version`)."""
        handle = self._kernel_handles.get(ino)
        if handle is None:
            inode = self.inodes[ino]
            obj, _ = await self.versions.choose(inode)
            if read_ahead:
                self._read_ahead(inode)
            handle = self._kernel_handles.setdefault(ino, Handle(inode, writable=False, obj=obj))
        return handle

    @handler
    async def flush(self, fh: int):
        if self.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # nothing to write: the kernel stops sending FLUSH
        await self._publish(self._file_handle(fh).inode, closing=True)

    @handler
    async def fsync(self, fh: int, datasync: bool):
        await self._publish(self._file_handle(fh).inode)

    @handler
    async def release(self, fh: int):
        handle = self._handles.pop(fh)
        assert isinstance(handle, Handle)
        inode = handle.inode
        try:
            # The flush of this close already tried: a failed upload is not tried again behind its back.
            await self._publish(inode, again=False, closing=True)
        finally:
            inode.open_handles -= 1
            if handle.reader is not None:
                await self._run(handle.reader.close)
            if inode.open_handles == 0:
                self.versions.release(inode)
            await self.writes.unstage_if_idle(inode)
            if inode.detached and inode.on_backend and inode.open_handles == 0:
                inode.on_backend = False
                await self._run(self.reserved.remove_file, inode.path)
            self.inodes.prune(inode)

    # ---- control surface (xattrs on the root) -----------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext):
        # The kernel asks for `security.capability` before every write (FUSE never marks an inode free of
        # it, and answering ENOSYS would end the control names too): refused at once, no handler around.
        if not name.startswith(control.PREFIX):
            self.stats.count("getxattr")
            self.stats.fuse_op("getxattr", 0.0)  # answered without work: the fastest bucket, no clock read
            raise pyfuse3.FUSEError(_NO_XATTRS)
        return await self._getxattr(inode, name, ctx)

    @handler
    async def _getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext):
        if name.startswith(control.HINTS):
            return await self._hint(self.inodes[inode], name, ctx.pid)
        if inode == pyfuse3.ROOT_INODE:
            if name == control.PID:
                return str(os.getpid()).encode()
            if name == control.BACKEND:
                return self.backend.id.encode()
            if name == control.STATS:
                return json.dumps(self.counters()).encode()
        elif name in control.FILE_COMMANDS:
            return await self._file_command(self.inodes[inode], name)
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)  # a control name asked where it does not apply

    async def _hint(self, directory: Inode, name: bytes, poster: int) -> bytes:
        """A post of paths (relative to `directory`) its poster opens next: answers how many were taken.
        Their directories are listed now, in parallel, not one by one as the fetching gets to them; the
        first posts of a list wait for theirs, so that the first files are fetched before their readers
        (who start as the post returns) ask for them."""
        if directory.kind is not Kind.DIR:
            raise NotADirectory(directory.path)
        hint = control.parse_hint(name)
        if hint is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        restart, paths, not_plain = hint  # paths with '.', '..' or empty parts: taken, never fetched
        prefix = f"{directory.path}/" if directory.path else ""
        if restart:
            self._hint_listings.clear()  # a new epoch: names may have come or gone since
        paths = [prefix + p for p in paths]
        taken = self._hints.post(poster, paths, restart)
        parents = [
            parent
            for parent in dict.fromkeys(p.rpartition("/")[0] for p in paths[:taken])
            if parent not in self._hint_listings and self.names.kept_listing(parent) is None
        ]
        if parents and self._hints.queued(poster) <= FIRST_HINTS:
            async with trio.open_nursery() as nursery:
                for parent in parents:
                    nursery.start_soon(self._list_for_hints, parent)
        elif self._nursery is not None:
            for parent in parents:
                if parent not in self._hint_listing:
                    self._hint_listing.add(parent)
                    self._nursery.start_soon(self._list_for_hints, parent)
        return str(taken + not_plain if taken == len(paths) else taken).encode()

    async def _file_command(self, node: Inode, name: bytes) -> bytes:
        """warmup / cached / evict on one file, answered as 'CACHED_BYTES SIZE'."""
        node = await self._refresh(node)
        if node.kind is not Kind.FILE:
            raise IsADirectory(node.path)
        if node.staged is not None or node.detached:  # local bytes: nothing to cache
            return f"{node.size} {node.size}".encode()
        obj, opener = await self.versions.choose(node, first_block=name == control.WARMUP)
        try:
            if name == control.WARMUP:
                cached = await self.cache.warm(obj, opener)
            elif name == control.EVICT:
                await self.cache.evict(obj)
                cached = 0
            else:
                cached = await self.cache.cached_bytes(obj)
        finally:
            if node.open_handles == 0:
                self.versions.release(node)
        return f"{cached} {obj.size}".encode()

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext):
        return list(control.READABLE) if inode == pyfuse3.ROOT_INODE else []

    @handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext):
        if inode == pyfuse3.ROOT_INODE and name == control.FLUSH:
            await self.writes.flush_all()
            self.names.clear_listings()
            if self.cache.disk is not None:  # so that another mount of the same cache directory finds them
                # A wait, not disk work: kept off the disk limiter, whose threads serve reads meanwhile.
                await trio.to_thread.run_sync(self.cache.disk.flush, DISK_FLUSH_S)
            return
        if inode == pyfuse3.ROOT_INODE and name == control.DISCARD:
            await self.writes.discard_failed()
            return
        raise Unsupported("extended attributes and ACLs are not supported")

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext):
        raise Unsupported("extended attributes and ACLs are not supported")
