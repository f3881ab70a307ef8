"""The backends built on pyarrow.fs: local directories, S3 and S3-compatible stores (BOS), HDFS.

This package is the only code of the filesystem that imports pyarrow.fs (pfs.testserver also hands the demo,
tests and benchmarks a raw client of the server they start). Nothing outside it may see a pyarrow
object or exception: it hands out `Backend`s and raises `pfs.errors` only.
"""

from __future__ import annotations

from pfs.backends.arrow.backend import ArrowBackend
from pfs.backends.arrow.connect import connect
from pfs.backends.arrow.verify import verify
from pfs.backends.location import Location
from pfs.backends.options import BackendOptions


def open_arrow_backend(location: Location, options: BackendOptions, check: bool) -> ArrowBackend:
    store = connect(location, options)
    if check:
        verify(store, location)
    return ArrowBackend(store)


__all__ = ["ArrowBackend", "open_arrow_backend"]
