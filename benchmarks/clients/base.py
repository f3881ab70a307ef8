"""The adapter contract, and the mount/unmount plumbing shared by the FUSE peers started as child processes.

A peer's daemon is started in the foreground as our own child (its own session), so its pid is known
exactly; unmounting is `fusermount3 -u`, then waiting for that pid to exit, then a lazy unmount and a kill
of that pid as the last resort. Nothing here ever signals a process it did not start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.io import IO, FileIO
from benchmarks.servers import Store
from pfs.mount import kernel
from testservers.s3 import S3Server

MOUNT_TIMEOUT = 60.0
EXIT_TIMEOUT = 60.0
BUSY_RETRIES = 20  # x 0.5 s: an unmount right after many closes can find the mount briefly busy


def unmount_retrying(command: list[str]) -> subprocess.CompletedProcess:
    """Run an unmount command, retrying while the mount is busy; the caller decides what a failure means."""
    for _ in range(BUSY_RETRIES):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0 or "busy" not in result.stderr.lower():
            return result
        time.sleep(0.5)
    return result


@dataclass
class Env:
    """What every adapter may use: the server, the bucket, the local copy of the data and a scratch dir."""

    server: S3Server
    bucket: str
    data_root: Path  # the bucket's bytes on local disk
    run_dir: Path
    raw_fs: object  # a pyarrow S3FileSystem of the server

    def client_dir(self, name: str) -> Path:
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class Client:
    """A client under test. Direct clients (raw, local) have nothing to mount and no daemon."""

    name = ""
    on_backend = True  # its writes land on the S3 server (so they count once visible there)
    writes = True  # False for a read-only client: the write scenarios skip it
    reads = True  # False for a client that differs only in how it writes: the read scenarios skip it
    io: IO

    def __init__(self, env: Env) -> None:
        self.env = env

    @property
    def write_io(self) -> IO:
        """Where the write scenarios write (the local disk writes beside the data, not into it)."""
        return self.io

    def make_write_dir(self, store: Store, rel: str) -> None:
        """The directory the write scenarios write into, made before mounting (never through the client)."""
        store.make_dir(rel)

    def remove_write_dir(self, store: Store, rel: str) -> None:
        store.remove_dir(rel)

    def version(self) -> str:
        return ""

    def mount(self) -> None:
        """Mount (keeping whatever the client's disk cache holds)."""

    def unmount(self) -> None:
        pass

    def clear_cache(self) -> None:
        """Empty the client's own caches (it is unmounted when this is called)."""

    def daemon_pid(self) -> int | None:
        return None

    def close(self) -> None:
        """Best effort, also after an error or an interrupt: leave nothing mounted or running."""


def executable(name: str, install: str) -> str:
    """`name` from beside this Python first (pip-installed binaries), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed ({install}; scripts/setup.sh does it)")
    return found


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def wait_mounted(mountpoint: Path, process: subprocess.Popen | None, log: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while kernel.mount_at(str(mountpoint)) is None:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"mount of {mountpoint} failed (exit {process.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mountpoint} was not mounted within {MOUNT_TIMEOUT:.0f} s:\n{tail(log)}")
        time.sleep(0.05)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return "(no log)"


def force_unmount(mountpoint: Path, pid: int | None) -> None:
    """The last resort: a lazy unmount, then our daemon killed by its pid."""
    if kernel.mount_at(str(mountpoint)) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    if pid and not kernel.wait_for_exit(pid, 10):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        kernel.wait_for_exit(pid, 10)


class MountedClient(Client):
    """A FUSE client: a mountpoint, a cache directory and a log of its own under the run directory."""

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.dir = env.client_dir(self.name)
        self.mountpoint = self.dir / "mnt"
        self.cache_dir = self.dir / "cache"
        self.log = self.dir / "client.log"
        self.io = FileIO(str(self.mountpoint))
        self.mountpoint.mkdir(exist_ok=True)
        self.cache_dir.mkdir(exist_ok=True)

    def clear_cache(self) -> None:
        fresh_dir(self.cache_dir)


class ChildMountClient(MountedClient):
    """A FUSE peer run in the foreground as our child process: rclone mount, s3fs."""

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}

    def mount(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.environment(), start_new_session=True,
            )  # fmt: skip
        try:
            wait_mounted(self.mountpoint, self.process, self.log)
        except BaseException:
            self.close()
            raise

    def unmount(self) -> None:
        process, self.process = self.process, None
        result = unmount_retrying(["fusermount3", "-u", str(self.mountpoint)])
        if process is None:
            return
        try:
            process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            force_unmount(self.mountpoint, process.pid)
            process.wait()
            raise RuntimeError(f"{self.name} did not exit after unmount: {result.stderr.strip()}") from None

    def daemon_pid(self) -> int | None:
        return self.process.pid if self.process else None

    def close(self) -> None:
        process, self.process = self.process, None
        force_unmount(self.mountpoint, process.pid if process else None)
        if process is not None:
            process.wait()


def write_secret(path: Path, text: str) -> None:
    """Write a file only its owner can read (credentials for a peer client)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
