"""pfs, mounted with its default options through its own command line (`python -m pfs mount`).

`pfs-ro` adds `-o ro` (read-only: the kernel's no-open mode, as on snapshot mounts), `pfs-snap` mounts a
snapshot of the bucket taken at its first mount in the run (`--snapshot`: no-open mode, and entries the
kernel keeps, as nothing in a snapshot changes), `pfs-wb` adds `-o writeback` (write scenarios only).
The only other
option passed is a per-run cache directory (`-o cache_dir=DIR`), so that "cold" starts from an
empty cache and "warm" remounts onto the cache the cold pass filled, exactly as for the peers.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from importlib import metadata

from benchmarks.clients.base import EXIT_TIMEOUT, Env, MountedClient, force_unmount, unmount_retrying
from pfs.mount import control, kernel

SNAPSHOT = "bench"


class PfsClient(MountedClient):
    name = "pfs"
    options: tuple[str, ...] = ()

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.pid: int | None = None

    def version(self) -> str:
        return metadata.version("pfs")

    def mount(self) -> None:
        uri = self.env.server.uri(self.env.bucket)
        command = [
            sys.executable,
            "-m",
            "pfs",
            "mount",
            uri,
            str(self.mountpoint),
            "--log-file",
            str(self.log),
            "-o",
            ",".join((f"cache_dir={self.cache_dir}", *self.options)),
        ]
        env = {**os.environ, **self.env.server.env()}
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pfs mount failed: {result.stderr.strip()}")
        self.pid = control.daemon_pid(str(self.mountpoint))

    def unmount(self) -> None:
        command = [sys.executable, "-m", "pfs", "umount", str(self.mountpoint)]
        result = unmount_retrying(command)
        if result.returncode != 0 and "busy" in result.stderr:
            # Still busy after retries (something else on the machine looked inside): detach it, and
            # wait for the daemon to finish, which it does once the last file there is closed.
            result = subprocess.run([*command, "--lazy"], capture_output=True, text=True)
            if result.returncode == 0 and self.pid and not kernel.wait_for_exit(self.pid, EXIT_TIMEOUT):
                raise RuntimeError(f"pfs daemon {self.pid} still running after a lazy unmount")
        if result.returncode != 0:
            raise RuntimeError(f"pfs umount failed: {result.stderr.strip()}")
        self.pid = None

    def daemon_pid(self) -> int | None:
        return self.pid

    def close(self) -> None:
        if kernel.mount_at(str(self.mountpoint)) is not None:
            with contextlib.suppress(RuntimeError):
                self.unmount()
        force_unmount(self.mountpoint, self.pid)
        self.pid = None


class PfsWriteBackClient(PfsClient):
    """pfs mounted `-o writeback`: close returns once the bytes are durable in the local staging
    directory, the upload follows (the write scenarios still count until every byte is on the server)."""

    name = "pfs-wb"
    options = ("writeback",)
    reads = False


class PfsReadOnlyClient(PfsClient):
    """pfs mounted `-o ro`: the kernel's no-open mode (what a snapshot mount also uses)."""

    name = "pfs-ro"
    options = ("ro",)
    writes = False


class PfsSnapshotClient(PfsClient):
    """pfs mounted on a snapshot of the bucket (`pfs snapshot create`, then `--snapshot`), taken afresh
    at the client's first mount in a run (the data sets do not change during a run)."""

    name = "pfs-snap"
    writes = False

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        # A snapshot of its own per run, never deleted through S3: deleting a directory's last object
        # makes pyarrow put the directory's marker back, which `rclone serve s3` stores as an empty file,
        # and no snapshot could be stored under that name again (each run leaves its manifest there).
        self._snapshot = f"{SNAPSHOT}-{uuid.uuid4().hex[:12]}"
        self.options = (f"snapshot={self._snapshot}",)
        self._taken = False

    def mount(self) -> None:
        if not self._taken:
            uri = self.env.server.uri(self.env.bucket)
            env = {**os.environ, **self.env.server.env()}
            command = [sys.executable, "-m", "pfs", "snapshot", "create", uri, self._snapshot]
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"pfs snapshot create failed: {result.stderr.strip()}")
            self._taken = True
        super().mount()
