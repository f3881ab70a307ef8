"""`pfs sync SRC DST`: parallel copy between any two URIs or local paths, with progress and a summary."""

from __future__ import annotations

import os
import threading
import time

import click
import rich.progress
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from pfs.backends import Backend, BackendOptions, finish, open_backend, redact_uri
from pfs.backends.location import parse_location
from pfs.cli.common import as_uri, connection_options, human, one_line_errors
from pfs.cli.progress import progress_bar
from pfs.datasets.listing import Excludes
from pfs.datasets.sync import DEFAULT_THREADS, Outcome, Plan, SyncOptions, execute, plan
from pfs.datasets.sync import Progress as SyncProgress
from pfs.errors import UsageError
from pfs.options import MountOptions


class _Bar(SyncProgress):
    """Feeds a rich progress bar (files, bytes, rate, ETA) and prints failures above it."""

    def __init__(self, bar: rich.progress.Progress) -> None:
        self._bar = bar
        self._task = bar.add_task("listing", total=None, files=0, total_files=0)
        self._files = 0
        self._lock = threading.Lock()

    def start(self, files: int, nbytes: int) -> None:
        self._bar.update(self._task, description="copying", total=nbytes, completed=0, total_files=files)

    def transferred(self, nbytes: int) -> None:
        self._bar.advance(self._task, nbytes)

    def file_done(self) -> None:
        with self._lock:
            self._files += 1
            files = self._files
        self._bar.update(self._task, files=files)

    def failed(self, path: str, message: str) -> None:
        self._bar.console.print(
            f"pfs: sync: {path}: {message}", markup=False, highlight=False, soft_wrap=True
        )


def _open_destination(uri: str, options: BackendOptions, dry_run: bool) -> Backend | None:
    """The destination backend; a local directory that does not exist yet is made (in a dry run: None)."""
    if uri.startswith("file://") and not os.path.isdir(uri[len("file://") :].split("?")[0]):
        if dry_run:
            return None
        os.makedirs(uri[len("file://") :].split("?")[0], exist_ok=True)
    return open_backend(uri, options, verify=True)


def _tree_of(uri: str, options: BackendOptions) -> tuple[tuple[str, ...], str]:
    """Which store `uri` names (scheme, host or bucket, endpoint) and its root path in that store, with
    symlinks of a local path resolved, so that two spellings of one directory compare equal."""
    where = parse_location(uri)
    if where.scheme == "file":
        return ("file",), os.path.realpath(where.path)
    if where.scheme == "hdfs":
        return ("hdfs", where.host, str(where.port)), where.path
    endpoint = options.endpoint or where.query.get("endpoint_override", "")
    return (where.scheme, where.bucket, endpoint, where.query.get("region", "")), "/" + where.path


def _refuse_nesting(src_uri: str, dst_uri: str, options: BackendOptions) -> None:
    """A destination inside the source would be copied into itself (one level deeper on every run), and a
    source inside the destination would be listed (and with --delete, removed) as part of it."""
    (src_store, src), (dst_store, dst) = _tree_of(src_uri, options), _tree_of(dst_uri, options)
    if src_store != dst_store:
        return

    def inside(path: str, tree: str) -> bool:
        return path == tree or path.startswith(tree.rstrip("/") + "/")

    if inside(dst, src) or inside(src, dst):
        where = "is" if src == dst else "is inside" if inside(dst, src) else "contains"
        raise UsageError(
            f"the destination {redact_uri(dst_uri)} {where} the source {redact_uri(src_uri)}: "
            "choose a destination outside the source tree"
        )


def _dry_run_report(work: Plan) -> None:
    for path, _ in work.copies:
        click.echo(f"copy {path}")
    for path, _ in work.compare:
        click.echo(f"compare {path}")
    for path, _ in work.deletions:
        click.echo(f"delete {path}")
    for path, why in work.conflicts:
        click.echo(f"conflict {path}: {why}")
    click.echo(
        f"pfs: sync (dry run): would copy {len(work.copies):,} ({human(work.bytes)}), compare "
        f"{len(work.compare):,}, delete {len(work.deletions):,}; {work.unchanged:,} unchanged, "
        f"{len(work.conflicts):,} conflicts"
    )


def _summary(outcome: Outcome, seconds: float) -> str:
    rate = outcome.bytes / seconds if seconds > 0 else 0.0
    text = (
        f"pfs: sync: copied {outcome.copied:,} ({human(outcome.bytes)}), {outcome.unchanged:,} unchanged, "
        f"{outcome.deleted:,} deleted, {len(outcome.failures):,} failed in {seconds:.2f} s ({human(rate)}/s)"
    )
    if outcome.deletions_skipped:
        text += "; deletions skipped because of the failures"
    return text


@click.command()
@click.argument("src")
@click.argument("dst")
@connection_options()
@click.option(
    "--threads",
    type=click.IntRange(1, 512),
    default=DEFAULT_THREADS,
    help="Files copied at once [8 per core, at most 64].",
)
@click.option("--delete", is_flag=True, help="Remove what DST has and SRC does not (not if a copy failed).")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be done; change nothing.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out matching paths (repeatable).")
@click.option("--checksum", is_flag=True, help="Compare the bytes of same-size files instead of mtimes.")
def sync(
    src: str,
    dst: str,
    mount_options: MountOptions,
    backend_options: BackendOptions,
    threads: int,
    delete: bool,
    dry_run: bool,
    exclude: tuple[str, ...],
    checksum: bool,
) -> None:
    """Copy the tree at SRC to DST, skipping unchanged files; resumable (URIs or local paths).

    A file is unchanged when DST has one of the same size that is not older (with --checksum: the same
    bytes). Exits non-zero if anything failed.

    \b
      pfs sync ./imagenet s3://datasets/imagenet          # upload
      pfs sync s3://runs/exp1/ckpt ./ckpt --exclude '*.tmp'   # download
    """
    options = SyncOptions(threads, delete, dry_run, checksum, Excludes(exclude))
    src_uri, dst_uri = as_uri(src), as_uri(dst)
    _refuse_nesting(src_uri, dst_uri, backend_options)
    with one_line_errors():
        source = open_backend(src_uri, backend_options, verify=True)
        dest = _open_destination(dst_uri, backend_options, dry_run)
    started = time.monotonic()
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[files]:,}/{task.fields[total_files]:,} files"),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ]
    try:
        with one_line_errors(), progress_bar(*columns) as bar:
            feed = _Bar(bar)
            work = plan(source, dest, options, feed)
            if dry_run or dest is None:
                bar.stop()
                _dry_run_report(work)
                return
            feed.start(len(work.copies) + len(work.compare), work.bytes)
            outcome = execute(source, dest, work, options, feed)
    finally:
        source.close()
        if dest is not None:
            dest.close()
        finish()
    click.echo(_summary(outcome, time.monotonic() - started), err=bool(outcome.failures))
    if outcome.failures:
        failed = len(outcome.failures)
        raise UsageError(f"{failed:,} of the files could not be synced to {redact_uri(dst_uri)}", exit_code=1)
