"""The backends built on pyarrow.fs: local directories, S3 and S3-compatible stores (BOS), HDFS.

This package is the only code of pfs that imports pyarrow.fs. Nothing outside it may see a pyarrow
object or exception: it hands out `Backend`s and raises `pfs.errors` only.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from pfs.backends.arrow.backend import ArrowBackend
from pfs.backends.arrow.connect import connect
from pfs.backends.arrow.local import LocalBackend
from pfs.backends.arrow.verify import verify
from pfs.backends.location import Location
from pfs.backends.options import BackendOptions


def open_arrow_backend(location: Location, options: BackendOptions, check: bool) -> ArrowBackend:
    store = connect(location, options)
    if check:
        verify(store, location)
    if isinstance(store.fs, pafs.LocalFileSystem):
        return LocalBackend(store)
    return ArrowBackend(store)


def finish() -> None:
    """Shut pyarrow's S3 support down once this process uses no backend any more (it cannot be restarted).

    Left to pyarrow's own exit handler, a command that read Parquet from S3 sometimes aborted at exit
    ('terminate called without an active exception': 5 of 40 runs of `pfs snapshot diff` against
    SeaweedFS; 0 of 40 with this called first)."""
    import gc

    import pyarrow.fs as pafs

    gc.collect()  # backends nothing refers to any more release their S3 clients first
    pafs.finalize_s3()


__all__ = ["ArrowBackend", "finish", "open_arrow_backend"]
