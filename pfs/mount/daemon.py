"""The mount daemon: serves one FUSE mount until it is unmounted or told to stop.

Run in the foreground (`pfs mount -f`) or as a detached background process started by `pfs.mount.lifecycle`,
which hands it its configuration, credentials included, on stdin: never on the command line or in a log.
SIGTERM and SIGINT upload pending writes, then unmount.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable

import pyfuse3
import trio

from pfs import options
from pfs.backends import Backend, BackendOptions, leftovers, open_backend
from pfs.errors import PfsError, ungrouped
from pfs.fs import fuse_loop, fuse_table, journal
from pfs.fs.operations import Operations
from pfs.mount import kernel, metrics
from pfs.options import MountOptions

log = logging.getLogger("pfs.mount.daemon")


def serve(
    uri: str,
    mountpoint: str,
    mount: MountOptions,
    backend: BackendOptions,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Mount `uri` at `mountpoint` and serve requests until unmounted (blocks)."""
    store = open_backend(uri, backend, verify=True)
    if mount.snapshot:
        from pfs.snapshots.view import pin_options, snapshot_view  # pyarrow: not for every CLI start

        pin_options(mount)
        store = snapshot_view(store, mount.snapshot, uri)
    os.makedirs(mount.staging_dir, mode=0o700, exist_ok=True)
    if not mount.read_only:
        _replay_journal(mount.staging_dir, store)
    operations = Operations(store, mount)
    pyfuse3.init(operations, mountpoint, _fuse_options(store.id, mount))
    if mount.read_only:  # nothing is written: the kernel may keep every file open for good (see fuse_table)
        if fuse_table.record_read_inodes():
            operations.serve_without_open()
        log.info("kernel no-open mode: %s", "on" if operations.no_open else "unavailable")
    if not operations.no_open and not fuse_table.skip_flush_of_reads():
        log.info("closing a file read here costs a FLUSH request (libfuse's table was not found)")
    fuse_loop.adapt_request_loop()
    unmounted = False
    try:
        trio.run(_run, operations, mountpoint, on_ready)
        unmounted = kernel.mount_at(mountpoint) is None
    finally:
        pyfuse3.close(unmount=not unmounted)
        operations.close()
        store.close()
        log.info("unmounted %s", mountpoint)


def _replay_journal(staging_dir: str, store: Backend) -> None:
    """Upload what a killed write-back mount of this backend acknowledged, before serving anything: no
    write through this mount can then be overwritten by an older replayed one (pfs/fs/journal.py)."""
    done = journal.replay(staging_dir, store)
    if done.files or done.failed:
        log.info(
            "write-back journal: %d file(s) (%d bytes) of dead mounts uploaded, %d failed (kept)",
            done.files,
            done.bytes,
            done.failed,
        )


def _fuse_options(fsname: str, mount: MountOptions) -> set[str]:
    options = {
        "fsname=" + fsname.replace(",", "_"),
        "subtype=pfs",
        "default_permissions",
    }
    if mount.read_only:
        options.add("ro")
    if mount.allow_other:
        options.add("allow_other")
    if mount.debug:
        options.add("debug")
    return options


async def _run(operations: Operations, mountpoint: str, on_ready: Callable[[], None]) -> None:
    with ungrouped():  # a failure is reported as itself, in one line
        async with trio.open_nursery() as nursery:
            operations.attach(nursery)
            if operations.options.metrics_port:
                served = metrics.registry(operations.stats, operations.counters)
                nursery.start_soon(metrics.serve, operations.options.metrics_port, served)
            nursery.start_soon(_stop_on_signal, operations)
            nursery.start_soon(_when_answering, operations, mountpoint, on_ready)
            await pyfuse3.main(min_tasks=4, max_tasks=max(8, operations.options.threads * 2))
            nursery.cancel_scope.cancel()


async def _when_answering(operations: Operations, mountpoint: str, on_ready: Callable[[], None]) -> None:
    """Once the kernel has finished FUSE_INIT (the first stat is answered), tune the mount and report ready.

    Setting readahead earlier is undone by the INIT reply, which caps it at what libfuse announces."""
    inode = (await trio.to_thread.run_sync(os.stat, mountpoint)).st_ino
    if inode != pyfuse3.ROOT_INODE:
        raise RuntimeError(f"{mountpoint} answers with inode {inode}, not the root of this mount")
    try:
        await trio.to_thread.run_sync(kernel.set_readahead, mountpoint, operations.options.readahead_kb)
    except OSError as exc:
        log.warning("could not raise the readahead of %s: %s", mountpoint, exc)
    log.info("mounted %s at %s", operations.backend.id, mountpoint)
    on_ready()
    if not operations.options.read_only and not operations.options.snapshot:
        await _sweep_leftovers(operations)


async def _sweep_leftovers(operations: Operations) -> None:
    """Remove what dead processes left in the backend's reserved area (pfs/backends/leftovers.py)."""
    try:
        swept = await trio.to_thread.run_sync(leftovers.sweep, operations.reserved)
    except PfsError as exc:
        log.warning("leftovers of dead mounts not cleared: %s", exc)
        return
    if swept.files:
        log.info("removed %d leftover file(s) of dead mounts (%d bytes) from .pfs", swept.files, swept.bytes)


async def _stop_on_signal(operations: Operations) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: uploading pending writes, then unmounting", signal.Signals(signum).name)
            try:
                await operations.writes.flush_all()
            except PfsError as exc:
                log.error("pending writes could not be uploaded: %s", exc)
            pyfuse3.terminate()
            return


def setup_logging(log_file: str | None, debug: bool) -> None:
    handler: logging.Handler
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)


def main() -> None:
    """Entry of the background process: configuration on stdin, one status line on stdout."""
    parser = argparse.ArgumentParser(prog="pfs-daemon")
    parser.add_argument("--mountpoint", required=True)  # only to make `ps` output readable
    parser.parse_args()
    faulthandler.enable()  # a hard crash still leaves a stack in the log (stderr is the log file)
    uri, mountpoint, mount, backend = options.read_daemon_config(sys.stdin.read())
    setup_logging(mount.log_file, mount.debug)
    status = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)

    def ready() -> None:
        status.write("ready\n")
        status.close()

    try:
        serve(uri, mountpoint, mount, backend, on_ready=ready)
    except Exception as exc:
        if isinstance(exc, PfsError):
            message = str(exc)
            log.error("mount failed: %s", message)
        else:
            message = f"{type(exc).__name__}: {exc}"
            log.exception("mount failed")
        if not status.closed:
            status.write(f"error: {message}\n")
            status.close()
        sys.exit(1)


if __name__ == "__main__":
    main()
