"""Moving file bytes: positional reads of an open object, and publishing a new file atomically.

Publishing differs by kind of store and is kept here, in two functions:

- object stores (`upload_object`): the bytes stream from `source` in 8 MiB parts of a multipart upload,
  several in flight (`stream_parts`, where pfs signs its own requests; else through pyarrow's output
  stream); the object appears only when the upload is completed, so readers see the old object or the
  whole new one.
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
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow.fs as pafs

from pfs.backends.arrow import replace
from pfs.backends.arrow.s3get import Body, ObjectGetter
from pfs.backends.base import Reader, Source, UploadGuard
from pfs.backends.leftovers import owner_tag
from pfs.errors import BackendError, PfsError, Stale

Call = Callable[[str, Callable[[], Any]], Any]  # the backend's translate-and-retry wrapper

CHUNK = 8 << 20  # bytes read from `source` per write
# pyarrow uploads parts in the background without any limit on how many are queued: against a slower
# server the queue (and our memory) grows with the file. Waiting for the queue to drain every this many
# bytes bounds memory to about this much plus one 10 MiB part buffer, and costs little throughput
# (measured here: ~+45 MiB peak RSS instead of +270 MiB for a 320 MiB upload, same speed or better).
FLUSH_EVERY = 4 * CHUNK
# `stream_parts`: bytes of parts in flight per upload (the part being read comes on top), and the threads
# that send parts, shared by every upload (each keeps its connection to the store between parts).
PARTS_IN_FLIGHT = 4 * CHUNK
PART_SENDERS = 16
MAX_PARTS = 10_000  # S3's limit; parts grow past every thousand so that no file runs out of them
_senders = ThreadPoolExecutor(PART_SENDERS, thread_name_prefix="pfs-part")


def upload_memory(size: int | None, object_store: bool) -> int:
    """The most memory an upload of `size` bytes holds at once (None: a file still being written, size
    unknown): one read of the source (all of a small object), and on object stores the parts in flight."""
    read = CHUNK if size is None else min(size, CHUNK)
    if not object_store or read < CHUNK or size == CHUNK:
        return read
    return PARTS_IN_FLIGHT + CHUNK  # pyarrow's stream holds as much between drains, plus its part buffer


def read_source(source: Source, size: int, path: str) -> bytes:
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


Streamer = Callable[[Source, UploadGuard], int]  # `stream_parts` bound to a store and key


def upload_object(
    fs: pafs.FileSystem,
    key: str,
    source: Source,
    size: int,
    path: str,
    guard: UploadGuard,
    put: Callable[[bytes, Callable[[], None]], None] | None = None,
    streamer: Streamer | None = None,
) -> None:
    """Publish `size` bytes of `source` as object `key`: all, or nothing (always nothing once abandoned).
    `put(data, commit)`: stores a small object in one request (calling `commit()` right before its body
    goes), and `streamer` a bigger one, where pyarrow's output stream is not wanted."""
    if size <= CHUNK:
        # Read first: if the source fails, no request was made at all. One PutObject at close.
        data = read_source(source, size, path)
        guard.progressed()
        if put is not None:
            put(data, guard.commit)
            return
        stream = fs.open_output_stream(key)
        try:
            stream.write(data)
            guard.commit()
        except BaseException:
            _abandon(stream)
            raise
        stream.close()
        return
    if streamer is not None:
        streamer(_Exactly(source, size, path), guard)
        return
    stream_object(fs, key, _Exactly(source, size, path), guard)


