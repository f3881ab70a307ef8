"""Starting and stopping mounts: what `pfs mount`, `pfs umount` and `mount.pfs` do.

`start` validates what it can without the backend in the calling process (options, mountpoint, the URI's
form), then starts the daemon detached (its own session, so the caller, a shell or the CSI plugin, can exit
or restart without taking the mount down) and returns once the mount answers. The daemon checks the backend
(endpoint, credentials, root, snapshot) before it mounts anything and reports a problem as one line, which
`start` raises as a `UsageError`.
`stop` uploads pending writes, unmounts and waits until the daemon has exited.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import tempfile

from pfs import options
from pfs.backends import BackendOptions
from pfs.backends.location import parse_location
from pfs.errors import UsageError
from pfs.mount import control, kernel
from pfs.options import DEFAULT_STATE_DIR, MountOptions

START_TIMEOUT = 60.0

# The daemon's memory must follow its budget: blocks are short-lived multi-MiB buffers allocated by many
# threads, which glibc would otherwise keep in per-thread arenas and below its adaptive mmap threshold, and
# which Arrow's own allocator would keep for reuse. Measured with 4 readers streaming 1 GiB files: peak RSS
# 670 MiB without these, 349 MiB with them, for a 256 MiB budget.
# The threshold sits just above the largest FUSE request (1 MiB of data and its header): a request's
# buffer then comes from the heap, reused from one request to the next, where an mmap of its own costs
# a page fault per page on every request (a trivial pyfuse3 file system taking 1 MiB writes went from
# about 500 to 650-1,100 MiB/s here). The trim threshold keeps that much free at the heap's top, so the
# buffer freed after one request is not handed back to the kernel right before the next one.
DAEMON_ENV = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": str((1 << 20) + (128 << 10)),
    "MALLOC_TRIM_THRESHOLD_": str(8 << 20),
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}


def default_log_file(mountpoint: str) -> str:
    return f"{DEFAULT_STATE_DIR}/logs/{mountpoint.strip('/').replace('/', '_') or 'root'}.log"


def start(uri: str, mountpoint: str, mount: MountOptions, backend: BackendOptions, foreground: bool) -> int:
    """Mount and return the daemon's pid (in the foreground: serve, and return 0 once unmounted)."""
    options.check(mount)
    mountpoint = kernel.check_mountpoint(mountpoint)
    if not mount.read_only and not mount.snapshot:
        _check_staging_dir(mount.staging_dir)
    parse_location(uri)  # a malformed URI is said before any process starts
    # The backend itself (endpoint, credentials, root, snapshot) is checked once, by the process that
    # serves, before it mounts anything: checking it here too cost every mount 0.45 s (pyarrow's import and
    # a round trip) for an answer the daemon reports as one line anyway.
    if foreground:
        from pfs.mount import daemon  # the FUSE stack: loaded only by the process that serves (0.4 s here)

        daemon.setup_logging(mount.log_file, mount.debug)
        daemon.serve(uri, mountpoint, mount, backend)
        return 0
    if mount.log_file is None:
        mount.log_file = default_log_file(mountpoint)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(mount.log_file)), exist_ok=True)
        log = open(mount.log_file, "a")  # noqa: SIM115 (closed below, once the daemon has it)
    except OSError as exc:
        reason = f"cannot write {mount.log_file} ({exc.strerror}); allowed: a writable file"
        raise UsageError(f"bad value for option 'log_file': {reason}") from None
    with log:  # anything the daemon prints (a crash dump too) lands there
        process = subprocess.Popen(
            [sys.executable, "-m", "pfs.mount.daemon", "--mountpoint", mountpoint],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
            text=True,
            cwd="/",
            env=DAEMON_ENV | dict(os.environ),
        )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(options.daemon_config(uri, mountpoint, mount, backend))
    process.stdin.close()
    # The daemon writes one line and closes the pipe once it is mounted or has failed.
    answered, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    status = process.stdout.readline().strip() if answered else ""
    if status != "ready":
        if process.poll() is None:
            process.kill()
        reason = status.removeprefix("error: ") or f"the daemon exited (see {mount.log_file})"
        raise UsageError(f"cannot mount {mountpoint}: {reason}")
    return process.pid  # "ready" is sent only once the root answered the daemon's stat as inode 1


def _check_staging_dir(path: str) -> None:
    """Written files are staged there: a directory that cannot hold one would fail every write (EIO)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix="pfs-check-"):
            pass
    except OSError as exc:
        raise UsageError(
            f"bad value for option 'staging_dir': cannot write files in {path} ({exc.strerror}); "
            "allowed: a writable local directory"
        ) from None


def stop(mountpoint: str, lazy: bool = False, timeout: float = 300.0, discard: bool = False) -> list[str]:
    """Upload pending writes, unmount and wait for the daemon. Returns the files whose pending writes were
    dropped because they could not be uploaded (only with `discard`; otherwise that refuses to unmount)."""
    path = os.path.abspath(mountpoint)
    if kernel.is_stale(path):
        kernel.unmount(path, lazy=True)  # the daemon is gone; only the kernel's entry is left
        return []
    entry = kernel.mount_at(path)
    if entry is None or entry.fstype != "fuse.pfs":
        raise UsageError(f"{mountpoint} is not a pfs mount")
    pid = control.daemon_pid(path)
    dropped = _upload_pending(path, mountpoint, discard)
    kernel.unmount(path, lazy=lazy)
    if not lazy and not kernel.wait_for_exit(pid, timeout):
        raise UsageError(f"unmounted {mountpoint}, but its daemon (pid {pid}) is still running")
    return dropped


def _upload_pending(path: str, mountpoint: str, discard: bool) -> list[str]:
    """Flush the mount; with `discard`, drop what cannot be uploaded and say which files those were."""
    try:
        control.flush(path)
        return []
    except OSError as exc:
        if exc.errno == errno.EROFS:  # a read-only mount has nothing to upload (and refuses setxattr)
            return []
        reason = os.strerror(exc.errno or errno.EIO)
    counters = control.stats(path)
    failed = counters.get("failed_uploads", [])
    unnamed = counters.get("pending_failed_uploads", 0) - len(failed)
    if unnamed > 0:
        failed = [*failed, f"... and {unnamed} more, named in the mount's log"]
    if not discard:
        raise UsageError(
            f"pending writes on {mountpoint} could not be uploaded ({reason}): {_names(failed)}; "
            "not unmounting so nothing is lost: check the backend and retry, "
            "or 'pfs umount --discard' to unmount without them"
        )
    control.discard_failed(path)
    try:
        control.flush(path)  # anything written meanwhile
    except OSError as exc:
        raise UsageError(
            f"pending writes on {mountpoint} still could not be uploaded ({os.strerror(exc.errno or 5)})"
        ) from None
    return failed


def _names(paths: list[str]) -> str:
    return ", ".join(paths) if paths else "(see the mount's log)"
