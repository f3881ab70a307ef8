"""The floor: benchmarks/floorfs.py mounted on the bucket's local copy, with OPEN answered or not.

Not a product: the least any pyfuse3 filesystem must spend per request on this machine, measured in the same
run as pfs so that what is pfs's own cost shows. `floor` answers open/flush/release (keep_cache on every
open); `floor-noopen` answers ENOSYS to open and flush (the kernel's no-open mode). Files up to 1 MiB are
served from the daemon's memory from their first read on, bigger ones with pread from local disk; the
daemon holds nothing across remounts, so its cold and warm phases read the local disk once (after the page
cache was dropped) and hot is served by the kernel's page cache or the daemon's memory. The kernel
readahead is raised as pfs raises its own.

`floor-s3` is `floor` reading every file from the S3 server instead (floorfs --read-s3: a GET per small
file, a ranged read per request of a big one, no cache): the least a pyfuse3 client of the server spends in
a cold phase, beside pfs's cold phases. `floor-threads` is `floor` reading the local disk in trio's worker
threads (floorfs --thread-reads), as a filesystem that must not stop answering while the disk reads: the
floor itself reads on its request loop, which costs nothing with one reader and stalls every other.

New files written through `floor` stream to the S3 server as the raw client's writes do (floorfs --s3), so
the write scenarios show pfs beside pyfuse3 plus raw pyarrow; `floor-wb` keeps them in a staging directory,
fsynced at close (floorfs --stage), beside `pfs-wb`; `floor-noopen` stays read-only.
"""

from __future__ import annotations

import os
import sys

from benchmarks.clients.base import ChildMountClient, fresh_dir
from pfs.mount import kernel

READAHEAD_KB = 1024  # what pfs sets on its mounts (MountOptions.readahead_kb)


class FloorClient(ChildMountClient):
    name = "floor"

    def flags(self) -> tuple[str, ...]:
        return ("--s3", self.env.server.endpoint, self.env.bucket)

    def environment(self) -> dict[str, str]:
        # The raw client's credentials; its checksum settings are in ours already (benchmarks.runner).
        return {**super().environment(), **self.env.server.env()}

    def version(self) -> str:
        return "pyfuse3 " + __import__("pyfuse3").__version__

    def command(self) -> list[str]:
        root, mnt = str(self.env.data_root), str(self.mountpoint)
        return [sys.executable, "-m", "benchmarks.floorfs", root, mnt, *self.flags()]

    def mount(self) -> None:
        super().mount()
        os.stat(self.mountpoint)  # answered once the kernel's INIT is done, which would reset readahead
        kernel.set_readahead(str(self.mountpoint), READAHEAD_KB)


class FloorS3Client(FloorClient):
    name = "floor-s3"
    writes = False  # writes go as `floor`'s do

    def flags(self) -> tuple[str, ...]:
        return (*super().flags(), "--read-s3")


class FloorThreadsClient(FloorClient):
    name = "floor-threads"
    writes = False

    def flags(self) -> tuple[str, ...]:
        return (*super().flags(), "--thread-reads")


class FloorNoOpenClient(FloorClient):
    name = "floor-noopen"
    writes = False

    def flags(self) -> tuple[str, ...]:
        return ("--no-open",)


class FloorWriteBackClient(FloorClient):
    """New files fsynced in a local staging directory at close, uploaded never: a write-back close's floor."""

    name = "floor-wb"
    on_backend = False
    reads = False

    def flags(self) -> tuple[str, ...]:
        return ("--stage", str(fresh_dir(self.dir / "staging")))
