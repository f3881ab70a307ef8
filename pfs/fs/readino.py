"""Which inode a READ is for, so that a filesystem can use the kernel's no-open mode with pyfuse3.

When `open` answers ENOSYS, the kernel stops sending OPEN, FLUSH and RELEASE and every READ carries file
handle 0; the request still names the inode, but pyfuse3 (up to 3.5 at least) hands the `read` handler
only the file handle. `install()` puts a small shim in front of pyfuse3's READ callback in its libfuse
operation table (found through the ELF symbol table of pyfuse3's extension module) that records the
inode in `current` and calls pyfuse3's own callback. pyfuse3 runs a handler's coroutine up to its first
await right after the callback returns, on the same task, so a `read` handler that takes `current` before
its first await always sees its own request's inode.

`install()` runs right after `pyfuse3.init`, before `pyfuse3.main`: libfuse has then copied pyfuse3's table
into its session, and the copy is found there as the exact bytes of pyfuse3's own table (the session's
layout is libfuse's private business, so nothing else about it is assumed). It returns False, changing
nothing, when the module has no symbol table or no such copy is found; callers then answer OPEN as usual.
Never used for writes: a read-write mount needs its handles.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct

import pyfuse3

log = logging.getLogger(__name__)

current = 0  # the inode of the READ request being dispatched

_TABLE_SYMBOL = b"__pyx_v_7pyfuse3_fuse_ops"  # pyfuse3's `struct fuse_lowlevel_ops`
_SESSION_SYMBOL = b"__pyx_v_7pyfuse3_session"  # pyfuse3's `struct fuse_session *`
_SESSION_SEARCH = 256  # bytes at the start of the session where its copy of the table may begin
_READ_SLOT = 15  # fuse_lowlevel_ops: init, destroy, lookup, forget, getattr, setattr, readlink, mknod,
# mkdir, unlink, rmdir, symlink, rename, link, open, read (the public libfuse 3 ABI)
_TABLE_SLOTS = 44  # at least this many pointers in every libfuse 3 version's table

# void read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
_ARGS = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int64, ctypes.c_void_p)
_CALLBACK = ctypes.CFUNCTYPE(None, *_ARGS)
_CALL = ctypes.PYFUNCTYPE(None, *_ARGS)  # keeps the GIL: pyfuse3's callback uses Python objects

_installed: object = None  # the shim, kept alive for the life of the process


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


def install() -> bool:
    """Record the inode of every READ in `current`; False when pyfuse3's table cannot be found safely."""
    global _installed
    if _installed is not None:
        return True
    if _kernel_version() < (4, 20):  # FUSE_NO_OPEN_SUPPORT: an older kernel would fail every open
        log.info("kernel no-open mode unavailable: the kernel predates it (4.20)")
        return False
    module = pyfuse3.__file__ or ""
    try:
        symbols = _symbol_values(module, (_TABLE_SYMBOL, _SESSION_SYMBOL))
        span = _mapping(module)
    except (OSError, struct.error, IndexError) as exc:
        log.info("kernel no-open mode unavailable: %s", exc)
        return False
    if len(symbols) != 2 or span is None:
        log.info("kernel no-open mode unavailable: pyfuse3's operation table was not found")
        return False
    ours = (ctypes.c_void_p * _TABLE_SLOTS).from_address(span[0] + symbols[_TABLE_SYMBOL])
    session = ctypes.c_void_p.from_address(span[0] + symbols[_SESSION_SYMBOL]).value
    original = ours[_READ_SLOT]
    # Every callback pyfuse3 set must point into its own code: otherwise this is not the table.
    if not session or not original or not all(p is None or span[0] <= p < span[1] for p in ours):
        log.info("kernel no-open mode unavailable: pyfuse3's operation table looks unfamiliar")
        return False
    image = ctypes.string_at(ctypes.addressof(ours), ctypes.sizeof(ours))
    nearby = ctypes.string_at(session, _SESSION_SEARCH + len(image))
    at = next((o for o in range(0, _SESSION_SEARCH, 8) if nearby[o : o + len(image)] == image), None)
    if at is None:
        log.info("kernel no-open mode unavailable: libfuse's copy of the operation table was not found")
        return False
    table = (ctypes.c_void_p * _TABLE_SLOTS).from_address(session + at)
    call = _CALL(original)

    def read(req: int, ino: int, size: int, off: int, fi: int) -> None:
        global current
        current = ino
        call(req, ino, size, off, fi)

    _installed = shim = _CALLBACK(read)
    table[_READ_SLOT] = ctypes.cast(shim, ctypes.c_void_p).value
    return True
