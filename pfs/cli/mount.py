"""`pfs mount` and `pfs umount`."""

from __future__ import annotations

import click

from pfs.backends import BackendOptions
from pfs.cli.common import connection_options
from pfs.options import MountOptions, set_option

URI_HELP = """\b
URI forms:
  file:///abs/dir                       a local or NFS directory
  s3://bucket/prefix                    AWS S3 or any S3-compatible store
  s3://bucket/p?endpoint_override=127.0.0.1:9000&scheme=http
  bos://bucket/prefix?region=bj         Baidu BOS (S3-compatible endpoint of the region)
  hdfs://namenode:8020/path             HDFS (needs a JVM and libhdfs)
"""


MOUNT_O_HELP = (
    "Mount options: ro, allow_other, uid=N, gid=N, umask=022, metadata_ttl=S, timeout=S, "
    "endpoint=HOST:PORT, region=R, credentials=FILE, profile=P, anonymous, threads=N, "
    "readahead_kb=N, staging_dir=DIR, failed_uploads=keep|drop, writeback, log_file=FILE, snapshot=NAME, "
    "debug; "
    "cache: cache_dir=DIR, "
    "cache_size=SIZE, free_space_ratio=R, memory_limit=SIZE, block_size=SIZE, prefetch=SIZE, metrics_port=N."
)


@click.command(epilog=URI_HELP)
@click.argument("uri")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@connection_options(MOUNT_O_HELP)
@click.option(
    "-f", "--foreground", is_flag=True, help="Serve in this process (logs to stderr) until unmounted."
)
@click.option("--read-only", is_flag=True, help="Refuse every change (EROFS).")
@click.option(
    "--metadata-ttl",
    type=float,
    metavar="S",
    help="Seconds attributes, listings and missing names are trusted before asking the backend again [10].",
)
@click.option(
    "--snapshot",
    metavar="NAME",
    help="Mount snapshot NAME of URI (see 'pfs snapshot'): read-only, never lists the backend.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Disk cache, shared by every mount on the node and kept across remounts [/var/cache/pfs].",
)
@click.option("--cache-size", metavar="SIZE", help="Bytes of disk cache, e.g. 50G; 0 turns it off [20G].")
@click.option(
    "--free-space-ratio",
    type=float,
    metavar="R",
    help="Shrink the disk cache to keep this share of its file system free [0.1].",
)
@click.option(
    "--memory-limit",
    metavar="SIZE",
    help="Memory for cached and prefetched blocks and uploads in flight, however many files are open [160M].",
)
@click.option("--metrics-port", type=int, metavar="PORT", help="Serve Prometheus metrics on 127.0.0.1:PORT.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Daemon log [/var/tmp/pfs/logs/...].")
@click.option("--debug", is_flag=True, help="Log every request.")
def mount(
    uri: str,
    mountpoint: str,
    mount_options: MountOptions,
    backend_options: BackendOptions,
    foreground: bool,
    read_only: bool,
    metadata_ttl: float | None,
    snapshot: str | None,
    cache_dir: str | None,
    cache_size: str | None,
    free_space_ratio: float | None,
    memory_limit: str | None,
    metrics_port: int | None,
    log_file: str | None,
    debug: bool,
) -> None:
    """Mount URI at MOUNTPOINT (returns once the mount answers)."""
    mount_options.read_only |= read_only
    mount_options.debug |= debug
    for name, value in [
        ("metadata_ttl", metadata_ttl),
        ("log_file", log_file),
        ("snapshot", snapshot),
        ("cache_dir", cache_dir),
        ("cache_size", cache_size),
        ("free_space_ratio", free_space_ratio),
        ("memory_limit", memory_limit),
        ("metrics_port", metrics_port),
    ]:
        if value is not None:  # parsed and checked like the -o form
            set_option(name, str(value), mount_options, backend_options)
    from pfs.mount import lifecycle  # pyfuse3 and trio: loaded only by the commands that mount

    pid = lifecycle.start(uri, mountpoint, mount_options, backend_options, foreground)
    if pid:
        click.echo(f"pfs: mounted at {mountpoint} (daemon pid {pid}, log {mount_options.log_file})")


@click.command()
@click.argument("mountpoint", type=click.Path())
@click.option("-z", "--lazy", is_flag=True, help="Detach now even if files are open; finish when they close.")
@click.option(
    "--discard",
    is_flag=True,
    help="Unmount even if some pending writes cannot be uploaded: drop them, naming each file.",
)
def umount(mountpoint: str, lazy: bool, discard: bool) -> None:
    """Upload pending writes, unmount MOUNTPOINT and wait for its daemon to exit.

    Refuses (exit 2, naming the files) while pending writes cannot be uploaded, unless --discard."""
    from pfs.mount import lifecycle

    dropped = lifecycle.stop(mountpoint, lazy=lazy, discard=discard)
    if dropped:
        click.echo(f"pfs: discarded the pending writes of {len(dropped)} file(s):", err=True)
        for path in dropped:
            click.echo(f"  {path}", err=True)
