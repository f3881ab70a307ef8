"""`read_queued_requests_at_once()`: pyfuse3's request loop takes a request already waiting in /dev/fuse
without a trip through trio's epoll.

Each of pyfuse3's worker tasks (up to 3.5 at least) takes the loop's lock, then awaits
`trio.lowlevel.wait_readable` on the FUSE descriptor before it reads one request, also when requests are
already queued there: every request then costs an epoll registration (`epoll_ctl`), a park of the task and
a pass through trio's `epoll_wait` to wake it again. With several readers requests queue up, and that
round trip was 14 % of the loop's time in a profile of eight readers. Here `wait_readable` first asks the
descriptor itself (a `poll` with no timeout, one syscall) and returns at once when a request is waiting;
else, and for every other descriptor, it is trio's own. Acquiring pyfuse3's lock is still a checkpoint
before every request, so other tasks and trio's I/O keep their turn.

pyfuse3 looks `trio.lowlevel.wait_readable` up at every call, so the wrapper is installed there, in the
daemon's process only, between `pyfuse3.init` (which opens /dev/fuse) and `pyfuse3.main`.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

_original: Callable[[int], Awaitable[None]] | None = None  # trio's own, while the wrapper is installed


def fuse_descriptor() -> int | None:
    """This process's one descriptor of /dev/fuse (None when there is none, or more than one)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
    return found[0] if len(found) == 1 else None


def read_queued_requests_at_once(fd: int | None = None) -> bool:
    """Install the wrapper for descriptor `fd` (default: the one of /dev/fuse); False when there is none."""
    global _original
    if fd is None:
        fd = fuse_descriptor()
    if fd is None:
        log.info("requests are read through epoll: no single /dev/fuse descriptor found")
        return False
    uninstall()
    original = _original = trio.lowlevel.wait_readable
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    mine = fd

    async def wait_readable(fd: int) -> None:
        if fd == mine and poll.poll(0):  # a request (or the end of the session) is waiting: read it now
            return
        await original(fd)

    trio.lowlevel.wait_readable = wait_readable
    return True


def uninstall() -> None:
    """Put trio's own `wait_readable` back."""
    global _original
    if _original is not None:
        trio.lowlevel.wait_readable = _original
        _original = None
