"""One operation at a time per volume or target path; a second concurrent call is told to retry.

Kubernetes retries a call that gets ABORTED, so refusing at once (instead of queueing behind a mount that
may take a minute) keeps the plugin's worker threads free and never runs two mounts of one volume.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc


class OperationLocks:
    def __init__(self) -> None:
        self._busy: set[str] = set()
        self._mutex = threading.Lock()

    def try_acquire(self, key: str) -> bool:
        with self._mutex:
            if key in self._busy:
                return False
            self._busy.add(key)
            return True

    def release(self, key: str) -> None:
        with self._mutex:
            self._busy.discard(key)

    @contextmanager
    def hold(self, key: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Run the block as the only operation on `key`, or end the call with ABORTED."""
        if not self.try_acquire(key):
            context.abort(grpc.StatusCode.ABORTED, f"an operation on {key} is already in progress")
        try:
            yield
        finally:
            self.release(key)
