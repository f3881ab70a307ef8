"""Bound a blocking call that a client library may never return from (libhdfs and its JVM).

The S3 client has transport timeouts (pfs.backends.arrow.connect), so its calls end by themselves. A libhdfs
call against a stopped NameNode or DataNode can wait inside Java for minutes or for ever. `run_bounded` runs
such a call in a daemon worker thread and stops waiting for it once it has made no progress for `seconds`:
the caller gets `Transient` (and the mount answers EIO) on time, while the call is abandoned. An abandoned
call keeps its thread until the library returns (if it ever does); its result is dropped, and a write it
was doing may still complete later (whole: the write paths publish by rename). Threads are reused, so a
healthy store costs one thread hand-off per call.

Progress: a call that streams data (an upload) passes `progress`, a function returning a number that grows
as bytes move; the bound then applies to the time since that number last changed, not to the whole call,
so a large transfer that keeps moving is never cut off (like curl's low-speed limit for S3).

This module must never run a call twice, and never block for longer than the bound it is given.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pfs.errors import Transient

T = TypeVar("T")

MAX_IDLE = 16  # idle workers kept for reuse; more are started on demand and end when idle
_POLL = 0.25  # seconds between looks at a streaming call's progress


class _Job:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.abandoned = False  # the caller stopped waiting


_current = threading.local()  # the job a worker thread is running


def abandoned() -> bool:
    """Whether the caller of the call running in this thread has stopped waiting for it. A call that is
    about to make a change visible (the rename that publishes a file) asks first: a late publish could
    otherwise replace a newer version written after the caller was told EIO."""
    job = getattr(_current, "job", None)
    return job is not None and job.abandoned


class _Worker(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="pfs-bounded", daemon=True)
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            job = _current.job = self.jobs.get()
            try:
                job.result = job.fn()
            except BaseException as exc:  # handed to the waiting caller, if it still waits
                job.error = exc
            job.done.set()
            _current.job = None
            del job
            if not _park(self):
                return


_idle: list[_Worker] = []
_lock = threading.Lock()


def _park(worker: _Worker) -> bool:
    with _lock:
        if len(_idle) >= MAX_IDLE:
            return False
        _idle.append(worker)
        return True


def _submit(fn: Callable[[], Any]) -> _Job:
    with _lock:
        worker = _idle.pop() if _idle else None
    if worker is None:
        worker = _Worker()
        worker.start()
    job = _Job(fn)
    worker.jobs.put(job)
    return job


def run_bounded(
    fn: Callable[[], T], seconds: float, what: str, progress: Callable[[], int] | None = None
) -> T:
    """`fn()`, or Transient once it has been silent for `seconds` (no change of `progress()`, if given)."""
    job = _submit(fn)
    last_seen = progress() if progress is not None else 0
    quiet_since = time.monotonic()
    while True:
        left = quiet_since + seconds - time.monotonic()
        if job.done.wait(max(0.0, min(left, _POLL) if progress is not None else left)):
            if job.error is not None:
                raise job.error
            return job.result
        if progress is not None:
            seen = progress()
            if seen != last_seen:
                last_seen, quiet_since = seen, time.monotonic()
                continue
        if time.monotonic() >= quiet_since + seconds:
            job.abandoned = True
            raise Transient(f"{what}: no answer within {seconds:.1f} s")
