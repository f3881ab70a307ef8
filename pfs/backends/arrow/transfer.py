"""Moving file bytes: positional reads of an open object, and publishing a new file atomically.

Publishing differs by kind of store and is kept here, in two functions:

- object stores (`upload_object`): the bytes stream from `source` through pyarrow's output stream in
  8 MiB chunks (pyarrow turns more than one part into a multipart upload); the object appears only when the
  upload is completed, so readers see the old object or the whole new one.
- file:// and HDFS (`write_via_temp`): the bytes go to `<root>/.pfs/tmp/<owner>-<random>.part`, then one
  move puts the file under its name (rename(2) on file://, so a crash never leaves a half-written file
  there; pfs/backends/leftovers.py clears what a killed process left in .pfs/tmp).

This module must never publish a partial object, and never hold a whole large file in memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import threading
import uuid
from collections.abc import Callable
from typing import Any, BinaryIO

import pyarrow.fs as pafs

from pfs.backends.arrow import replace
from pfs.backends.base import Reader, UploadGuard
from pfs.backends.leftovers import owner_tag
from pfs.errors import BackendError, PfsError, Stale

Call = Callable[[str, Callable[[], Any]], Any]  # the backend's translate-and-retry wrapper

CHUNK = 8 << 20  # bytes read from `source` per write
# pyarrow uploads parts in the background without any limit on how many are queued: against a slower
# server the queue (and our memory) grows with the file. Waiting for the queue to drain every this many
# bytes bounds memory to about this much plus one 10 MiB part buffer, and costs little throughput
# (measured here: ~+45 MiB peak RSS instead of +270 MiB for a 320 MiB upload, same speed or better).
FLUSH_EVERY = 4 * CHUNK


def read_source(source: BinaryIO, size: int, path: str) -> bytes:
    """Exactly `size` bytes from `source`; BackendError if it fails or ends early (never retried)."""
    parts: list[bytes] = []
    remaining = size
    try:
        while remaining:
            data = source.read(remaining)
            if not data:
                raise BackendError(f"write {path}: the data ended {remaining} bytes early")
            parts.append(data)
            remaining -= len(data)
    except PfsError:
        raise
    except Exception as exc:
        raise BackendError(f"write {path}: reading the data failed: {exc}") from exc
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _abandon(stream: pafs.NativeFile) -> None:
    """Make sure an unfinished upload is never completed.

    pyarrow exposes no abort for S3 output streams, and the C++ destructor of an open stream *completes*
    the multipart upload (checked: dropping a stream after 25 MiB of a bigger file published those 25 MiB
    as the object). So a stream whose upload must fail is given one extra reference that is never
    released: the destructor never runs, not even at interpreter exit, and the upload stays incomplete on
    the server (invisible to readers; a bucket lifecycle rule for incomplete multipart uploads reclaims
    its parts). The cost is the stream's buffer (at most one 10 MiB part) for the life of the process, on
    a path taken only when a write fails half-way.
    """
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(stream))


def upload_object(
    fs: pafs.FileSystem, key: str, source: BinaryIO, size: int, path: str, guard: UploadGuard
) -> None:
    """Publish `size` bytes of `source` as object `key`: all, or nothing (always nothing once abandoned)."""
    if size <= CHUNK:
        # Read first: if the source fails, no request was made at all. One PutObject at close.
        data = read_source(source, size, path)
        guard.progressed()
        stream = fs.open_output_stream(key)
        try:
            stream.write(data)
            guard.commit()
        except BaseException:
            _abandon(stream)
            raise
        stream.close()
        return
    stream_object(fs, key, _Exactly(source, size, path), guard)


def stream_object(fs: pafs.FileSystem, key: str, source: BinaryIO, guard: UploadGuard) -> int:
    """Publish what `source` gives until it ends (its size unknown up front: a file still being written)
    as object `key`. Parts go up as they fill; the object appears only once the source has ended and
    every part is stored, never before: a source that fails or an abandoned upload publish nothing."""
    stream = fs.open_output_stream(key)
    total = unflushed = 0
    try:
        while chunk := source.read(CHUNK):
            guard.progressed()
            stream.write(chunk)
            total += len(chunk)
            unflushed += len(chunk)
            if unflushed >= FLUSH_EVERY:
                stream.flush()  # waits for the parts in flight; raises if one of them failed
                unflushed = 0
        # Every part is stored before the commit, so what is left after it is one completion request.
        stream.flush()
        guard.commit()
    except BaseException:
        _abandon(stream)
        raise
    # If close() fails (a part or the completion failed), pyarrow has already marked the stream closed
    # without completing it, so dropping it is safe.
    stream.close()
    return total


class _Exactly(io.RawIOBase):
    """`size` bytes of `source`, then the end; BackendError if `source` ends early."""

    def __init__(self, source: BinaryIO, size: int, path: str) -> None:
        super().__init__()
        self._source, self._remaining, self._path = source, size, path

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        n = self._remaining if n is None or n < 0 else n
        if not self._remaining:
            return b""
        chunk = read_source(self._source, min(n, self._remaining), self._path)
        self._remaining -= len(chunk)
        return chunk


def write_via_temp(
    fs: pafs.FileSystem,
    tmp_dir: str,
    target: str,
    source: BinaryIO,
    size: int,
    path: str,
    aside_dir: str | None,
    guard: UploadGuard,
) -> None:
    """Write to a temporary file under `tmp_dir`, then move it to `target`.

    `aside_dir`: the store's move refuses an existing destination (HDFS), so an existing file is replaced
    through `replace.replace`, which sets it aside there first (see that module for the window).
    """
    fs.create_dir(tmp_dir, recursive=True)
    tmp = f"{tmp_dir}/{owner_tag()}{uuid.uuid4().hex}.part"  # owner tag: see pfs/backends/leftovers.py
    try:
        with fs.open_output_stream(tmp) as out:
            remaining = size
            while remaining:
                chunk = read_source(source, min(CHUNK, remaining), path)
                guard.progressed()
                out.write(chunk)
                remaining -= len(chunk)
        guard.commit()
        if aside_dir is not None:
            replace.replace(fs, aside_dir, tmp, target)
        else:
            fs.move(tmp, target)
    except BaseException:
        with contextlib.suppress(Exception):  # already failing; a leftover is only litter in .pfs/tmp
            fs.delete_file(tmp)
        raise


def _etag(f: pafs.NativeFile) -> str:
    """The object's ETag from the metadata its open already fetched; '' for files (they have none)."""
    return (f.metadata() or {}).get("ETag", b"").decode("ascii", "replace").strip('"')


