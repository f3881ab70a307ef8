"""`pfs stats`: the counters of a running mount."""

from __future__ import annotations

import json

import click

from pfs import control
from pfs.errors import UsageError


@click.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw counters as JSON.")
def stats(mountpoint: str, as_json: bool) -> None:
    """Show the counters of a running mount."""
    try:
        data = control.stats(mountpoint)
    except OSError:
        raise UsageError(f"{mountpoint} is not a pfs mount") from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
        click.echo(f"{key:>16}  {value}")
