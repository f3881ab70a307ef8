"""Counters of a running mount, read through the control surface (`pfs stats`, `getfattr`) and exported as
Prometheus metrics (pfs/mount/metrics.py), so both always show the very same numbers."""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections import Counter

# Upper bounds (seconds) of the latency histograms' buckets: from a FUSE request answered from memory
# (~50 us) to a backend request that used up a long retry deadline.
BOUNDS = (
    *(50e-6, 100e-6, 250e-6, 500e-6),
    *(1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


class Latency:
    """Durations of one operation: `counts[i]` took more than BOUNDS[i-1] and at most BOUNDS[i] seconds
    (the last one: longer than BOUNDS[-1]), `total` is their sum.

    Plain ints in a list rather than prometheus_client's Histogram: an observation costs a quarter of
    `Histogram.observe` (no lock, no per-bucket value objects), which matters on every FUSE request."""

    __slots__ = ("counts", "total")

    def __init__(self, counts: list[int] | None = None, total: float = 0.0) -> None:
        self.counts = counts if counts is not None else [0] * (len(BOUNDS) + 1)
        self.total = total

    def copy(self) -> Latency:
        return Latency(self.counts.copy(), self.total)


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self.ops: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.last_failure: tuple[float, str] | None = None  # (unix time, message) of the last backend failure
        self.fuse_seconds: dict[str, Latency] = {}  # by FUSE operation, updated on the trio loop only
        self.backend_seconds: dict[str, Latency] = {}  # by backend request, updated from worker threads
        self._backend_lock = threading.Lock()

    def count(self, op: str) -> None:
        self.ops[op] += 1

    def fuse_op(self, op: str, seconds: float) -> None:
        """A FUSE request `op` took `seconds`. Only ever called on the trio loop: no lock needed."""
        latency = self.fuse_seconds.get(op)
        if latency is None:
            latency = self.fuse_seconds[op] = Latency()
        latency.counts[bisect_left(BOUNDS, seconds)] += 1  # bisect_left: a bucket holds what equals its bound
        latency.total += seconds

    def backend_request(self, op: str, seconds: float) -> None:
        """A backend request `op` took `seconds`, called from the thread that made it. With its lock this
        costs ~0.27 us, nothing next to the thread hand-off (~100 us) every backend request pays anyway."""
        at = bisect_left(BOUNDS, seconds)
        with self._backend_lock:
            latency = self.backend_seconds.get(op)
            if latency is None:
                latency = self.backend_seconds[op] = Latency()
            latency.counts[at] += 1
            latency.total += seconds

    def latencies(self) -> tuple[dict[str, Latency], dict[str, Latency]]:
        """Copies of the FUSE and backend latencies, to read on the trio loop while threads go on adding."""
        with self._backend_lock:
            backend = {op: latency.copy() for op, latency in self.backend_seconds.items()}
        return {op: latency.copy() for op, latency in self.fuse_seconds.items()}, backend

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
