"""The floor: the least a pyfuse3 filesystem can do to serve the benchmark data, as a separate process.

`python -m benchmarks.floorfs ROOT MOUNTPOINT [--no-open] [--thread-reads]
[--s3 ENDPOINT BUCKET [--read-s3] | --stage DIR]`
serves the directory ROOT (the bucket's bytes on local disk) with nothing but lookup, getattr, readdir, open
and read: files up to SMALL bytes are kept in memory from their first read on, bigger ones are read with
pread from ROOT. The difference between pfs and this, measured in the same run, is pfs's own cost. With
--no-open, open and flush answer ENOSYS: the kernel then never sends OPEN, FLUSH or RELEASE again, keeps
every file's pages, and reads carry fh 0. With --thread-reads, ROOT is read in trio's worker threads, never
on the loop: the least a filesystem that keeps answering while its disk reads spends.

With --read-s3 the bytes come from BUCKET on the S3 server instead, the way a trivial filesystem reads a
store: in a worker thread per request, one pyarrow GET of a whole file up to SMALL bytes at its first read
(kept in memory after), one ranged read per request of a bigger one. Names and sizes still come from ROOT,
as pfs's come from listings it keeps. Its cold phases are the least a pyfuse3 client of this server
spends: pyfuse3, pyarrow's requests and the server's answers, without any cache.

With --s3 it also takes new files (create, write, flush) and streams each one's bytes to BUCKET on the S3
server at ENDPOINT exactly as the `raw` client does (one pyarrow output stream per file, credentials from
the environment), so a write scenario's floor is the raw client plus the least pyfuse3 adds: appends only,
no cache, no staging, no read-back of what is being written. With --stage it writes each new file to an
unnamed file in DIR instead and fsyncs it at close: the floor of a write-back mount's close.

It borrows one piece of pfs, pfs/fs/fuse_table.py: the shims in libfuse's operation table that give a
no-open read its inode, so the floor and pfs speak the same kernel protocol and their difference stays pfs's
own work.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import os
import stat
from collections.abc import Callable
from typing import Protocol

import pyarrow.fs as pafs
import pyfuse3
import trio

from pfs.fs import fuse_table

SMALL = 1 << 20
TTL = 10.0  # pfs's default metadata TTL: the kernel asks the same questions of both


class Sink(Protocol):
    def write(self, data: bytes) -> object: ...

    def close(self) -> None: ...


class LocalSink:
    """A new file's bytes in an unnamed file of the staging directory, durable once closed."""

    def __init__(self, directory: str) -> None:
        self.fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)  # the loop waits for the page cache, as a trivial filesystem would

    def close(self) -> None:
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)


