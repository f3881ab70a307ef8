"""Local staging of a file being written, layered over the object it replaces.

A `StagedFile` holds only the bytes written through the mount, in a sparse, already-unlinked temporary file at
the same offsets as in the file (a small new file: in memory, until it grows past what its owner lets it
hold there; then it moves to the temporary file, `write` doing the move).
Every other byte comes from the base object (the version on the backend when
the file was opened for writing) or is a zero from truncate-then-extend. So opening a 10 GiB object to append
a line costs no download: the base ranges are streamed through only when the file is uploaded.

All methods block (disk and backend I/O): call them from worker threads, except `write_in_memory` and the
methods of a file `in_memory` with no base object, which only touch memory. A `StagedFile` is shared by every
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
import time
from collections.abc import Callable

from pfs.backends import Reader, Upload
from pfs.errors import BackendError, NoSpace, PfsError, StagingFailed

CHUNK_CAP = 8 << 20  # the most a read of the whole stream returns at once
# A file uploaded while written: how far the writer may run ahead of what the upload has read. Past it a
# write waits, so that the close waits only for this tail and the parts in flight, however much slower
# the store is than the writer; but only while the upload reads on: once it has read nothing for
# STREAM_PATIENCE seconds (the store stalls) the writer goes on, and the close finds the stall out.
STREAM_LEAD = 16 << 20
STREAM_PATIENCE = 1.0
# Write-back mode, and a file uploaded while written: bytes appended before their write to the disk is
# started, so that the fsync at close has only the tail left to write, and so that the pages the upload
# has read can be given back (see `_AppendedReader`).
SYNC_AHEAD = 16 << 20
_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


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
_libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)


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
    def __init__(
        self,
        staging_dir: str,
        base_size: int,
        open_base: Callable[[], Reader] | None,
        *,
        in_memory: bool = False,
        sync_ahead: bool = False,
    ) -> None:
        self._staging_dir = staging_dir
        # `in_memory` (a file with no base object): the bytes start in memory, and move to a staging file
        # when a write cannot stay there (`write`); a small file then never costs a file or a syscall.
        self._mem: bytearray | bytes | None = b"" if in_memory and open_base is None else None
        self._fd = -1 if self._mem is not None else self._new_fd()
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
        self.memory_held = 0  # bytes of the mount's memory budget reserved for this file (by its owner)
        self._linked_to: str | None = None
        self.lock = threading.Lock()
        # A new file written strictly in order (each write at the end) can be uploaded while it grows.
        self._appending = open_base is None
        self._grown = threading.Condition(self.lock)
        self._end: int | None = None  # where `stream()` stops: set by `finish`
        self._streamed = False  # `stream()` handed out its reader
        self._consumed = 0  # how far the stream has read
        self._consumed_at = 0.0  # when it last read (time.monotonic())
        self._sync_ahead = sync_ahead  # start writing appended bytes to the disk as they come
        self._sync_from = 0  # where the next such write starts
        self._given_back = 0  # the stream's pages before this were written out and dropped from memory

    def _new_fd(self) -> int:
        # Unnamed from the start, so a crash leaves nothing behind; linkable (no O_EXCL), so write-back
        # can give it a name in its journal without copying it.
        try:
            return _unnamed_file(self._staging_dir)
        except OSError as exc:
            raise _staging_error(exc, "create a staged file") from exc

    @property
    def in_memory(self) -> bool:
        """The bytes are in memory (no staging file yet)."""
        return self._mem is not None

    @property
    def memory_end(self) -> int:
        """How far the memory holding the bytes reaches (0 once they are in a staging file)."""
        mem = self._mem
        return len(mem) if mem is not None else 0

    def write_in_memory(self, offset: int, data: bytes) -> bool:
        """Write `data` into memory; False (nothing done) once the bytes are in a staging file. Never
        blocks on I/O: the caller bounds how far the memory may reach; False too while a worker thread
        holds the file (persisting or moving it)."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            mem = self._mem
            if mem is None or self.broken is not None:
                return False
            end = offset + len(data)
            if not mem and not offset and isinstance(data, bytes):
                self._mem = data  # the common small file, written at once: kept as given, no copy
            else:
                if not isinstance(mem, bytearray):
                    mem = self._mem = bytearray(mem)
                if offset > len(mem):
                    mem.extend(bytes(offset - len(mem)))
                mem[offset:end] = data
            self._written(offset, end)
            return True
        finally:
            self.lock.release()

    def write(self, offset: int, data: bytes) -> int:
        with self.lock:
            self._wait_for_stream(offset)
            self._check_intact()
            try:
                if self._mem is not None:
                    self._spill()
                written = 0
                while written < len(data):  # a short write means the next one fails: find out now
                    written += os.pwrite(self._fd, data[written:], offset + written)
            except OSError as exc:
                raise self._break(exc) from exc
            self._written(offset, offset + written)
            if (self._sync_ahead or self._streamed) and offset + written - self._sync_from >= SYNC_AHEAD:
                # Only started (the fsync at close, or the stream's `_give_back`, waits for it): a failure
                # here is theirs to report, or (a stream's) the next read's, from the disk.
                _libc.sync_file_range(
                    self._fd, self._sync_from, offset + written - self._sync_from, _SYNC_FILE_RANGE_WRITE
                )
                self._sync_from = offset + written
                # Write-back mode: the writer gives its pages back itself, a window behind (a stream may
                # be far behind it), so that a big file closed at the disk's pace does not pay for fresh
                # pages all the way.
                if self._sync_ahead and (failure := self._drop_written(self._sync_from)) is not None:
                    raise self._break(failure)
            return written

    def _wait_for_stream(self, offset: int) -> None:
        """An append more than STREAM_LEAD ahead of the stream's reader waits for it to catch up, while the
        stream lasts (it ends at `finish`, `stop_stream`, or when its upload failed); never in write-back
        mode, whose close does not wait for the upload. Under `lock`."""
        while (
            self._streamed
            and not self._sync_ahead
            and self._appending
            and self._end is None
            and self.broken is None
            and offset == self.size
            and offset - self._consumed > STREAM_LEAD
        ):
            patience = self._consumed_at + STREAM_PATIENCE - time.monotonic()
            if patience <= 0:
                return
            self._grown.wait(patience)

    def _spill(self) -> None:
        """Move the bytes held in memory to a new staging file. Under `lock`."""
        mem = self._mem
        assert mem is not None
        fd = self._new_fd()
        try:
            view, done = memoryview(mem), 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], done)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._mem = fd, None  # readers on other threads see the bytes in one place or the other

    def _written(self, start: int, end: int) -> None:
        """Bookkeeping of a write of [start, end). Under `lock`."""
        self._appending = self._appending and start == self.size and self._end is None
        self._add_range(start, end)
        self.size = max(self.size, end)
        self.modified = True
        self.generation += 1
        self._grown.notify_all()

    def truncate(self, length: int) -> None:
        with self.lock:
            self._check_intact()
            try:
                if self._mem is not None:
                    self._mem = self._mem[:length]  # bytes past the memory's end read as zeros
                else:
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
                mem = self._mem
                if mem is not None:  # a gap left in memory by a write past the end holds zeros too
                    parts.append(bytes(mem[pos:piece_end]))
                else:
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
                if self._mem is not None:  # in memory: written out whole, with its label
                    self._link_or_copy(path, label)
                    return True
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
        if self._mem is None and _link_unnamed(self._fd, path):
            self._linked_to = path
            os.fsync(self._fd)  # the data, its label and (on journaling file systems) the new name at once
            return
        tmp = path + ".tmp"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._copy_to(out)
            os.ftruncate(out, self.size)
            os.setxattr(out, *label)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, path)

    def _copy_to(self, out: int) -> None:
        mem = self._mem
        if mem is not None:
            view, done = memoryview(mem)[: self.size], 0
            while done < len(view):
                done += os.pwrite(out, view[done:], done)
            return
        offset = 0
        while offset < self.size:
            sent = os.copy_file_range(self._fd, out, self.size - offset, offset, offset)
            if not sent:
                break
            offset += sent

    def stream(self) -> Upload | None:
        """A reader of the content while it is still appended to, for `Backend.stream_file`: its reads
        wait for the writer and end at `finish`; they fail once a write lands anywhere but at the end (the
        file is then uploaded whole at close). None unless every write so far appended."""
        with self.lock:
            if not self._appending or self._end is not None or self._mem is not None:
                return None
            self._streamed = True
            self._consumed_at = time.monotonic()
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

    def _give_back(self, start: int, read: int) -> None:
        """Drop from the page cache what the stream has read, once written to the staging file on disk (on
        the stream's thread: the writer never waits for it). A checkpoint streamed through the mount then
        holds a few windows of pages, not its whole size: no dirty pages for the kernel to throttle the
        writer on, and the pages come back at once for the next writes (on a VM, a page the guest has not
        touched lately costs about 2 ms per MiB to touch again: 2.5 s of system time per GiB written,
        measured here, against 0.6 s with this). The bytes stay in the staging file: a read or a rewrite
        of them still finds them, from the disk. In write-back mode the writer gives back (see `write`):
        the stream, having read [start, read), lets go of what it brought back from the disk."""
        if self._sync_ahead:
            end = min(read, self._given_back)
            if start < end:
                os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_DONTNEED)
            return
        failure = self._drop_written(min(read, self._sync_from))
        if failure is not None:
            with self.lock:
                self._break(failure)

    def _drop_written(self, upto: int) -> OSError | None:
        """Wait for the pages of the staging file more than a window before `upto` (their writing to the
        disk was started a window ago) to be on the disk, and drop them from the page cache; the error if
        the disk refused them (then the staging file no longer holds these bytes for sure)."""
        end = (upto - SYNC_AHEAD) // SYNC_AHEAD * SYNC_AHEAD
        start = self._given_back
        if end - start < SYNC_AHEAD or self._fd < 0:
            return None
        flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
        if _libc.sync_file_range(self._fd, start, end - start, flags) != 0:
            code = ctypes.get_errno()
            return OSError(code, os.strerror(code))
        os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_DONTNEED)
        self._given_back = end
        return None

    def _break(self, failure: OSError) -> PfsError:
        """The staging file failed: these bytes must never be published. Under `lock`."""
        self.broken = self.broken or _staging_error(failure, "write")
        self._grown.notify_all()
        return self.broken

    def _appended(self, pos: int, want: int) -> int:
        """Bytes from `pos` the stream may read (0: the end); waits for the writer. Under `lock`."""
        while True:
            if not self._appending or self.broken is not None:
                raise BackendError("the file stopped being appended to: it is uploaded whole at close")
            limit = self.size if self._end is None else self._end
            if limit - pos >= want or self._end is not None:
                count = max(0, min(want, limit - pos))
                self._consumed, self._consumed_at = pos + count, time.monotonic()
                self._grown.notify_all()  # a writer may be waiting for the stream to catch up
                return count
            self._grown.wait()

    def source(self) -> Upload:
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
        self._mem = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

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
        staged._give_back(self._pos - len(data), self._pos)
        return data

    def readinto(self, buffer) -> int:
        staged = self._staged
        with staged.lock:
            count = staged._appended(self._pos, len(buffer))
        got = os.preadv(staged._fd, [memoryview(buffer)[:count]], self._pos) if count else 0
        self._pos += got
        staged._give_back(self._pos - got, self._pos)
        return got

    def readable(self) -> bool:
        return True
