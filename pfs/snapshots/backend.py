"""`SnapshotBackend`: a read-only Backend; its namespace is a snapshot manifest, its bytes the live ones.

stat, list_dir, walk and read_symlink are answered from the manifest with no backend request at all; every
change raises ReadOnly (EROFS). Only `open_reader` touches the live backend, and it proves that the object
still holds the bytes the snapshot recorded before handing out a single one:

Version tokens (the manifest's `version` column, and the `.version` of every reader returned here, which the
block cache uses as part of its keys):
- the object's ETag, when the snapshot recorded it. Listings through pyarrow carry no ETag, so recording
  one costs a HEAD per object: `pfs snapshot create` does that for every file with `--etags`, and by
  default only for files modified within `RECENT_S` of the snapshot (see below). The live reader's open
  already fetches the current ETag (pfs/backends/arrow/transfer.py), so checking it costs nothing more.
- otherwise `"size:mtime_ns"`. On open the live object's size is checked by the live reader and its mtime
  by one stat *after* the reader was opened: a replacement before or during the open shows up as a newer
  mtime in that stat. S3 reports whole seconds there (listings: milliseconds), so the comparison falls
  back to seconds; an object rewritten in the same second as it was last written would then pass, which is
  why objects younger than RECENT_S at snapshot time always get their ETag recorded instead.

On a mismatch the open fails with Stale (ESTALE); an object that is gone fails with BackendError (EIO, not
ENOENT: the name exists in the snapshot). Either way one log line names the path (once per path).
Limit: pyarrow's ranged GETs carry no If-Match, so an object replaced *while* a file is open is not
detected by later reads of that handle; every open is checked.

This module never lists or stats the live backend for namespace questions, and never writes to it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

from pfs.backends import Backend, Entry, Kind, Meta, Reader, SpaceInfo, Upload, UploadGuard
from pfs.errors import BackendError, NotADirectory, NotFound, ReadOnly, Stale
from pfs.snapshots.manifest import Manifest, mtime_token

log = logging.getLogger(__name__)

RECENT_S = 120  # covers clock skew between this host and the store, and S3's 1 s mtime resolution
_SECOND = 1_000_000_000


def _same_mtime(recorded: int, live: int) -> bool:
    if recorded == live:
        return True
    # S3 answers a HEAD with whole seconds (its listings have milliseconds): compare what both know.
    return live % _SECOND == 0 and recorded // _SECOND == live // _SECOND


class SnapshotReader(Reader):
    """The live reader, labelled with the manifest's version token."""

    def __init__(self, live: Reader, version: str) -> None:
        self._live = live
        self.version = version
        self.fills_buffers = live.fills_buffers

    def read(self, offset: int, length: int) -> bytes:
        return self._live.read(offset, length)

    def read_into(self, offset: int, views: list[memoryview]) -> bytes | None:
        return self._live.read_into(offset, views)

    def close(self) -> None:
        self._live.close()


