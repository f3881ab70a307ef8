"""Shims in libfuse's copy of pyfuse3's operation table, for what pyfuse3 (up to 3.5 at least) neither passes
nor sets:

- `record_read_inodes()`: which inode a READ is for, so that a filesystem can use the kernel's no-open mode.
  When `open` answers ENOSYS, the kernel stops sending OPEN, FLUSH and RELEASE and every READ carries file
  handle 0; the request still names the inode, but pyfuse3 hands the `read` handler only the file handle.
  The shim in front of pyfuse3's READ callback records the inode in `current` and calls pyfuse3's own
  callback. pyfuse3 runs a handler's coroutine up to its first await right after the callback returns, on
  the same task, so a `read` handler that takes `current` before its first await always sees its own
  request's inode. Never used for writes: a read-write mount needs its handles.
- `skip_flush_of_reads()`: FOPEN_NOFLUSH on every open for reading only (kernel 5.16, libfuse 3.11): the
  kernel then sends no FLUSH when such a file is closed, one round trip less per file read (a flush has
  nothing to do for a handle that never wrote). The shim sets libfuse's `noflush` bit in the open's
  `fuse_file_info` before pyfuse3's OPEN callback copies it (pyfuse3 sets only fh, direct_io, keep_cache and
  nonseekable in it, so the bit reaches `fuse_reply_open`). Where libfuse or the kernel predate the flag the
  bit is ignored: FLUSH comes as before.

Both are installed right after `pyfuse3.init`, before `pyfuse3.main`: libfuse has then copied pyfuse3's
table into its session, and the copy is found there as the exact bytes of pyfuse3's own table (the
session's layout is libfuse's private business, so nothing else about it is assumed). They return False,
changing nothing, when the module has no symbol table or no such copy is found.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
from collections.abc import Callable

import pyfuse3

log = logging.getLogger(__name__)

current = 0  # the inode of the READ request being dispatched

_TABLE_SYMBOL = b"__pyx_v_7pyfuse3_fuse_ops"  # pyfuse3's `struct fuse_lowlevel_ops`
_SESSION_SYMBOL = b"__pyx_v_7pyfuse3_session"  # pyfuse3's `struct fuse_session *`
_SESSION_SEARCH = 256  # bytes at the start of the session where its copy of the table may begin
_OPEN_SLOT = 14  # fuse_lowlevel_ops: init, destroy, lookup, forget, getattr, setattr, readlink, mknod,
_READ_SLOT = 15  # mkdir, unlink, rmdir, symlink, rename, link, open, read (the public libfuse 3 ABI)
_TABLE_SLOTS = 44  # at least this many pointers in every libfuse 3 version's table

# void read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
_READ_ARGS = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int64, ctypes.c_void_p)
# void open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
_OPEN_ARGS = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p)
# struct fuse_file_info: int32 flags, then a word of bit fields from the lowest bit up: writepage,
# direct_io, keep_cache, flush, nonseekable, flock_release, cache_readdir, noflush (libfuse 3.11 on; a
# padding bit before, which libfuse ignores).
_BITS_OFFSET = 4
_NOFLUSH_BIT = 1 << 7

_installed: dict[int, object] = {}  # slot -> its shim, kept alive for the life of the process


def _symbol_values(path: str, names: tuple[bytes, ...]) -> dict[bytes, int]:
    """st_value of each symbol of `names` found in the ELF64 little-endian file at `path` (its .symtab)."""
    with open(path, "rb") as f:
        data = f.read()
    found: dict[bytes, int] = {}
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return found
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != 2 or not entsize:  # SHT_SYMTAB
            continue
        strtab_offset = sections[link][4]
        for at in range(offset, offset + size, entsize):
            st_name, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, at)
            start = strtab_offset + st_name
            end = data.find(b"\0", start)
            if data[start:end] in names:
                found[data[start:end]] = value
    return found


def _kernel_version() -> tuple[int, int]:
    parts = os.uname().release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _mapping(path: str) -> tuple[int, int] | None:
    """(lowest, highest) address of `path` mapped in this process."""
    real = os.path.realpath(path)
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                spans.append((lo, hi))
    return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None


def _session_table() -> ctypes.Array | None:
    """libfuse's copy of pyfuse3's operation table, or None (logged) when it cannot be found safely."""
    module = pyfuse3.__file__ or ""
    try:
        symbols = _symbol_values(module, (_TABLE_SYMBOL, _SESSION_SYMBOL))
        span = _mapping(module)
    except (OSError, struct.error, IndexError) as exc:
        log.info("pyfuse3's operation table was not found: %s", exc)
        return None
    if len(symbols) != 2 or span is None:
        log.info("pyfuse3's operation table was not found")
        return None
    ours = (ctypes.c_void_p * _TABLE_SLOTS).from_address(span[0] + symbols[_TABLE_SYMBOL])
    session = ctypes.c_void_p.from_address(span[0] + symbols[_SESSION_SYMBOL]).value
    # Every callback pyfuse3 set must point into its own code: otherwise this is not the table.
    if not session or not all(p is None or span[0] <= p < span[1] for p in ours):
        log.info("pyfuse3's operation table looks unfamiliar")
        return None
    image = ctypes.string_at(ctypes.addressof(ours), ctypes.sizeof(ours))
    nearby = ctypes.string_at(session, _SESSION_SEARCH + len(image))
    at = next((o for o in range(0, _SESSION_SEARCH, 8) if nearby[o : o + len(image)] == image), None)
    if at is None:
        log.info("libfuse's copy of pyfuse3's operation table was not found")
        return None
    return (ctypes.c_void_p * _TABLE_SLOTS).from_address(session + at)


def _install(slot: int, args: tuple, shim_of: Callable[[Callable], Callable]) -> bool:
    """Put `shim_of(pyfuse3's callback)` in front of pyfuse3's callback in `slot`."""
    if slot in _installed:
        return True
    table = _session_table()
    if table is None or not table[slot]:
        return False
    original = ctypes.PYFUNCTYPE(None, *args)(table[slot])  # keeps the GIL: pyfuse3's callbacks use Python
    _installed[slot] = shim = ctypes.CFUNCTYPE(None, *args)(shim_of(original))
    table[slot] = ctypes.cast(shim, ctypes.c_void_p).value
    return True


def record_read_inodes() -> bool:
    """Record the inode of every READ in `current`; False when pyfuse3's table cannot be found safely."""
    if _kernel_version() < (4, 20):  # FUSE_NO_OPEN_SUPPORT: an older kernel would fail every open
        log.info("kernel no-open mode unavailable: the kernel predates it (4.20)")
        return False

    def shim_of(call: Callable) -> Callable:
        def read(req: int, ino: int, size: int, off: int, fi: int) -> None:
            global current
            current = ino
            call(req, ino, size, off, fi)

        return read

    return _install(_READ_SLOT, _READ_ARGS, shim_of)


def skip_flush_of_reads() -> bool:
    """Ask the kernel for no FLUSH on closing a file opened for reading only (not truncated)."""

    def shim_of(call: Callable) -> Callable:
        def open_(req: int, ino: int, fi: int) -> None:
            flags = ctypes.c_int32.from_address(fi).value
            if flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_TRUNC:
                bits = ctypes.c_uint32.from_address(fi + _BITS_OFFSET)
                bits.value |= _NOFLUSH_BIT
            call(req, ino, fi)

        return open_

    return _install(_OPEN_SLOT, _OPEN_ARGS, shim_of)
