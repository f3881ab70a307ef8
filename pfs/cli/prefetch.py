"""`pfs prefetch`: tell a running mount which files are read next, in order, so it fetches them just ahead.

The same hints a training job's sampler gives (pfs/torch.py), from a list in a file: the mount takes what
fits ahead of the reads (pfs/fs/hints.py) and this command posts the rest as the reads move on, then exits.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

import click
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

from pfs.cli.progress import progress_bar
from pfs.errors import UsageError
from pfs.mount import control

WAIT_S = 0.5  # between posts while the mount holds enough ahead of the reads


@click.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--from", "source", required=True, type=click.File("r"),
    help="The paths, one per line, in the order they will be read: relative to MOUNTPOINT, or absolute "
    "inside it. '-' reads them from stdin.",
)  # fmt: skip
def prefetch(mountpoint: str, source) -> None:
    """Fetch files of a running mount just ahead of the program that reads them, in the order given.

    For a shuffled epoch from a cold cache: the mount fetches the next files in parallel, a bounded
    window (-o prefetch, 64 MiB by default) ahead of what is read, and drops what is never read. Keeps
    posting as the reads move on until the whole list is with the mount; `pfs stats` shows the hits.

    \b
      python make_order.py > order.txt
      pfs prefetch /mnt/data --from order.txt &
      python train.py
    """
    root = os.path.abspath(mountpoint)
    try:
        control.daemon_pid(root)
    except OSError:
        raise UsageError(f"{mountpoint} is not a pfs mount") from None
    paths, outside = _relative(root, (line.rstrip("\n") for line in source))
    if outside:
        raise UsageError(f"{outside[0]} is not inside {mountpoint} ({len(outside)} such paths)")
    bar = progress_bar(TextColumn("posting"), BarColumn(), MofNCompleteColumn(), TextColumn("paths"))
    done = 0
    with bar:
        task = bar.add_task("", total=len(paths))
        while True:
            try:
                done += control.post_hints(root, paths[done:], restart=done == 0)
            except OSError as exc:
                raise UsageError(f"{mountpoint}: {exc.strerror}") from None
            bar.update(task, completed=done)
            if done >= len(paths):
                break
            time.sleep(WAIT_S)
    click.echo(f"pfs: {len(paths):,} paths posted to {mountpoint}", file=sys.stderr)


def _relative(root: str, lines: Iterable[str]) -> tuple[list[str], list[str]]:
    """The paths relative to `root`, and those given outside it."""
    paths: list[str] = []
    outside: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        if not os.path.isabs(line):
            paths.append(line)
            continue
        relative = os.path.relpath(os.path.normpath(line), root)
        (outside if relative.startswith("..") else paths).append(relative)
    return paths, outside
