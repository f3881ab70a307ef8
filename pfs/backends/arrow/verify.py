"""Check at mount time that a store answers and its root is a directory, in words a user can act on.

Every failure becomes one `UsageError` line naming the problem ("bucket 'x' does not exist", "access denied
for s3://x/y (check the access key and secret key)", "cannot reach endpoint 127.0.0.1:9 (connection
refused)", "/x is not a directory"). A refused connection or an unknown host fails at once instead of
being retried until the deadline: at mount time it is a configuration mistake, not an outage. Messages
never contain credentials.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow.fs as pafs

from pfs.backends.arrow.connect import Store
from pfs.backends.arrow.errors import translate, unreachable_reason
from pfs.backends.location import Location
from pfs.backends.retry import retry_call
from pfs.backends.watchdog import run_bounded
from pfs.errors import NotFound, PermissionDenied, PfsError, Transient, UsageError

_FINAL_AT_MOUNT = ("connection refused", "host not found")


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _info(store: Store, path: str) -> pafs.FileInfo:
    deadline = time.monotonic() + store.timeout

    def ask() -> pafs.FileInfo:
        if not store.hangs:
            return store.fs.get_file_info(path)
        left = max(0.1, deadline - time.monotonic())
        return run_bounded(lambda: store.fs.get_file_info(path), left, f"stat {path}")

    def attempt() -> pafs.FileInfo:
        try:
            return ask()
        except Transient:
            raise
        except Exception as exc:
            raise translate(exc, f"stat {path}") from exc

    def give_up(exc: Transient) -> bool:
        return unreachable_reason(_root_cause(exc)) in _FINAL_AT_MOUNT

    return retry_call(attempt, timeout=store.timeout, attempt_budget=store.attempt_budget, give_up=give_up)


def _explain(exc: PfsError, store: Store, location: Location) -> UsageError:
    shown = location.display()
    if isinstance(exc, PermissionDenied):
        hint = "check the access key and secret key" if store.object_store else "check the permissions"
        return UsageError(f"access denied for {shown} ({hint})")
    if isinstance(exc, Transient):
        reason = unreachable_reason(_root_cause(exc))
        if reason and store.endpoint:
            return UsageError(f"cannot reach endpoint {store.endpoint} ({reason})")
        return UsageError(f"cannot reach {shown}: {exc}")
    if isinstance(exc, NotFound) and location.bucket:
        return UsageError(f"bucket '{location.bucket}' does not exist")
    return UsageError(f"cannot open {shown}: {exc}")


def verify(store: Store, location: Location) -> None:
    """UsageError unless the store answers and its root is a directory (or, on an object store, a prefix
    with nothing under it yet: that is an empty mount)."""
    checks: list[tuple[str, Callable[[pafs.FileInfo], str | None]]] = []
    if store.object_store:

        def bucket_exists(info: pafs.FileInfo) -> str | None:
            missing = info.type != pafs.FileType.Directory
            return f"bucket '{location.bucket}' does not exist" if missing else None

        def prefix_usable(info: pafs.FileInfo) -> str | None:
            return f"{location.display()} is not a directory" if info.type == pafs.FileType.File else None

        checks.append((location.bucket, bucket_exists))
        if location.path:
            checks.append((store.root, prefix_usable))
    else:

        def directory(info: pafs.FileInfo) -> str | None:
            if info.type == pafs.FileType.NotFound:
                return f"{location.path} does not exist"
            return None if info.type == pafs.FileType.Directory else f"{location.path} is not a directory"

        checks.append((store.root, directory))
    for path, judge in checks:
        try:
            problem = judge(_info(store, path))
        except PfsError as exc:
            raise _explain(exc, store, location) from None
        if problem:
            raise UsageError(problem)
