"""The contract every backend fulfils; the filesystem layers above know only this.

Paths are relative to the mounted root: '' is the root, components are joined with '/', no leading or
trailing slash. All methods block (they do network or disk I/O): callers on the trio loop run them in a
worker thread. Every method raises only `pfs.errors` types; transient failures are retried inside the
backend until its deadline and then raised as `Transient`.
"""

from __future__ import annotations

import enum
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from pfs.errors import BackendError, Unsupported


class Source(Protocol):
    """What an upload reads its bytes from: a file, or a stream pfs makes (staged ranges over a base
    object, another store's reader, a counter around either)."""

    def read(self, size: int = -1, /) -> bytes: ...


class Upload(Source, Protocol):
    """A source handed to a backend: one that can seek is read again from where it started when an
    attempt is retried (one that cannot is tried once)."""

    def seekable(self) -> bool: ...

    def tell(self) -> int: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    # Special files, only where the store is a POSIX file system (file://): the kernel serves their I/O.
    FIFO = "fifo"
    SOCKET = "socket"
    CHAR_DEVICE = "char"
    BLOCK_DEVICE = "block"


def first_given(*values: Any) -> Any:
    """The first value that is not None (None if none is): how attributes given, kept and defaulted merge.
    (Called several times for every entry a listing or lookup answers: a loop, 5x a generator's speed.)"""
    for value in values:
        if value is not None:
            return value
    return None


class Meta(NamedTuple):
    """POSIX attributes a store keeps beside an entry. None: not kept there (the mount's default applies).
    (A named tuple, as Entry: made for every entry of every listing, at a seventh of a frozen dataclass's
    cost.)"""

    mode: int | None = None  # permission bits with setuid/setgid/sticky (stat.S_IMODE)
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    ctime_ns: int | None = None
    nlink: int | None = None  # names of the entry (hard links)
    ino: int | None = None  # the store's own inode number: names with the same one are one file
    rdev: int | None = None  # the device of a device node
    #: The modification time shown, where it differs from the store's own (`Entry.mtime_ns`, which keeps
    #: telling versions of the content apart: a `cp -p` of other bytes of the same size keeps this one).
    mtime_ns: int | None = None


@dataclass(frozen=True, slots=True)
class MetaChange:
    """What a chmod, chown or utimens asks to change; None: left as it is."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


class Entry(NamedTuple):
    """What a listing or a stat knows about one name."""

    name: str
    kind: Kind
    size: int = 0  # bytes of a file; length of a symlink's target; 0 for directories
    mtime_ns: int = 0  # 0 when the backend does not say (object-store directories)
    meta: Meta | None = None  # None: the store keeps no POSIX attributes for it


@dataclass(frozen=True, slots=True)
class SpaceInfo:
    total_bytes: int
    free_bytes: int


class Reader(ABC):
    """An open object for positional reads; cheap to call from several threads at once.

    Every byte it returns comes from one version of the object: if the object is replaced while the reader
    is open, reads fail with Stale rather than mix versions."""

    #: What identifies the content it reads (the ETag on object stores); '' where the backend has none,
    #: and then size and modification time do.
    version: str = ""

    #: Whether `read_into` reads into the caller's buffers (else it only calls `read`).
    fills_buffers: bool = False

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end of the object)."""

    def read_into(self, offset: int, views: list[memoryview]) -> bytes | None:
        """The bytes at `offset` that fill `views`, one after another: None once they are all in `views`,
        or (where the reader cannot, or the answer did not fit them exactly) what `read` returns for their
        length, the views left unread."""
        return self.read(offset, sum(map(len, views)))

    @abstractmethod
    def close(self) -> None: ...


