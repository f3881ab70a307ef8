"""The `pfs` command line: one module per command family, registered here.

User mistakes are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import logging
import sys

import click

from pfs.cli import bench, cache, mount, snapshot, stats, sync, warmup
from pfs.errors import UsageError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="pfs")
def cli() -> None:
    """pfs: a shared POSIX filesystem for ML training data on object storage, HDFS or local disk.

    Mount a bucket, use it like a directory:

    \b
      pfs mount s3://datasets/imagenet /mnt/imagenet
      ls /mnt/imagenet
      pfs umount /mnt/imagenet
    """


COMMANDS = (
    mount.mount,
    mount.umount,
    stats.stats,
    warmup.warmup,
    cache.cache,
    snapshot.snapshot,
    sync.sync,
    bench.bench,
)
for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    # What the library warns about while a command runs (a cache set aside, say) is one line too.
    logging.basicConfig(level=logging.WARNING, format="pfs: %(message)s")
    try:
        cli(standalone_mode=False, prog_name="pfs")
    except UsageError as exc:
        click.echo(f"pfs: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare `pfs` or `pfs cache`: the help it asks for
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # a bad argument or flag: one line too, not the usage text
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"pfs: error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("pfs: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
