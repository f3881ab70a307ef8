"""`pfs sync`: make a destination tree hold what a source tree holds, in parallel, on the Backend contract.

Works between any two backends (upload, download, bucket to bucket, local to local) because it uses only
list_dir/walk, open_reader and the atomic write_file/write_symlink of pfs/backends/base.py:

- plan: both trees are listed at once (pfs/datasets/listing.py). A source file is *unchanged*, and skipped,
  when the destination has a file of the same size that is not older than the source (at the coarser of the
  two mtime resolutions) or, with `checksum`, whose bytes hash the same. Copies to a store always get a
  newer mtime than their source, so a second run skips everything it copied.
- execute: files and symlinks are copied by `threads` workers (pyarrow releases the GIL during I/O, so
  one process keeps many requests in flight). Directories are made only where a write finds its parent
  missing (object stores need none: a marker per directory would cost a request, and some S3 servers
  refuse them) and for source directories that are empty. A failure is recorded for its path and the
  others go on. With `delete`, destination entries the source lacks are removed afterwards, deepest
  first, and only if nothing failed (as `rclone sync` does).
- resuming: write_file publishes a file whole or not at all (a multipart upload is only completed at the
  end; file:// writes go to a temporary name and are renamed), so a sync killed midway leaves complete
  files or none, and the next run skips the complete ones.

Progress and errors are reported through callbacks: this module prints nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pfs.backends import Backend, Entry, Kind, Reader
from pfs.datasets.listing import NO_EXCLUDES, Excludes, list_tree
from pfs.errors import AlreadyExists, NotFound, PfsError

CHUNK = 8 << 20  # bytes hashed per read with `checksum`
# Small files cost client CPU per request (signing, HTTP): more threads than about 8 per core only add
# contention when the store is close (measured on 2 cores: 16 threads beat 64); a far store wants more.
DEFAULT_THREADS = min(64, 8 * (os.cpu_count() or 2))
SECOND = 1_000_000_000


@dataclass
class SyncOptions:
    threads: int = DEFAULT_THREADS
    delete: bool = False
    dry_run: bool = False
    checksum: bool = False
    excludes: Excludes = NO_EXCLUDES


@dataclass
class Plan:
    dirs: list[str] = field(default_factory=list)  # empty source directories the destination lacks
    copies: list[tuple[str, Entry]] = field(default_factory=list)  # files and symlinks of the source
    compare: list[tuple[str, Entry]] = field(default_factory=list)  # same size: hash both (`checksum`)
    deletions: list[tuple[str, Entry]] = field(default_factory=list)  # deepest first
    unchanged: int = 0
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (path, why it cannot be copied)
    over_links: set[str] = field(default_factory=set)  # files to copy where the destination has a symlink

    @property
    def bytes(self) -> int:
        return sum(entry.size for _, entry in self.copies + self.compare)


@dataclass
class Outcome:
    copied: int = 0
    bytes: int = 0
    unchanged: int = 0
    deleted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    deletions_skipped: bool = False


class Progress:
    """What the caller is told while a sync runs; every method may be called from worker threads."""

    def listed(self, count: int) -> None: ...

    def transferred(self, nbytes: int) -> None: ...

    def file_done(self) -> None: ...

    def failed(self, path: str, message: str) -> None: ...


def _unchanged(source: Entry, dest: Entry | None, checksum: bool) -> bool | None:
    """True: skip; False: copy; None: same size, compare the bytes (`checksum`)."""
    if dest is None or dest.kind is not source.kind or dest.size != source.size:
        return False
    if checksum and source.kind is Kind.FILE:
        return None
    return _not_older(dest.mtime_ns, source.mtime_ns)


def _not_older(dest_ns: int, source_ns: int) -> bool:
    # Some S3 servers list whole seconds: then compare at that resolution, or a file uploaded in the
    # second it was written would look older than its source and be copied again on every run.
    coarse = dest_ns % SECOND == 0
    return dest_ns >= (source_ns // SECOND * SECOND if coarse else source_ns)


SILENT = Progress()


def plan(src: Backend, dst: Backend | None, options: SyncOptions, progress: Progress = SILENT) -> Plan:
    """What `execute` will do. `dst` None: the destination does not exist yet (everything is copied)."""
    half = max(1, options.threads // 2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        source_future = pool.submit(list_tree, src, half, options.excludes, progress.listed)
        dest_future = pool.submit(list_tree, dst, half, options.excludes) if dst is not None else None
        source = dict(source_future.result())
        dest = dict(dest_future.result()) if dest_future is not None else {}
    result = Plan()
    has_children = {path.rpartition("/")[0] for path in source}
    for path in sorted(source):
        entry, there = source[path], dest.get(path)
        if entry.kind is Kind.DIR:
            if there is None:
                if path not in has_children:
                    result.dirs.append(path)
            elif there.kind is not Kind.DIR:
                result.conflicts.append((path, "the destination has a file where the source has a directory"))
            continue
        if there is not None and there.kind is Kind.DIR:
            result.conflicts.append((path, "the destination has a directory where the source has a file"))
            continue
        if there is not None and there.kind is Kind.SYMLINK and entry.kind is Kind.FILE:
            result.over_links.add(path)
        verdict = _unchanged(entry, there, options.checksum)
        if verdict is None:
            result.compare.append((path, entry))
        elif verdict:
            result.unchanged += 1
        else:
            result.copies.append((path, entry))
    if options.delete:
        extra = [(path, entry) for path, entry in dest.items() if path not in source]
        # Children before their directory: deepest first, files before directories at one depth.
        extra.sort(key=lambda item: (-item[0].count("/"), item[1].kind is Kind.DIR, item[0]))
        result.deletions = extra
    return result


class _ReaderStream:
    """A Reader seen as the seekable binary stream write_file reads from, counting bytes for progress."""

    def __init__(self, reader: Reader, size: int, on_bytes: Callable[[int], None]) -> None:
        self._reader, self._size, self._on_bytes = reader, size, on_bytes
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        want = self._size - self._pos if n is None or n < 0 else min(n, self._size - self._pos)
        if want <= 0:
            return b""
        data = self._reader.read(self._pos, want)
        self._pos += len(data)
        self._on_bytes(len(data))
        return data

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        # A retried upload starts again from the beginning: take back what was counted.
        self._on_bytes(pos - self._pos)
        self._pos = pos
        return pos


def _digest(backend: Backend, path: str, size: int) -> bytes:
    reader = backend.open_reader(path, size)
    try:
        h = hashlib.sha256()
        for offset in range(0, size, CHUNK):
            h.update(reader.read(offset, CHUNK))
        return h.digest()
    finally:
        reader.close()


class _Copier:
    def __init__(self, src: Backend, dst: Backend, work: Plan, progress: Progress, outcome: Outcome) -> None:
        self.src, self.dst, self.progress, self.outcome = src, dst, progress, outcome
        self._over_links = work.over_links
        self._lock = threading.Lock()

    def _record(self, path: str, exc: PfsError) -> None:
        message = str(exc) or type(exc).__name__
        with self._lock:
            self.outcome.failures.append((path, message))
        self.progress.failed(path, message)

    def _make_parents(self, path: str) -> None:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            with contextlib.suppress(AlreadyExists):
                self.dst.make_dir("/".join(parts[:depth]))

    def _with_parents(self, path: str, write: Callable[[], object]) -> None:
        """Run `write`; if the destination lacks the parent directory, make it and run `write` again."""
        try:
            write()
        except NotFound:
            if "/" not in path:
                raise
            self._make_parents(path)
            write()

    def make_dir(self, path: str) -> None:
        try:
            self._with_parents(path, lambda: self.dst.make_dir(path))
        except AlreadyExists:
            pass
        except PfsError as exc:
            self._record(path, exc)

    def copy(self, item: tuple[str, Entry]) -> None:
        path, entry = item
        try:
            if entry.kind is Kind.SYMLINK:
                self._copy_symlink(path)
            else:
                self._copy_file(path, entry.size)
        except PfsError as exc:
            self._record(path, exc)
        else:
            with self._lock:
                self.outcome.copied += 1
                self.outcome.bytes += entry.size
        finally:
            self.progress.file_done()

    def compare_then_copy(self, item: tuple[str, Entry]) -> None:
        path, entry = item
        try:
            same = _digest(self.src, path, entry.size) == _digest(self.dst, path, entry.size)
        except PfsError as exc:
            self._record(path, exc)
            self.progress.file_done()
            return
        if not same:
            self.copy(item)
            return
        with self._lock:
            self.outcome.unchanged += 1
        self.progress.transferred(entry.size)
        self.progress.file_done()

    def _copy_file(self, path: str, size: int) -> None:
        reader = self.src.open_reader(path, size)
        try:
            stream = _ReaderStream(reader, size, self.progress.transferred)

            # The listing showed the name free or a file: put_file skips the checks write_file makes
            # (on S3 one PUT instead of four HEAD/LIST requests around it).
            publish = self.dst.write_file if path in self._over_links else self.dst.put_file

            def write() -> None:
                stream.seek(0)  # a second attempt (after making the parents) starts over
                publish(path, stream, size)

            self._with_parents(path, write)
        finally:
            reader.close()

    def _copy_symlink(self, path: str) -> None:
        target = self.src.read_symlink(path)
        try:
            self._with_parents(path, lambda: self.dst.write_symlink(path, target))
        except AlreadyExists:
            self.dst.remove_file(path)
            self.dst.write_symlink(path, target)

    def remove(self, item: tuple[str, Entry]) -> None:
        path, entry = item
        try:
            (self.dst.remove_dir if entry.kind is Kind.DIR else self.dst.remove_file)(path)
        except NotFound:
            pass
        except PfsError as exc:
            self._record(path, exc)
            return
        with self._lock:
            self.outcome.deleted += 1


def execute(
    src: Backend, dst: Backend, work: Plan, options: SyncOptions, progress: Progress = SILENT
) -> Outcome:
    """Carry out `work`; failures are collected in the outcome (and told to `progress`), never raised."""
    outcome = Outcome(unchanged=work.unchanged)
    for path, why in work.conflicts:
        outcome.failures.append((path, why))
        progress.failed(path, why)
    copier = _Copier(src, dst, work, progress, outcome)
    with ThreadPoolExecutor(max_workers=max(1, options.threads), thread_name_prefix="pfs-sync") as pool:
        list(pool.map(copier.copy, work.copies))
        list(pool.map(copier.compare_then_copy, work.compare))
        list(pool.map(copier.make_dir, work.dirs))
        if work.deletions and outcome.failures:
            outcome.deletions_skipped = True
        elif work.deletions:
            by_depth_kind: dict[tuple[int, bool], list[tuple[str, Entry]]] = {}
            for item in work.deletions:
                by_depth_kind.setdefault((-item[0].count("/"), item[1].kind is Kind.DIR), []).append(item)
            for key in sorted(by_depth_kind):  # a directory goes only once everything below it has
                list(pool.map(copier.remove, by_depth_kind[key]))
    return outcome
