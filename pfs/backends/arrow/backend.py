"""`ArrowBackend`: the `Backend` contract over a pyarrow FileSystem and a root path.

One class serves every store. What differs between hierarchical stores (file://, HDFS: real directories,
rename) and object stores (S3, BOS: keys, 'dir/' marker objects, prefixes without markers, copy + delete)
is decided in a few places that test `Store.object_store` / `Store.move_replaces`: make_dir, the
directory branch of rename, write_file (via transfer.py), name limits and space().

Conventions every store shares:
- Symlinks are regular objects `<name>.rclonelink` holding the target (UTF-8), the representation of
  `rclone --links`, so rclone and pfs read each other's links. A *file* whose name ends in `.rclonelink` is
  never shown under that name; creating one is refused (PermissionDenied).
- An empty object of Content-Type application/x-directory (older S3 tools' directories, no trailing
  slash) is a directory in stat, listings, rmdir and rename alike (`_is_directory_object`).
- `.pfs` at the top of the root is reserved for pfs's own data: hidden from listings, NotFound for stat,
  PermissionDenied for changes. `reserved_area()` gives pfs itself a backend rooted there.
- Object stores and HDFS keep POSIX attributes (mode, uid, gid, mtime) in a hidden index object per
  directory, `.pfs.attrs`, reserved like `.pfs` in every directory (arrow/attrs.py).

Every call into pyarrow goes through `_call`: errors are translated (arrow/errors.py) and `Transient` ones
retried under the deadline (pfs/backends/retry.py). This module must never let a pyarrow exception escape.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TypeVar

import pyarrow.fs as pafs

from pfs.backends.arrow import attrs, replace, transfer
from pfs.backends.arrow.connect import Store
from pfs.backends.arrow.errors import translate
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
from pfs.backends.retry import retry_call
from pfs.backends.watchdog import run_bounded
from pfs.errors import (
    AlreadyExists,
    BackendError,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
    PfsError,
    Stale,
    Transient,
)

T = TypeVar("T")

LINK_SUFFIX = ".rclonelink"
DIRECTORY_CONTENT_TYPE = b"application/x-directory"
MAX_REMEMBERED = 100_000  # empty objects whose Content-Type is remembered (then forgotten at once)
RESERVED = ".pfs"
log = logging.getLogger(__name__)

MAX_NAME_BYTES = 255  # one path component, as on Linux filesystems
MAX_KEY_BYTES = 1024  # a whole object key, as on S3
MAX_LONG_NAMES_REPORTED = 1000
MAX_LINK_BYTES = 4096  # PATH_MAX: a symlink target longer than this is not a symlink
# Object stores have no capacity; report a size no real dataset reaches so that `df` and free-space checks
# above never refuse a write (1 PiB total, all of it free).
UNBOUNDED_BYTES = 1 << 50
# A file modified less than this long ago, by a clock that counts whole seconds, may still be rewritten within
# the same second (the cache trusts an ETag after the same margin, pfs.fs.versions.TRUST_MARGIN_S).
YOUNG_NS = 2 * 10**9
MIN_ATTEMPT = 0.1  # seconds: the shortest bound given to a retry that starts just before the deadline
# Longest wait for a name being replaced on HDFS to reappear (two NameNode calls apart when healthy).
REPLACE_WAIT = 2.0

_FILE, _DIR = pafs.FileType.File, pafs.FileType.Directory


def _name(path: str) -> str:
    return path.rpartition("/")[2]


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


class _Counting:
    """A source that counts the bytes read from it: an upload's progress, for the watchdog."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._read += len(data)
        return data

    def total(self) -> int:
        return self._read


