"""The small JSON records the controller keeps on a backend: what a volume was asked for, the snapshot index.

Each is one object, written whole (readers see the old or the new record, never a mix).
"""

from __future__ import annotations

import io
import json
from contextlib import suppress

from pfs.backends import Backend
from pfs.errors import AlreadyExists, NotFound


def read(backend: Backend, path: str) -> dict | None:
    """The record at `path`, or None when there is none."""
    try:
        size = backend.stat(path).size
        reader = backend.open_reader(path, size)
    except NotFound:
        return None
    try:
        return json.loads(reader.read(0, size))
    finally:
        reader.close()


def write(backend: Backend, path: str, record: dict) -> None:
    """Store `record` at `path`, making its directory first where a hierarchical store needs it."""
    data = json.dumps(record, sort_keys=True).encode()
    try:
        backend.write_file(path, io.BytesIO(data), len(data))
    except NotFound:
        with suppress(AlreadyExists):
            backend.make_dir(path.rpartition("/")[0])
        backend.write_file(path, io.BytesIO(data), len(data))
