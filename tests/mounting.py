"""Mount and unmount pfs in tests exactly as a user does: through the `pfs` command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pfs.mount import control, kernel


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A file system of `size` made at `path`, to fill up (a disk cache, staging, a backend root)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def run_pfs(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pfs", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Mount:
    uri: str
    path: str
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    log_file: str = ""
    cache_dir: str = ""  # a private disk cache unless given (tests sharing one pass the same directory)
    pid: int = 0

    def __post_init__(self) -> None:
        self.log_file = self.log_file or f"{self.path}.log"
        self.cache_dir = self.cache_dir or f"{self.path}.cache"

    def start(self) -> Mount:
        os.makedirs(self.path, exist_ok=True)
        options = ("--log-file", self.log_file, "--cache-dir", self.cache_dir, *self.args)
        result = run_pfs("mount", self.uri, self.path, *options, env=self.env)
        if result.returncode != 0:
            raise AssertionError(f"pfs mount failed: {result.stderr.strip()}")
        self.pid = control.daemon_pid(self.path)
        return self

    def stop(self) -> None:
        result = run_pfs("umount", self.path)
        if result.returncode != 0:
            raise AssertionError(f"pfs umount failed: {result.stderr.strip()}")

    def cleanup(self) -> None:
        """Best effort after a failed test: unmount lazily, then end our daemon by its pid."""
        if kernel.mount_at(self.path) is not None:
            subprocess.run(["fusermount3", "-u", "-z", self.path], capture_output=True)
        if self.pid and not kernel.wait_for_exit(self.pid, 10):
            os.kill(self.pid, signal.SIGKILL)
            kernel.wait_for_exit(self.pid, 10)

    def finish(self) -> None:
        """After a test that may have killed or wedged the daemon: unmount if it still answers; clean up."""
        if kernel.mount_at(self.path) is not None and not kernel.is_stale(self.path):
            self.stop()
        self.cleanup()

    def remount(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            if kernel.mount_at(self.path) is not None:
                self.stop()
        finally:
            self.cleanup()

    def log(self) -> str:
        try:
            with open(self.log_file) as f:
                return f.read()
        except FileNotFoundError:
            return ""


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def timed(fn) -> tuple[int | None, float]:
    """(errno of the OSError `fn` raised or None, seconds it took)."""
    start = time.monotonic()
    try:
        fn()
    except OSError as exc:
        return exc.errno, time.monotonic() - start
    return None, time.monotonic() - start
