"""Write-back of files written through a mount: staged locally, published whole on flush, fsync or close.

Owns every inode's `StagedFile` from the first write-open until the last handle is gone and nothing is
left to upload. Uploads of one inode are serialised by its upload lock, so a second close() waits until the
first upload is durable instead of returning early.

What a writer waits on is bounded: an upload that moves no data for the backend's timeout is abandoned (its
worker thread may stay stuck in the transport, but it can never complete the upload any more: see
`UploadGuard`), and the flush, fsync or close fails with EIO.

After a failed upload (the one decision of this module, `keep_failed`, the `failed_uploads` mount option):
- keep (default): the bytes stay staged, listed by name in the counters (`failed_uploads`) and the log, and
  are uploaded again by the next flush or fsync of the file (not by the release that follows the failed
  close) and by `flush_all` (unmount, SIGTERM, the control xattr); `discard_failed` drops them.
- drop: the bytes are dropped once the file is closed; the backend keeps what it had.
A failure that no retry can cure (the name became a directory, was refused, ...) always drops.

A staged file that broke (its staging directory was full, or it was dropped as above) is never uploaded:
flush, fsync and close fail with its error, and once the last handle is gone its bytes are dropped, so the
backend keeps the previous version (or, for a new file, never sees the name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from pfs.backends import Backend, Entry, Meta, Reader, UploadGuard
from pfs.errors import (
    AlreadyExists,
    BackendError,
    InvalidName,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotFound,
    PfsError,
    ReadOnly,
    Transient,
    Unsupported,
)
from pfs.fs.inodes import Inode
from pfs.fs.staging import StagedFile
from pfs.stats import Stats

log = logging.getLogger(__name__)

Run = Callable[..., Awaitable[Any]]  # runs a blocking call in a worker thread under the mount's limiter

# Answers about the name itself: the same upload can never succeed, so it is not kept for a retry.
PERMANENT = (
    IsADirectory,
    NotADirectory,
    NameTooLong,
    InvalidName,
    NotFound,
    AlreadyExists,
    ReadOnly,
    Unsupported,
)
_PUBLISHED_META = ("mode", "uid", "gid", "mtime_ns")  # what Meta can carry to write_file
LISTED_FAILURES = 100  # names of failed uploads in the counters (the control xattr's value is bounded)


class WriteBack:
    def __init__(
        self,
        backend: Backend,
        store_of: Callable[[Inode], Backend],
        staging_dir: str,
        run: Run,
        stats: Stats,
        discarded: Callable[[Inode], None],
        keep_failed: bool = True,
    ) -> None:
        self._backend = backend
        self._store_of = store_of
        self._staging_dir = staging_dir
        self._run = run
        self._stats = stats
        self._discarded = discarded  # told when bytes written here were dropped without being uploaded
        self._keep_failed = keep_failed
        # The only inodes whose content or existence the backend may not know yet.
        self._staged: set[Inode] = set()

    def base_opener(self, inode: Inode) -> Callable[[], Reader]:
        store, path, size = self._store_of(inode), inode.path, inode.size
        return lambda: store.open_reader(path, size)

    async def stage(self, inode: Inode) -> StagedFile:
        # Created on the loop on purpose: one local open(O_TMPFILE), and no checkpoint between the check
        # and the assignment means two concurrent writers can never stage the same inode twice.
        if inode.staged is None:
            opener = self.base_opener(inode) if inode.on_backend and inode.size else None
            inode.staged = StagedFile(self._staging_dir, inode.size if opener else 0, opener)
            self._staged.add(inode)
        return inode.staged

    @contextlib.asynccontextmanager
    async def pinned(self, inode: Inode) -> AsyncIterator[None]:
        """Count as an open handle while staging, so a concurrent release cannot unstage under us."""
        inode.open_handles += 1
        try:
            yield
        finally:
            inode.open_handles -= 1
            await self.unstage_if_idle(inode)

    async def write(self, inode: Inode, offset: int, data: bytes) -> int:
        staged = await self.stage(inode)
        intact = staged.broken is None
        try:
            return await self._run(staged.write, offset, data)
        except PfsError as exc:
            if intact and staged.broken is not None:
                log.warning("%s will not be uploaded (the backend keeps what it had): %s", inode.path, exc)
                self._stats.add("staging_failures", 1)
            raise

    async def unstage_if_idle(self, inode: Inode) -> None:
        staged = inode.staged
        if staged is None or inode.open_handles:
            return
        dropped = staged.modified and not inode.detached
        if dropped and staged.broken is None:
            return  # still to be uploaded
        inode.staged = None
        self._staged.discard(inode)
        await self._run(staged.close)
        if dropped:
            self._discarded(inode)

    def rebase(self, inode: Inode) -> None:
        """The object moved (rename, detach): base reads follow it."""
        if inode.staged is not None and inode.on_backend:
            inode.staged.rebase(self.base_opener(inode))

    async def upload(self, inode: Inode, again: bool = True) -> None:
        """Publish the inode's staged bytes. `again=False` (a release): not if an upload of them failed."""
        async with inode.upload_lock:
            staged = inode.staged
            if staged is None or not staged.modified or inode.detached:
                return
            if staged.broken is not None:
                raise type(staged.broken)(f"{inode.path} was not uploaded: {staged.broken}")
            if staged.failure is not None and not again:
                return
            staged.modified = False  # writes landing during the upload set it again
            meta = self._meta_to_store(inode)
            try:
                entry = await self._watched_write(inode.path, staged, meta)
            except BaseException as exc:
                staged.modified = True
                if isinstance(exc, PfsError):
                    self._failed(inode, staged, exc)
                raise
        if staged.failure is not None:
            log.info("%s uploaded, after an upload of it had failed", inode.path)
            staged.failure = None
        inode.size, inode.mtime_ns, inode.etag, inode.meta = entry.size, entry.mtime_ns, "", entry.meta
        for name, value in dataclasses.asdict(meta or Meta()).items():
            if value is not None and getattr(inode.overrides, name) == value:  # the backend keeps it now
                setattr(inode.overrides, name, None)
        inode.on_backend = True
        inode.attrs_at = time.monotonic()
        inode.opened_version = inode.version
        self._stats.add("bytes_uploaded", entry.size)

    def _meta_to_store(self, inode: Inode) -> Meta | None:
        """The attributes set on a file while it was staged (cp -p, tar x) that the backend keeps."""
        ov = inode.overrides
        kept = {name: getattr(ov, name) for name in self._backend.stored_meta if name in _PUBLISHED_META}
        kept = {name: value for name, value in kept.items() if value is not None}
        return Meta(**kept) if kept else None

    async def _watched_write(self, path: str, staged: StagedFile, meta: Meta | None) -> Entry:
        """`write_file` in a worker thread, abandoned once no data has moved for the backend's timeout."""
        guard = UploadGuard()
        stall = self._backend.timeout
        with trio.CancelScope() as abandoned:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch, guard, stall, abandoned)
                write = functools.partial(self._backend.write_file, meta=meta)
                entry = await self._run(write, path, staged.source(), staged.size, guard, cancellable=True)
                nursery.cancel_scope.cancel()
            return entry
        self._stats.add("uploads_stalled", 1)
        raise Transient(f"upload of {path}: no data moved for {stall:g} s, abandoned")

    def _failed(self, inode: Inode, staged: StagedFile, exc: PfsError) -> None:
        self._stats.add("upload_failures", 1)
        if isinstance(exc, PERMANENT) or not self._keep_failed:
            staged.broken = exc
            self._stats.add("uploads_dropped", 1)
            log.warning("upload of %s failed, dropped (the backend keeps what it had): %s", inode.path, exc)
            return
        staged.failure = str(exc)
        log.warning(
            "upload of %s failed, kept staged: the next fsync or close of it, or pfs umount, uploads it "
            "again (pfs umount --discard drops it): %s",
            inode.path,
            exc,
        )

    async def flush_all(self) -> None:
        """Upload everything pending; raises the first failure once every file was tried."""
        first: PfsError | None = None
        for inode in list(self._staged):
            if inode.staged is not None and inode.staged.broken is None:
                try:
                    await self.upload(inode)
                except PfsError as exc:
                    first = first or exc
        if first is not None:
            raise first

    async def discard_failed(self) -> list[str]:
        """Drop every upload that failed and is still pending; returns the paths."""
        dropped = []
        for inode in list(self._staged):
            staged = inode.staged
            if staged is None or staged.broken is not None or staged.failure is None:
                continue
            staged.broken = BackendError(f"discarded after a failed upload ({staged.failure})")
            self._stats.add("uploads_dropped", 1)
            log.warning("%s: pending upload discarded, the backend keeps what it had", inode.path)
            dropped.append(inode.path)
            await self.unstage_if_idle(inode)
        return dropped

    def unpublished_below(self, dir_path: str, direct: bool) -> list[Inode]:
        """Files created under `dir_path` (directly, or anywhere below) that are not uploaded yet."""
        prefix = dir_path + "/" if dir_path else ""
        return [
            inode
            for inode in self._staged
            if not inode.on_backend
            and not inode.detached
            and inode.path.startswith(prefix)
            and not (direct and "/" in inode.path[len(prefix) :])
        ]

    def _pending(self) -> list[Inode]:
        return [
            inode
            for inode in self._staged
            if inode.staged is not None and inode.staged.modified and inode.staged.broken is None
        ]

    def counters(self) -> dict:
        pending = self._pending()
        failed = sorted(inode.path for inode in pending if inode.staged and inode.staged.failure)
        return {
            "pending_uploads": len(pending),
            "pending_failed_uploads": len(failed),
            "failed_uploads": failed[:LISTED_FAILURES],
        }


async def _watch(guard: UploadGuard, stall: float, scope: trio.CancelScope) -> None:
    while True:
        idle = time.monotonic() - guard.last_progress
        if idle >= stall:
            if guard.abandon():
                scope.cancel()
            return  # else it is completing: one request, which the transport's own timeouts bound
        await trio.sleep(stall - idle)
