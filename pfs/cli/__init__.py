"""The `pfs` command line: one module per command family, registered here.

User mistakes are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from pfs.errors import UsageError

# Each command's module is imported when that command runs (or `pfs --help` lists them all): `pfs mount`
# and `pfs umount` then start without rich, the sync planner and the bench tool, 0.2 s of every call.
COMMANDS = {
    "mount": "pfs.cli.mount",
    "umount": "pfs.cli.mount",
    "stats": "pfs.cli.stats",
    "warmup": "pfs.cli.warmup",
    "prefetch": "pfs.cli.prefetch",
    "cache": "pfs.cli.cache",
    "snapshot": "pfs.cli.snapshot",
    "sync": "pfs.cli.sync",
    "bench": "pfs.cli.bench",
}


class _Commands(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        return getattr(importlib.import_module(module), cmd_name) if module else None


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(package_name="pfs")
def cli() -> None:
    """pfs: a shared POSIX filesystem for ML training data on object storage, HDFS or local disk.

    Mount a bucket, use it like a directory:

    \b
      pfs mount s3://datasets/imagenet /mnt/imagenet
      ls /mnt/imagenet
      pfs umount /mnt/imagenet
    """


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
