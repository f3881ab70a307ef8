"""POSIX attributes on object stores: one hidden index object per directory, read with its listing.

S3 listings return no user metadata, so attributes kept on the objects themselves (s3fs's x-amz-meta-mode,
rclone's mtime) would cost a HEAD per file on every `ls -l`. Instead each directory that has attributes
holds one small JSON object, `<dir>/.pfs.attrs`, mapping names to their mode, uid, gid and modification
time. The directory's listing shows that object (and its size and time), so:
- a directory without it (any dataset written by other tools) costs nothing more than today;
- one with it costs one GET when the index changed since it was last read, nothing otherwise.

A record also keeps the stamp of the object it describes (size and modification second, as listings and
HEAD both report them): when another tool rewrites the object, the stamp no longer matches and the record
is ignored, so the file shows its new state. Records of directories and the root (name '') carry no stamp.

Updates are a read-merge-write of the whole index, serialised within a mount and merged record by record
(the newest change of a name wins) across mounts: after writing, the index is read back and written again
if another mount's write replaced ours. S3 offers no compare-and-swap to pyarrow, so two mounts changing the
same directory in the same instant may still lose one change (the last writer wins); see README.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from pfs.backends.base import Entry, Kind, Meta
from pfs.errors import NotFound

INDEX = ".pfs.attrs"
VERSION = 1
FIELDS = ("mode", "uid", "gid", "mtime_ns")
#: Seconds an index read for a single name (stat) is trusted; listings always see the current one.
TRUST_S = 1.0
MAX_DIRS = 4096  # indexes kept in memory
MERGE_ATTEMPTS = 3
YOUNG_NS = 2 * 10**9  # an index written this recently may change again unseen (see _Cached.young)
log = logging.getLogger(__name__)

Records = dict[str, dict[str, Any]]


def stamp(info: pafs.FileInfo) -> list[int]:
    """What identifies an object's version in both a listing and a HEAD: its size and modification second
    (HEAD answers in whole seconds, listings in milliseconds)."""
    return [info.size or 0, (info.mtime_ns or 0) // 1_000_000_000]


def meta_of(record: dict[str, Any] | None, kind: Kind, info: pafs.FileInfo | None) -> Meta | None:
    """The attributes of `record` for the entry listed as `info`, unless the record describes another
    version of it. (Once per entry of every listing: kept lean.)"""
    if not record:
        return None
    if kind is not Kind.DIR:
        kept = record.get("stamp")
        if (
            info is None
            or not kept
            or kept[0] != (info.size or 0)
            or kept[1] != (info.mtime_ns or 0) // 10**9
        ):
            return None  # rewritten by another tool since: its attributes no longer apply
    get = record.get
    return Meta(mode=get("mode"), uid=get("uid"), gid=get("gid"), mtime_ns=get("mtime_ns"))


def apply(entry: Entry, record: dict[str, Any] | None, info: pafs.FileInfo | None) -> Entry:
    """`entry` with the attributes of `record` (see meta_of)."""
    meta = meta_of(record, entry.kind, info)
    return entry if meta is None else Entry(entry.name, entry.kind, entry.size, entry.mtime_ns, meta)


@dataclass
class _Cached:
    seen: tuple[int, int] | None  # (size, mtime_ns) of the index object; None: there is none
    at: float  # monotonic time it was read
    records: Records
    #: The index may have been rewritten within its modification second, same size, after it was read (a
    #: chmod 755 -> 700 keeps the size): then its size and time tell nothing, and the next listing reads it.
    young: bool = False


class AttrIndex:
    """The per-directory indexes of one mounted root. `key(dir)` maps a directory path to its index key;
    `call` runs a pyarrow call the backend's way (errors translated, retried); `publish` writes an object
    atomically."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        key: Callable[[str], str],
        call: Callable[..., Any],
        publish: Callable[[str, str, io.BytesIO, int], None],
    ) -> None:
        self._fs = fs
        self._key = key
        self._call = call
        self._publish = publish
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()  # one read-merge-write at a time in this mount

    # ---- reading ------------------------------------------------------------------------------------

    def _read(self, directory: str) -> Records | None:
        """The records of `directory`'s index; None when there is no index (any more)."""
        key = self._key(directory)

        def read() -> bytes:
            with self._fs.open_input_stream(key, compression=None) as f:
                return f.read()

        try:
            data = self._call(f"read attributes of {directory or '/'}", read)
        except NotFound:
            return None
        try:
            doc = json.loads(data)
            records = doc["entries"]
            if not isinstance(records, dict):
                raise TypeError("entries is not an object")
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("%s: unreadable attribute index, ignored: %s", key, exc)
            return {}
        return records

    def _remember(self, directory: str, seen: tuple[int, int] | None, records: Records) -> Records:
        if len(self._cache) >= MAX_DIRS:
            self._cache.clear()
        young = seen is not None and time.time_ns() - seen[1] < YOUNG_NS
        self._cache[directory] = _Cached(seen, time.monotonic(), records, young)
        return records

    def listed(self, directory: str, index_info: pafs.FileInfo | None) -> Records:
        """The records of `directory`, whose listing showed its index object as `index_info` (None: none):
        read again only when the index changed since it was last read."""
        seen = None if index_info is None else (index_info.size or 0, index_info.mtime_ns or 0)
        cached = self._cache.get(directory)
        if cached is not None and cached.seen == seen and not cached.young:
            cached.at = time.monotonic()
            return cached.records
        if seen is None:
            return self._remember(directory, None, {})
        records = self._read(directory)
        if records is None:  # gone since it was listed (or not readable yet): not remembered, asked again
            self._cache.pop(directory, None)
            return {}
        return self._remember(directory, seen, records)

    def records(self, directory: str) -> Records:
        """The records of `directory` for a single name (stat): the index read within TRUST_S, else read."""
        cached = self._cache.get(directory)
        if cached is not None and time.monotonic() - cached.at < TRUST_S:
            return cached.records
        info = self._call(
            f"stat attributes of {directory or '/'}", lambda: self._fs.get_file_info(self._key(directory))
        )
        return self.listed(directory, info if info.type == pafs.FileType.File else None)

    # ---- changing -----------------------------------------------------------------------------------

    def update(self, directory: str, changes: dict[str, dict[str, Any] | None]) -> None:
        """Set (a record) or drop (None) the records of names in `directory`, merged with what other mounts
        wrote meanwhile: for each name the record changed last wins."""
        now = time.time_ns()
        mine = {name: (None if rec is None else {**rec, "t": now}) for name, rec in changes.items()}
        with self._lock:
            for _ in range(MERGE_ATTEMPTS):
                records = dict(self._read(directory) or {})
                for name, rec in mine.items():
                    theirs = records.get(name)
                    if theirs is not None and theirs.get("t", 0) > now:
                        continue  # another mount changed it after us
                    if rec is None:
                        records.pop(name, None)
                    else:
                        records[name] = rec
                self._write(directory, records)
                back = self._read(directory) or {}
                if all(back.get(n, {}).get("t") == now for n, r in mine.items() if r is not None) and all(
                    n not in back or back[n].get("t", 0) > now for n, r in mine.items() if r is None
                ):
                    break
            self._cache.pop(directory, None)

    def _write(self, directory: str, records: Records) -> None:
        key = self._key(directory)
        if not records:
            with contextlib.suppress(NotFound):
                self._call(f"write attributes of {directory or '/'}", lambda: self._fs.delete_file(key))
            return
        data = json.dumps({"version": VERSION, "entries": records}, separators=(",", ":")).encode()
        self._publish(directory, key, io.BytesIO(data), len(data))

    def forget(self, directory: str) -> None:
        self._cache.pop(directory, None)


def record(meta: Meta | None, mtime_ns: int | None, info: pafs.FileInfo | None) -> dict[str, Any]:
    """A record of these attributes for the object `info` (None: a directory, no stamp)."""
    rec: dict[str, Any] = {}
    if meta is not None:
        for name in ("mode", "uid", "gid"):
            value = getattr(meta, name)
            if value is not None:
                rec[name] = value
    if mtime_ns is not None:
        rec["mtime_ns"] = mtime_ns
    if info is not None and info.type == pafs.FileType.File:
        rec["stamp"] = stamp(info)
    return rec
