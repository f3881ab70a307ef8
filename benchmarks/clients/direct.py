"""The two references with nothing mounted: the raw backend through pyarrow, and the same bytes on local disk.

Neither has a client cache, so warm is cold for both; hot re-reads with the page cache kept (for the raw
client that is the server's page cache, as for every mounted client).
"""

from __future__ import annotations

import os
import shutil

import pyarrow

from benchmarks.clients.base import Client, Env, fresh_dir
from benchmarks.io import ArrowIO, FileIO
from benchmarks.servers import Store


class RawClient(Client):
    name = "raw"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.io = ArrowIO(env.raw_fs, env.bucket)

    def version(self) -> str:
        return f"pyarrow {pyarrow.__version__}"


class LocalClient(Client):
    name = "local"
    on_backend = False

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        # Reads come from the very files the S3 server serves; writes go to the same disk, each fsynced.
        self.io = FileIO(str(env.data_root))
        self._write_io = FileIO(str(fresh_dir(env.run_dir / "local-writes")), fsync_writes=True)

    @property
    def write_io(self) -> FileIO:
        return self._write_io

    def make_write_dir(self, store: Store, rel: str) -> None:
        os.makedirs(os.path.join(self._write_io.root, rel), exist_ok=True)

    def remove_write_dir(self, store: Store, rel: str) -> None:
        shutil.rmtree(os.path.join(self._write_io.root, rel), ignore_errors=True)

    def version(self) -> str:
        return "local disk"
