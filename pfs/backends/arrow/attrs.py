"""POSIX attributes on object stores: one hidden index object per directory, read with its listing.

S3 listings return no user metadata, so attributes kept on the objects themselves (s3fs's x-amz-meta-mode,
rclone's mtime) would cost a HEAD per file on every `ls -l`. Instead each directory that has attributes
holds one small JSON object, `<dir>/.pfs.attrs`, giving names their mode, uid, gid and modification time,
one column per attribute (version 2: a listing of 1,000 names parses it in a third of the time a record
per name took, version 1, which is still read). The directory's listing shows that object (and its size
and time), so:
- a directory without it (any dataset written by other tools) costs nothing more than today;
- one with it costs one GET when the index changed since it was last read, nothing otherwise (where the
  store can be asked directly: one signed GET sized by the listing; else pyarrow's HEAD then GET).
- a directory that its parent's index describes (made or changed through pfs) most likely has an index of
  its own: it is read and parsed at the same time as the listing instead of after it (`read_ahead`), and
  used when the listing shows the very object it read (size and modification second), so the index costs
  a listing neither a round trip nor its parsing time. Directories of other tools' datasets are never
  read ahead.

A record also keeps the stamp of the object it describes (size and modification second, as listings and
HEAD both report them): when another tool rewrites the object, the stamp no longer matches and the record
is ignored, so the file shows its new state. Records of directories and the root (name '') carry no stamp.

Updates are a read-merge-write of the whole index, serialised within a mount and merged record by record
(the newest change of a name wins) across mounts: after writing, the index is read back and written again
if another mount's write replaced ours. S3 offers no compare-and-swap to pyarrow, so two mounts changing the
same directory in the same instant may still lose one change (the last writer wins); see README.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow.fs as pafs

from pfs.backends.base import Entry, Kind, Meta
from pfs.errors import NotFound

INDEX = ".pfs.attrs"
VERSION = 2
FIELDS = ("mode", "uid", "gid", "mtime_ns")
#: Version 2's columns beside "names": FIELDS, the change time of each record ("t", for merging), and the
#: stamp of the object it describes ("size", "second"; null for directories). null: not set.
COLUMNS = (*FIELDS, "t", "size", "second")
#: Seconds an index read for a single name (stat) is trusted; listings always see the current one.
TRUST_S = 1.0
MAX_DIRS = 4096  # indexes kept in memory
MERGE_ATTEMPTS = 3
YOUNG_NS = 2 * 10**9  # an index written this recently may change again unseen (see _Cached.young)
AHEAD_ROOM = 4 << 20  # bytes a read-ahead GET asks for (the listing has not told the index's size yet)
AHEAD_THREADS = 4
MAX_AHEAD = 16  # read-aheads of directories not listed yet (a walker's next one), kept until listed
log = logging.getLogger(__name__)

Records = dict[str, dict[str, Any]]


#: What a record shows, ready for a listing: its attributes, and the (size, modification second) of the
#: object they were set on ((None, None) for directories and the root). A plain pair: a listing's index
#: is compiled into one per name, with no Python-level work per name beyond finding its Meta.
Shown = tuple[Meta, tuple[Any, Any]]
Shows = dict[str, Shown]


class Fetched(NamedTuple):
    """A whole index object read in one request, with its modification second (None: not told)."""

    data: bytes
    modified_s: int | None


class Index:
    """An index object's content: what listings show, compiled as it is read, and its records (for
    updates), built only when asked for."""

    __slots__ = ("_columns", "_directories", "_records", "shows")

    def __init__(self, shows: Shows, records: Records | None = None, columns: dict | None = None) -> None:
        self.shows = shows
        self._records = records
        self._columns = columns
        self._directories: list[str] | None = None

    def records(self) -> Records:
        if self._records is None:
            self._records = _records_of(self._columns or {})
        return self._records

    def directory_after(self, name: str) -> str | None:
        """The next name in order after `name` that this index describes as a directory (no stamp)."""
        if self._directories is None:
            self._directories = sorted(n for n, (_, kept) in self.shows.items() if kept[0] is None)
        i = bisect.bisect_right(self._directories, name)
        return self._directories[i] if i < len(self._directories) else None


EMPTY = Index({}, {})


@dataclass(frozen=True)
class ReadAhead:
    """An index read beside its directory's listing: what it was (size, modification second) and said."""

    size: int
    modified_s: int | None
    index: Index


