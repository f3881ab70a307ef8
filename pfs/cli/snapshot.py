"""`pfs snapshot create|list|show|delete|diff`: pinned views of a tree, stored beside it on the backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import click
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

from pfs.backends import BackendOptions, finish, open_backend, redact_uri
from pfs.cli.common import as_uri, connection_options, human, one_line_errors
from pfs.cli.progress import RateColumn, progress_bar
from pfs.options import MountOptions


@contextmanager
def _snapshots(uri: str, backend_options: BackendOptions) -> Iterator:
    # Imported here so that `pfs --help` does not load pyarrow.
    from pfs.snapshots.store import SnapshotStore

    uri = as_uri(uri)
    with one_line_errors():
        backend = open_backend(uri, backend_options, verify=True)
        try:
            yield SnapshotStore(backend, redact_uri(uri))
        finally:
            backend.close()
            finish()


@click.group()
def snapshot() -> None:
    """Pinned, instantly mountable views of a tree: 'pfs mount URI DIR --snapshot NAME'.

    \b
      pfs snapshot create s3://datasets/imagenet v1
      pfs mount s3://datasets/imagenet /mnt/imagenet --snapshot v1
    """


@snapshot.command()
@click.argument("uri")
@click.argument("name")
@connection_options()
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out matching paths (repeatable).")
@click.option(
    "--threads", type=click.IntRange(1, 256), default=16, show_default=True, help="Requests in flight."
)
@click.option(
    "--etags",
    is_flag=True,
    help="Record every object's ETag (one HEAD each) instead of only recently modified ones'.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the new snapshot's description as JSON.")
def create(
    uri: str,
    name: str,
    mount_options: MountOptions,
    backend_options: BackendOptions,
    exclude: tuple[str, ...],
    threads: int,
    etags: bool,
    as_json: bool,
) -> None:
    """List URI and store its manifest as snapshot NAME (never replaces one)."""
    from pfs.datasets.listing import Excludes
    from pfs.snapshots.store import check_name

    check_name(name)
    columns = [SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,}")]
    columns += [RateColumn("entries"), TimeElapsedColumn()]
    with _snapshots(uri, backend_options) as store, progress_bar(*columns) as bar:
        listing = bar.add_task("listing", total=None)
        checking = bar.add_task("checking versions", total=None, visible=False)

        def checked(n: int) -> None:
            bar.update(checking, advance=n, visible=True)

        info = store.create(
            name,
            Excludes(exclude),
            threads=threads,
            all_etags=etags,
            on_listed=lambda n: bar.advance(listing, n),
            on_checked=checked,
        )
        elapsed = bar.tasks[listing].elapsed or 0.0
    if as_json:
        click.echo(json.dumps(asdict(info), indent=2))
        return
    rate = info.entries / elapsed if elapsed else 0.0
    click.echo(
        f"pfs: snapshot '{name}' of {store.where}: {info.entries:,} entries, {info.files:,} files, "
        f"{human(info.bytes)} ({rate:,.0f} entries/s)"
    )


@snapshot.command(name="list")
@click.argument("uri")
@connection_options()
@click.option("--json", "as_json", is_flag=True, help="Print the names as a JSON list.")
def list_(uri: str, mount_options: MountOptions, backend_options: BackendOptions, as_json: bool) -> None:
    """The snapshots of URI, one name per line."""
    with _snapshots(uri, backend_options) as store:
        names = store.names()
    click.echo(json.dumps(names) if as_json else "\n".join(names), nl=as_json or bool(names))


@snapshot.command()
@click.argument("uri")
@click.argument("name")
@connection_options()
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def show(
    uri: str, name: str, mount_options: MountOptions, backend_options: BackendOptions, as_json: bool
) -> None:
    """Entries, bytes, creation time and source of snapshot NAME."""
    with _snapshots(uri, backend_options) as store:
        info = store.info(name)
    if as_json:
        click.echo(json.dumps(asdict(info), indent=2))
        return
    click.echo(f"name      {info.name}")
    click.echo(f"created   {info.created}")
    click.echo(f"source    {info.source}")
    click.echo(f"entries   {info.entries:,} ({info.files:,} files)")
    click.echo(f"bytes     {info.bytes:,} ({human(info.bytes)})")
    click.echo(f"etags     {info.etags:,} of {info.files:,} files")
    if info.excludes:
        click.echo(f"excludes  {' '.join(info.excludes)}")


@snapshot.command()
@click.argument("uri")
@click.argument("name")
@connection_options()
def delete(uri: str, name: str, mount_options: MountOptions, backend_options: BackendOptions) -> None:
    """Delete snapshot NAME (running mounts of it keep their copy of the manifest)."""
    with _snapshots(uri, backend_options) as store:
        store.delete(name)
    click.echo(f"pfs: deleted snapshot '{name}'")


@snapshot.command()
@click.argument("uri")
@click.argument("old")
@click.argument("new")
@connection_options()
@click.option("--json", "as_json", is_flag=True, help="Every path, as JSON lists added/removed/changed.")
@click.option("--limit", type=int, default=10, show_default=True, help="Paths shown per kind of change.")
def diff(
    uri: str,
    old: str,
    new: str,
    mount_options: MountOptions,
    backend_options: BackendOptions,
    as_json: bool,
    limit: int,
) -> None:
    """What changed from snapshot OLD to snapshot NEW: added, removed and changed paths."""
    from pfs.snapshots.manifest import diff as compare

    with _snapshots(uri, backend_options) as store:
        result = compare(store.load(old), store.load(new))
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    click.echo(
        f"{len(result.added):,} added, {len(result.removed):,} removed, {len(result.changed):,} changed"
    )
    for mark, paths in (("+", result.added), ("-", result.removed), ("~", result.changed)):
        for path in paths[:limit]:
            click.echo(f"{mark} {path}")
        if len(paths) > limit:
            click.echo(f"{mark} ... {len(paths) - limit:,} more")
