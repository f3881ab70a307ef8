"""Counters of a running mount, read through the control surface (`pfs stats`, `getfattr`)."""

from __future__ import annotations

import os
import time
from collections import Counter


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self.ops: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.last_failure: tuple[float, str] | None = None  # (unix time, message) of the last backend failure

    def count(self, op: str) -> None:
        self.ops[op] += 1

    def add(self, name: str, amount: int) -> None:
        self.totals[name] += amount

    def backend_failed(self, message: str) -> None:
        """A request failed because the backend did (EIO or ESTALE to the kernel): what health checks read
        (the CSI plugin's volume condition). `message` comes from a typed error, which holds no secret."""
        self.totals["backend_errors"] += 1
        self.last_failure = (time.time(), message)

    def snapshot(self, **extra: int) -> dict:
        failure: dict[str, float | str] = {}
        if self.last_failure is not None:
            at, message = self.last_failure
            failure = {"last_backend_error_at": at, "last_backend_error": message}
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "ops": dict(self.ops),
            **dict(self.totals),
            **failure,
            **extra,
        }


def rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