class ArrowBackend(Backend):
    def __init__(self, store: Store, *, subdir: str = "", hide_reserved: bool = True) -> None:
        self._store = store
        self._fs = store.fs
        self._root = f"{store.root.rstrip('/')}/{subdir}" if subdir else store.root
        self._prefix = self._root.rstrip("/") + "/"  # '/' for file:///, so paths never start with '//'
        self._hide_reserved = hide_reserved
        self._tmp_dir = f"{store.root.rstrip('/')}/{RESERVED}/tmp"
        self._aside_dir = f"{store.root.rstrip('/')}/{RESERVED}/replacing"  # see replace.py
        self.id = f"{store.id}/{subdir}" if subdir else store.id
        self.streams_uploads = store.object_store
        self.timeout = store.timeout
        self._long_names: set[str] = set()  # left out of listings, reported once each
        self._directory_objects: dict[tuple[str, int | None], bool] = {}  # see _is_directory_object
        # Hierarchical stores answer a stat from local metadata (file://) or the NameNode's memory (HDFS, one
        # RPC): an open then sees the latest version, as close-to-open consistency wants. An object store's
        # HEAD costs a round trip to a remote server, so opens trust attributes within the metadata TTL.
        self.cheap_open = not store.object_store
        self.reads_first = store.getter is not None
        self._attrs: attrs.AttrIndex | None = None
        # HDFS keeps permissions, owners and times natively, but pyarrow can neither read (beyond mtime) nor
        # change them: the mount's attributes live in the index there too. file:// keeps them on its files.
        if hide_reserved and (store.object_store or isinstance(store.fs, pafs.HadoopFileSystem)):
            self._attrs = attrs.AttrIndex(
                self._fs, self._index_key, self._call, self._publish, self._read_whole
            )
            self.stored_meta = frozenset(attrs.FIELDS)
            self.reserved_names = frozenset({attrs.INDEX})

    def reserved_area(self) -> ArrowBackend:
        """A backend rooted at `<root>/.pfs`, where pfs keeps its own data (snapshots)."""
        return ArrowBackend(self._store, subdir=RESERVED, hide_reserved=False)

    # ---- plumbing -----------------------------------------------------------------------------------

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        give_up: Callable[[Transient], bool] | None = None,
        progress: Callable[[], int] | None = None,
        op: str | None = None,
    ) -> T:
        """Run one pyarrow call: errors translated, Transient ones retried until the deadline. Where calls
        may hang in the client library, each attempt is bounded by what is left of the deadline (or, for a
        transfer that reports `progress`, by the deadline since the last progress).

        Every request to the store through pyarrow passes here, so this is where they are timed: as `op`, or
        else the first word of `what` (each `what` starts with a fixed word: stat, list, read, write, ...)."""
        deadline = time.monotonic() + self._store.timeout

        def bounded() -> T:
            if not self._store.hangs:
                return fn()
            if progress is not None:
                return run_bounded(fn, self._store.timeout, what, progress)
            return run_bounded(fn, max(MIN_ATTEMPT, deadline - time.monotonic()), what)

        def attempt() -> T:
            try:
                return bounded()
            except PfsError:
                raise
            except Exception as exc:
                raise translate(exc, what) from exc

        budget = self._store.attempt_budget
        return self._timed(
            op or what.partition(" ")[0],
            lambda: retry_call(attempt, timeout=self._store.timeout, attempt_budget=budget, give_up=give_up),
        )

    def _timed(self, op: str, request: Callable[[], T]) -> T:
        """`request()`, one request to the store, its duration told to `on_request`."""
        start = time.perf_counter()
        try:
            return request()
        finally:
            if self.on_request is not None:
                self.on_request(op, time.perf_counter() - start)

    def _full(self, path: str) -> str:
        return self._prefix + path if path else self._root

    def _index_key(self, directory: str) -> str:
        return f"{self._full(directory).rstrip('/')}/{attrs.INDEX}"

    def _read_whole(self, key: str, room: int) -> attrs.Fetched | None:
        """Object `key` (bucket/name) in one GET; None when it is longer than `room` bytes, empty, or the
        store cannot be asked directly (the caller then streams it)."""
        getter = self._store.getter
        if getter is None:
            return None
        bucket, _, name = key.partition("/")
        try:
            first, data = getter.first(bucket, name, room)
        except Stale:
            return None
        return attrs.Fetched(data, first.modified_s) if first.size <= len(data) else None

    def _check(self, path: str, *, creating: bool = False, stored_as: str = "") -> None:
        """Refuse paths the store cannot hold or pfs reserves. `creating`: a new name is being made;
        `stored_as`: what the representation appends to the name (the link suffix, a marker's '/')."""
        if not path:
            return
        parts = path.split("/")
        for part in parts:
            if part in ("", ".", ".."):
                raise NotFound(f"{path}: invalid path")
            if len(part.encode()) > MAX_NAME_BYTES:
                raise NameTooLong(f"{path}: a name is longer than {MAX_NAME_BYTES} bytes")
        if len((parts[-1] + stored_as.rstrip("/")).encode()) > MAX_NAME_BYTES:
            raise NameTooLong(f"{path}: the name is too long to be stored as a symlink")
        if self._store.object_store:
            key = self._full(path).partition("/")[2] + stored_as
            if len(key.encode()) > MAX_KEY_BYTES:
                raise NameTooLong(f"{path}: the object key would be longer than {MAX_KEY_BYTES} bytes")
        if (self._hide_reserved and parts[0] == RESERVED) or (
            self._attrs is not None and parts[-1] == attrs.INDEX
        ):
            raise PermissionDenied(f"{path}: reserved for pfs") if creating else NotFound(path)

    def _check_new_leaf(self, path: str) -> None:
        if _name(path).endswith(LINK_SUFFIX):
            raise PermissionDenied(f"{path}: names ending in {LINK_SUFFIX} are reserved for symlinks")

    def _report_long_name(self, path: str) -> None:
        if path not in self._long_names and len(self._long_names) < MAX_LONG_NAMES_REPORTED:
            self._long_names.add(path)
            log.warning("left %s out of a listing: a name is longer than %d bytes", path, MAX_NAME_BYTES)

    def _entry(self, name: str, info: pafs.FileInfo, kind: Kind, shown: attrs.Shown | None = None) -> Entry:
        size = (info.size or 0) if kind is not Kind.DIR else 0
        return Entry(name, kind, size, info.mtime_ns or 0, attrs.meta_of(shown, kind, info))

    def _lookup(self, path: str) -> Entry | None:
        """The entry at `path`, or None. On a store that replaces a file in two steps (HDFS, replace.py),
        a name found missing while it is being replaced is waited for, so the reader sees old or new."""
        entry = self._lookup_once(path)
        if entry is not None or self._store.move_replaces or not path:
            return entry
        full = self._full(path)
        replacing = self._call(f"stat {path}", lambda: replace.in_flight(self._fs, self._aside_dir, full))
        entry = self._lookup_once(path)  # a replace may have ended, its aside copy gone, while we looked
        if not replacing:
            return entry
        deadline = time.monotonic() + min(REPLACE_WAIT, self._store.timeout)
        while entry is None and time.monotonic() < deadline:
            time.sleep(0.005)
            entry = self._lookup_once(path)
        return entry

    def _lookup_once(self, path: str) -> Entry | None:
        """The entry at `path`, or None. The name itself is asked first: files and directories, the common
        case, then cost one request (one HEAD on S3) instead of also probing for a link object."""
        if not path:
            return self._root_entry()
        full = self._full(path)
        name = _name(path)
        own = self._call(f"stat {path}", lambda: self._fs.get_file_info(full))
        if own.type == _DIR:
            return self._with_attrs(path, self._entry(name, own, Kind.DIR), own)
        if own.type == _FILE and not name.endswith(LINK_SUFFIX):
            return self._with_attrs(path, self._entry(name, own, Kind.FILE), own)
        # A name too long to carry the suffix cannot have a link object (asking for one fails on file://).
        if len(name.encode()) + len(LINK_SUFFIX) > MAX_NAME_BYTES:
            return None
        link = self._call(f"stat {path}", lambda: self._fs.get_file_info(full + LINK_SUFFIX))
        return (
            self._with_attrs(path, self._entry(name, link, Kind.SYMLINK), link)
            if link.type == _FILE
            else None
        )

    def _with_attrs(self, path: str, entry: Entry, info: pafs.FileInfo | None) -> Entry:
        """`entry` with the attributes its directory's index keeps for it (object stores)."""
        if self._attrs is None:
            return entry
        return attrs.apply(entry, self._attrs.shows(_parent(path)).get(_name(path)), info)

    def _root_entry(self) -> Entry:
        if self._store.object_store:
            # A prefix with nothing under it yet is an empty mount, not an error.
            return self._with_attrs("", Entry("", Kind.DIR), None)
        info = self._call("stat /", lambda: self._fs.get_file_info(self._root))
        if info.type != _DIR:
            raise NotFound(f"the root {self._root} is gone")
        return self._entry("", info, Kind.DIR)

    def _require_dir(self, path: str) -> Entry:
        entry = self._lookup(path)
        if entry is None:
            raise NotFound(f"{path or '/'}: no such directory")
        if entry.kind is not Kind.DIR:
            raise NotADirectory(f"{path}: not a directory")
        return entry

    def _entries(
        self, infos: list[pafs.FileInfo], directory: str, ahead: Future[attrs.ReadAhead | None] | None = None
    ) -> dict[str, Entry]:
        """Names of one directory -> entries: link objects become symlinks, reserved names disappear, the
        attributes of the directory's index apply (`ahead`: its index, being read beside the listing). A
        real file or directory wins over a symlink of the same name (both can exist on object stores)."""
        entries: dict[str, Entry] = {}
        links: dict[str, Entry] = {}
        shows: attrs.Shows = {}
        if self._attrs is not None:
            index = next((i for i in infos if i.base_name == attrs.INDEX and i.type == _FILE), None)
            shows = self._attrs.listed(directory, index, ahead)
        for info in infos:
            name = info.base_name
            if not directory and self._hide_reserved and name == RESERVED:
                continue
            if self._attrs is not None and name == attrs.INDEX:
                continue
            if len(name.encode()) > MAX_NAME_BYTES:  # no Linux program could open it: leave it out
                self._report_long_name(info.path)
                continue
            kind = info.type
            if kind == _FILE and name.endswith(LINK_SUFFIX):
                if len(name) > len(LINK_SUFFIX):
                    target_name = name[: -len(LINK_SUFFIX)]
                    links[target_name] = self._entry(target_name, info, Kind.SYMLINK, shows.get(target_name))
            elif kind == _FILE and self._is_directory_object(info):
                entries[name] = self._entry(name, info, Kind.DIR, shows.get(name))
            elif kind == _FILE:
                entries[name] = self._entry(name, info, Kind.FILE, shows.get(name))
            elif kind == _DIR:
                # S3 allows a key 'a' beside keys 'a/...': stat() finds the file, so the listing shows it too.
                entries.setdefault(name, self._entry(name, info, Kind.DIR, shows.get(name)))
        for name, link in links.items():
            entries.setdefault(name, link)
        return entries

    def _is_directory_object(self, info: pafs.FileInfo) -> bool:
        """An empty object that older S3 tools wrote for a directory, without the trailing slash but with
        Content-Type application/x-directory. pyarrow's stat calls it a directory and its listings a file;
        pfs calls it a directory everywhere, which costs one HEAD per empty object the first time a listing
        shows it (answers are remembered by key and modification time, so relisting costs nothing)."""
        if not self._store.object_store or info.size:
            return False
        seen_as = (info.path, info.mtime_ns)
        known = self._directory_objects.get(seen_as)
        if known is not None:
            return known

        def content_type() -> bytes:
            with self._fs.open_input_file(info.path) as f:
                return (f.metadata() or {}).get("Content-Type", b"")

        try:
            found = self._call(f"stat {info.base_name}", content_type)
        except NotFound:  # removed since it was listed
            return False
        if len(self._directory_objects) >= MAX_REMEMBERED:
            self._directory_objects.clear()
        is_dir = self._directory_objects[seen_as] = (
            found.split(b";")[0].strip().lower() == DIRECTORY_CONTENT_TYPE
        )
        return is_dir

    def _remove_directory_object(self, path: str) -> bool:
        """Remove the directory object of `path` if there is one (see _is_directory_object)."""
        if not self._store.object_store:
            return False
        full = self._full(path)
        try:
            self._call(f"rmdir {path}", lambda: self._fs.delete_file(full))
        except NotFound:
            return False
        return True

    # ---- reading the namespace ----------------------------------------------------------------------

    def stat(self, path: str) -> Entry:
        self._check(path)
        entry = self._lookup(path)
        if entry is None:
            raise NotFound(f"{path}: no such file or directory")
        return entry

    def list_dir(self, path: str) -> list[Entry]:
        self._check(path)
        # An object-store root with nothing under it yet lists as empty instead of not found.
        selector = pafs.FileSelector(self._full(path), allow_not_found=not path and self._store.object_store)
        ahead = self._attrs.read_ahead(path) if self._attrs is not None else None
        try:
            infos = self._call(f"list {path or '/'}", lambda: self._fs.get_file_info(selector))
        except NotFound:
            self._require_dir(path)  # NotFound or NotADirectory, unless an implicit directory just emptied
            return []
        return sorted(self._entries(infos, path, ahead).values(), key=lambda e: e.name)

    def walk(self, path: str) -> Iterator[tuple[str, Entry]]:
        self._check(path)
        if path:
            self._require_dir(path)
        selector = pafs.FileSelector(self._full(path), recursive=True, allow_not_found=True)
        infos = self._call(f"walk {path or '/'}", lambda: self._fs.get_file_info(selector))
        by_dir: dict[str, list[pafs.FileInfo]] = {}
        for info in infos:
            rel = info.path[len(self._prefix) :]
            if self._hide_reserved and (rel == RESERVED or rel.startswith(RESERVED + "/")):
                continue
            by_dir.setdefault(_parent(rel), []).append(info)
        found = []
        for parent, group in by_dir.items():
            for name, entry in self._entries(group, parent).items():
                found.append((f"{parent}/{name}" if parent else name, entry))
        yield from sorted(found, key=lambda item: item[0])

    def read_symlink(self, path: str) -> str:
        self._check(path)
        key = self._full(path) + LINK_SUFFIX

        def read() -> bytes:
            with self._fs.open_input_stream(key, compression=None) as f:
                data = f.read(MAX_LINK_BYTES + 1)
            if len(data) > MAX_LINK_BYTES:
                raise BackendError(f"readlink {path}: {key} is too large to be a symlink")
            return data

        return self._call(f"readlink {path}", read).decode("utf-8", "surrogateescape")

    def known_version(self, path: str, size: int, mtime_ns: int) -> str | None:
        # Object stores keep modification times to the second: a same-size rewrite needs the ETag.
        if self._store.object_store:
            return None
        # HDFS's modification times reach pfs in whole seconds, and there is no ETag: a file changed in
        # the last seconds may be rewritten, same size, within its second, so its attributes identify
        # nothing yet (each open then reads its own version). A later rewrite gets a later second.
        if self._store.mtime_seconds and mtime_ns > time.time_ns() - YOUNG_NS:
            return None
        return super().known_version(path, size, mtime_ns)

    def open_reader(self, path: str, size: int) -> Reader:
        self._check(path)
        if self._store.getter is not None:  # reads a body with a third of pyarrow's CPU (see s3get)
            return transfer.RangedReader(self._store.getter, self._call, path, self._full(path), size)
        return transfer.ArrowReader(self._fs, self._call, path, self._full(path), size)

    def read_first(
        self, path: str, size: int, length: int, mtime_ns: int | None = None
    ) -> tuple[bytes, str] | None:
        getter = self._store.getter
        if getter is None or size <= 0:
            return None
        self._check(path)
        bucket, _, key = self._full(path).partition("/")
        first, data = self._call(f"read {path}", lambda: getter.first(bucket, key, min(length, size)))
        if first.size != size:
            raise Stale(f"{path} changed: {first.size} bytes now, {size} when looked up")
        if mtime_ns is not None:
            if first.modified_s is None:
                return None  # the caller checks the time otherwise
            if first.modified_s != mtime_ns // 1_000_000_000:
                raise Stale(f"{path} changed: modified at {first.modified_s} s, not {mtime_ns // 10**9} s")
        return data, first.etag

    def space(self) -> SpaceInfo:
        if isinstance(self._fs, pafs.LocalFileSystem):
            st = os.statvfs(self._root)
            return SpaceInfo(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
        # Object stores have no capacity, and pyarrow offers no HDFS capacity query.
        return SpaceInfo(UNBOUNDED_BYTES, UNBOUNDED_BYTES)

    # ---- changing the namespace ---------------------------------------------------------------------

    def _publish(
        self,
        path: str,
        key: str,
        source: Upload,
        size: int,
        guard: UploadGuard | None = None,
        write: Callable[[Source, UploadGuard], None] | None = None,
    ) -> None:
        """Write `size` bytes of `source` under `key` atomically; retried from the start if `source` can
        seek back, else tried once. `write(source, guard)`: how one attempt writes, where the store's own
        way (a multipart upload, a temporary file moved into place) is not wanted."""
        start = source.tell() if source.seekable() else None
        guard = guard or UploadGuard()
        counted = _Counting(source)

        def once() -> None:
            if start is not None:
                source.seek(start)
            guard.retry()
            if write is not None:
                write(counted, guard)
            elif self._store.object_store:
                streamer = self._streamer(key)
                transfer.upload_object(self._fs, key, counted, size, path, guard, self._putter(key), streamer)
            else:
                aside = None if self._store.move_replaces else self._aside_dir
                transfer.write_via_temp(self._fs, self._tmp_dir, key, counted, size, path, aside, guard)

        give_up = (lambda exc: True) if start is None else None
        self._call(f"write {path}", once, give_up=give_up, progress=counted.total)

    def upload_memory(self, size: int | None) -> int:
        return transfer.upload_memory(size, self._store.object_store)

    def _look_before_put(self, path: str, full: str) -> None:
        """Where pyarrow uploads, a look at the name before it: a store that stopped answering is found out
        before a PUT is sent (a PUT its waiter gave up on may still land later). Uploads signed here need
        none: their PUT sends its body only once the store answered (`ObjectGetter.put`), and a multipart
        upload completes only once the store acknowledged every part."""
        if self._store.getter is not None:
            return
        own = self._call(f"stat {path}", lambda: self._fs.get_file_info(full))
        if own.type == _DIR:
            raise IsADirectory(f"{path}: is a directory")

    def _putter(self, key: str) -> Callable[[bytes, Callable[[], None]], None] | None:
        """A one-request PUT of object `key` (bucket/key), where the credentials are known here."""
        getter = self._store.getter
        if getter is None:
            return None
        bucket, _, name = key.partition("/")
        return lambda data, before_body: getter.put(bucket, name, data, before_body)

    def _streamer(self, key: str) -> transfer.Streamer | None:
        """A multipart upload of object `key` (bucket/key) signed here, where the credentials are known."""
        getter = self._store.getter
        if getter is None:
            return None
        # Its requests are timed as "multipart": the whole upload is already timed as the "write" it runs in.
        call = functools.partial(self._call, op="multipart")
        return lambda source, guard: transfer.stream_parts(getter, call, key, source, guard)

    def _object_info(self, path: str, key: str) -> pafs.FileInfo:
        info = self._call(f"stat {path}", lambda: self._fs.get_file_info(key))
        if info.type != _FILE:
            raise NotFound(f"{path}: vanished right after it was written")
        return info

    def _stat_key(self, path: str, key: str, kind: Kind) -> Entry:
        return self._entry(_name(path), self._object_info(path, key), kind)

    def write_file(
        self,
        path: str,
        source: Upload,
        size: int,
        guard: UploadGuard | None = None,
        *,
        plain: bool = False,
        meta: Meta | None = None,
    ) -> Entry:
        self._check(path, creating=True)
        self._check_new_leaf(path)
        if plain and self._store.object_store:
            full = self._full(path)
            self._look_before_put(path, full)
            self._publish(path, full, source, size, guard)
            if self._attrs is None or meta is None:
                return Entry(_name(path), Kind.FILE, size, time.time_ns())
            info = self._object_info(path, full)  # its stamp for the record
            return self._keep_attrs(path, self._entry(_name(path), info, Kind.FILE), info, meta, None)
        existing = self._lookup(path)
        if existing is not None and existing.kind is Kind.DIR:
            raise IsADirectory(f"{path}: is a directory")
        full = self._full(path)
        self._publish_version(path, full, source, size, guard, existing, meta)
        if existing is not None and existing.kind is Kind.SYMLINK:
            self._call(f"write {path}", lambda: self._fs.delete_file(full + LINK_SUFFIX))
        info = self._object_info(path, full)
        entry = self._entry(_name(path), info, Kind.FILE)
        if self._attrs is None:
            return entry
        old = existing.meta if existing is not None and existing.kind is Kind.FILE else None
        return self._keep_attrs(path, entry, info, meta, old)

    def _keep_attrs(
        self, path: str, entry: Entry, info: pafs.FileInfo, meta: Meta | None, old: Meta | None
    ) -> Entry:
        """Record the attributes of a file just written: those given, else those the file it replaced had
        (a rewrite keeps its mode and owner, not its old modification time)."""
        assert self._attrs is not None
        new, keep = meta or Meta(), old or Meta()
        merged = Meta(
            mode=first_given(new.mode, keep.mode),
            uid=first_given(new.uid, keep.uid),
            gid=first_given(new.gid, keep.gid),
        )
        rec = attrs.record(merged, new.mtime_ns, info)
        if len(rec) > 1:  # more than the stamp
            self._attrs.update(_parent(path), {_name(path): rec})
            return attrs.apply(entry, attrs.shown_of(rec), info)
        if old is not None:  # the replaced file's record no longer applies
            self._attrs.update(_parent(path), {_name(path): None})
        return entry

    def set_meta(self, path: str, change: MetaChange) -> Entry:
        if self._attrs is None:
            return super().set_meta(path, change)
        self._check(path)
        entry = self._lookup(path)
        if entry is None:
            raise NotFound(f"{path}: no such file or directory")
        info = None
        if entry.kind is not Kind.DIR:
            suffix = LINK_SUFFIX if entry.kind is Kind.SYMLINK else ""
            info = self._object_info(path, self._full(path) + suffix)
        old = entry.meta or Meta()
        merged = Meta(
            mode=first_given(change.mode, old.mode),
            uid=first_given(change.uid, old.uid),
            gid=first_given(change.gid, old.gid),
        )
        # The shown modification time is pinned too: a copy by the store (mv) must not change it.
        rec = attrs.record(merged, first_given(change.mtime_ns, old.mtime_ns, entry.mtime_ns or None), info)
        self._attrs.update(_parent(path), {_name(path): rec})
        return attrs.apply(entry, attrs.shown_of(rec), info)

    def _publish_version(
        self,
        path: str,
        key: str,
        source: Upload,
        size: int,
        guard: UploadGuard | None,
        existing: Entry | None,
        meta: Meta | None,
    ) -> None:
        """The write of `write_file`, replacing `existing`; `meta` is not kept by this store."""
        self._publish(path, key, source, size, guard)

    def stream_file(self, path: str, source: Upload, guard: UploadGuard) -> Entry:
        if not self._store.object_store:
            return super().stream_file(path, source, guard)
        self._check(path, creating=True)
        self._check_new_leaf(path)
        full = self._full(path)
        streamer = self._streamer(full) or (lambda src, g: transfer.stream_object(self._fs, full, src, g))
        # Tried once: the source cannot go back to send the parts again (each part is retried on its own).
        size = self._call(f"write {path}", lambda: streamer(source, guard), give_up=lambda exc: True)
        return Entry(_name(path), Kind.FILE, size, time.time_ns())

    def copy_file(self, src: str, dst: str) -> None:
        self._check(src)
        self._check(dst, creating=True)
        self._check_new_leaf(dst)
        self._call(f"copy {src}", lambda: self._fs.copy_file(self._full(src), self._full(dst)))

    def put_file(self, path: str, source: Upload, size: int) -> None:
        self._check(path, creating=True)
        self._check_new_leaf(path)
        self._publish(path, self._full(path), source, size)

    def write_symlink(self, path: str, target: str) -> Entry:
        self._check(path, creating=True, stored_as=LINK_SUFFIX)
        self._check_new_leaf(path)
        if self._lookup(path) is not None:
            raise AlreadyExists(f"{path}: already exists")
        data = target.encode("utf-8", "surrogateescape")
        if not data or len(data) > MAX_LINK_BYTES:
            raise NameTooLong(f"{path}: a symlink target must be 1 to {MAX_LINK_BYTES} bytes")
        key = self._full(path) + LINK_SUFFIX
        self._publish(path, key, io.BytesIO(data), len(data))
        return self._stat_key(path, key, Kind.SYMLINK)

    def make_dir(self, path: str) -> None:
        if not path:
            raise AlreadyExists("/: the root exists")
        self._check(path, creating=True, stored_as="/")
        if self._lookup(path) is not None:
            raise AlreadyExists(f"{path}: already exists")
        # The reserved area's own root `.pfs` appears with the first directory made in it.
        reserved_area = not self._hide_reserved
        if not reserved_area:
            self._require_dir(_parent(path))
        # Object stores: a 'path/' marker object; recursive also writes a missing marker for the mount's
        # own prefix. Hierarchical stores: exactly one mkdir, the parent was checked above.
        full = self._full(path)
        recursive = self._store.object_store or reserved_area
        self._call(f"mkdir {path}", lambda: self._fs.create_dir(full, recursive=recursive))

    def remove_file(self, path: str) -> None:
        self._check(path)
        entry = self._lookup(path)
        if entry is None:
            raise NotFound(f"{path}: no such file")
        if entry.kind is Kind.DIR:
            raise IsADirectory(f"{path}: is a directory")
        key = self._full(path) + (LINK_SUFFIX if entry.kind is Kind.SYMLINK else "")
        # On object stores pyarrow re-creates the parent's marker when its last object goes, so the
        # directory stays (checked with SeaweedFS).
        self._call(f"unlink {path}", lambda: self._fs.delete_file(key))
        self._drop_attrs(path)

    def _drop_attrs(self, *paths: str) -> None:
        """Forget the records of names just removed or moved away (a request only where there are some)."""
        if self._attrs is None:
            return
        by_dir: dict[str, dict[str, dict | None]] = {}
        for path in paths:
            if _name(path) in self._attrs.records(_parent(path)):
                by_dir.setdefault(_parent(path), {})[_name(path)] = None
        for directory, changes in by_dir.items():
            self._attrs.update(directory, changes)

    def remove_dir(self, path: str) -> None:
        if not path:
            raise PermissionDenied("/: the root cannot be removed")
        self._check(path)
        self._require_dir(path)
        # pyarrow's delete_dir removes a whole tree: refuse unless the directory is empty.
        if self.list_dir(path):
            raise NotEmpty(f"{path}: directory not empty")
        try:
            self._call(f"rmdir {path}", lambda: self._fs.delete_dir(self._full(path)))
        except NotFound:
            if not self._remove_directory_object(path):  # nothing but a directory object: removed now
                raise
        else:
            self._remove_directory_object(path)
        self._drop_attrs(path)

    def rename(self, src: str, dst: str) -> None:
        self._check(src)
        self._check(dst, creating=True)
        if not src or not dst:
            raise PermissionDenied("the root cannot be renamed or replaced")
        source = self._lookup(src)
        if source is None:
            raise NotFound(f"{src}: no such file or directory")
        if src == dst:
            return
        if dst.startswith(src + "/"):
            raise PermissionDenied(f"cannot move {src} into itself")
        if source.kind is not Kind.DIR:
            self._check_new_leaf(dst)
        if source.kind is Kind.SYMLINK:
            self._check(dst, creating=True, stored_as=LINK_SUFFIX)
        target = self._lookup(dst)
        self._require_dir(_parent(dst))
        if target is not None:
            if source.kind is Kind.DIR and target.kind is not Kind.DIR:
                raise NotADirectory(f"{dst}: not a directory")
            if source.kind is not Kind.DIR and target.kind is Kind.DIR:
                raise IsADirectory(f"{dst}: is a directory")
            if target.kind is Kind.DIR and self.list_dir(dst):
                raise NotEmpty(f"{dst}: directory not empty")
        if source.kind is Kind.DIR:
            self._rename_dir(src, dst, target)
        else:
            self._rename_leaf(src, dst, source, target)
        if self._attrs is not None:
            self._move_attrs(src, dst, source)

    def _move_attrs(self, src: str, dst: str, source: Entry) -> None:
        """The moved entry keeps its attributes and, though the store's copy made a new object, its
        modification time."""
        assert self._attrs is not None
        info = None
        if source.kind is not Kind.DIR:
            suffix = LINK_SUFFIX if source.kind is Kind.SYMLINK else ""
            info = self._object_info(dst, self._full(dst) + suffix)
        shown = first_given(source.meta.mtime_ns if source.meta else None, source.mtime_ns or None)
        rec = attrs.record(source.meta, shown, info)
        if len(rec) > (1 if info is not None else 0):
            self._attrs.update(_parent(dst), {_name(dst): rec})
        elif _name(dst) in self._attrs.records(_parent(dst)):
            self._attrs.update(_parent(dst), {_name(dst): None})
        self._drop_attrs(src)

    def move_to_reserved(self, path: str, reserved_path: str) -> None:
        self._check(path)
        entry = self._lookup(path)
        if entry is None:
            raise NotFound(f"{path}: no such file")
        if entry.kind is not Kind.FILE:
            raise IsADirectory(f"{path}: only files can be moved to the reserved area")
        area = self.reserved_area()
        dest = area._full(reserved_path)
        if not self._store.object_store:  # a rename needs its target directory to exist
            parent = _parent(dest)
            self._call(f"mkdir {parent}", lambda: self._fs.create_dir(parent, recursive=True))
        self._call(f"rename {path}", lambda: self._fs.move(self._full(path), dest))

    def _rename_leaf(self, src: str, dst: str, source: Entry, target: Entry | None) -> None:
        suffix = LINK_SUFFIX if source.kind is Kind.SYMLINK else ""
        old, new = self._full(src) + suffix, self._full(dst) + suffix
        if target is not None:
            other = self._full(dst) + (LINK_SUFFIX if target.kind is Kind.SYMLINK else "")
            if other != new:  # a file replacing a symlink (or the reverse) would leave the other behind
                self._call(f"rename {src}", lambda: self._fs.delete_file(other))
            elif not self._store.move_replaces:
                self._call(f"rename {src}", lambda: replace.replace(self._fs, self._aside_dir, old, new))
                return
        if self._store.move_replaces:
            self._call(f"rename {src}", lambda: self._fs.move(old, new))
        else:
            self._call(f"rename {src}", lambda: replace.move(self._fs, old, new))

    def _rename_dir(self, src: str, dst: str, target: Entry | None) -> None:
        old, new = self._full(src), self._full(dst)
        if not self._store.object_store:
            if target is not None and not self._store.move_replaces:
                self._call(f"rename {src}", lambda: self._fs.delete_dir(new))
            self._call(f"rename {src}", lambda: self._fs.move(old, new))  # rename(2) replaces an empty dir
            return
        # Object stores have no directories to rename: copy + delete every object, then the markers.
        # Not atomic: a failure half-way leaves the tree split between src and dst (both readable), and
        # each object is copied by the server in one request (AWS refuses that above 5 GiB).
        selector = pafs.FileSelector(old, recursive=True, allow_not_found=True)
        infos = self._call(f"rename {src}", lambda: self._fs.get_file_info(selector))
        self._call(f"rename {src}", lambda: self._fs.create_dir(new, recursive=True))
        for info in sorted(infos, key=lambda i: i.path):
            dest = new + info.path[len(old) :]
            if info.type == _DIR:
                self._call(f"rename {src}", functools.partial(self._fs.create_dir, dest, recursive=True))
            elif info.type == _FILE:
                self._call(f"rename {src}", functools.partial(self._fs.move, info.path, dest))
        with contextlib.suppress(NotFound):  # nothing left: the source was a prefix without a marker
            self._call(f"rename {src}", lambda: self._fs.delete_dir(old))
        self._remove_directory_object(src)
        if self._attrs is not None:
            self._restamp_tree(src, dst, infos)

    def _restamp_tree(self, src: str, dst: str, infos: list[pafs.FileInfo]) -> None:
        """After a directory's objects were copied: every file keeps its attributes and modification time,
        recorded against its new copy (one index write per directory that has files)."""
        assert self._attrs is not None
        old_root, new_root = self._full(src), self._full(dst)
        selector = pafs.FileSelector(new_root, recursive=True, allow_not_found=True)
        copies = self._call(f"rename {src}", lambda: self._fs.get_file_info(selector))
        copied = {info.path[len(new_root) :]: info for info in copies if info.type == _FILE}
        by_dir: dict[str, list[pafs.FileInfo]] = {}
        for info in infos:
            if info.type == _FILE and info.base_name != attrs.INDEX:
                by_dir.setdefault(_parent(info.path[len(old_root) :]), []).append(info)
        for rel_dir, files in by_dir.items():
            directory = dst + rel_dir
            records = self._attrs.records(directory)
            changes: dict[str, dict | None] = {}
            for info in files:
                copy = copied.get(info.path[len(old_root) :])
                if copy is None or (info.size == 0 and self._is_directory_object(copy)):
                    continue
                name = info.base_name
                if name.endswith(LINK_SUFFIX):
                    name = name[: -len(LINK_SUFFIX)]
                rec = dict(records.get(name) or {})
                if rec.get("stamp") != attrs.stamp(info):
                    rec = {}  # no record, or one of another version: only the time is kept
                rec.setdefault("mtime_ns", info.mtime_ns)
                rec["stamp"] = attrs.stamp(copy)
                changes[name] = rec
            if changes:
                self._attrs.update(directory, changes)