class ArrowReader(Reader):
    """Positional reads of one object through a pyarrow RandomAccessFile kept open between reads.

    Opening costs one metadata request on object stores (pyarrow's Python API cannot pass the known size
    to skip it); its answer is used to check that the object still has the size the caller looked up, and
    `Stale` is raised if not. A read that fails is retried on a freshly opened file. Reads from several
    threads at once are safe: pyarrow's read_at keeps no position.
    """

    def __init__(self, fs: pafs.FileSystem, call: Call, path: str, full: str, size: int) -> None:
        self._fs, self._call, self._path, self._full, self._size = fs, call, path, full, size
        self._lock = threading.Lock()
        self._closed = False
        self._reading = 0  # reads in flight: a close waits for them (libhdfs crashes reading a closed file)
        self.version = ""
        self._file: pafs.NativeFile | None = call(f"open {path}", self._open)
        self.version = _etag(self._file)

    def _open(self) -> pafs.NativeFile:
        f = self._fs.open_input_file(self._full)
        if f.size() != self._size:
            actual = f.size()
            f.close()
            raise Stale(f"{self._path} changed: {actual} bytes now, {self._size} when looked up")
        if self.version and _etag(f) != self.version:  # reopened after a failure: same version only
            f.close()
            raise Stale(f"{self._path} was replaced while it was being read")
        return f

    def _read_once(self, offset: int, length: int) -> bytes:
        with self._lock:
            if self._closed:
                raise BackendError(f"read {self._path}: the file is closed")
            if self._file is None:
                self._file = self._open()
            f = self._file
            self._reading += 1
        try:
            return f.read_at(length, offset)
        except Exception:
            # Forget the handle but do not close it: another thread may still be reading through it.
            with self._lock:
                if self._file is f:
                    self._file = None
            raise
        finally:
            self._read_done()

    def _read_done(self) -> None:
        with self._lock:
            self._reading -= 1
            last = self._closed and not self._reading
            f, self._file = (self._file, None) if last else (None, self._file)
        if f is not None:  # closed while this read was in flight: the last read closes the file
            f.close()

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self._size or length <= 0:
            return b""
        want = min(length, self._size - offset)
        data = self._call(f"read {self._path}", lambda: self._read_once(offset, want))
        if len(data) != want:
            raise Stale(f"{self._path} changed: got {len(data)} of {want} bytes at offset {offset}")
        return data

    def close(self) -> None:
        """Close now, or once the reads in flight are done (a reader may be let go while a fetch runs)."""
        with self._lock:
            self._closed = True
            if self._reading:
                return
            f, self._file = self._file, None
        if f is not None:
            f.close()
