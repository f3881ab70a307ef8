"""Command-line pieces shared by several commands: how to reach a backend (`-o` and the connection flags,
accepted the same way by `pfs mount`, `pfs snapshot` and `pfs sync`), one-line errors and sizes for people.
Progress bars are in `pfs.cli.progress`: rich is loaded only by the commands that draw them."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from pfs.backends import BackendOptions
from pfs.errors import PfsError, UsageError
from pfs.options import MountOptions, apply_o, set_option

BACKEND_O_HELP = (
    "Backend options, as for 'pfs mount': endpoint=HOST:PORT, region=R, credentials=FILE, profile=P, "
    "anonymous, timeout=S."
)


def connection_options(o_help: str = BACKEND_O_HELP) -> Callable:
    """Add `-o`, `--timeout`, `--endpoint`, `--region` and `--credentials` to a command, which then
    receives `mount_options` and `backend_options` built from them instead."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(
            *args: Any,
            options: tuple[str, ...],
            timeout: float | None,
            endpoint: str | None,
            region: str | None,
            credentials: str | None,
            **kwargs: Any,
        ) -> Any:
            mount, backend = MountOptions(), BackendOptions()
            for text in options:
                apply_o(text, mount, backend)
            for name, value in [
                ("timeout", timeout),
                ("endpoint", endpoint),
                ("region", region),
                ("credentials", credentials),
            ]:
                if value is not None:  # parsed and checked like the -o form
                    set_option(name, str(value), mount, backend)
            return fn(*args, mount_options=mount, backend_options=backend, **kwargs)

        decorators = [
            click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]", help=o_help),
            click.option(
                "--timeout",
                type=float,
                metavar="S",
                help="Give up on an unanswered backend request after S seconds (EIO) [30].",
            ),
            click.option(
                "--endpoint", metavar="HOST:PORT", help="S3-compatible endpoint (http://... for plain HTTP)."
            ),
            click.option("--region", help="Object-store region."),
            click.option(
                "--credentials",
                type=click.Path(dir_okay=False),
                metavar="FILE",
                help="AWS-style credentials file (default: the usual AWS_* environment variables).",
            ),
        ]
        for decorator in reversed(decorators):
            wrapper = decorator(wrapper)
        return wrapper

    return decorate


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Backend failures (unreachable, denied, ...) end the command with one line, not a traceback."""
    try:
        yield
    except UsageError:
        raise
    except PfsError as exc:
        raise UsageError(str(exc) or type(exc).__name__, exit_code=1) from None


def as_uri(text: str) -> str:
    """A URI as given, or a plain local path as the file:// URI of its absolute path."""
    return text if "://" in text else f"file://{os.path.abspath(text)}"


def human(amount: float) -> str:
    """'512 B', '1.5 MiB', '2.0 TiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"
