"""pfs, mounted with its default options through its own command line (`python -m pfs mount`).

The only option passed is a per-run cache directory (`-o cache_dir=DIR`), and only when this pfs has a block
cache (its `mount --help` mentions cache_dir), so that "cold" starts from an empty cache and "warm" remounts
onto the cache the cold pass filled, exactly as for the peers. Without a block cache warm equals cold.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys

from benchmarks.clients.base import Client, Env, force_unmount, fresh_dir
from benchmarks.io import FileIO
from pfs import control, mounter


@functools.cache
def has_block_cache() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "pfs", "mount", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return "cache_dir" in out


class PfsClient(Client):
    name = "pfs"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.dir = env.client_dir(self.name)
        self.mountpoint = self.dir / "mnt"
        self.cache_dir = self.dir / "cache"
        self.log = self.dir / "client.log"
        self.pid: int | None = None
        self.io = FileIO(str(self.mountpoint))
        self.mountpoint.mkdir(exist_ok=True)
        self.cache_dir.mkdir(exist_ok=True)

    def version(self) -> str:
        from importlib.metadata import version

        return version("pfs") + (" (block cache)" if has_block_cache() else " (no block cache)")

    def _pfs(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env.server.env()}
        result = subprocess.run([sys.executable, "-m", "pfs", *args], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pfs {args[0]} failed: {result.stderr.strip()}")
        return result

    def mount(self) -> None:
        options = ["-o", f"cache_dir={self.cache_dir}"] if has_block_cache() else []
        uri = self.env.server.uri(self.env.bucket)
        self._pfs("mount", uri, str(self.mountpoint), "--log-file", str(self.log), *options)
        self.pid = control.daemon_pid(str(self.mountpoint))

    def unmount(self) -> None:
        self._pfs("umount", str(self.mountpoint))
        self.pid = None

    def clear_cache(self) -> None:
        fresh_dir(self.cache_dir)

    def daemon_pid(self) -> int | None:
        return self.pid

    def close(self) -> None:
        if mounter.mount_at(str(self.mountpoint)) is not None:
            with contextlib.suppress(RuntimeError):
                self.unmount()
        force_unmount(self.mountpoint, self.pid)
        self.pid = None