def stream_parts(getter: ObjectGetter, call: Call, key: str, source: Source, guard: UploadGuard) -> int:
    """Publish what `source` gives until it ends as object `key` (bucket/key), in a multipart upload of
    requests signed here: each part is sent from the buffer it was read into, up to PARTS_IN_FLIGHT bytes of
    them at once while the next is read. A source that can `readinto` fills a few buffers reused from part
    to part (fresh multi-MiB buffers cost a page fault per page). The object appears only once the source
    has ended and every part is stored: a source that fails or an abandoned upload publish nothing (the
    upload is aborted)."""
    bucket, _, name = key.partition("/")
    upload_id = call(f"write {key}", lambda: getter.create_upload(bucket, name))
    sending: deque[tuple[Future[str], int, bytearray | None]] = deque()
    spare: list[bytearray] = []
    etags: list[str] = []
    total = in_flight = 0

    def sent() -> None:
        nonlocal in_flight
        future, size, buffer = sending.popleft()
        etags.append(future.result())
        in_flight -= size
        if buffer is not None:
            spare.append(buffer)
        guard.progressed()

    try:
        while True:
            number = len(etags) + len(sending) + 1
            if number > MAX_PARTS:
                raise BackendError(f"write {key}: more than {MAX_PARTS} parts")
            size = CHUNK << ((number - 1) // 1000)
            chunk, buffer = _read_part(source, size, spare)
            if not chunk and number > 1:
                break
            guard.progressed()
            while sending and in_flight + len(chunk) > PARTS_IN_FLIGHT:
                sent()
            send = lambda n=number, c=chunk: getter.upload_part(bucket, name, upload_id, n, c)  # noqa: E731
            sending.append((_senders.submit(call, f"write {key}", send), len(chunk), buffer))
            in_flight += len(chunk)
            total += len(chunk)
            if len(chunk) < size:
                break
        while sending:
            sent()
        guard.commit()
    except BaseException:
        for future, _, _ in sending:
            future.cancel()
        with contextlib.suppress(Exception):  # already failing; the store drops unfinished uploads itself
            getter.abort_upload(bucket, name, upload_id)
        raise
    call(f"write {key}", lambda: getter.complete_upload(bucket, name, upload_id, etags))
    return total


def _read_part(source: Source, size: int, spare: list[bytearray]) -> tuple[Body, bytearray | None]:
    """Up to `size` bytes of `source` (fewer only at its end), and the buffer from `spare` (or new) that
    holds them, if the source could read into one."""
    readinto = getattr(type(source), "readinto", io.RawIOBase.readinto)
    if readinto is io.RawIOBase.readinto:
        first = source.read(size)
        if not first or len(first) == size:
            return first, None
        pieces, got = [first], len(first)
        while got < size and (more := source.read(size - got)):
            pieces.append(more)
            got += len(more)
        return b"".join(pieces), None
    buffer = spare.pop() if spare else bytearray(size)
    if len(buffer) != size:  # parts grew
        buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size and (n := readinto(source, view[got:])):  # type: ignore[arg-type]  # it has one
        got += n
    return view[:got], buffer


def stream_object(fs: pafs.FileSystem, key: str, source: Source, guard: UploadGuard) -> int:
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

    def __init__(self, source: Source, size: int, path: str) -> None:
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
    source: Source,
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


class RangedReader(Reader):
    """Positional reads of one object with plain ranged GETs (`ObjectGetter`), for object stores whose
    credentials are known here. Opening asks for the ETag and size once (a HEAD), checked against the size
    the caller looked up; every read's answer must carry that ETag and size, or `Stale` is raised: reads
    never mix two versions. Keeps nothing open, so reads from any number of threads at once are safe and
    closing is free."""

    def __init__(self, getter: ObjectGetter, call: Call, path: str, full: str, size: int) -> None:
        self._getter, self._call, self._path, self._size = getter, call, path, size
        self._bucket, _, self._key = full.partition("/")
        self.version, actual = call(f"open {path}", lambda: getter.head(self._bucket, self._key))
        if actual != size:
            raise Stale(f"{path} changed: {actual} bytes now, {size} when looked up")

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self._size or length <= 0:
            return b""
        want = min(length, self._size - offset)
        return self._get(offset, want, None) or b""  # no buffers given: the bytes come back

    fills_buffers = True

    def read_into(self, offset: int, views: list[memoryview]) -> bytes | None:
        want = sum(map(len, views))
        return self.read(offset, want) if offset + want > self._size else self._get(offset, want, views)

    def _get(self, offset: int, want: int, into: list[memoryview] | None) -> bytes | None:
        """One ranged GET of `want` bytes (into the views `into`, where the answer fits them: then None),
        checked to be of this reader's version and as long as asked."""
        part = self._call(
            f"read {self._path}", lambda: self._getter.get(self._bucket, self._key, offset, want, into)
        )
        if part.size != self._size or part.etag != self.version:
            raise Stale(f"{self._path} was replaced while it was being read")
        if part.data is not None and len(part.data) != want:
            raise Stale(f"{self._path} changed: got {len(part.data)} of {want} bytes at offset {offset}")
        return part.data

    def close(self) -> None:
        pass
