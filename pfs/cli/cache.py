"""`pfs cache info|clear`: the node's disk cache, inspected or emptied without a mount."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import click

from pfs.cli.common import human
from pfs.errors import UsageError

if TYPE_CHECKING:
    from pfs.cache.disk import DiskTier
from pfs.options import DEFAULT_CACHE_DIR

CACHE_DIR = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=DEFAULT_CACHE_DIR,
    show_default=True,
    help="The disk cache (the directory mounts were given with --cache-dir).",
)


def _open(cache_dir: str) -> DiskTier:
    # Not at import time: keeps every other command's start quick.
    from pfs.cache.disk import DATABASE, CacheUnavailable, DiskTier

    if not os.path.isfile(os.path.join(cache_dir, DATABASE)):
        raise UsageError(f"no pfs cache in {cache_dir}")
    try:
        return DiskTier(cache_dir, size_limit=None)  # a broken database is set aside, with a warning
    except CacheUnavailable as exc:
        raise UsageError(str(exc), exit_code=1) from None


@click.group()
def cache() -> None:
    """Inspect or clear the disk cache shared by the mounts of this node."""


@cache.command()
@CACHE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def info(cache_dir: str, as_json: bool) -> None:
    """Show how much the disk cache holds and its limits."""
    tier = _open(cache_dir)
    try:
        data = tier.info()
    finally:
        tier.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"directory        {data['directory']}")
    click.echo(f"used             {human(data['bytes'])} in {data['entries']:,} entries")
    click.echo(f"limit            {human(data['size_limit'])} (now {human(data['effective_limit'])})")
    free = data["fs_free_bytes"] / data["fs_total_bytes"] if data["fs_total_bytes"] else 0
    click.echo(f"file system free {human(data['fs_free_bytes'])} ({free:.0%})")


@cache.command()
@CACHE_DIR
def clear(cache_dir: str) -> None:
    """Drop every cached block (running mounts simply fetch again)."""
    tier = _open(cache_dir)
    try:
        count = tier.clear()
    finally:
        tier.close()
    click.echo(f"pfs: cleared {count:,} entries from {cache_dir}")