def stamp(info: pafs.FileInfo) -> list[int]:
    """What identifies an object's version in both a listing and a HEAD: its size and modification second
    (HEAD answers in whole seconds, listings in milliseconds)."""
    return [info.size or 0, (info.mtime_ns or 0) // 1_000_000_000]


def meta_of(shown: Shown | None, kind: Kind, info: pafs.FileInfo | None) -> Meta | None:
    """The attributes `shown` for the entry listed as `info`, unless they were set on another version of
    it. (Once per entry of every listing: kept lean; the records were compiled when the index was read.)"""
    if shown is None:
        return None
    meta, kept = shown
    if kind is not Kind.DIR:
        if info is None or kept[0] != (info.size or 0):
            return None  # rewritten by another tool since (or never stamped): its attributes no longer apply
        # A time the client could not read (0: some servers, e.g. `rclone serve s3`, list times the AWS
        # SDK does not parse) tells nothing, in the listing or in the stamp: the size has to do.
        listed_s = (info.mtime_ns or 0) // 10**9
        if listed_s and kept[1] and kept[1] != listed_s:
            return None
    return meta


def apply(entry: Entry, shown: Shown | None, info: pafs.FileInfo | None) -> Entry:
    """`entry` with the attributes `shown` (see meta_of)."""
    meta = meta_of(shown, entry.kind, info)
    return entry if meta is None else Entry(entry.name, entry.kind, entry.size, entry.mtime_ns, meta)


def shown_of(record: dict[str, Any] | None) -> Shown | None:
    """One record compiled as a listing compiles its index (see Shown)."""
    return compile_records({"": record}).get("") if record else None


def compile_records(records: Records) -> Shows:
    """Records (version 1's form, and updates') compiled for listings (see Shown)."""
    kept = {n: r for n, r in records.items() if r and isinstance(r, dict)}
    names = list(kept)
    given = [r.get("stamp") for r in kept.values()]
    stamps = [s if isinstance(s, list) and len(s) == 2 else (None, None) for s in given]
    columns = {f: [r.get(f) for r in kept.values()] for f in FIELDS}
    return _compile(names, columns, [s[0] for s in stamps], [s[1] for s in stamps])


def _compile(names: list, columns: dict[str, list], sizes: list, seconds: list) -> Shows:
    """Names and their attribute columns -> what each name shows. Attributes that are not whole numbers
    (an index another program wrote) make their name show nothing; a stamp that is not two numbers never
    matches an object. Equal attributes share one Meta."""
    metas: dict[tuple, Meta | None] = {}

    def meta(values: tuple) -> Meta | None:
        mode, uid, gid, mtime_ns = values
        metas[values] = Meta(mode, uid, gid, mtime_ns=mtime_ns) if _numbers(values) else None
        return metas[values]

    get = metas.get  # a Meta is never empty, so `or` makes each kind of attributes once
    found = [get(values) or meta(values) for values in zip(*(columns[f] for f in FIELDS), strict=True)]
    shows = dict(zip(names, zip(found, zip(sizes, seconds, strict=True), strict=True), strict=True))
    if None in metas.values():
        shows = {name: shown for name, shown in shows.items() if shown[0] is not None}
    return shows


def _numbers(values: tuple) -> bool:
    *ids, mtime_ns = values
    return all(v is None or (type(v) is int and v >= 0) for v in ids) and (
        mtime_ns is None or type(mtime_ns) is int
    )


@dataclass
class _Cached:
    seen: tuple[int, int] | None  # (size, mtime_ns) of the index object; None: there is none
    at: float  # monotonic time it was read
    index: Index
    #: The index may have been rewritten within its modification second, same size, after it was read (a
    #: chmod 755 -> 700 keeps the size): then its size and time tell nothing, and the next listing reads it.
    young: bool = False


class AttrIndex:
    """The per-directory indexes of one mounted root. `key(dir)` maps a directory path to its index key;
    `call` runs a pyarrow call the backend's way (errors translated, retried); `publish` writes an object
    atomically; `read_whole(key, room)` reads an object of at most `room` bytes in one request (None: it is
    longer, or the store cannot be asked that way)."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        key: Callable[[str], str],
        call: Callable[..., Any],
        publish: Callable[[str, str, io.BytesIO, int], None],
        read_whole: Callable[[str, int], Fetched | None] | None = None,
    ) -> None:
        self._fs = fs
        self._key = key
        self._call = call
        self._publish = publish
        self._read_whole = read_whole
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()  # one read-merge-write at a time in this mount
        # Its threads start at the first read ahead (never, where no directory is described).
        self._ahead = ThreadPoolExecutor(AHEAD_THREADS, thread_name_prefix="pfs-attrs")
        self._next: dict[str, Future[ReadAhead | None]] = {}  # read ahead of the next directory's listing
        self._next_lock = threading.Lock()  # listings run in several threads

    # ---- reading ------------------------------------------------------------------------------------

    def _read(self, directory: str, size: int | None = None) -> Index | None:
        """The index of `directory`, listed as `size` bytes (None: not listed); None when there is none
        (any more)."""
        key = self._key(directory)

        def read() -> bytes:
            if size is not None and self._read_whole is not None:
                # Room for what another mount may have added since the listing, so one GET nearly always does.
                got = self._read_whole(key, 2 * size + 64 * 1024)
                if got is not None:
                    return got.data
            with self._fs.open_input_stream(key, compression=None) as f:
                return f.read()

        try:
            data = self._call(f"read attributes of {directory or '/'}", read)
        except NotFound:
            return None
        return _parse(key, data)

    def read_ahead(self, directory: str) -> Future[ReadAhead | None] | None:
        """Start reading `directory`'s index beside its listing, where it most likely has one that is not
        known here yet (see the module's notes); hand the answer to `listed`. The index of the next
        directory its parent describes is read too, for a walker (`ls -lR`, `find`, `rsync`) to find it
        read when it lists that one: at most one read more per listing, and only of described ones."""
        if not directory or self._read_whole is None:
            return None
        parent, _, name = directory.rpartition("/")
        described = self._cache.get(parent)
        if described is None:
            return None
        with self._next_lock:
            own = self._next.pop(directory, None)
            if own is None and self._wanted(directory, described.index, name):
                own = self._ahead.submit(self._fetch_quietly, self._key(directory))
            after = described.index.directory_after(name)
            sibling = f"{parent}/{after}" if parent and after else after
            if (
                sibling is not None
                and sibling not in self._next
                and self._wanted(sibling, described.index, after)
            ):
                if len(self._next) >= MAX_AHEAD:  # not walked after all: the oldest guess goes
                    self._next.pop(next(iter(self._next))).cancel()
                self._next[sibling] = self._ahead.submit(self._fetch_quietly, self._key(sibling))
        return own

    def _wanted(self, directory: str, parent_index: Index, name: str | None) -> bool:
        """Whether to read `directory`'s index ahead: its parent describes it, and it is not known here
        (or was read while it could still change unseen)."""
        if name not in parent_index.shows:
            return False
        cached = self._cache.get(directory)
        return cached is None or cached.young

    def _fetch_quietly(self, key: str) -> ReadAhead | None:
        assert self._read_whole is not None
        try:
            got = self._read_whole(key, AHEAD_ROOM)
        except Exception as exc:  # a guess that failed: the listing's own read asks again and reports
            log.debug("%s: read ahead failed: %s", key, exc)
            return None
        if got is None:
            return None
        return ReadAhead(len(got.data), got.modified_s, _parse(key, got.data))

    def _remember(self, directory: str, seen: tuple[int, int] | None, index: Index) -> _Cached:
        if len(self._cache) >= MAX_DIRS:
            self._cache.clear()
        young = seen is not None and time.time_ns() - seen[1] < YOUNG_NS
        cached = self._cache[directory] = _Cached(seen, time.monotonic(), index, young)
        return cached

    def listed(
        self, directory: str, index_info: pafs.FileInfo | None, ahead: Future[ReadAhead | None] | None = None
    ) -> Shows:
        """What the index of `directory` shows, whose listing showed its index object as `index_info`
        (None: none): read again only when the index changed since it was last read; `ahead`: what
        `read_ahead` started."""
        return self._listed(directory, index_info, ahead).index.shows

    def _listed(
        self, directory: str, index_info: pafs.FileInfo | None, ahead: Future[ReadAhead | None] | None = None
    ) -> _Cached:
        seen = None if index_info is None else (index_info.size or 0, index_info.mtime_ns or 0)
        cached = self._cache.get(directory)
        if cached is not None and cached.seen == seen and not cached.young:
            cached.at = time.monotonic()
            return cached
        if seen is None:
            return self._remember(directory, None, EMPTY)
        got = None if ahead is None else ahead.result()
        if got is not None and got.size == seen[0] and got.modified_s == seen[1] // 10**9:
            return self._remember(directory, seen, got.index)  # the very object listed
        index = self._read(directory, seen[0])
        if index is None:  # gone since it was listed (or not readable yet): not remembered, asked again
            self._cache.pop(directory, None)
            return _Cached(None, 0.0, EMPTY)
        return self._remember(directory, seen, index)

    def records(self, directory: str) -> Records:
        """The records of `directory` for a single name (stat): the index read within TRUST_S, else read."""
        return self._current(directory).index.records()

    def shows(self, directory: str) -> Shows:
        """What the index of `directory` shows, as `records` reads it."""
        return self._current(directory).index.shows

    def _current(self, directory: str) -> _Cached:
        cached = self._cache.get(directory)
        if cached is not None and time.monotonic() - cached.at < TRUST_S:
            return cached
        info = self._call(
            f"stat attributes of {directory or '/'}", lambda: self._fs.get_file_info(self._key(directory))
        )
        return self._listed(directory, info if info.type == pafs.FileType.File else None)

    # ---- changing -----------------------------------------------------------------------------------

    def update(self, directory: str, changes: dict[str, dict[str, Any] | None]) -> None:
        """Set (a record) or drop (None) the records of names in `directory`, merged with what other mounts
        wrote meanwhile: for each name the record changed last wins."""
        now = time.time_ns()
        mine = {name: (None if rec is None else {**rec, "t": now}) for name, rec in changes.items()}
        with self._lock:
            for _ in range(MERGE_ATTEMPTS):
                records = dict(_records_in(self._read(directory)))
                for name, rec in mine.items():
                    theirs = records.get(name)
                    if theirs is not None and theirs.get("t", 0) > now:
                        continue  # another mount changed it after us
                    if rec is None:
                        records.pop(name, None)
                    else:
                        records[name] = rec
                self._write(directory, records)
                back = _records_in(self._read(directory))
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
        data = encode(records)
        self._publish(directory, key, io.BytesIO(data), len(data))

    def forget(self, directory: str) -> None:
        self._cache.pop(directory, None)


def _records_in(index: Index | None) -> Records:
    return {} if index is None else index.records()


def encode(records: Records) -> bytes:
    """Records as a version 2 index object: a column per attribute (see COLUMNS)."""
    names = list(records)
    rows = [records[n] for n in names]
    doc: dict[str, Any] = {"version": VERSION, "names": names}
    for field in (*FIELDS, "t"):
        doc[field] = [r.get(field) for r in rows]
    stamps = [r.get("stamp") or (None, None) for r in rows]
    doc["size"] = [s[0] for s in stamps]
    doc["second"] = [s[1] for s in stamps]
    return json.dumps(doc, separators=(",", ":")).encode()


def _records_of(columns: dict[str, list]) -> Records:
    """Version 2's columns as records (what updates merge), with the nulls left out."""
    records: Records = {}
    for i, name in enumerate(columns["names"]):
        rec = {f: columns[f][i] for f in (*FIELDS, "t") if columns[f][i] is not None}
        if columns["size"][i] is not None:
            rec["stamp"] = [columns["size"][i], columns["second"][i]]
        records[name] = rec
    return records


def _parse(key: str, data: bytes) -> Index:
    """An index object's bytes, either version; an empty index (and one warning) when they are not one."""
    try:
        doc = json.loads(data)
        if doc.get("version") == 1:
            records = doc["entries"]
            if not isinstance(records, dict):
                raise TypeError("entries is not an object")
            return Index(compile_records(records), records)
        names = doc["names"]
        columns = {"names": names, **{c: doc.get(c) or [None] * len(names) for c in COLUMNS}}
        if not all(isinstance(col, list) and len(col) == len(names) for col in columns.values()):
            raise TypeError("its columns are not lists of one value per name")
        return Index(_compile(names, columns, columns["size"], columns["second"]), columns=columns)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("%s: unreadable attribute index, ignored: %s", key, exc)
        return EMPTY


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
