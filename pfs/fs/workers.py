"""Worker threads for the mount's blocking calls (backend requests, disk-tier reads), handed over cheaply.

Every cache miss, disk-tier read and backend request of a mount is one call in a worker thread, so the
hand-off is paid per file and per random read. `trio.to_thread.run_sync` costs about 150 us of CPU a call on
a 2-core VM (measured: 142-168 us for a call that does nothing), more than the FUSE round trip of a read
(benchmarks/floorfs.py serves 4 KiB reads from memory at 6,000-7,000/s): it acquires a CapacityLimiter,
hands the job to its thread cache and delivers the result through a second task. Here a call is a queue put
to a bounded set of threads that stay while there is work, and its result comes back with one
`run_sync_soon` that reschedules the waiting task (90-100 us).

A call still queued when its caller is cancelled never runs; a running call is waited for (the default,
like trio's: the caller learns its effect), or abandoned where the caller said it may be (a timed-out upload
whose thread finishes on its own).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import outcome
import trio

IDLE_S = 10.0  # a thread with nothing to do for this long ends (another starts when work comes)

_QUEUED, _RUNNING, _SKIPPED, _ABANDONED = range(4)


@dataclass(eq=False)
class _Job:
    fn: Callable[..., Any]
    args: tuple
    task: trio.lowlevel.Task
    token: trio.lowlevel.TrioToken
    state: int = _QUEUED


class Workers:
    def __init__(self, threads: int, name: str) -> None:
        self.max_threads = threads
        self._name = name
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards the counts below and each job's state
        self._threads = 0
        self._idle = 0  # threads waiting for a job
        self._queued = 0  # jobs put and not yet taken

    @property
    def threads(self) -> int:
        return self._threads

    async def run(self, fn: Callable[..., Any], *args: Any, cancellable: bool = False) -> Any:
        """`fn(*args)` in a worker thread. `cancellable`: a cancelled caller stops waiting at once and the
        thread finishes on its own (still counted against the thread limit until then)."""
        job = _Job(fn, args, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token())
        with self._lock:
            self._queued += 1
            start = self._queued > self._idle and self._threads < self.max_threads
            if start:
                self._threads += 1
                self._idle += 1
        self._queue.put(job)
        if start:
            threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()

        def abort(_: Any) -> trio.lowlevel.Abort:
            with self._lock:
                if job.state == _QUEUED:
                    job.state = _SKIPPED
                elif job.state == _RUNNING and cancellable:
                    job.state = _ABANDONED
                else:
                    return trio.lowlevel.Abort.FAILED
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _work(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._queued:  # put just now: this thread was counted on for it
                        continue
                    self._idle -= 1
                    self._threads -= 1
                    return
            with self._lock:
                self._queued -= 1
                if job.state == _SKIPPED:
                    continue
                self._idle -= 1
                job.state = _RUNNING
            result = outcome.capture(job.fn, *job.args)
            with self._lock:
                self._idle += 1
            with contextlib.suppress(trio.RunFinishedError):  # the loop is gone: nobody waits any more
                job.token.run_sync_soon(_deliver, job, result)
            del job, result  # not kept alive while this thread waits for the next job


def _deliver(job: _Job, result: outcome.Outcome) -> None:
    """On the loop, so never at the same time as the job's abort."""
    if job.state != _ABANDONED:
        trio.lowlevel.reschedule(job.task, result)
