"""`pfs warmup`: fill (or check, or empty) the cache for files and directories of a running mount, or for
a snapshot without mounting it.

On a mount the work happens in its daemon, one file command per file (see pfs/mount/control.py), from a pool
of threads here. With `--snapshot` this process fetches the snapshot's files into the cache directory itself,
under the keys a mount of that snapshot reads. `--partition I/N` lets N training workers each take a share.
"""

from __future__ import annotations

import errno
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import click
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from pfs.backends import BackendOptions
from pfs.cli.common import connection_options, forms, human, one_line_errors
from pfs.cli.progress import progress_bar
from pfs.datasets.partition import Share
from pfs.errors import UsageError
from pfs.mount import control
from pfs.options import MountOptions

WARMUP_O_HELP = (
    f"With --snapshot: backend options as for 'pfs mount' ({forms('endpoint', 'credentials')}, ...) and the "
    f"cache of the mounts that will read it: {forms('cache_dir', 'cache_size', 'block_size')}."
)


class Tally:
    """Files and bytes done so far, with a progress bar and the first failures."""

    def __init__(self, verb: str, total: int) -> None:
        self.verb, self.total = verb, total
        self.files = self.cached = self.done_bytes = 0
        self.failures: list[str] = []
        self.started = time.monotonic()
        columns = (
            TextColumn(verb),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files"),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        self.bar = progress_bar(*columns)
        self.task = self.bar.add_task("", total=max(total, 1))

    def __call__(self, path: str, size: int, cached: int, error: str | None) -> None:
        self.files += 1
        self.cached += cached
        self.done_bytes += size
        if error is not None:
            self.failures.append(f"{path}: {error}")
        self.bar.update(self.task, completed=self.done_bytes)

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        share = self.cached / self.total if self.total else 1.0
        summary = f"{self.files:,} files, {human(self.total)}: {human(self.cached)} cached ({share:.1%})"
        if self.verb == "warming":
            summary += f", in {elapsed:.1f} s ({human(self.total / elapsed if elapsed else 0)}/s)"
        past = {"warming": "warmed", "checking": "checked", "evicting": "evicted"}[self.verb]
        click.echo(f"pfs: {past} {summary}")
        for line in self.failures[:10]:
            click.echo(f"pfs: failed: {line}", err=True)
        if self.failures:
            raise UsageError(f"{len(self.failures)} of {self.files} files failed")


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH... | URI")
@click.option(
    "-t", "--threads", type=click.IntRange(1, 256), default=16, show_default=True, help="Files at once."
)
@click.option("--check", is_flag=True, help="Only report how much is cached.")
@click.option("--evict", is_flag=True, help="Drop these files from the cache instead.")
@click.option(
    "--partition", metavar="I/N", help="Take only share I of N (0-based), e.g. one per training worker."
)
@click.option("--snapshot", metavar="NAME", help="Warm snapshot NAME of URI, unmounted.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="With --snapshot: the cache directory.")
@connection_options(WARMUP_O_HELP)
def warmup(
    paths: tuple[str, ...],
    threads: int,
    check: bool,
    evict: bool,
    partition: str | None,
    snapshot: str | None,
    cache_dir: str | None,
    mount_options: MountOptions,
    backend_options: BackendOptions,
) -> None:
    """Fetch files (directories recursively) into the cache, so the first epoch reads locally.

    \b
      pfs warmup /mnt/imagenet/train            warm a mounted dataset
      pfs warmup /mnt/imagenet --partition 3/8  worker 3 of 8 warms its share
      pfs warmup /mnt/imagenet --check          how much is cached (--evict drops it)
      pfs warmup --snapshot v1 s3://datasets/imagenet --partition 3/8
                                                warm a snapshot's share without mounting it
    """
    if check and evict:
        raise UsageError("--check and --evict cannot be combined")
    share = Share.parse(partition)
    if snapshot is None:
        _warm_mounted(paths, share, threads, check, evict)
        return
    if evict or len(paths) != 1:
        raise UsageError("--snapshot takes one URI (and no --evict: use 'pfs cache clear')")
    if cache_dir is not None:
        mount_options.cache_dir = cache_dir
    _warm_snapshot(paths[0], snapshot, mount_options, backend_options, share, threads, check)


def _warm_snapshot(
    uri: str,
    name: str,
    mount: MountOptions,
    backend: BackendOptions,
    share: Share,
    threads: int,
    check: bool,
) -> None:
    from pfs.backends import open_backend  # pyarrow, trio: only for this form
    from pfs.snapshots import warm
    from pfs.snapshots.view import snapshot_view

    with one_line_errors():
        live = open_backend(uri, backend, verify=True)
        try:
            view = snapshot_view(live, name, uri)
            files = warm.files_of(view, share)
            tally = Tally("checking" if check else "warming", sum(size for _, size in files))
            with tally.bar:
                warm.warm(view, files, mount, threads, check, tally)
        finally:
            live.close()
    tally.finish()


def _warm_mounted(paths: tuple[str, ...], share: Share, threads: int, check: bool, evict: bool) -> None:
    command = control.CACHED if check else control.EVICT if evict else control.WARMUP
    files = _files(paths, share)
    if files:
        _probe(files[0][0])
    tally = Tally("checking" if check else "evicting" if evict else "warming", sum(s for _, s in files))
    with tally.bar, ThreadPoolExecutor(threads) as pool:
        futures = {pool.submit(control.file_command, path, command): (path, size) for path, size in files}
        for future in as_completed(futures):
            path, size = futures[future]
            try:
                tally(path, size, future.result()[0], None)
            except OSError as exc:
                tally(path, size, 0, exc.strerror or str(exc))
    tally.finish()


def _files(paths: tuple[str, ...], share: Share) -> list[tuple[str, int]]:
    """(path, size) of every file under `paths` in this share, named relative to the path given."""
    found = []
    for root in paths:
        if not os.path.exists(root):
            raise UsageError(f"{root}: no such file or directory")
        if os.path.isfile(root):
            candidates = [(root, os.path.basename(root))]
        else:
            candidates = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    path = os.path.join(dirpath, name)
                    candidates.append((path, os.path.relpath(path, root)))
        found += [(path, os.lstat(path).st_size) for path, rel in candidates if share.has(rel)]
    return found


def _probe(path: str) -> None:
    try:
        control.file_command(path, control.CACHED)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise UsageError(f"{path} is not on a pfs mount") from None
        raise UsageError(f"{path}: {exc.strerror}") from None
