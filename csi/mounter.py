"""The only code in the plugin that runs a process (`pfs mount`, `pfs umount`, bind mounts and unmounts), and
the only one that asks a mount anything (through csi/health.py's bounded probes, or `wait_ready`).

pfs mounts are started through the public command line, exactly as a person would, so they run detached
from the plugin (a plugin restart leaves them serving). Credentials reach `pfs mount` only through its
environment; nothing here puts a secret on a command line or into an error message.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

from csi.health import Health, Prober, State
from pfs.mount import kernel as mount_table

PFS_TIMEOUT = 120.0  # `pfs mount` waits up to a minute for its daemon; `pfs umount` may upload data first
PROBE_TIMEOUT = 5.0  # a mount that does not answer a statvfs within this is reported hung


class MountError(RuntimeError):
    """A command failed; the message is the command's own one-line reason (pfs never prints secrets)."""


def _run(command: list[str], env: dict[str, str] | None = None, timeout: float = 60.0) -> None:
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise MountError(f"{command[0]} {command[1]} did not finish within {timeout:.0f}s") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise MountError(lines[-1] if lines else f"{' '.join(command[:2])} exited with {result.returncode}")


class Mounter:
    def __init__(self, python: str = sys.executable, probe_timeout: float = PROBE_TIMEOUT) -> None:
        self.python = python
        self.prober = Prober(probe_timeout)  # every question to a mount goes through it: bounded

    def pfs_mount(self, uri: str, path: str, options: list[str], log_file: str, env: dict[str, str]) -> None:
        command = [self.python, "-m", "pfs", "mount", uri, path, "--log-file", log_file]
        if options:
            command += ["-o", ",".join(options)]
        _run(command, env={**os.environ, **env}, timeout=PFS_TIMEOUT)

    def pfs_umount(self, path: str) -> None:
        with self.prober.quiet(path):
            _run([self.python, "-m", "pfs", "umount", path], timeout=PFS_TIMEOUT)

    def bind(self, source: str, target: str, read_only: bool) -> None:
        _run(["mount", "--bind", source, target])
        if read_only:  # a bind mount takes ro only on a remount of the bind itself
            try:
                _run(["mount", "-o", "remount,bind,ro", target])
            except MountError:
                self.unmount(target)
                raise

    def unmount(self, path: str, lazy: bool = False) -> None:
        with self.prober.quiet(path):
            _run(["umount", *(["-l"] if lazy else []), path])

    @staticmethod
    def is_mounted(path: str) -> bool:
        return mount_table.mount_at(path) is not None

    def is_stale(self, path: str) -> bool:
        """A mount whose daemon is gone (a hung one is not: it may still answer)."""
        return self.prober.check(path).state is State.DEAD

    def health(self, path: str) -> Health:
        return self.prober.check(path)

    @staticmethod
    def wait_ready(path: str, timeout: float) -> bool:
        """True once `path` is the root of a mount that answers (inode 1), polled in a thread because a
        stat on a hung FUSE mount blocks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answers: queue.SimpleQueue[bool] = queue.SimpleQueue()
            threading.Thread(target=_probe_root, args=(path, answers), daemon=True).start()
            try:
                if answers.get(timeout=max(0.0, deadline - time.monotonic())):
                    return True
            except queue.Empty:
                return False
            time.sleep(0.05)
        return False


def _probe_root(path: str, answers: queue.SimpleQueue[bool]) -> None:
    try:
        answers.put(os.stat(path).st_ino == 1)
    except OSError:
        answers.put(False)
