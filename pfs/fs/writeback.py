"""Write-back of files written through a mount: staged locally, published whole on flush, fsync or close.

Owns every inode's `StagedFile` from the first write-open until the last handle is gone and nothing is
left to upload. Uploads of one inode are serialised by its upload lock, so a second close() waits until the
first upload is durable instead of returning early. A failed upload keeps the bytes staged; `flush_all`
(unmount, SIGTERM, the control xattr) retries them.

A staged file that broke (its staging directory was full) is never uploaded: flush, fsync and close fail
with the error its write got, and once the last handle is gone its bytes are dropped, so the backend keeps
the previous version (or, for a new file, never sees the name).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pfs.backends import Backend, Reader
from pfs.errors import PfsError
from pfs.fs.inodes import Inode
from pfs.fs.staging import StagedFile
from pfs.stats import Stats

log = logging.getLogger(__name__)

Run = Callable[..., Awaitable[Any]]  # runs a blocking call in a worker thread under the mount's limiter


class WriteBack:
    def __init__(
        self,
        backend: Backend,
        store_of: Callable[[Inode], Backend],
        staging_dir: str,
        run: Run,
        stats: Stats,
        discarded: Callable[[Inode], None],
    ) -> None:
        self._backend = backend
        self._store_of = store_of
        self._discarded = discarded  # told when bytes written here were dropped without being uploaded
        self._staging_dir = staging_dir
        self._run = run
        self._stats = stats
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
        if staged.modified and not inode.detached and staged.broken is None:
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

    async def upload(self, inode: Inode) -> None:
        async with inode.upload_lock:
            staged = inode.staged
            if staged is None or not staged.modified or inode.detached:
                return
            if staged.broken is not None:
                raise type(staged.broken)(f"{inode.path} was not uploaded: {staged.broken}")
            staged.modified = False  # writes landing during the upload set it again
            try:
                entry = await self._run(self._backend.write_file, inode.path, staged.source(), staged.size)
            except BaseException:
                staged.modified = True
                raise
        inode.size, inode.mtime_ns, inode.etag = entry.size, entry.mtime_ns, ""
        inode.on_backend = True
        inode.attrs_at = time.monotonic()
        inode.opened_version = inode.version
        self._stats.add("bytes_uploaded", entry.size)

    async def flush_all(self) -> None:
        for inode in list(self._staged):
            if inode.staged is not None and inode.staged.broken is None:
                await self.upload(inode)

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

    def pending(self) -> int:
        return sum(
            1
            for inode in self._staged
            if inode.staged is not None and inode.staged.modified and inode.staged.broken is None
        )
