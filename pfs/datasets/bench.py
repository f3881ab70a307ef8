"""`pfs bench`: measure a directory as a user's job sees it (big and small files, several threads).

Like `juicefs bench`: each thread writes and reads one big file and a set of small files, then stats them;
each step is reported as throughput and mean latency per operation (a block for big files, a whole file for
small ones). On a pfs mount, the mount's counters (`pfs.mount.control.stats`) are read before and after each
step, so the report also shows what the daemon did for it. Works on any directory; it only ever touches the
`pfs-bench-*` directory it creates, and removes it at the end.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pfs.mount import control, kernel

KiB = 1 << 10
MiB = 1 << 20


@dataclass
class BenchOptions:
    threads: int = 1
    big_file_size: int = 1024 * MiB
    small_file_size: int = 128 * KiB
    small_file_count: int = 100  # per thread
    block_size: int = 1 * MiB
    drop_caches: bool = False  # before each read step (needs root)


@dataclass
class Step:
    name: str
    ops: int  # blocks for big files, files for small ones, stats for stat
    nbytes: int
    seconds: float
    op_seconds: float  # summed over threads: mean latency = op_seconds / ops
    unit: str  # "MiB/s" or "files/s"
    counters: dict[str, float] = field(default_factory=dict)  # pfs counters that changed during the step

    @property
    def rate(self) -> float:
        return self.nbytes / MiB / self.seconds if self.unit == "MiB/s" else self.ops / self.seconds

    @property
    def latency_ms(self) -> float:
        return self.op_seconds / self.ops * 1000 if self.ops else 0.0


def pfs_mount_root(path: str) -> str | None:
    """The root of the pfs mount `path` lies in, or None when it is not on a pfs mount."""
    current = os.path.realpath(path)
    while True:
        entry = kernel.mount_at(current)
        if entry is not None:
            return current if entry.fstype == "fuse.pfs" else None
        if current == "/":
            return None
        current = os.path.dirname(current)


def _flatten(data: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[prefix + key] = value
    return flat


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


class Bench:
    def __init__(self, path: str, options: BenchOptions, progress: Callable[[str], None] = lambda _: None):
        self.options = options
        self.dir = os.path.join(path, f"pfs-bench-{uuid.uuid4().hex[:8]}")
        self.root = pfs_mount_root(path)
        self.progress = progress
        self.block = os.urandom(options.block_size)

    def _counters(self) -> dict[str, float]:
        return _flatten(control.stats(self.root)) if self.root else {}

    def _step(self, name: str, unit: str, work: Callable[[int], tuple[int, int, float]], read: bool) -> Step:
        """Run `work(thread_index) -> (ops, bytes, op_seconds)` on every thread at once."""
        self.progress(name)
        if read and self.options.drop_caches:
            _drop_caches()
        before = self._counters()
        start = time.perf_counter()
        with ThreadPoolExecutor(self.options.threads) as pool:
            done = list(pool.map(work, range(self.options.threads)))
        seconds = time.perf_counter() - start
        after = self._counters()
        changed = {
            k: v - before.get(k, 0) for k, v in after.items() if k != "uptime_s" and v != before.get(k, 0)
        }
        ops, nbytes, op_seconds = (sum(d[i] for d in done) for i in range(3))
        return Step(name, int(ops), int(nbytes), seconds, op_seconds, unit, changed)

    def _big(self, thread: int) -> str:
        return os.path.join(self.dir, f"big-{thread}")

    def _small(self, thread: int) -> list[str]:
        return [os.path.join(self.dir, f"small-{thread}-{i}") for i in range(self.options.small_file_count)]

    def _write_big(self, thread: int) -> tuple[int, int, float]:
        size, block = self.options.big_file_size, memoryview(self.block)
        ops, op_seconds = 0, 0.0
        fd = os.open(self._big(thread), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            left = size
            while left:
                start = time.perf_counter()
                left -= os.write(fd, block[: min(left, len(block))])
                op_seconds += time.perf_counter() - start
                ops += 1
        finally:
            start = time.perf_counter()
            os.close(fd)  # pfs uploads here: part of the last operation's cost
            op_seconds += time.perf_counter() - start
        return ops, size, op_seconds

    def _read_big(self, thread: int) -> tuple[int, int, float]:
        buf = bytearray(self.options.block_size)
        ops, nbytes, op_seconds = 0, 0, 0.0
        fd = os.open(self._big(thread), os.O_RDONLY)
        try:
            while True:
                start = time.perf_counter()
                n = os.readv(fd, [buf])
                op_seconds += time.perf_counter() - start
                if not n:
                    break
                ops, nbytes = ops + 1, nbytes + n
        finally:
            os.close(fd)
        return ops, nbytes, op_seconds

    def _per_file(self, thread: int, action: Callable[[str], int]) -> tuple[int, int, float]:
        files = self._small(thread)
        start = time.perf_counter()
        nbytes = sum(action(path) for path in files)
        return len(files), nbytes, time.perf_counter() - start

    def _write_small_file(self, path: str) -> int:
        size = self.options.small_file_size
        with open(path, "wb", buffering=0) as f:
            written = 0
            while written < size:
                written += f.write(self.block[: min(size - written, len(self.block))])
        return size

    @staticmethod
    def _read_small_file(path: str) -> int:
        with open(path, "rb", buffering=0) as f:
            return len(f.read())

    @staticmethod
    def _stat_file(path: str) -> int:
        os.stat(path)
        return 0

    def run(self) -> list[Step]:
        """Every step in order (small-file steps only when small files were asked for); cleans up after."""
        os.mkdir(self.dir)
        try:
            steps = [
                self._step("write big file", "MiB/s", self._write_big, read=False),
                self._step("read big file", "MiB/s", self._read_big, read=True),
            ]
            if self.options.small_file_count:
                for name, action, read in (
                    ("write small files", self._write_small_file, False),
                    ("read small files", self._read_small_file, True),
                    ("stat small files", self._stat_file, False),
                ):
                    per_file = functools.partial(self._per_file, action=action)
                    steps.append(self._step(name, "files/s", per_file, read))
            return steps
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
