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

    def count(self, op: str) -> None:
        self.ops[op] += 1

    def add(self, name: str, amount: int) -> None:
        self.totals[name] += amount

    def snapshot(self, **extra: int) -> dict:
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "ops": dict(self.ops),
            **dict(self.totals),
            **extra,
        }


def rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
