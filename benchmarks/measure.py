"""What a measurement needs from the system: page-cache drops, timers, a daemon's CPU time and peak RSS, the
S3 server's CPU time and bytes sent, and the whole machine's CPU time.

Daemon and server figures come from /proc/PID (CPU = utime + stime of all its threads and reaped children;
peak RSS = VmHWM, reset before each measurement by writing 5 to /proc/PID/clear_refs; bytes sent = wchar
of /proc/PID/io); the machine's from
/proc/stat (every core's time not idle or waiting for I/O, kernel threads included; and the time the
host took from them). This module only reads
or resets counters of the pids it is given; it never signals a process.
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


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU time all cores have spent busy since boot, and time the hypervisor took from them (steal: this
    VM's cores running another guest), from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    # (guest time is counted in user already)
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def written_bytes(pid: int) -> int:
    """Bytes process `pid` has written through write(2) and its kind, files and sockets alike (wchar): for an
    S3 server answering GETs, what it sent. (Not what it read: `rclone serve s3` reads a file many times over
    for the MD5 of its ETag, 1.2 GiB read for one GET of 64 MiB here.)"""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


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
    server_cpu_s: float | None  # the S3 server's, serving this phase's requests
    server_sent_bytes: int | None  # what the S3 server sent: the bytes a client fetched, cache misses and all
    machine_cpu_s: float  # every process's and the kernel's on all cores: this phase's whole cost
    stolen_cpu_s: float  # taken from this VM's cores by the host: what makes runs on a busy host slower


class Meter:
    """Times one measured phase: wall clock, this process's CPU, the client daemon's CPU and peak RSS, the
    S3 server's CPU and the machine's."""

    def __init__(self, daemon_pid: int | None, server_pid: int | None = None) -> None:
        self.pid = daemon_pid
        self.server_pid = server_pid
        self.usage: Usage | None = None

    def __enter__(self) -> Meter:
        if self.pid:
            reset_peak_rss(self.pid)
            self._daemon_cpu = cpu_seconds(self.pid)
        if self.server_pid:
            self._server_cpu = cpu_seconds(self.server_pid)
            self._server_sent = written_bytes(self.server_pid)
        self._machine_cpu, self._stolen_cpu = machine_cpu_seconds()
        self._cpu = time.process_time()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._start
        reader_cpu = time.process_time() - self._cpu
        machine_cpu, stolen_cpu = machine_cpu_seconds()
        machine_cpu, stolen_cpu = machine_cpu - self._machine_cpu, stolen_cpu - self._stolen_cpu
        daemon_cpu = cpu_seconds(self.pid) - self._daemon_cpu if self.pid else None
        server_cpu = server_sent = None
        if self.server_pid:
            server_cpu = cpu_seconds(self.server_pid) - self._server_cpu
            server_sent = written_bytes(self.server_pid) - self._server_sent
        peak = peak_rss_bytes(self.pid) if self.pid else None
        self.usage = Usage(
            seconds, reader_cpu, daemon_cpu, peak, server_cpu, server_sent, machine_cpu, stolen_cpu
        )
