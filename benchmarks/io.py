"""The I/O every scenario performs, written once for files and once for the raw pyarrow client.

Every client that is a directory (pfs, rclone mount, s3fs, the local disk) goes through `FileIO`: plain
os.open/os.readv into one reused 1 MiB buffer per reader, the same code and the same request sizes for all,
so nothing here favours one client. `ArrowIO` does the same work directly against the S3 server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import pyarrow.fs as pafs

from benchmarks.config import MiB

READ_SIZE = 1 * MiB
_buffers = threading.local()


def _buffer() -> bytearray:
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(READ_SIZE)
    return buf


class IO(Protocol):
    def read_sequential(self, rel: str) -> int: ...

    def read_ranges(self, rel: str, offsets: Iterable[int], size: int) -> int: ...

    def read_whole(self, rel: str) -> int: ...

    def first_byte(self, rel: str) -> None: ...

    def list_tree(self, rel: str) -> int: ...

    def stat(self, rel: str) -> int: ...

    def write(self, rel: str, size: int, data: bytes) -> None: ...


class FileIO:
    """I/O through a directory (a mount or the local disk)."""

    def __init__(self, root: str, fsync_writes: bool = False) -> None:
        self.root = root
        self.fsync_writes = fsync_writes  # the local disk: a write counts once it is durable

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read_sequential(self, rel: str) -> int:
        buf, total = _buffer(), 0
        fd = os.open(self._path(rel), os.O_RDONLY)
        try:
            while n := os.readv(fd, [buf]):
                total += n
        finally:
            os.close(fd)
        return total

    def read_ranges(self, rel: str, offsets: Iterable[int], size: int) -> int:
        view, total = memoryview(_buffer())[:size], 0
        fd = os.open(self._path(rel), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel readahead around random reads
            for offset in offsets:
                total += os.preadv(fd, [view], offset)
        finally:
            os.close(fd)
        return total

    read_whole = read_sequential

    def first_byte(self, rel: str) -> None:
        fd = os.open(self._path(rel), os.O_RDONLY)
        try:
            if len(os.read(fd, 1)) != 1:
                raise OSError(f"{rel}: empty read")
        finally:
            os.close(fd)

    def list_tree(self, rel: str) -> int:
        """What `ls -lR` does: read every directory and lstat every entry; returns the entries seen."""
        count, pending = 0, [self._path(rel)]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    entry.stat(follow_symlinks=False)
                    count += 1
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
        return count

    def stat(self, rel: str) -> int:
        return os.stat(self._path(rel)).st_size

    def write(self, rel: str, size: int, data: bytes) -> None:
        view = memoryview(data)
        fd = os.open(self._path(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            left = size
            while left:
                left -= os.write(fd, view[: min(left, len(view))])
            if self.fsync_writes:
                os.fsync(fd)
        finally:
            os.close(fd)


class ArrowIO:
    """The raw backend: the same work through pyarrow's S3 client, with no FUSE and no cache in between."""

    def __init__(self, fs, bucket: str, parallel: int = 8, part_size: int = 8 * MiB) -> None:
        self.fs = fs
        self.bucket = bucket
        self.parallel = parallel
        self.part_size = part_size

    def _path(self, rel: str) -> str:
        return f"{self.bucket}/{rel}"

    def read_sequential(self, rel: str) -> int:
        buf, total = _buffer(), 0
        with self.fs.open_input_stream(self._path(rel)) as f:
            while n := f.readinto(buf):
                total += n
        return total

    def read_parallel(self, rel: str) -> int:
        """One object as parallel ranged GETs of `part_size` (what a tuned downloader does)."""
        with self.fs.open_input_file(self._path(rel)) as f:
            size = f.size()
            parts = range(0, size, self.part_size)
            with ThreadPoolExecutor(self.parallel) as pool:
                return sum(pool.map(lambda off: len(f.read_at(min(self.part_size, size - off), off)), parts))

    def read_ranges(self, rel: str, offsets: Iterable[int], size: int) -> int:
        with self.fs.open_input_file(self._path(rel)) as f:
            return sum(len(f.read_at(size, offset)) for offset in offsets)

    def read_whole(self, rel: str) -> int:
        with self.fs.open_input_stream(self._path(rel)) as f:
            return len(f.read())

    def first_byte(self, rel: str) -> None:
        with self.fs.open_input_stream(self._path(rel)) as f:
            if len(f.read(1)) != 1:
                raise OSError(f"{rel}: empty read")

    def list_tree(self, rel: str) -> int:
        return len(self.fs.get_file_info(pafs.FileSelector(self._path(rel), recursive=True)))

    def stat(self, rel: str) -> int:
        return self.fs.get_file_info(self._path(rel)).size

    def write(self, rel: str, size: int, data: bytes) -> None:
        view = memoryview(data)
        with self.fs.open_output_stream(self._path(rel)) as f:
            left = size
            while left:
                n = min(left, len(view))
                f.write(view[:n])
                left -= n