class FloorFS(pyfuse3.Operations):
    def __init__(
        self, root: str, no_open: bool, new_file: Callable[[str], Sink] | None = None,
        server: tuple[pafs.FileSystem, str] | None = None, thread_reads: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.root = root
        self.no_open = no_open
        self.new_file = new_file  # where a new file's bytes go, by its path under ROOT
        self.server = server  # (S3 filesystem, bucket) that reads come from, instead of ROOT
        self.thread_reads = thread_reads  # ROOT's files read in a worker thread, never on the loop
        self.objects: dict[int, pafs.NativeFile] = {}  # inode of a big file -> its object, open for reads
        self.paths = {pyfuse3.ROOT_INODE: root}
        self.inos = {root: pyfuse3.ROOT_INODE}
        self.data: dict[int, bytes] = {}
        self.fds: dict[int, int] = {}
        self.streams: dict[int, tuple[int, Sink]] = {}  # fh of a new file -> its inode, where it goes
        self.written: dict[int, int] = {}  # inode of a file being written -> its size so far
        self.fhs = itertools.count(1 << 32)  # write handles never collide with inodes (read handles)

    def _ino(self, path: str) -> int:
        ino = self.inos.get(path)
        if ino is None:
            ino = self.inos[path] = len(self.paths) + 1
            self.paths[ino] = path
        return ino

    def _attrs(self, path: str) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = ino = self._ino(path)
        if ino in self.written:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFREG | 0o644, 1, self.written[ino]
        else:
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
            writable = 0o200 if self.new_file else 0
            attrs.st_mode = st.st_mode & (stat.S_IFMT(st.st_mode) | 0o555 | writable)
            attrs.st_nlink, attrs.st_size = st.st_nlink, st.st_size
            attrs.st_mtime_ns = attrs.st_ctime_ns = attrs.st_atime_ns = st.st_mtime_ns
        attrs.st_blksize, attrs.st_blocks = 1 << 20, (attrs.st_size + 511) // 512
        attrs.entry_timeout = attrs.attr_timeout = TTL
        return attrs

    async def lookup(self, parent_inode, name, ctx):
        return self._attrs(os.path.join(self.paths[parent_inode], os.fsdecode(name)))

    async def getattr(self, inode, ctx):
        return self._attrs(self.paths[inode])

    async def forget(self, inode_list):
        pass  # inodes live as long as the mount: the data set is fixed

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        names = sorted(os.listdir(self.paths[fh]))
        for index in range(start_id, len(names)):
            path = os.path.join(self.paths[fh], names[index])
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), self._attrs(path), index + 1):
                break

    async def open(self, inode, flags, ctx):
        if self.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)  # files already there are only read; new ones are written
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def flush(self, fh):
        if self.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        await self._finish(fh)  # close() waits for FLUSH, not for RELEASE: the file is on the server then

    async def read(self, fh, off, size):
        ino = fh or fuse_table.current  # no-open: fh 0, the inode comes from the request itself
        data = self.data.get(ino)
        if data is not None:
            return memoryview(data)[off : off + size]
        if self.server is not None:
            return await self._read_server(ino, off, size)
        if self.thread_reads:
            return await trio.to_thread.run_sync(self._read_local, ino, off, size)
        return self._read_local(ino, off, size)

    def _read_local(self, ino: int, off: int, size: int) -> bytes | memoryview:
        """Bytes of file `ino` from ROOT: a small one read whole and kept, a big one read per request."""
        fd = self.fds.get(ino)
        if fd is None:
            fd = os.open(self.paths[ino], os.O_RDONLY)
            if os.fstat(fd).st_size <= SMALL:
                data = self.data[ino] = os.pread(fd, SMALL, 0)
                os.close(fd)
                return memoryview(data)[off : off + size]
            kept = self.fds.setdefault(ino, fd)  # another thread may have opened it meanwhile
            if kept != fd:
                os.close(fd)
                fd = kept
        return os.pread(fd, size, off)

    async def _read_server(self, ino: int, off: int, size: int) -> bytes | memoryview:
        assert self.server is not None
        s3, bucket = self.server
        obj = self.objects.get(ino)
        if obj is None:
            path = self.paths[ino]
            key = f"{bucket}/{os.path.relpath(path, self.root)}"
            if os.path.getsize(path) <= SMALL:
                data = self.data[ino] = await trio.to_thread.run_sync(_get_whole, s3, key)
                return memoryview(data)[off : off + size]
            obj = self.objects[ino] = await trio.to_thread.run_sync(s3.open_input_file, key)
        return await trio.to_thread.run_sync(obj.read_at, size, off)

    async def create(self, parent_inode, name, mode, flags, ctx):
        if self.new_file is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        path = os.path.join(self.paths[parent_inode], os.fsdecode(name))
        stream = await trio.to_thread.run_sync(self.new_file, os.path.relpath(path, self.root))
        ino, fh = self._ino(path), next(self.fhs)
        self.streams[fh], self.written[ino] = (ino, stream), 0
        return pyfuse3.FileInfo(fh=fh), self._attrs(path)

    async def write(self, fh, off, buf):
        ino, stream = self.streams[fh]
        if off != self.written[ino]:
            raise pyfuse3.FUSEError(errno.ENOTSUP)  # appends only, as a stream to the store takes them
        stream.write(buf)  # S3: copied into the stream's part; full parts upload on pyarrow's own threads
        self.written[ino] += len(buf)
        return len(buf)

    async def _finish(self, fh: int) -> None:
        if fh in self.streams:
            ino, stream = self.streams.pop(fh)
            try:
                await trio.to_thread.run_sync(stream.close)  # the upload (the fsync) completes here
            finally:
                del self.written[ino]

    async def release(self, fh):
        await self._finish(fh)  # a handle closed without a flush (a writer that died)


def _get_whole(s3: pafs.FileSystem, key: str) -> bytes:
    with s3.open_input_stream(key) as stream:
        return stream.read()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floorfs")
    parser.add_argument("root")
    parser.add_argument("mountpoint")
    parser.add_argument("--no-open", action="store_true")
    sinks = parser.add_mutually_exclusive_group()
    sinks.add_argument("--s3", nargs=2, metavar=("ENDPOINT", "BUCKET"), help="upload new files to BUCKET")
    sinks.add_argument("--stage", metavar="DIR", help="keep new files in DIR, fsynced at close")
    parser.add_argument("--read-s3", action="store_true", help="read files from the --s3 bucket")
    parser.add_argument("--thread-reads", action="store_true", help="read ROOT in worker threads")
    args = parser.parse_args()
    if args.read_s3 and not args.s3:
        parser.error("--read-s3 needs --s3")
    new_file: Callable[[str], Sink] | None = None
    server: tuple[pafs.FileSystem, str] | None = None
    if args.s3:
        endpoint, bucket = args.s3
        s3 = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1")
        new_file = lambda rel: s3.open_output_stream(f"{bucket}/{rel}")  # noqa: E731
        server = (s3, bucket) if args.read_s3 else None
    elif args.stage:
        new_file = lambda rel: LocalSink(args.stage)  # noqa: E731
    fs = FloorFS(os.path.abspath(args.root), args.no_open, new_file, server, args.thread_reads)
    options = {"fsname=floor", "subtype=floor", "default_permissions", "rw" if new_file else "ro"}
    pyfuse3.init(fs, args.mountpoint, options)
    if args.no_open and not fuse_table.record_read_inodes():
        raise SystemExit("floorfs: this pyfuse3 cannot tell which inode a read is for")
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
