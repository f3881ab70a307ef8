"""What the kernel's page cache holds of a file, and how to empty it, for tests that check where bytes
are read from."""

from __future__ import annotations

import ctypes
import mmap
import os
import time

import pytest


def resident_bytes(fd: int, length: int) -> int:
    """How much of the first `length` bytes of the file `fd` is in the page cache (mincore on a mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value)
    try:
        pages = ctypes.create_string_buffer(-(-length // mmap.PAGESIZE))
        assert libc.mincore(address, length, pages) == 0
        return sum(byte & 1 for byte in pages.raw) * mmap.PAGESIZE
    finally:
        libc.munmap(address, length)


def drop_pages(path: str) -> None:
    """Take every page of the file at `path` out of the page cache. POSIX_FADV_DONTNEED is only advice:
    the kernel skips pages it holds for a moment elsewhere (a CPU's batch of new pages, a writeback), so
    advise again until none is left, and skip the test if the kernel keeps them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        size = os.fstat(fd).st_size
        deadline = time.monotonic() + 5
        while True:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            if size == 0 or resident_bytes(fd, size) == 0:
                return
            if time.monotonic() > deadline:
                pytest.skip("the kernel kept the file's pages in its cache despite POSIX_FADV_DONTNEED")
            time.sleep(0.05)
    finally:
        os.close(fd)
