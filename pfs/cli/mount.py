"""`pfs mount` and `pfs umount`."""

from __future__ import annotations

import click

from pfs.backends import BackendOptions
from pfs.cli.common import connection_options
from pfs.options import OPTIONS, MountOptions

URI_HELP = """\b
URI forms:
  file:///abs/dir                       a local or NFS directory
  s3://bucket/prefix                    AWS S3 or any S3-compatible store
  s3://bucket/p?endpoint_override=127.0.0.1:9000&scheme=http
  bos://bucket/prefix?region=bj         Baidu BOS (S3-compatible endpoint of the region)
  hdfs://namenode:8020/path             HDFS (needs a JVM and libhdfs)
"""


MOUNT_O_HELP = "Mount options: " + ", ".join(option.form for option in OPTIONS) + "."


@click.command(epilog=URI_HELP)
@click.argument("uri")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option(
    "-f", "--foreground", is_flag=True, help="Serve in this process (logs to stderr) until unmounted."
)
@connection_options(MOUNT_O_HELP, mount_flags=True)
def mount(
    uri: str, mountpoint: str, foreground: bool, mount_options: MountOptions, backend_options: BackendOptions
) -> None:
    """Mount URI at MOUNTPOINT (returns once the mount answers)."""
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
