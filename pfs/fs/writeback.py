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
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from pfs.backends import Backend, Entry, Meta, MetaChange, Reader, Upload, UploadGuard, first_given
from pfs.cache.memory import MemoryTier
from pfs.counters import Stats
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
    TooLarge,
    Transient,
    Unsupported,
    ungrouped,
)
from pfs.fs.inodes import Inode
from pfs.fs.journal import Journal
from pfs.fs.staging import StagedFile

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
STREAM_AFTER = 8 << 20  # a new file is uploaded while written once it is this big (smaller: one PUT)
# Uploads hold at most this share of the mount's memory budget (their parts in flight, see
# Backend.upload_memory): reads keep the rest.
UPLOAD_SHARE = 0.5
BACKGROUND_UPLOADS = 8  # write-back mode: uploads in flight at once
MAX_QUEUED = 4096  # write-back mode: closed files waiting (each holds an open staging file)
# A new file is staged in memory while it stays this small (no staging file, no worker thread per write),
# and while the mount's memory budget has room: staged bytes take at most this share of it.
MEMORY_STAGED_MAX = 1 << 20
MAX_FILE_BYTES = 5 << 40  # the largest object S3 stores; no training file comes near it on any backend
MEMORY_STAGED_SHARE = 0.5


class WriteBack:
    def __init__(
        self,
        backend: Backend,
        store_of: Callable[[Inode], Backend],
        staging_dir: str,
        run: Run,
        stats: Stats,
        discarded: Callable[[Inode], None],
        created: Callable[[Inode, Entry], None],
        keep_failed: bool = True,
        journal: Journal | None = None,
        memory: MemoryTier | None = None,
    ) -> None:
        self._backend = backend
        self._store_of = store_of
        self._staging_dir = staging_dir
        self._run = run
        self._stats = stats
        self._discarded = discarded  # told when bytes written here were dropped without being uploaded
        self._created = created  # told when a new file's first upload made it exist on the backend
        self._keep_failed = keep_failed
        self._memory = memory  # the mount's budget, which small new files staged in memory count in
        # The only inodes whose content or existence the backend may not know yet.
        self._staged: set[Inode] = set()
        # Write-back mode (`journal` set): closed files waiting for a background upload, in close order.
        self._journal = journal
        self._queued: set[Inode] = set()
        self._queue_in, self._queue_out = trio.open_memory_channel[Inode](math.inf)
        # New files uploaded while they are written (object stores): as many at once as the memory budget
        # has room for. In write-back mode one at a time, while no closed file is uploading or waiting
        # (see `_start_stream`).
        self._may_stream = backend.streams_uploads and memory is not None
        self._streams: dict[Inode, _Stream] = {}
        # Memory the uploads of closed files hold, and news of it being let go (see `_upload_room`).
        self._closed_uploads_hold = 0
        self._upload_room_freed = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Uploads being watched for stalls (`_watched`), by one task for all of them once attached.
        self._watching: dict[UploadGuard, trio.CancelScope] = {}

    def attach(self, nursery: trio.Nursery) -> None:
        """Background uploads (write-back mode, files uploaded while written) and the watch for stalled
        uploads run in `nursery`."""
        self._nursery = nursery
        nursery.start_soon(self._watch_all)
        if self._journal is not None:
            for _ in range(BACKGROUND_UPLOADS):
                nursery.start_soon(self._upload_in_background)

    def base_opener(self, inode: Inode) -> Callable[[], Reader]:
        store, path, size = self._store_of(inode), inode.path, inode.size
        return lambda: store.open_reader(path, size)

    async def stage(self, inode: Inode, empty: bool = False) -> StagedFile:
        """The inode's staged file; `empty`: if it is staged now, with none of the old content (a create
        or an open with O_TRUNC, which cut it anyway), so a small one can stay in memory."""
        # Created on the loop on purpose: at most one local open(O_TMPFILE), and no checkpoint between the
        # check and the assignment means two concurrent writers can never stage the same inode twice.
        if inode.staged is None:
            based = inode.on_backend and inode.size and not empty
            opener = self.base_opener(inode) if based else None
            size, in_memory = (inode.size if opener else 0), self._memory is not None
            inode.staged = StagedFile(
                self._staging_dir, size, opener, in_memory=in_memory, sync_ahead=self._journal is not None
            )
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

    async def check_growth(self, inode: Inode, size: int, current: int) -> None:
        """Refuse to make a file `size` bytes long (from `current`) where its upload could not be stored.
        pfs keeps no holes: a sparse extension is uploaded as zeros, so growing a file beyond the backend's
        free space (or any object store's largest object) would fill the store, or the node's disk on file://,
        before failing."""
        if size <= current:
            return
        space = await self._run(self._backend.space)
        if size > MAX_FILE_BYTES or size - current > space.free_bytes:
            raise TooLarge(f"{inode.path}: {size} bytes is more than the backend can take")

    async def write(self, inode: Inode, offset: int, data: bytes) -> int:
        staged = await self.stage(inode)
        if offset > staged.size:  # a hole: appending writes never ask
            await self.check_growth(inode, offset + len(data), staged.size)
        if self._write_in_memory(staged, offset, data):
            return len(data)
        intact = staged.broken is None
        try:
            written = await self._run(staged.write, offset, data)
        except PfsError as exc:
            if intact and staged.broken is not None:
                log.warning("%s will not be uploaded (the backend keeps what it had): %s", inode.path, exc)
                self._stats.add("staging_failures", 1)
            raise
        finally:
            if not staged.in_memory:
                self._release_memory(staged)  # moved to a staging file (or broken): memory is free again
        if staged.size >= STREAM_AFTER and inode not in self._streams:
            self._start_stream(inode, staged)
        return written

    def _write_in_memory(self, staged: StagedFile, offset: int, data: bytes) -> bool:
        """Write into a staged file held in memory, on the loop; False where it must go to a staging
        file instead (past MEMORY_STAGED_MAX, or the budget is taken)."""
        memory = self._memory
        end = offset + len(data)
        if memory is None or not staged.in_memory or end > MEMORY_STAGED_MAX:
            return False
        grow = max(0, end - staged.memory_held)
        if grow and not memory.try_reserve(grow, MEMORY_STAGED_SHARE):
            return False
        if not staged.write_in_memory(offset, data):
            memory.release(grow)
            return False
        staged.memory_held += grow
        return True

    def _release_memory(self, staged: StagedFile) -> None:
        if self._memory is not None and staged.memory_held:
            self._memory.release(staged.memory_held)
            staged.memory_held = 0

    def _start_stream(self, inode: Inode, staged: StagedFile) -> None:
        """Upload the file while it is written, if the memory budget has room for its parts now (else it
        is uploaded whole at close)."""
        if not self._may_stream or self._nursery is None or inode.detached:
            return
        if self._journal is not None and (self._streams or self._queued or self._closed_uploads_hold):
            # Write-back mode: the writer never waits for its upload, so a stream only gives the upload
            # of one big file a head start while the uploads are idle; beside others (a checkpoint's
            # shards closed one after another) it only slows them down (measured: 8 writers of 32 MiB
            # shards on the server at 144-157 MiB/s streamed, 167-182 after close).
            return
        assert self._memory is not None
        held = self._backend.upload_memory(None)
        if not self._memory.try_reserve(held, UPLOAD_SHARE):
            return
        source = staged.stream()
        if source is None:
            self._memory.release(held)
            return
        stream = _Stream(UploadGuard(), inode.path)
        self._streams[inode] = stream
        self._nursery.start_soon(self._stream, stream, staged, source, held)

    async def _stream(self, stream: _Stream, staged: StagedFile, source: Upload, held: int) -> None:
        upload = self._backend.stream_file
        try:
            stream.entry = await self._run(upload, stream.path, source, stream.guard, cancellable=True)
        except PfsError as exc:
            stream.error = exc
        finally:
            if self._memory is not None:
                self._memory.release(held)
            if stream.entry is None:  # the writer no longer waits for it: the file is uploaded whole at close
                staged.stop_stream()
            stream.done.set()

    async def _finish_stream(self, inode: Inode, staged: StagedFile) -> Entry | None:
        """The entry of the upload that ran while the file was written, or None if there was none or it
        cannot be used (the file was not appended in order, or it failed: then it is uploaded whole)."""
        stream = self._streams.pop(inode, None)
        if stream is None:
            return None
        if inode.path == stream.path and await self._run(staged.finish):
            stream.guard.progressed()  # the close is news: waiting for the writer was no stall of the store
            await self._watched(inode.path, stream.guard, stream.done.wait)
        else:
            staged.stop_stream()
            await stream.done.wait()
        if stream.error is not None:
            log.info("upload of %s while written failed, uploading it whole: %s", inode.path, stream.error)
        if stream.entry is None:
            return None
        self._stats.add("uploads_streamed", 1)
        return stream.entry

    async def unstage_if_idle(self, inode: Inode) -> None:
        staged = inode.staged
        if staged is None or inode.open_handles:
            return
        dropped = staged.modified and not inode.detached
        if dropped and staged.broken is None:
            return  # still to be uploaded
        inode.staged = None
        self._staged.discard(inode)
        self._streams.pop(inode, None)  # closing the staged file fails its stream: nothing lands
        if staged.in_memory:
            staged.close()  # nothing to close on disk
        else:
            await self._run(staged.close)
        self._release_memory(staged)
        if staged.journal is not None:  # uploaded, or dropped on purpose: nothing left to replay
            await self._forget_journal(staged)
        if dropped:
            self._discarded(inode)

    def rebase(self, inode: Inode) -> None:
        """The object moved (rename, detach): base reads follow it."""
        if inode.staged is not None and inode.on_backend:
            inode.staged.rebase(self.base_opener(inode))

    async def upload(self, inode: Inode, again: bool = True) -> None:
        """Publish the inode's staged bytes. `again=False` (a release): not if an upload of them failed."""
        staged = inode.staged
        if (staged is None or not staged.modified) and not inode.upload_lock.locked():
            return  # nothing to upload, and no upload in flight to wait for (the close after a flush)
        async with inode.upload_lock:
            staged = inode.staged
            if staged is None or not staged.modified or inode.detached:
                return
            if staged.broken is not None:
                raise type(staged.broken)(f"{inode.path} was not uploaded: {staged.broken}")
            if staged.failure is not None and not again:
                return
            staged.modified = False  # writes landing during the upload set it again
            generation = staged.generation
            meta = self._meta_to_store(inode)
            try:
                entry = await self._finish_stream(inode, staged)
                if entry is not None and meta is not None:  # the stream carried no attributes
                    change = MetaChange(**{k: getattr(meta, k) for k in _PUBLISHED_META})
                    entry = await self._run(self._backend.set_meta, inode.path, change)
                entry = entry or await self._watched_write(inode.path, staged, meta)
            except BaseException as exc:
                staged.modified = True
                if isinstance(exc, PfsError):
                    self._failed(inode, staged, exc)
                raise
            if staged.journal is not None and staged.generation == generation:
                await self._forget_journal(staged)
        if staged.failure is not None:
            log.info("%s uploaded, after an upload of it had failed", inode.path)
            staged.failure = None
        inode.size, inode.mtime_ns, inode.etag = entry.size, entry.mtime_ns, ""
        created, inode.on_backend = not inode.on_backend, True
        if created:
            self._created(inode, entry)
        inode.attrs_at = time.monotonic()
        inode.opened_version = inode.version
        self._stored(inode, entry.meta, meta)
        self._stats.add("bytes_uploaded", entry.size)
        # Uploaded with no handle left (a kept failure retried by flush_all or a rename): nothing to keep.
        await self.unstage_if_idle(inode)

    async def settled(self, inode: Inode | None) -> None:
        """Wait for an upload of `inode` in flight (a write-back one runs behind the writer's close): a
        name change must know whether the object landed, and must not be followed by it landing."""
        if inode is not None and inode.staged is not None:
            inode.staged.stop_stream()  # it goes to the old name: the file is uploaded whole at close
            async with inode.upload_lock:
                pass

    async def close(self, inode: Inode, again: bool = True) -> None:
        """A flush or release. In write-back mode a self-contained file is made durable in the journal and
        queued for a background upload; everything else is uploaded now (`upload`)."""
        if not await self._deferred(inode):
            await self.upload(inode, again)

    async def _deferred(self, inode: Inode) -> bool:
        staged = inode.staged
        if self._journal is None or staged is None or inode.detached or not staged.modified:
            return False  # not write-back mode, or nothing to upload
        if staged.broken is not None or staged.failure is not None or not staged.self_contained:
            return False  # upload() refuses, retries as in the default mode, or needs the base object
        if staged.journaled == staged.generation:
            return True  # closed again without a change (the release after the flush): queued already
        if len(self._queued) >= MAX_QUEUED:
            return False  # the store is far behind: this writer waits for its own upload
        try:
            await self._run(self._make_durable, inode.path, staged)
        except PfsError as exc:  # the staging directory cannot keep it: the writer waits for the upload
            log.warning("%s: not kept for write-back, uploading it now: %s", inode.path, exc)
            return False
        if inode not in self._queued:
            self._queued.add(inode)
            self._queue_in.send_nowait(inode)
        return True

    def _make_durable(self, path: str, staged: StagedFile) -> None:
        journal = self._journal
        assert journal is not None
        generation = staged.generation
        entry = staged.journal or journal.new_id()
        if staged.persist(journal.data_path(entry), journal.label(path)):
            journal.sync()
        staged.journal = entry
        staged.journaled = generation

    async def _forget_journal(self, staged: StagedFile) -> None:
        assert self._journal is not None and staged.journal is not None
        entry, staged.journal, staged.journaled = staged.journal, None, -1
        await self._run(self._journal.remove, entry)

    async def _upload_in_background(self) -> None:
        async for inode in self._queue_out:
            self._queued.discard(inode)
            with contextlib.suppress(PfsError):  # logged and counted by upload(); kept or dropped there
                await self.upload(inode)
            staged = inode.staged
            if staged is not None and staged.modified and staged.broken is None:
                continue  # changed while uploading (its next close queues it again), or kept after a failure
            await self.unstage_if_idle(inode)

    def _stored(self, inode: Inode, stored: Meta | None, given: Meta | None) -> None:
        """The published version's attributes are the inode's now; what was given here for it and the
        store now keeps no longer needs holding (unless changed again during the upload)."""
        inode.meta = stored
        if stored is None or given is None:
            return
        ov = inode.overrides
        for key in _PUBLISHED_META:
            value = getattr(given, key)
            if value is not None and getattr(ov, key) == value == getattr(stored, key):
                setattr(ov, key, None)

    def _meta_to_store(self, inode: Inode) -> Meta | None:
        """The attributes the new version carries where the store keeps them: those set here while it was
        staged (a new file's owner and mode, cp -p, tar x), else those it has (a rewrite keeps its mode and
        owner, not its modification time)."""
        ov, has = inode.overrides, inode.meta or Meta()
        values = {
            "mode": first_given(ov.mode, has.mode),
            "uid": first_given(ov.uid, has.uid),
            "gid": first_given(ov.gid, has.gid),
            "mtime_ns": ov.mtime_ns,
        }
        kept = {k: v for k, v in values.items() if k in self._backend.stored_meta and v is not None}
        return Meta(**kept) if kept else None

    async def _watched_write(self, path: str, staged: StagedFile, meta: Meta | None) -> Entry:
        """`write_file` in a worker thread, abandoned once no data has moved for the backend's timeout."""
        guard = UploadGuard()
        write = functools.partial(self._backend.write_file, plain=True, meta=meta)
        source, size = staged.source(), staged.size
        upload = lambda: self._run(write, path, source, size, guard, cancellable=True)  # noqa: E731
        async with self._upload_room(self._backend.upload_memory(size)):
            return await self._watched(path, guard, upload)

    @contextlib.asynccontextmanager
    async def _upload_room(self, nbytes: int) -> AsyncIterator[None]:
        """Hold `nbytes` of the mount's memory budget for the upload of a closed file: while other such
        uploads hold UPLOAD_SHARE of it, wait for one of them to end (each ends, or is abandoned once it
        stalls). One always goes, so that a file needing more than the share still uploads. Uploads of
        files still being written are not waited for (one may run for as long as its writer writes):
        they start only where the budget has room."""
        memory = self._memory
        if memory is None or not nbytes:
            yield
            return
        while not memory.try_reserve(nbytes, UPLOAD_SHARE):
            if not self._closed_uploads_hold:
                memory.reserve(nbytes)
                break
            await self._upload_room_freed.wait()
        self._closed_uploads_hold += nbytes
        try:
            yield
        finally:
            memory.release(nbytes)
            self._closed_uploads_hold -= nbytes
            self._upload_room_freed.set()
            self._upload_room_freed = trio.Event()

    async def _watched(self, path: str, guard: UploadGuard, wait: Callable[[], Awaitable[Any]]) -> Any:
        """What `wait` returns, unless the upload `guard` watches moves no data for the backend's
        timeout: then it is abandoned (it can never complete any more) and Transient raised."""
        stall = self._backend.timeout
        with trio.CancelScope() as abandoned:
            if self._nursery is None:  # not attached (no loop of its own): a watch of its own
                with ungrouped():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_watch, guard, stall, abandoned)
                        result = await wait()
                        nursery.cancel_scope.cancel()
                return result
            self._watching[guard] = abandoned
            try:
                return await wait()
            finally:
                self._watching.pop(guard, None)
        self._stats.add("uploads_stalled", 1)
        raise Transient(f"upload of {path}: no data moved for {stall:g} s, abandoned")

    async def _watch_all(self) -> None:
        """Abandon each watched upload that moved no data for the backend's timeout. One task for all of
        them: an upload watched from now on cannot stall before the next pass (it progressed just now)."""
        stall = self._backend.timeout
        while True:
            now = time.monotonic()
            wake = now + stall
            for guard, scope in list(self._watching.items()):
                if now - guard.last_progress < stall:
                    wake = min(wake, guard.last_progress + stall)
                    continue
                del self._watching[guard]
                if guard.abandon():
                    scope.cancel()
                # else it is completing: one request, which the transport's own timeouts bound
            await trio.sleep(wake - now)  # guards keep time.monotonic(), not trio's clock

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
        """Upload everything pending; raises the first failure once every file was tried, or at once when
        the store stopped answering (Transient, its retries spent): each other file would wait out the same
        timeout in turn, and a SIGTERM or an unmount with a thousand files pending on a dead store would
        take hours. What is not uploaded stays pending (failed uploads as `keep_failed` says, write-back
        files in their journal)."""
        first: PfsError | None = None
        for inode in list(self._staged):
            if inode.staged is not None and inode.staged.broken is None:
                try:
                    await self.upload(inode)
                except Transient:
                    raise
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
        queued = [inode.staged.size for inode in self._queued if inode.staged is not None]
        return {
            "pending_uploads": len(pending),
            "pending_failed_uploads": len(failed),
            "failed_uploads": failed[:LISTED_FAILURES],
            "pending_writeback_files": len(queued),
            "pending_writeback_bytes": sum(queued),
            "memory_staged_bytes": sum(i.staged.memory_held for i in self._staged if i.staged is not None),
        }


@dataclass(eq=False)
class _Stream:
    """An upload that runs while its file is written (`Backend.stream_file`)."""

    guard: UploadGuard
    path: str
    done: trio.Event = field(default_factory=trio.Event)
    entry: Entry | None = None
    error: PfsError | None = None


async def _watch(guard: UploadGuard, stall: float, scope: trio.CancelScope) -> None:
    while True:
        idle = time.monotonic() - guard.last_progress
        if idle >= stall:
            if guard.abandon():
                scope.cancel()
            return  # else it is completing: one request, which the transport's own timeouts bound
        await trio.sleep(stall - idle)
