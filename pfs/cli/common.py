"""Command-line pieces shared by several commands: `-o` and the option flags (made from `pfs.options.OPTIONS`,
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
from pfs.options import OPTIONS, MountOptions, Option, apply_o, set_option

BACKEND_O_HELP = (
    "Backend options, as for 'pfs mount': " + ", ".join(o.form for o in OPTIONS if o.backend) + "."
)


def forms(*keys: str) -> str:
    """The `-o` forms of the options named, for a command's help: 'cache_dir=DIR, cache_size=SIZE'."""
    by_key = {option.key: option for option in OPTIONS}
    return ", ".join(by_key[key].form for key in keys)


def connection_options(o_help: str = BACKEND_O_HELP, mount_flags: bool = False) -> Callable:
    """Add `-o` and the flags of the backend options (with `mount_flags`, of every option that has one) to
    a command, which then receives `mount_options` and `backend_options` built from them instead. A flag's
    value is read and checked as its `-o` form is, and wins over it."""
    flagged = [option for option in OPTIONS if option.flag and (option.backend or mount_flags)]

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, options: tuple[str, ...], **kwargs: Any) -> Any:
            mount, backend = MountOptions(), BackendOptions()
            for text in options:
                apply_o(text, mount, backend)
            for option in flagged:
                value = kwargs.pop(_param(option))
                if option.value is None and value:
                    set_option(option.key, None, mount, backend)
                elif option.value is not None and value is not None:
                    set_option(option.key, value, mount, backend)
            return fn(*args, mount_options=mount, backend_options=backend, **kwargs)

        decorators = [
            click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]", help=o_help),
            *(_flag(option) for option in flagged),
        ]
        for decorator in reversed(decorators):
            wrapper = decorator(wrapper)
        return wrapper

    return decorate


def _param(option: Option) -> str:
    return f"option_{option.key}"  # never the name of a command's own parameter


def _flag(option: Option) -> Callable:
    assert option.flag is not None
    meaning = option.meaning.replace("`", "")
    text = meaning[0].upper() + meaning[1:]
    if option.value is None:
        return click.option(option.flag, _param(option), is_flag=True, help=f"{text}.")
    default = f" [{option.default_text}]" if option.default_text else ""
    return click.option(option.flag, _param(option), metavar=option.metavar, help=f"{text}{default}.")


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