class SnapshotBackend(Backend):
    def __init__(self, manifest: Manifest, live: Backend) -> None:
        self.manifest = manifest
        self._live = live
        self._name = manifest.info.name
        # The live backend's id: blocks cached under an ETag token are shared with live mounts of the same
        # source; "size:mtime" tokens never equal an ETag, so the two kinds of key cannot collide.
        self.id = live.id
        self.reads_first = live.reads_first
        self._reported: set[str] = set()
        self._reported_lock = threading.Lock()

    # The requests are the live backend's: it times them.
    @property
    def on_request(self) -> Callable[[str, float], None] | None:
        return self._live.on_request

    @on_request.setter
    def on_request(self, observe: Callable[[str, float], None] | None) -> None:
        self._live.on_request = observe

    def _row(self, path: str) -> int:
        row = self.manifest.row(path)
        if row is None:
            raise NotFound(f"{path}: not in snapshot {self._name}")
        return row

    # ---- the namespace: from the manifest only ----------------------------------------------------------

    def stat(self, path: str) -> Entry:
        return Entry("", Kind.DIR) if not path else self.manifest.entry(self._row(path))

    def list_dir(self, path: str) -> list[Entry]:
        if path and not self.manifest.is_dir(path):
            self._row(path)
            raise NotADirectory(f"{path}: not a directory")
        return self.manifest.children(path)

    def walk(self, path: str) -> Iterator[tuple[str, Entry]]:
        self.list_dir(path)  # the same errors for a missing path or a file
        return iter(sorted(self.manifest.walk(path)))

    def read_symlink(self, path: str) -> str:
        target = self.manifest.target(self._row(path))
        if target is None:
            raise NotFound(f"{path}: not a symlink")
        return target

    def space(self) -> SpaceInfo:
        return SpaceInfo(self.manifest.info.bytes, 0)

    def reserved_area(self) -> Backend:
        # Nothing is ever moved aside on a read-only mount: the snapshot view itself stands in.
        return self

    # ---- bytes: from the live backend, verified ---------------------------------------------------------

    def known_version(self, path: str, size: int, mtime_ns: int) -> str | None:
        # The manifest pins every version: cached blocks are always valid, and opening a cached file never
        # asks the backend.
        row = self.manifest.row(path)
        return self.manifest.version(row) if row is not None else None

    def _fail(self, path: str, error: Stale | BackendError) -> NoReturn:
        with self._reported_lock:
            first = path not in self._reported
            self._reported.add(path)
        if first:
            log.error("snapshot %s: %s", self._name, error)
        raise error

    def read_first(
        self, path: str, size: int, length: int, mtime_ns: int | None = None
    ) -> tuple[bytes, str] | None:
        """The first bytes from the live backend in one request, checked against the snapshot as a reader
        is: the pinned ETag, or the pinned size and modification second; with the pinned token."""
        row = self._row(path)
        entry = self.manifest.entry(row)
        token = self.manifest.version(row)
        if entry.kind is not Kind.FILE:
            return None
        by_time = token == mtime_token(entry.size, entry.mtime_ns)
        try:
            got = self._live.read_first(path, entry.size, length, entry.mtime_ns if by_time else None)
        except NotFound:
            self._fail(path, BackendError(f"{path} is gone from the backend since the snapshot"))
        except Stale:
            self._fail(path, Stale(f"{path} changed since the snapshot (size or modification time differs)"))
        if got is None:
            return None
        if not by_time and got[1] != token:
            self._fail(path, Stale(f"{path} changed since the snapshot (its ETag differs)"))
        return got[0], token

    def open_reader(self, path: str, size: int) -> Reader:
        row = self._row(path)
        entry = self.manifest.entry(row)
        if entry.kind is not Kind.FILE:
            raise NotFound(f"{path}: not a file in snapshot {self._name}")
        token = self.manifest.version(row)
        try:
            live = self._live.open_reader(path, entry.size)
        except NotFound:
            self._fail(path, BackendError(f"{path} is gone from the backend since the snapshot"))
        except Stale:
            self._fail(path, Stale(f"{path} changed since the snapshot (its size differs)"))
        try:
            self._verify(path, entry, token, live)
        except BaseException:
            live.close()
            raise
        return SnapshotReader(live, token)

    def _verify(self, path: str, entry: Entry, token: str, live: Reader) -> None:
        if token != mtime_token(entry.size, entry.mtime_ns):
            if live.version != token:
                self._fail(path, Stale(f"{path} changed since the snapshot (its ETag differs)"))
            return
        try:
            now = self._live.stat(path)
        except NotFound:
            self._fail(path, BackendError(f"{path} is gone from the backend since the snapshot"))
        same = now.kind is Kind.FILE and now.size == entry.size and _same_mtime(entry.mtime_ns, now.mtime_ns)
        if not same:
            self._fail(path, Stale(f"{path} changed since the snapshot (size or modification time differs)"))

    # ---- changes: refused ---------------------------------------------------------------------------------

    def _refuse(self) -> NoReturn:
        raise ReadOnly(f"snapshot {self._name} is read-only")

    def write_file(
        self,
        path: str,
        source: Upload,
        size: int,
        guard: UploadGuard | None = None,
        *,
        plain: bool = False,
        meta: Meta | None = None,
    ) -> Entry:
        self._refuse()

    def write_symlink(self, path: str, target: str) -> Entry:
        self._refuse()

    def make_dir(self, path: str) -> None:
        self._refuse()

    def remove_file(self, path: str) -> None:
        self._refuse()

    def remove_dir(self, path: str) -> None:
        self._refuse()

    def rename(self, src: str, dst: str) -> None:
        self._refuse()

    def move_to_reserved(self, path: str, reserved_path: str) -> None:
        self._refuse()

    def close(self) -> None:
        self._live.close()
