"""Data sources behind a mount: the `Backend` contract and `open_backend`, the one way to get one.

`open_backend("s3://bucket/prefix?...", BackendOptions(...))` parses and validates the URI, connects, and
(with verify=True) checks that the root is usable, turning every problem into a one-line `UsageError`.
Nothing here ever logs or formats a secret; use `redact_uri` to show a URI.
"""

from __future__ import annotations

import sys

from pfs.backends.base import (
    Backend,
    Entry,
    Kind,
    Meta,
    MetaChange,
    Reader,
    Source,
    SpaceInfo,
    Upload,
    UploadGuard,
    first_given,
)
from pfs.backends.location import parse_location
from pfs.backends.options import BackendOptions, redact_uri


def open_backend(uri: str, options: BackendOptions, verify: bool = True) -> Backend:
    """The backend for `uri`; `options` win over what the URI's query says.

    verify=True checks that the endpoint answers, the credentials work and the root is a directory (an
    object-store prefix with nothing under it is fine: an empty mount), within `options.timeout`.
    """
    location = parse_location(uri)
    # Imported here so that parsing a URI (and the CLI's --help) does not load pyarrow.
    from pfs.backends.arrow import open_arrow_backend

    return open_arrow_backend(location, options, check=verify)


def finish() -> None:
    """Release what backends hold process-wide; call once, after the last backend was closed, in a
    command that is about to exit (never in a process that goes on using backends)."""
    if "pyarrow.fs" in sys.modules:  # nothing to release if no backend was ever opened
        from pfs.backends.arrow import finish as finish_arrow

        finish_arrow()


__all__ = [
    "Backend",
    "BackendOptions",
    "Entry",
    "Kind",
    "Meta",
    "MetaChange",
    "Reader",
    "Source",
    "SpaceInfo",
    "Upload",
    "UploadGuard",
    "finish",
    "first_given",
    "open_backend",
    "redact_uri",
]
