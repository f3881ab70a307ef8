"""Local staging of a file being written, layered over the object it replaces.

A `StagedFile` holds only the bytes written through the mount, in a sparse, already-unlinked temporary file at
the same offsets as in the file. Every other byte comes from the base object (the version on the backend when
the file was opened for writing) or is a zero from truncate-then-extend. So opening a 10 GiB object to append
a line costs no download: the base ranges are streamed through only when the file is uploaded.

All methods block (disk and backend I/O): call them from worker threads. A `StagedFile` is shared by every
handle of one inode; `lock` serialises the interval bookkeeping against concurrent writers.

A write the staging directory cannot hold (full, or failing) breaks the staged file for good: the bytes it
holds are no longer what the writer wrote, so every later write fails the same way and `broken` tells the
write-back never to upload it. A broken file must never be published.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import io
import os
import tempfile
import threading
from collections.abc import Callable
from typing import BinaryIO

from pfs.backends import Reader
from pfs.errors import BackendError, NoSpace, PfsError, StagingFailed

CHUNK_CAP = 8 << 20  # the most a read of the whole stream returns at once


def _staging_error(exc: OSError, what: str) -> PfsError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left in the staging directory")
    return StagingFailed(f"{what}: the staging directory failed: {exc.strerror or exc}")


def _unnamed_file(folder: str) -> int:
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    fd, name = tempfile.mkstemp(dir=folder, prefix="pfs-staged-")  # no O_TMPFILE here: unlink at once
    os.unlink(name)
    return fd


_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


def _link_unnamed(fd: int, path: str) -> bool:
    """Give the unnamed file `fd` the name `path`; False where that cannot be done (then copy)."""
    # linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; the /proc way does not, but some kernels and
    # sandboxes refuse it (EXDEV). A file unlinked by name (no O_TMPFILE) can take neither.
    if _libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) == 0:
        return True
    try:
        os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)
    except OSError:
        return False
    return True


class StagedFile:
    def __init__(self, staging_dir: str, base_size: int, open_base: Callable[[], Reader] | None) -> None:
        # Unnamed from the start, so a crash leaves nothing behind; linkable (no O_EXCL), so write-back
        # can give it a name in its journal without copying it.
        try:
            self._fd = _unnamed_file(staging_dir)
        except OSError as exc:
            raise _staging_error(exc, "create a staged file") from exc
        self._open_base = open_base
        self._base: Reader | None = None
        # Bytes of the base object still visible: a truncate below it hides the rest for good.
        self._base_visible = base_size if open_base is not None else 0
        self.size = base_size
        # Sorted, disjoint, non-adjacent [start, end) ranges that hold written bytes in the staging file.
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.modified = False
        self.broken: PfsError | None = None  # why this content will never be uploaded
        self.failure: str | None = None  # why the last upload of this content failed (kept for a retry)
        self.generation = 0  # counts changes: what a write-back journal entry was made of
        self.journal: str | None = None  # the write-back journal entry holding these bytes, if any
        self.journaled = -1  # the generation the entry was last made durable at
        self._linked_to: str | None = None
        self.lock = threading.Lock()
        # A new file written strictly in order (each write at the end) can be uploaded while it grows.
        self._appending = open_base is None
        self._grown = threading.Condition(self.lock)
        self._end: int | None = None  # where `stream()` stops: set by `finish`
        self._streamed = False  # `stream()` handed out its reader

    def write(self, offset: int, data: bytes) -> int:
        with self.lock:
            self._check_intact()
            try:
                written = 0
                while written < len(data):  # a short write means the next one fails: find out now
                    written += os.pwrite(self._fd, data[written:], offset + written)
            except OSError as exc:
                self.broken = _staging_error(exc, "write")
                self._grown.notify_all()
                raise self.broken from exc
            self._appending = self._appending and offset == self.size and self._end is None
            self._add_range(offset, offset + written)
            self.size = max(self.size, offset + written)
            self.modified = True
            self.generation += 1
            self._grown.notify_all()
            return written

    def truncate(self, length: int) -> None:
        with self.lock:
            self._check_intact()
            try:
                os.ftruncate(self._fd, length)
            except OSError as exc:
                self.broken = _staging_error(exc, "truncate")
                self._grown.notify_all()
                raise self.broken from exc
            self._base_visible = min(self._base_visible, length)
            self._clip_ranges(length)
            # Cut to nothing before any stream began (open with O_TRUNC): a new file from here on.
            restart = length == 0 and not self._streamed
            self._appending = restart or (self._appending and length == self.size)
            self.size = length
            self.modified = True
            self.generation += 1
            self._grown.notify_all()

    def _check_intact(self) -> None:
        if self.broken is not None:
            raise type(self.broken)(str(self.broken))

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        parts: list[bytes] = []
        pos = offset
        while pos < end:
            piece_end, source = self._source_at(pos, end)
            if source == "staged":
                parts.append(os.pread(self._fd, piece_end - pos, pos))
            elif source == "base":
                parts.append(self._base_reader().read(pos, piece_end - pos))
            else:
                parts.append(bytes(piece_end - pos))
            pos = piece_end
        return b"".join(parts)

    @property
    def self_contained(self) -> bool:
        """Every byte is in the staging file (no base object shows through): it alone is the content."""
        return self._base_visible == 0

    def persist(self, path: str, label: tuple[str, bytes]) -> bool:
        """Make the content durable under `path`, carrying the extended attribute `label` (name, value):
        a hard link to the staging file where its file system can link an unnamed file (later calls then
        only sync it), else a copy. Self-contained files only. True if `path` was made now (the caller
        then syncs its directory)."""
        with self.lock:
            self._check_intact()
            try:
                os.setxattr(self._fd, *label)
                if self._linked_to == path:
                    os.fsync(self._fd)
                    return False
                self._link_or_copy(path, label)
                return True
            except OSError as exc:
                raise _staging_error(exc, "persist") from exc

    def _link_or_copy(self, path: str, label: tuple[str, bytes]) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if _link_unnamed(self._fd, path):
            self._linked_to = path
            os.fsync(self._fd)  # the data, its label and (on journaling file systems) the new name at once
            return
        tmp = path + ".tmp"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            offset = 0
            while offset < self.size:
                sent = os.copy_file_range(self._fd, out, self.size - offset, offset, offset)
                if not sent:
                    break
                offset += sent
            os.ftruncate(out, self.size)
            os.setxattr(out, *label)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, path)

    def stream(self) -> BinaryIO | None:
        """A reader of the content while it is still appended to, for `Backend.stream_file`: its reads
        wait for the writer and end at `finish`; they fail once a write lands anywhere but at the end (the
        file is then uploaded whole at close). None unless every write so far appended."""
        with self.lock:
            if not self._appending or self._end is not None:
                return None
            self._streamed = True
            return _AppendedReader(self)

    def finish(self) -> bool:
        """End the stream at the current size; False if the content was not appended in order."""
        with self.lock:
            self._end = self.size
            self._grown.notify_all()
            return self._appending and self.broken is None

    def stop_stream(self) -> None:
        """The stream must never complete (the file is dropped, renamed, or uploaded another way)."""
        with self.lock:
            self._appending = False
            self._grown.notify_all()

    def _appended(self, pos: int, want: int) -> int:
        """Bytes from `pos` the stream may read (0: the end); waits for the writer. Under `lock`."""
        while True:
            if not self._appending or self.broken is not None:
                raise BackendError("the file stopped being appended to: it is uploaded whole at close")
            limit = self.size if self._end is None else self._end
            if limit - pos >= want or self._end is not None:
                return max(0, min(want, limit - pos))
            self._grown.wait()

    def source(self) -> BinaryIO:
        """A sequential reader of the whole content, for `Backend.write_file`."""
        return _ComposedReader(self)

    def rebase(self, open_base: Callable[[], Reader] | None) -> None:
        """Point base reads at the object's new location (after a rename or detach)."""
        with self.lock:
            if self._base is not None:
                self._base.close()
            self._base = None
            if open_base is None:
                self._base_visible = 0
            self._open_base = open_base

    def close(self) -> None:
        self.stop_stream()
        if self._base is not None:
            self._base.close()
            self._base = None
        os.close(self._fd)

    def _base_reader(self) -> Reader:
        if self._base is None:
            assert self._open_base is not None
            self._base = self._open_base()
        return self._base

    def _source_at(self, pos: int, end: int) -> tuple[int, str]:
        """How far from `pos` (up to `end`) one source serves, and which one."""
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0 and pos < self._ends[i]:
            return min(end, self._ends[i]), "staged"
        next_start = self._starts[i + 1] if i + 1 < len(self._starts) else end
        limit = min(end, next_start)
        if pos < self._base_visible:
            return min(limit, self._base_visible), "base"
        return limit, "zeros"

    def _add_range(self, start: int, end: int) -> None:
        if start >= end:
            return
        lo = bisect.bisect_left(self._ends, start)  # first range that ends at or after start
        hi = bisect.bisect_right(self._starts, end)  # ranges before hi start at or before end
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def _clip_ranges(self, length: int) -> None:
        i = bisect.bisect_left(self._starts, length)
        del self._starts[i:], self._ends[i:]
        if self._ends and self._ends[-1] > length:
            self._ends[-1] = length


class _ComposedReader(io.RawIOBase):
    """Seekable file-like view of a StagedFile (what an upload streams, and rewinds to retry)."""

    def __init__(self, staged: StagedFile) -> None:
        super().__init__()
        self._staged = staged
        self._pos = 0

    def read(self, n: int | None = -1) -> bytes:
        remaining = self._staged.size - self._pos
        n = remaining if n is None or n < 0 else min(n, remaining)
        data = self._staged.read(self._pos, n) if n > 0 else b""
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._staged.size}[whence]
        self._pos = base + offset
        return self._pos


class _AppendedReader(io.RawIOBase):
    """Sequential view of a StagedFile that is still being appended to (see `StagedFile.stream`)."""

    def __init__(self, staged: StagedFile) -> None:
        super().__init__()
        self._staged = staged
        self._pos = 0

    def read(self, n: int | None = -1) -> bytes:
        staged = self._staged
        with staged.lock:
            count = staged._appended(self._pos, CHUNK_CAP if n is None or n < 0 else n)
        data = os.pread(staged._fd, count, self._pos) if count else b""
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True
