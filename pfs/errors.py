"""Typed errors of pfs and the one table that maps them to errno.

Backends raise these (never raw pyarrow exceptions); the FUSE layer turns them into errno through
`errno_of`; the CLI prints `UsageError` as one line without a traceback. Messages never contain secrets.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator


class PfsError(Exception):
    """Base of every error pfs raises on purpose."""


class NotFound(PfsError):
    pass


class AlreadyExists(PfsError):
    pass


class NotEmpty(PfsError):
    pass


class IsADirectory(PfsError):
    pass


class NotADirectory(PfsError):
    pass


class PermissionDenied(PfsError):
    pass


class NameTooLong(PfsError):
    pass


class ReadOnly(PfsError):
    pass


class Unsupported(PfsError):
    pass


class Stale(PfsError):
    """The object changed on the backend under an open handle or a pinned snapshot."""


class Transient(PfsError):
    """The backend did not answer (network, timeout, throttling, 5xx); retried until the deadline."""


class BackendError(PfsError):
    """The backend answered with an error pfs has no better name for."""


class StagingFailed(PfsError):
    """The local staging directory failed to hold a file being written (other than by being full)."""


class NoSpace(PfsError):
    """No space left: in the staging directory, or on the backend."""


class TooLarge(PfsError):
    """A file size the backend cannot take (EFBIG)."""


class InvalidName(PfsError):
    """A name that is not valid UTF-8: no backend can store it (object keys and HDFS paths are UTF-8)."""


class Refused(PfsError):
    """A POSIX file system's own refusal (file://) with an errno no other class names (EPERM, EMLINK, ...),
    passed on to the caller as it is."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class UsageError(PfsError):
    """A user mistake: the CLI prints the message as one line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_ERRNO: dict[type[PfsError], int] = {
    NotFound: errno.ENOENT,
    AlreadyExists: errno.EEXIST,
    NotEmpty: errno.ENOTEMPTY,
    IsADirectory: errno.EISDIR,
    NotADirectory: errno.ENOTDIR,
    PermissionDenied: errno.EACCES,
    NameTooLong: errno.ENAMETOOLONG,
    ReadOnly: errno.EROFS,
    Unsupported: errno.EOPNOTSUPP,
    Stale: errno.ESTALE,
    Transient: errno.EIO,
    BackendError: errno.EIO,
    StagingFailed: errno.EIO,
    NoSpace: errno.ENOSPC,
    TooLarge: errno.EFBIG,
    InvalidName: errno.EILSEQ,
    UsageError: errno.EINVAL,
}


def errno_of(exc: BaseException) -> int:
    """The errno a FUSE request fails with for `exc`; anything unexpected is EIO."""
    if isinstance(exc, Refused):
        return exc.code
    for cls in type(exc).__mro__:
        if cls in _ERRNO:
            return _ERRNO[cls]
    return errno.EIO


@contextlib.contextmanager
def ungrouped() -> Iterator[None]:
    """Raise a trio nursery's failure as the error itself.

    trio wraps even a single failure of a nursery in an ExceptionGroup; the callers of pfs's concurrent
    work map `PfsError` subclasses to errno and print them as one line, so they get the failure itself:
    the first one that is not a cancellation, when several tasks failed at once."""
    try:
        yield
    except BaseExceptionGroup as group:
        import trio  # only code that runs trio gets here: the CLI's commands start without it

        leaves = list(_leaves(group))
        raise next((exc for exc in leaves if not isinstance(exc, trio.Cancelled)), leaves[0]) from None


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
