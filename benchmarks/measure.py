"""What a measurement needs from the system: page-cache drops, timers, and a daemon's CPU time and peak RSS.

Daemon figures come from /proc/PID (CPU = utime + stime of all its threads and reaped children; peak RSS =
VmHWM, reset before each measurement by writing 5 to /proc/PID/clear_refs). This module only reads or resets
counters of the pids it is given; it never signals a process.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (needs root)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[11:15] are utime, stime, cutime, cstime (after the state field at index 0)
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0); without it the figure is the
    # peak over the daemon's whole life, which is still an upper bound.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def settle(pid: int | None, quiet_s: float = 0.25, limit_s: float = 15.0) -> None:
    """Until the client has finished what the last phase left it to do: dirty pages written back (its cache
    files among them), and its daemon idle (under 4 % of a core for `quiet_s`), for at most `limit_s`.

    A phase of a few hundred milliseconds would otherwise measure the tail of the one before it, a
    client's cache being filled, rather than its own reads; a training job's epochs are far longer."""
    os.sync()
    if not pid:
        return
    deadline = time.monotonic() + limit_s
    with contextlib.suppress(OSError):  # the daemon is gone: nothing left to wait for
        used = cpu_seconds(pid)
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            used, before = cpu_seconds(pid), used
            if used - before < 0.04 * quiet_s:
                return


@dataclass
class Usage:
    seconds: float
    reader_cpu_s: float
    daemon_cpu_s: float | None
    daemon_peak_rss: int | None


class Meter:
    """Times one measured phase: wall clock, this process's CPU, and the client daemon's CPU and peak RSS."""

    def __init__(self, daemon_pid: int | None) -> None:
        self.pid = daemon_pid
        self.usage: Usage | None = None

    def __enter__(self) -> Meter:
        if self.pid:
            reset_peak_rss(self.pid)
            self._daemon_cpu = cpu_seconds(self.pid)
        self._cpu = time.process_time()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._start
        reader_cpu = time.process_time() - self._cpu
        daemon_cpu = cpu_seconds(self.pid) - self._daemon_cpu if self.pid else None
        peak = peak_rss_bytes(self.pid) if self.pid else None
        self.usage = Usage(seconds, reader_cpu, daemon_cpu, peak)
