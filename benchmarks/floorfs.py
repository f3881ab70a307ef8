"""The floor: the least a pyfuse3 filesystem can do to serve the benchmark data, as a separate process.

`python -m benchmarks.floorfs ROOT MOUNTPOINT [--no-open]` serves the directory ROOT (the bucket's bytes on
local disk) read-only with nothing but lookup, getattr, readdir, open and read: files up to SMALL bytes are
kept in memory from their first read on, bigger ones are read with pread from ROOT. The difference between
pfs and this, measured in the same run, is pfs's own cost. With --no-open, open and flush answer ENOSYS: the
kernel then never sends OPEN, FLUSH or RELEASE again, keeps every file's pages, and reads carry fh 0.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat

import pyfuse3
import trio

from pfs.fs import fuse_table

SMALL = 1 << 20
TTL = 10.0  # pfs's default metadata TTL: the kernel asks the same questions of both


class FloorFS(pyfuse3.Operations):
    def __init__(self, root: str, no_open: bool) -> None:
        super().__init__()
        self.root = root
        self.no_open = no_open
        self.paths = {pyfuse3.ROOT_INODE: root}
        self.inos = {root: pyfuse3.ROOT_INODE}
        self.data: dict[int, bytes] = {}
        self.fds: dict[int, int] = {}

    def _ino(self, path: str) -> int:
        ino = self.inos.get(path)
        if ino is None:
            ino = self.inos[path] = len(self.paths) + 1
            self.paths[ino] = path
        return ino

    def _attrs(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = self._ino(path)
        attrs.st_mode = st.st_mode & (stat.S_IFMT(st.st_mode) | 0o555)
        attrs.st_nlink, attrs.st_size = st.st_nlink, st.st_size
        attrs.st_mtime_ns = attrs.st_ctime_ns = attrs.st_atime_ns = st.st_mtime_ns
        attrs.st_blksize, attrs.st_blocks = 1 << 20, (st.st_size + 511) // 512
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
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def flush(self, fh):
        if self.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)

    async def read(self, fh, off, size):
        ino = fh or fuse_table.current  # no-open: fh 0, the inode comes from the request itself
        data = self.data.get(ino)
        if data is None:
            fd = self.fds.get(ino)
            if fd is None:
                fd = os.open(self.paths[ino], os.O_RDONLY)
                if os.fstat(fd).st_size <= SMALL:
                    data = self.data[ino] = os.pread(fd, SMALL, 0)
                    os.close(fd)
                else:
                    self.fds[ino] = fd
            if data is None:
                return os.pread(fd, size, off)
        return memoryview(data)[off : off + size]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floorfs")
    parser.add_argument("root")
    parser.add_argument("mountpoint")
    parser.add_argument("--no-open", action="store_true")
    args = parser.parse_args()
    fs = FloorFS(os.path.abspath(args.root), args.no_open)
    pyfuse3.init(fs, args.mountpoint, {"fsname=floor", "subtype=floor", "ro", "default_permissions"})
    if args.no_open and not fuse_table.record_read_inodes():
        raise SystemExit("floorfs: this pyfuse3 cannot tell which inode a read is for")
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