class UploadGuard:
    """Shared by a caller waiting for `write_file` and the worker thread running it, so that the caller can
    stop waiting for a stalled upload and be sure the new version never appears afterwards.

    The uploading side calls `progressed()` whenever data moved (it raises once the upload was abandoned)
    and `commit()` right before the step that makes the new version visible (completing a multipart upload,
    moving a temporary file into place); the waiting side calls `abandon()`. Exactly one of commit and
    abandon wins: an abandoned upload can no longer commit, and a committing one can no longer be abandoned
    (its caller must wait for the outcome, which is one request).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "open"  # -> "committing" (back to "open" for a retry) | "abandoned"
        self.last_progress = time.monotonic()

    def progressed(self) -> None:
        if self._state == "abandoned":
            raise BackendError("the upload was abandoned")
        self.last_progress = time.monotonic()

    def commit(self) -> None:
        with self._lock:
            if self._state == "abandoned":
                raise BackendError("the upload was abandoned")
            self._state = "committing"

    def retry(self) -> None:
        """A new attempt starts from the beginning: it may be abandoned again until it commits."""
        with self._lock:
            if self._state == "committing":
                self._state = "open"
            self.last_progress = time.monotonic()

    def abandon(self) -> bool:
        """True if the upload will never be completed; False if it is completing and must be waited for."""
        with self._lock:
            if self._state == "committing":
                return False
            self._state = "abandoned"
            return True


class Backend(ABC):
    #: Seconds a request may go unanswered, retries included (`--timeout`); an upload that moves no data
    #: for this long is abandoned by its caller.
    timeout: float = 30.0
    #: A stat costs no remote round trip or one cheap one (a local directory; an HDFS NameNode, which answers
    #: from memory): callers revalidate on every open, so each open sees the latest version.
    cheap_open: bool = False
    #: `stream_file` works: a file can be uploaded while it is still written (object stores).
    streams_uploads: bool = False
    #: `read_first` can answer (object stores): a file's first block and version come in one request.
    reads_first: bool = False
    #: Identifies the data source without secrets, e.g. 's3://127.0.0.1:9000/bucket/prefix'. Used in logs
    #: and as the first part of cache keys, so it must not depend on credentials or mount options.
    id: str

    #: The MetaChange fields `set_meta` persists ('mode', 'uid', 'gid', 'atime_ns', 'mtime_ns'). Changes of
    #: the others last only as long as the mount.
    stored_meta: frozenset[str] = frozenset()
    #: A POSIX file system (file://): every entry has its own owner, mode and times, given all at creation.
    #: Elsewhere only what differs from the mount's defaults is stored.
    posix: bool = False
    #: Names the store keeps for itself in every directory (hidden from listings, refused for new entries).
    reserved_names: frozenset[str] = frozenset()
    #: Told `(op, seconds)` after every request to the store (retries included), in the thread that made it:
    #: the mount's latency histogram. `op` is one of a few fixed names (stat, list, read, write, ...).
    on_request: Callable[[str, float], None] | None = None

    @abstractmethod
    def stat(self, path: str) -> Entry:
        """The entry at `path`; NotFound if there is none. stat('') is the root directory."""

    @abstractmethod
    def list_dir(self, path: str) -> list[Entry]:
        """The entries of a directory, reserved names hidden; NotFound / NotADirectory."""

    @abstractmethod
    def walk(self, path: str) -> Iterator[tuple[str, Entry]]:
        """Every entry below `path`, recursively, as (relative path from the mounted root, entry)."""

    def known_version(self, path: str, size: int, mtime_ns: int) -> str | None:
        """The version token of a file with these attributes when it can be told without a request, or None
        when only opening the file tells (object stores: the ETag). Where modification times are exact
        (file systems), size and modification time identify the content."""
        return f"{size}:{mtime_ns}"

    @abstractmethod
    def open_reader(self, path: str, size: int) -> Reader:
        """Open a file of known `size` for positional reads (no extra metadata request where avoidable)."""

    def read_first(
        self, path: str, size: int, length: int, mtime_ns: int | None = None
    ) -> tuple[bytes, str] | None:
        """The first `length` bytes of a file of known `size` and its version token, in one request; None
        where the store cannot tell both at once (the caller then opens a reader), or cannot tell the
        modification second when `mtime_ns` is given. Stale when the file no longer has `size` bytes, or
        (given) was modified in another second than `mtime_ns`'s."""
        return None

    @abstractmethod
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
        """Publish `size` bytes read from `source` as the file at `path`, atomically: readers see either
        the old object or the whole new one, never a partial one. Large files are streamed (multipart on
        object stores), never held in memory. `guard` lets the caller abandon the upload. `meta`: the
        attributes the new version carries where the store keeps them (fields left None: the old
        version's, or the store's defaults for a new file). Returns the new entry.

        `plain`: the caller's own namespace says `path` is free or a plain file (a mount's file being
        written). Object stores then skip the symlink probe and the stat of the result: a small file is
        one look at the name and one PUT, and the entry returned has the size written and the time it
        was published (the store's modification time may differ by under a second; the ETag identifies
        the version)."""

    def stream_file(self, path: str, source: Upload, guard: UploadGuard) -> Entry:
        """Publish what `source` gives until it ends (a file still being written, size unknown) as the
        file at `path` (a plain file or free, as with `write_file(plain=True)`): parts are uploaded while
        the source still grows, and the file appears, atomically, only once the source has ended. Tried
        once. Unsupported where publishing needs the whole file first (only object stores stream)."""
        raise Unsupported(f"{path}: this store does not upload a file while it is written")

    def upload_memory(self, size: int | None) -> int:
        """The most memory `write_file` of `size` bytes (None: `stream_file`) holds at once."""
        return 0

    def put_file(self, path: str, source: Upload, size: int) -> None:
        """Publish like `write_file`, for a caller that knows from a fresh listing that `path` is free or a
        plain file (pfs sync): stores may skip looking at the name first and stat-ing the result, which
        on object stores leaves one request per small file instead of several."""
        self.write_file(path, source, size)

    def copy_file(self, src: str, dst: str) -> None:
        """Copy the file at `src` to the new name `dst` (its parent directory exists) by the store itself:
        a server-side copy on object stores (no byte passes through this host; AWS copies at most 5 GiB
        in one request). Unsupported where the store cannot."""
        raise Unsupported(f"{src}: this store cannot copy files")

    def set_meta(self, path: str, change: MetaChange) -> Entry:
        """Persist the `stored_meta` fields of `change` on the entry at `path`; returns the entry as it is
        afterwards. Only called with fields in `stored_meta`."""
        raise Unsupported(f"{path}: this store keeps no POSIX attributes")

    def make_node(self, path: str, kind: Kind, rdev: int = 0) -> Entry:
        """Create a FIFO, socket or device node at `path` (AlreadyExists if the name is taken)."""
        raise Unsupported(f"{path}: this store cannot hold special files")

    def link(self, src: str, dst: str) -> Entry:
        """Give the file at `src` a second name `dst`; returns the entry of `dst`."""
        raise Unsupported(f"{dst}: this store has no hard links")

    def exchange(self, src: str, dst: str) -> None:
        """Swap the entries at `src` and `dst` atomically (renameat2's RENAME_EXCHANGE)."""
        raise Unsupported(f"{src}: this store cannot exchange names")

    @abstractmethod
    def read_symlink(self, path: str) -> str: ...

    @abstractmethod
    def write_symlink(self, path: str, target: str) -> Entry: ...

    @abstractmethod
    def make_dir(self, path: str) -> None:
        """Create one directory that persists while empty; AlreadyExists if the name is taken."""

    @abstractmethod
    def remove_file(self, path: str) -> None:
        """Remove a file or symlink; NotFound if absent; the parent directory keeps existing."""

    @abstractmethod
    def remove_dir(self, path: str) -> None:
        """Remove an empty directory; NotEmpty if it has entries."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Move a file, symlink or directory tree to `dst`, replacing a file or empty directory there.
        Atomic on file://. On HDFS atomic unless it replaces something (HDFS cannot rename over an existing
        name, so that is deleted first). On object stores a server-side copy then delete per object: each
        object appears whole, but a tree is not moved atomically (and AWS copies at most 5 GiB at once).
        """

    @abstractmethod
    def space(self) -> SpaceInfo: ...

    @abstractmethod
    def reserved_area(self) -> Backend:
        """A backend rooted at the reserved `.pfs` directory, where pfs keeps its own data; nothing hidden."""

    @abstractmethod
    def move_to_reserved(self, path: str, reserved_path: str) -> None:
        """Move the file at `path` out of the namespace to `reserved_path` inside `reserved_area()`, where it
        stays readable (open_reader) and removable (remove_file) through that backend."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        pass
