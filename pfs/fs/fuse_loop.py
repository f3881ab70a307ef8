"""`adapt_request_loop()`: pyfuse3's request loop, made cheaper per request through pyfuse3's own switch.

pyfuse3 takes trio from its module global `pyfuse3.trio` (which `pyfuse3.asyncio` replaces the same way),
and each of its worker tasks does two things with it before every request:
- it awaits `trio.lowlevel.wait_readable` on /dev/fuse, also when requests are already queued there:
  every request then costs an epoll registration (`epoll_ctl`), a park of the task and a pass through
  trio's `epoll_wait` to wake it again, 14 % of the loop's time in a profile of eight readers. Here the
  descriptor is asked first (a `poll` with no timeout, one syscall) and the wait returns at once when a
  request is waiting; else, and for any other descriptor, it is trio's own wait.
- it takes a `trio.Lock` shared by all the tasks (only one waits on the descriptor at a time). trio's lock
  keeps an owner, checks it on release and registers it with the task so a dying owner breaks the lock:
  bookkeeping for locks that tasks hold across their work, which this one never is (it is held only
  around the wait). Here `_Baton` does what the loop needs: a checkpoint on every acquisition (so other
  tasks and trio's I/O keep their turn between requests), first come first served, handed straight to the
  next waiting task on release.

So `pyfuse3.trio` becomes a namespace that is trio with those two replaced; nothing else in the process
sees either. Installed in the daemon's process only, between `pyfuse3.init` (which opens /dev/fuse) and
`pyfuse3.main`.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import sys
from typing import Any

import pyfuse3
import trio

log = logging.getLogger(__name__)


class _Baton:
    """pyfuse3's read lock: held by one task at a time, handed to the longest waiter on release."""

    __slots__ = ("_held", "_waiting")

    def __init__(self) -> None:
        self._held = False
        self._waiting: collections.deque[trio.lowlevel.Task] = collections.deque()

    @trio.lowlevel.enable_ki_protection
    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._held:
            self._held = True
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        task = trio.lowlevel.current_task()
        waiting = self._waiting
        waiting.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            waiting.remove(task)  # cancelled before its turn: it never held the baton
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)  # woken holding it: see __aexit__

    @trio.lowlevel.enable_ki_protection
    async def __aexit__(self, *exc_info: object) -> None:
        if self._waiting:
            trio.lowlevel.reschedule(self._waiting.popleft())  # stays held: now by that task
        else:
            self._held = False


class _Lowlevel:
    """`trio.lowlevel`, whose `wait_readable` asks /dev/fuse first."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)

    async def wait_readable(self, fd: int) -> None:
        if fd == self._fd and self._poll.poll(0):  # a request (or the end of the session) is waiting
            return
        await trio.lowlevel.wait_readable(fd)


class _Trio:
    """trio, as pyfuse3's request loop sees it."""

    Lock = _Baton

    def __init__(self, fd: int) -> None:
        self.lowlevel = _Lowlevel(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


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


def adapt_request_loop(fd: int | None = None) -> bool:
    """Give pyfuse3 the adapted trio for descriptor `fd` (default: the one of /dev/fuse); False, and trio
    as it is, when there is no such descriptor."""
    if fd is None:
        fd = fuse_descriptor()
    if fd is None:
        log.info("requests are read through epoll: no single /dev/fuse descriptor found")
        return False
    pyfuse3.trio = _Trio(fd)  # type: ignore[attr-defined]
    return True


def uninstall() -> None:
    """Give pyfuse3 trio itself again."""
    pyfuse3.trio = sys.modules["trio"]  # type: ignore[attr-defined]
