"""Snapshots kept on a backend: create, copy, list, load, describe, delete; names checked here.

A snapshot NAME of the tree at URI is the manifest `.pfs/snapshots/NAME.parquet` in URI's reserved area
(hidden from mounts and listings), so every node that can reach URI can mount it by name. Creation lists
the tree with several listings in flight (pfs/datasets/listing.py), records ETags where needed (see
pfs/snapshots/backend.py) and refuses to replace an existing snapshot. Two `create`s racing for one name
are not serialised: the later write wins.

User mistakes (bad or unknown names) are one-line `UsageError`s. No progress bar here: callers get counts.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pfs.backends import Backend, Entry, Kind
from pfs.datasets.listing import NO_EXCLUDES, Excludes, list_tree
from pfs.errors import AlreadyExists, NotFound, Stale, UsageError
from pfs.snapshots.backend import RECENT_S
from pfs.snapshots.manifest import Manifest, Row, SnapshotInfo, encode, mtime_token, read_info

DIRECTORY = "snapshots"
SUFFIX = ".parquet"
MAX_NAME_BYTES = 200  # leaves room for the suffix within one 255-byte name


def check_name(name: str) -> str:
    reason = ""
    if not name:
        reason = "it is empty"
    elif "/" in name or name in (".", ".."):
        reason = "it must be one path component (no '/', not '.' or '..')"
    elif name.startswith("."):
        reason = "it must not start with '.'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        reason = "it contains control characters"
    elif len(name.encode()) > MAX_NAME_BYTES:
        reason = f"it is longer than {MAX_NAME_BYTES} bytes"
    if reason:
        raise UsageError(f"invalid snapshot name {name!r}: {reason}")
    return name


def _key(name: str) -> str:
    return f"{DIRECTORY}/{check_name(name)}{SUFFIX}"


class SnapshotStore:
    """The snapshots of one backend; `where` is how errors name it (a redacted URI)."""

    def __init__(self, backend: Backend, where: str) -> None:
        self.backend = backend
        self.area = backend.reserved_area()
        self.where = where

    def names(self) -> list[str]:
        try:
            entries = self.area.list_dir(DIRECTORY)
        except NotFound:
            return []
        return sorted(
            e.name[: -len(SUFFIX)] for e in entries if e.kind is Kind.FILE and e.name.endswith(SUFFIX)
        )

    def missing(self, name: str) -> UsageError:
        return UsageError(f"no snapshot '{name}' in {self.where}")

    def exists(self, name: str) -> bool:
        try:
            self.area.stat(_key(name))
        except NotFound:
            return False
        return True

    def read(self, name: str) -> bytes:
        key = _key(name)
        try:
            size = self.area.stat(key).size
            reader = self.area.open_reader(key, size)
        except NotFound:
            raise self.missing(name) from None
        try:
            return reader.read(0, size)
        finally:
            reader.close()

    def load(self, name: str) -> Manifest:
        return Manifest.decode(self.read(name))

    def info(self, name: str) -> SnapshotInfo:
        return read_info(self.read(name))

    def delete(self, name: str) -> None:
        try:
            self.area.remove_file(_key(name))
        except NotFound:
            raise self.missing(name) from None

    def create(
        self,
        name: str,
        excludes: Excludes = NO_EXCLUDES,
        threads: int = 16,
        all_etags: bool = False,
        on_listed: Callable[[int], None] = lambda n: None,
        on_checked: Callable[[int], None] = lambda n: None,
    ) -> SnapshotInfo:
        """List the tree and store its manifest as `name`. `all_etags`: record every file's ETag (a HEAD
        each) instead of only those of recently modified files. Entries that vanish or change while the
        snapshot is taken are left out."""
        key = _key(name)
        if self.exists(name):
            raise UsageError(f"snapshot '{name}' already exists in {self.where} (delete it first)")
        started_ns = time.time_ns()
        info = SnapshotInfo(
            name=name,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            source=self.backend.id,
            excludes=list(excludes.patterns),
        )
        listed = list_tree(self.backend, threads, excludes, on_listed)
        recent_ns = started_ns - RECENT_S * 1_000_000_000
        no_etags = threading.Event()  # set once the store turns out to have none (file://)

        def needs_request(entry: Entry) -> bool:
            if entry.kind is Kind.SYMLINK:
                return True
            recent = entry.mtime_ns >= recent_ns or not entry.mtime_ns
            return entry.kind is Kind.FILE and (all_etags or recent)

        def plain(path: str, entry: Entry) -> Row:
            token = mtime_token(entry.size, entry.mtime_ns) if entry.kind is Kind.FILE else ""
            return Row(path, entry, version=token)

        def asked(item: tuple[str, Entry]) -> Row | None:
            path, entry = item
            try:
                if entry.kind is Kind.SYMLINK:
                    return Row(path, entry, target=self.backend.read_symlink(path))
                if no_etags.is_set():
                    return plain(path, entry)
                reader = self.backend.open_reader(path, entry.size)
                reader.close()
                if not reader.version:
                    no_etags.set()
                    return plain(path, entry)
                return Row(path, entry, version=reader.version)
            except (NotFound, Stale):  # gone or rewritten while the snapshot was taken
                return None
            finally:
                on_checked(1)

        rows = [plain(path, entry) for path, entry in listed if not needs_request(entry)]
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="pfs-snap") as pool:
            todo = [item for item in listed if needs_request(item[1])]
            rows += [r for r in pool.map(asked, todo) if r is not None]
        data = encode(rows, info)
        if self.exists(name):
            raise UsageError(f"snapshot '{name}' already exists in {self.where} (created meanwhile)")
        self._write(key, data)
        return info

    def copy(self, name: str, new_name: str) -> None:
        """Store snapshot `name` again as `new_name`: the same manifest, so the same versions pinned, and
        it stays mountable after `name` is deleted."""
        key = _key(new_name)
        if self.exists(new_name):
            raise UsageError(f"snapshot '{new_name}' already exists in {self.where} (delete it first)")
        self._write(key, self.read(name))

    def _write(self, key: str, data: bytes) -> None:
        try:
            self.area.write_file(key, io.BytesIO(data), len(data))
        except NotFound:  # a hierarchical store without the directory yet (object stores need none)
            with contextlib.suppress(AlreadyExists):
                self.area.make_dir(DIRECTORY)
            self.area.write_file(key, io.BytesIO(data), len(data))
