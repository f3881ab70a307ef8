"""`pfs warmup`: fill (or check, or empty) the cache for files and directories of a running mount.

The work happens in the mount's daemon, one file command per file (see pfs/control.py), from a pool of
threads here; `--partition I/N` lets N training workers each warm their own share of a dataset.
"""

from __future__ import annotations

import errno
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from pfs import control
from pfs.cli.cache import human
from pfs.errors import UsageError


def _partition(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise UsageError(f"--partition takes I/N, e.g. 0/8, not {text!r}") from None
    if not 0 <= i < n:
        raise UsageError(f"--partition {text}: I must be between 0 and N-1")
    return i, n


def _files(paths: tuple[str, ...], part: tuple[int, int]) -> list[tuple[str, int]]:
    """(path, size) of every file under `paths` that belongs to this partition, in a stable order."""
    index, count = part
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
        for path, rel in candidates:
            if count == 1 or zlib.crc32(rel.encode()) % count == index:
                found.append((path, os.lstat(path).st_size))
    return found


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "-t", "--threads", type=click.IntRange(1, 256), default=16, show_default=True, help="Files at once."
)
@click.option("--check", is_flag=True, help="Only report how much is cached.")
@click.option("--evict", is_flag=True, help="Drop these files from the cache instead.")
@click.option(
    "--partition", metavar="I/N", help="Take only share I of N (0-based), e.g. one per training worker."
)
def warmup(paths: tuple[str, ...], threads: int, check: bool, evict: bool, partition: str | None) -> None:
    """Fetch files (directories recursively) into the mount's cache, so the first epoch reads locally.

    \b
      pfs warmup /mnt/imagenet/train            warm a whole dataset
      pfs warmup /mnt/imagenet --partition 3/8  worker 3 of 8 warms its share
      pfs warmup /mnt/imagenet --check          how much is cached
    """
    if check and evict:
        raise UsageError("--check and --evict cannot be combined")
    command = control.CACHED if check else control.EVICT if evict else control.WARMUP
    files = _files(paths, _partition(partition))
    if files:
        _probe(files[0][0])
    total = sum(size for _, size in files)
    verb = "checking" if check else "evicting" if evict else "warming"
    started = time.monotonic()
    cached = done_bytes = 0
    failures: list[str] = []
    columns = (
        TextColumn(f"{verb} [progress.description]{{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("", total=max(total, 1))
        with ThreadPoolExecutor(threads) as pool:
            futures = {pool.submit(control.file_command, path, command): (path, size) for path, size in files}
            for future in as_completed(futures):
                path, size = futures[future]
                try:
                    here, _ = future.result()
                    cached += here
                except OSError as exc:
                    failures.append(f"{path}: {exc.strerror or exc}")
                done_bytes += size
                progress.update(task, completed=done_bytes)
    elapsed = time.monotonic() - started
    share = cached / total if total else 1.0
    summary = f"{len(files):,} files, {human(total)}: {human(cached)} cached ({share:.1%})"
    if not check and not evict:
        summary += f", in {elapsed:.1f} s ({human(total / elapsed if elapsed else 0)}/s)"
    click.echo(f"pfs: {dict(warming='warmed', checking='checked', evicting='evicted')[verb]} {summary}")
    if failures:
        for line in failures[:10]:
            click.echo(f"pfs: failed: {line}", err=True)
        raise UsageError(f"{len(failures)} of {len(files)} files failed")


def _probe(path: str) -> None:
    try:
        control.file_command(path, control.CACHED)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise UsageError(f"{path} is not on a pfs mount") from None
        raise UsageError(f"{path}: {exc.strerror}") from None
