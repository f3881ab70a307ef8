"""`LocalBackend`: file:// as the POSIX file system it is.

pyarrow's LocalFileSystem knows files and directories, sizes and modification times, and nothing else: no
modes or owners, no chmod/chown/link/mknod. This module is the one place where file:// metadata goes through
os.* instead: attributes come from lstat (mode, owner, times, link count, inode number, device), chmod, chown
and utimens are applied to the underlying file, and hard links, FIFOs, sockets and device nodes live there
as themselves. Stats and listings are os.* too (one stat per name). Data still goes through the inherited
pyarrow paths (reads, renames, walks, symlinks as `.rclonelink` files like on every store), except
publishing a file: it is written here with os.* so that the new version carries its mode and owner before
it appears under its name.

Publishing (`write_file`) stays atomic: a temporary file under `.pfs/tmp` gets the bytes, then the mode and
owner (the caller's `meta`, else the old version's, else 0644 and the daemon's), then is renamed over the
name. A file with several names (hard links) is the exception: renaming a new file over one name would split
it from its other names, so its bytes are rewritten in place and readers may see a partly written file
during that write, as with any writer of a local file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import pyarrow.fs as pafs

from pfs.backends.arrow import attrs
from pfs.backends.arrow.backend import LINK_SUFFIX, RESERVED, ArrowBackend, _name
from pfs.backends.arrow.transfer import CHUNK, read_source
from pfs.backends.base import Entry, Kind, Meta, MetaChange, Source, Upload, UploadGuard, first_given
from pfs.backends.leftovers import owner_tag
from pfs.errors import (
    AlreadyExists,
    IsADirectory,
    NameTooLong,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    PfsError,
    Refused,
)

T = TypeVar("T")

NEW_FILE_MODE = 0o644  # a file published with no mode given and no old version, as pyarrow made them
_KINDS = {
    stat.S_IFREG: Kind.FILE,
    stat.S_IFDIR: Kind.DIR,
    stat.S_IFIFO: Kind.FIFO,
    stat.S_IFSOCK: Kind.SOCKET,
    stat.S_IFCHR: Kind.CHAR_DEVICE,
    stat.S_IFBLK: Kind.BLOCK_DEVICE,
}
_FORMATS = {kind: fmt for fmt, kind in _KINDS.items()}
_ERRORS: dict[int, type[PfsError]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: AlreadyExists,
    errno.ENOTEMPTY: NotEmpty,
    errno.EISDIR: IsADirectory,
    errno.ENOTDIR: NotADirectory,
    errno.ENAMETOOLONG: NameTooLong,
    errno.ENOSPC: NoSpace,
    errno.EDQUOT: NoSpace,
}
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _os(what: str, fn: Callable[[], T]) -> T:
    """Run os.* calls; their OSError becomes the pfs error of the same errno (Refused keeps any errno)."""
    try:
        return fn()
    except OSError as exc:
        message = f"{what}: {exc.strerror or exc}"
        cls = _ERRORS.get(exc.errno or 0)
        raise (cls(message) if cls else Refused(message, exc.errno or errno.EIO)) from None


def _lstat(full: str) -> os.stat_result | None:
    try:
        return os.lstat(full)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _stat(full: str) -> os.stat_result | None:
    try:
        return os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _entry_of(name: str, st: os.stat_result, kind: Kind) -> Entry:
    meta = Meta(
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        atime_ns=st.st_atime_ns,
        ctime_ns=st.st_ctime_ns,
        nlink=st.st_nlink,
        ino=st.st_ino,
        rdev=st.st_rdev,
    )
    size = st.st_size if kind in (Kind.FILE, Kind.SYMLINK) else 0
    return Entry(name, kind, size, st.st_mtime_ns, meta)


class LocalBackend(ArrowBackend):
    stored_meta = frozenset({"mode", "uid", "gid", "atime_ns", "mtime_ns"})
    posix = True

    def _request(self, what: str, fn: Callable[[], T]) -> T:
        """`_os(what, fn)` as one timed request to the store, as `_call` times pyarrow's (a file's bytes are
        written within the `_call` of its publishing, which times them)."""
        return self._timed(what.partition(" ")[0], lambda: _os(what, fn))

    def reserved_area(self) -> LocalBackend:
        return LocalBackend(self._store, subdir=RESERVED, hide_reserved=False)

    def _key(self, path: str, entry: Entry) -> str:
        """The underlying file of an entry (a symlink's is its link file)."""
        return self._full(path) + (LINK_SUFFIX if entry.kind is Kind.SYMLINK else "")

    def _existing(self, path: str) -> Entry:
        entry = self._lookup(path)
        if entry is None:
            raise NotFound(f"{path}: no such file or directory")
        return entry

    # ---- attributes from lstat ----------------------------------------------------------------------

    def _entry(self, name: str, info: pafs.FileInfo, kind: Kind, shown: attrs.Shown | None = None) -> Entry:
        st = _stat(info.path)  # followed, as pyarrow follows a symlink made by another program
        return super()._entry(name, info, kind) if st is None else _entry_of(name, st, kind)

    def _lookup_once(self, path: str) -> Entry | None:
        if not path:
            return self._root_entry()
        full = self._full(path)
        name = _name(path)
        st = self._request(f"stat {path}", lambda: _lstat(full))
        if st is not None and stat.S_ISLNK(st.st_mode):  # a symlink made by another program: followed
            st = self._request(f"stat {path}", lambda: _stat(full))
        kind = _KINDS.get(stat.S_IFMT(st.st_mode)) if st is not None else None
        if st is not None and kind is not None and not (kind is Kind.FILE and name.endswith(LINK_SUFFIX)):
            return _entry_of(name, st, kind)
        if len(name.encode()) + len(LINK_SUFFIX) > 255:
            return None
        st = self._request(f"stat {path}", lambda: _lstat(full + LINK_SUFFIX))
        return _entry_of(name, st, Kind.SYMLINK) if st is not None and stat.S_ISREG(st.st_mode) else None

    def list_dir(self, path: str) -> list[Entry]:
        """One stat per name (pyarrow's listing and then an lstat would be two)."""
        self._check(path)
        full = self._full(path)

        def scan() -> list[tuple[str, os.stat_result]]:
            found = []
            with os.scandir(full) as names:
                for name in names:
                    with contextlib.suppress(FileNotFoundError):  # gone since, or a dangling symlink
                        found.append((name.name, name.stat()))
            return found

        entries: dict[str, Entry] = {}
        links: dict[str, Entry] = {}
        for name, st in self._request(f"list {path or '/'}", scan):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode))
            if kind is None or (not path and self._hide_reserved and name == RESERVED):
                continue
            if len(name.encode()) > 255:  # no Linux program could open it: leave it out
                self._report_long_name(f"{full}/{name}")
            elif kind is Kind.FILE and name.endswith(LINK_SUFFIX):
                if len(name) > len(LINK_SUFFIX):
                    target = name[: -len(LINK_SUFFIX)]
                    links[target] = _entry_of(target, st, Kind.SYMLINK)
            else:
                entries[name] = _entry_of(name, st, kind)
        for name, link in links.items():  # a real file or directory wins over a link of the same name
            entries.setdefault(name, link)
        return sorted(entries.values(), key=lambda e: e.name)

    def _entries(
        self, infos: list[pafs.FileInfo], directory: str, ahead: Future[attrs.ReadAhead | None] | None = None
    ) -> dict[str, Entry]:
        entries = super()._entries(infos, directory, ahead)
        for info in infos:  # pyarrow lists special files as of unknown type
            if info.type == pafs.FileType.Unknown and info.base_name not in entries:
                st = _lstat(info.path)
                kind = _KINDS.get(stat.S_IFMT(st.st_mode)) if st is not None else None
                if st is not None and kind is not None:
                    entries[info.base_name] = _entry_of(info.base_name, st, kind)
        return entries

    # ---- POSIX operations ---------------------------------------------------------------------------

    def set_meta(self, path: str, change: MetaChange) -> Entry:
        self._check(path)
        key = self._key(path, self._existing(path))

        def apply() -> None:
            if change.uid is not None or change.gid is not None:
                uid, gid = (-1 if v is None else v for v in (change.uid, change.gid))
                os.lchown(key, uid, gid)
            if change.mode is not None:  # after chown, which clears setuid and setgid
                os.chmod(key, change.mode)
            if change.atime_ns is not None or change.mtime_ns is not None:
                st = os.lstat(key)
                times = (
                    st.st_atime_ns if change.atime_ns is None else change.atime_ns,
                    st.st_mtime_ns if change.mtime_ns is None else change.mtime_ns,
                )
                os.utime(key, ns=times, follow_symlinks=False)

        self._request(f"setattr {path}", apply)
        return self.stat(path)

    def make_node(self, path: str, kind: Kind, rdev: int = 0) -> Entry:
        self._check(path, creating=True)
        self._check_new_leaf(path)
        if self._lookup(path) is not None:
            raise AlreadyExists(f"{path}: already exists")
        full = self._full(path)
        self._request(f"mknod {path}", lambda: os.mknod(full, 0o600 | _FORMATS[kind], rdev))
        return self.stat(path)

    def link(self, src: str, dst: str) -> Entry:
        self._check(src)
        self._check(dst, creating=True)
        self._check_new_leaf(dst)
        source = self._existing(src)
        if source.kind is Kind.DIR:
            raise Refused(f"{src}: a directory cannot be hard-linked", errno.EPERM)
        if self._lookup(dst) is not None:
            raise AlreadyExists(f"{dst}: already exists")
        suffix = LINK_SUFFIX if source.kind is Kind.SYMLINK else ""
        self._request(f"link {src}", lambda: os.link(self._full(src) + suffix, self._full(dst) + suffix))
        return self.stat(dst)

    def exchange(self, src: str, dst: str) -> None:
        self._check(src)
        self._check(dst)
        a, b = self._existing(src), self._existing(dst)
        if (a.kind is Kind.SYMLINK) != (b.kind is Kind.SYMLINK):
            raise Refused(f"{src}: a symlink and another kind cannot be exchanged here", errno.EOPNOTSUPP)
        old, new = os.fsencode(self._key(src, a)), os.fsencode(self._key(dst, b))
        libc = ctypes.CDLL(None, use_errno=True)

        def swap() -> None:
            if libc.renameat2(_AT_FDCWD, old, _AT_FDCWD, new, _RENAME_EXCHANGE) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))

        self._request(f"rename {src}", swap)

    def remove_file(self, path: str) -> None:
        self._check(path)
        entry = self._existing(path)
        if entry.kind is Kind.DIR:
            raise IsADirectory(f"{path}: is a directory")
        key = self._key(path, entry)
        self._request(f"unlink {path}", lambda: os.unlink(key))

    # ---- publishing ---------------------------------------------------------------------------------

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
        old = existing.meta if existing is not None and existing.kind is Kind.FILE else None
        given = meta or Meta()
        kept = old or Meta()
        owner = Meta(
            mode=first_given(given.mode, kept.mode, NEW_FILE_MODE),
            uid=first_given(given.uid, kept.uid),
            gid=first_given(given.gid, kept.gid),
        )
        in_place = old is not None and (old.nlink or 1) > 1

        def write(src: Source, attempt: UploadGuard) -> None:
            if in_place:
                _os(f"write {path}", lambda: self._rewrite(key, src, size, path, attempt))
            else:
                _os(f"write {path}", lambda: self._write_new(key, src, size, path, attempt, owner))

        self._publish(path, key, source, size, guard, write)

    def _write_new(
        self, full: str, source: Source, size: int, path: str, guard: UploadGuard, owner: Meta
    ) -> None:
        os.makedirs(self._tmp_dir, exist_ok=True)
        tmp = f"{self._tmp_dir}/{owner_tag()}{uuid.uuid4().hex}.part"  # see pfs/backends/leftovers.py
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                _copy(fd, source, size, path, guard)
                uid, gid = (-1 if v is None else v for v in (owner.uid, owner.gid))
                os.fchown(fd, uid, gid)
                assert owner.mode is not None
                os.fchmod(fd, owner.mode)
            finally:
                os.close(fd)
            guard.commit()
            os.rename(tmp, full)
        except BaseException:
            with contextlib.suppress(OSError):  # already failing; a leftover is only litter in .pfs/tmp
                os.unlink(tmp)
            raise

    def _rewrite(self, full: str, source: Source, size: int, path: str, guard: UploadGuard) -> None:
        fd = os.open(full, os.O_WRONLY | os.O_CLOEXEC)
        try:
            guard.commit()  # from here on the old bytes are being overwritten: no abandoning half-way
            _copy(fd, source, size, path, guard)
            os.ftruncate(fd, size)
        finally:
            os.close(fd)


def _copy(fd: int, source: Source, size: int, path: str, guard: UploadGuard) -> None:
    offset = 0
    while offset < size:
        chunk = read_source(source, min(CHUNK, size - offset), path)
        guard.progressed()
        view = memoryview(chunk)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
