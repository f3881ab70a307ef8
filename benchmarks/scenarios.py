"""The workloads, and how each is run against one client: cold, warm and hot for reads, once for the rest.

Phases mean the same for every client:
- cold: the client's caches emptied, freshly mounted, page cache dropped (`echo 3 > drop_caches`);
- hot: read again in the same mount, nothing dropped, once the client has settled (`measure.settle`);
- warm: unmounted, mounted again on the same client cache directory, page cache dropped.
Readers are threads in this process doing the same benchmarks.io calls for every client.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pyarrow.fs as pafs

from benchmarks import loader
from benchmarks.clients import Client
from benchmarks.config import KiB, MiB, Sizes
from benchmarks.datasets import Dataset
from benchmarks.io import IO, ArrowIO, FileIO
from benchmarks.measure import Meter, drop_caches, settle
from benchmarks.results import Result
from benchmarks.servers import Store

VISIBLE_TIMEOUT = 600.0
RAW_THREADS = 32  # pfs's `threads` option: GETs in flight at once
CKPT_THREADS = 8  # a training job's checkpoint: one writer thread per rank's shards


@dataclass
class Context:
    sizes: Sizes
    dataset: Dataset
    raw_fs: pafs.FileSystem
    bucket: str
    run_id: str
    store: Store

    @property
    def server_pid(self) -> int | None:
        return self.store.server.pid


def _parallel(readers: int, work: Callable[[list[str]], int], items: list[str]) -> int:
    """Split `items` over `readers` threads (interleaved), run `work` on each share, sum what they return."""
    shares = [items[i::readers] for i in range(readers)]
    if readers == 1:
        return work(shares[0])
    with ThreadPoolExecutor(readers) as pool:
        return sum(pool.map(work, shares))


@dataclass(frozen=True)
class ReadWork:
    """One read scenario: which files, how many readers, what is read and how the figure is expressed."""

    scenario: str
    metric: str
    files: Callable[[Context], list[str]]
    readers: int
    kind: str  # "seq" | "random" | "small"
    read_size: int = 0

    def offsets(self, ctx: Context) -> list[int]:
        count = ctx.sizes.random_1m_reads if self.read_size == MiB else ctx.sizes.random_4k_reads
        rng = random.Random(f"{ctx.sizes.seed}:{self.scenario}")
        return [rng.randrange(ctx.sizes.random_file // self.read_size) * self.read_size for _ in range(count)]

    def run(self, ctx: Context, io: IO) -> tuple[int, int]:
        """Do the work once; returns (operations, bytes)."""
        files = self.files(ctx)
        if self.kind.startswith("loader"):
            assert isinstance(io, FileIO)
            hints = self.kind == "loader-hints"
            return loader.epoch(io.root, files, self.readers, ctx.sizes.seed, hints=hints)
        if self.kind == "random":
            offsets = self.offsets(ctx)
            return len(offsets), io.read_ranges(files[0], offsets, self.read_size)
        read = io.read_sequential if self.kind == "seq" else io.read_whole
        nbytes = _parallel(self.readers, lambda share: sum(read(f) for f in share), files)
        return len(files), nbytes

    def value(self, ops: int, nbytes: int, seconds: float) -> float:
        return nbytes / MiB / seconds if "MiB" in self.metric else ops / seconds


READS = {
    w.scenario: w
    for w in (
        ReadWork("seq-1", "read MiB/s", lambda c: [c.dataset.big(0)], 1, "seq"),
        ReadWork("seq-4", "read MiB/s", lambda c: [c.dataset.big(i) for i in range(1, 5)], 4, "seq"),
        ReadWork("rand-1m", "read MiB/s", lambda c: [c.dataset.random_file("rand-1m")], 1, "random", MiB),
        ReadWork("rand-4k", "reads/s", lambda c: [c.dataset.random_file("rand-4k")], 1, "random", 4 * KiB),
        ReadWork("small-1", "files/s", lambda c: c.dataset.small_set("a"), 1, "small"),
        ReadWork("small-8", "files/s", lambda c: c.dataset.small_set("b"), 8, "small"),
        ReadWork("loader", "samples/s", lambda c: c.dataset.small_set("a"), 8, "loader"),
        ReadWork("loader-hints", "samples/s", lambda c: c.dataset.small_set("a"), 8, "loader-hints"),
    )
}


def _result(scenario: str, metric: str, phase: str, client: str, value: float, meter: Meter, ops: int,
            nbytes: int, higher: bool = True, **extra: float) -> Result:  # fmt: skip
    usage = meter.usage
    assert usage is not None
    rss = usage.daemon_peak_rss / MiB if usage.daemon_peak_rss is not None else None
    return Result(scenario, metric, phase, client, value, higher, usage.seconds, ops, nbytes,
                  usage.reader_cpu_s, usage.daemon_cpu_s, rss, usage.server_cpu_s,
                  usage.server_sent_bytes, usage.machine_cpu_s, usage.stolen_cpu_s, dict(extra))  # fmt: skip


def _measure_read(ctx: Context, work: ReadWork, client: Client, phase: str) -> list[Result]:
    with Meter(client.daemon_pid(), ctx.server_pid) as meter:
        ops, nbytes = work.run(ctx, client.io)
    usage = meter.usage
    assert usage is not None
    value = work.value(ops, nbytes, usage.seconds)
    results = [_result(work.scenario, work.metric, phase, client.name, value, meter, ops, nbytes)]
    if work.kind == "seq" and isinstance(client.io, ArrowIO):
        # The raw backend read the way a tuned downloader does it: parallel ranged GETs per object.
        if phase != "hot":
            drop_caches()
        raw_io = client.io
        with Meter(None, ctx.server_pid) as par:
            files = work.files(ctx)
            nbytes = _parallel(work.readers, lambda share: sum(raw_io.read_parallel(f) for f in share), files)
        assert par.usage is not None
        value = nbytes / MiB / par.usage.seconds
        results.append(
            _result(work.scenario, work.metric, phase, "raw-parallel", value, par, len(files), nbytes)
        )
    if work.kind == "loader-hints" and phase == "cold" and client.name == "pfs":
        results.append(_raw_in_order(ctx, work))
    return results


def _raw_in_order(ctx: Context, work: ReadWork) -> Result:
    """The bandwidth limit of a cold epoch: the loader's files in its order, as whole-object GETs from
    RAW_THREADS threads straight to the store (as many as a pfs mount has backend calls in flight)."""
    files = work.files(ctx)
    ordered = [files[i] for i in loader.order(len(files), ctx.sizes.seed)]
    raw_io = ArrowIO(ctx.raw_fs, ctx.bucket)
    with Meter(None, ctx.server_pid) as meter, ThreadPoolExecutor(RAW_THREADS) as pool:
        nbytes = sum(pool.map(raw_io.read_whole, ordered))
    assert meter.usage is not None
    value = len(files) / meter.usage.seconds
    return _result(work.scenario, work.metric, "cold", "raw-parallel", value, meter, len(files), nbytes)


def prime(ctx: Context, scenario: str) -> None:
    """Read a scenario's files once from local disk before any client measures it.

    This VM's disk is a file on its host: the first read of a file in a while comes from the host's disk
    (several times slower here), later ones from the host's memory, whatever our page cache holds.
    Without this, the first client measured in a scenario would pay for everyone.
    """
    local = FileIO(str(ctx.dataset.root))
    if scenario in READS:
        files = READS[scenario].files(ctx)
    elif scenario == "meta":
        local.list_tree("meta")
        files = ctx.dataset.meta_files()
    else:
        return
    _parallel(4, lambda share: sum(local.read_whole(f) for f in share), files)


def warm_up(ctx: Context, client: Client) -> None:
    """Mount once and read up to 256 MiB, untimed, before any scenario.

    The first mount of a run was seen to read several times slower than later ones here (fresh processes
    touching fresh memory, in the server and the client alike). The client's cache is emptied again
    before every scenario, so this warms nothing a measurement could use.
    """
    client.clear_cache()
    client.mount()
    try:
        offsets = range(0, min(ctx.sizes.big_file, 256 * MiB), MiB)
        client.io.read_ranges(ctx.dataset.big(0), offsets, MiB)
    finally:
        client.unmount()


def runs_on(scenario: str, client: Client) -> str:
    """Why `client` skips `scenario` ('' when it runs it)."""
    if scenario.startswith("loader") and not loader.available():
        return loader.SKIP_REASON
    if scenario.startswith("loader") and not isinstance(client.io, FileIO):
        return "the loader reads a directory"
    if scenario == "loader-hints" and client.name not in ("pfs", "pfs-ro"):
        return "hints are pfs's (the loader scenario is the same epoch without them)"
    if scenario not in READS and scenario != "meta" and not client.writes:
        return "read-only client"
    if (scenario in READS or scenario == "meta") and not client.reads:
        return "write-only client"
    return ""


def run_read(ctx: Context, scenario: str, client: Client) -> list[Result]:
    work = READS[scenario]
    results: list[Result] = []
    client.clear_cache()
    client.mount()
    try:
        drop_caches()
        results += _measure_read(ctx, work, client, "cold")
        settle(client.daemon_pid())
        results += _measure_read(ctx, work, client, "hot")
    finally:
        client.unmount()
    client.mount()
    try:
        drop_caches()
        results += _measure_read(ctx, work, client, "warm")
    finally:
        client.unmount()
    return results


def run_meta(ctx: Context, client: Client) -> list[Result]:
    """Time to first byte of unlisted files, then `ls -lR` of the tree, then a stat of every file."""
    files = ctx.dataset.meta_files()
    per_dir = ctx.sizes.meta_per_dir
    last_dir = files[(len(files) - 1) // per_dir * per_dir :][: ctx.sizes.ttfb_files]
    results = []
    client.clear_cache()
    client.mount()
    try:
        drop_caches()
        io = client.io
        latencies = []
        with Meter(client.daemon_pid(), ctx.server_pid) as meter:
            for rel in last_dir:
                start = time.perf_counter()
                io.first_byte(rel)
                latencies.append(time.perf_counter() - start)
        median_ms = statistics.median(latencies) * 1000
        p90_ms = statistics.quantiles(latencies, n=10)[-1] * 1000 if len(latencies) > 1 else median_ms
        n = len(latencies)
        results.append(
            _result(
                "meta", "first byte ms", "cold", client.name, median_ms, meter, n, n, False, p90_ms=p90_ms
            )
        )

        with Meter(client.daemon_pid(), ctx.server_pid) as meter:
            entries = io.list_tree("meta")
        assert meter.usage is not None
        if entries < len(files):
            raise RuntimeError(f"{client.name}: ls -lR meta saw {entries} entries, expected >= {len(files)}")
        value = entries / meter.usage.seconds
        results.append(_result("meta", "ls -lR entries/s", "cold", client.name, value, meter, entries, 0))

        deadline = time.monotonic() + ctx.sizes.stat_time_limit
        with Meter(client.daemon_pid(), ctx.server_pid) as meter:
            done = 0
            for rel in files:
                io.stat(rel)
                done += 1
                if time.monotonic() > deadline:
                    break
        assert meter.usage is not None
        value = done / meter.usage.seconds
        results.append(_result("meta", "stat/s after listing", "", client.name, value, meter, done, 0))
    finally:
        client.unmount()
    return results


def _wait_visible(ctx: Context, expected: dict[str, int]) -> None:
    """Until every written file is on the S3 server with its full size (uploads may be asynchronous).

    One HEAD per file still missing, in the order they were written, up to the first not there yet: listing
    the whole directory every few milliseconds would take a good part of the server's CPU from the uploads
    still under way, and more the more files the directory holds."""
    deadline = time.monotonic() + VISIBLE_TIMEOUT
    missing = list(expected)
    while True:
        while missing:
            try:
                info = ctx.raw_fs.get_file_info(f"{ctx.bucket}/{missing[0]}")
            except OSError:  # timed out on a server busy with a client's uploads: ask again
                break
            if not info.is_file or info.size != expected[missing[0]]:
                break
            missing.pop(0)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(missing)} written files not on the server after {VISIBLE_TIMEOUT} s")
        time.sleep(0.02)


def run_write(ctx: Context, scenario: str, client: Client) -> list[Result]:
    """Write, close, and wait until the server has every byte: the time a job's output takes to be safe."""
    directory = f"_writes/{ctx.run_id}/{client.name}"
    block = random.Random(f"{ctx.sizes.seed}:write").randbytes(MiB)
    threads = 1
    if scenario == "write-big":
        files = {f"{directory}/big.bin": ctx.sizes.write_big}
        metric = "write MiB/s"
    elif scenario == "write-ckpt":
        shards = range(ctx.sizes.write_ckpt_shards)
        files = {f"{directory}/shard{i:03d}.bin": ctx.sizes.write_ckpt_shard for i in shards}
        metric, threads = "write MiB/s", CKPT_THREADS
    else:
        files = {
            f"{directory}/s{i:05d}.bin": ctx.sizes.small_file for i in range(ctx.sizes.write_small_files)
        }
        metric = "files/s"
    client.make_write_dir(ctx.store, directory)
    client.clear_cache()
    client.mount()
    io = client.write_io
    # No dirty pages of the client before (its local files, the server's copies of its uploads) left for
    # the kernel to write back during this one's writes.
    os.sync()
    try:
        with Meter(client.daemon_pid(), ctx.server_pid) as meter:
            start = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda item: io.write(item[0], item[1], block), files.items()))
            close_s = time.perf_counter() - start
            if client.on_backend:
                _wait_visible(ctx, files)
    finally:
        client.unmount()
        client.remove_write_dir(ctx.store, directory)
    assert meter.usage is not None
    seconds, total = meter.usage.seconds, sum(files.values())
    if metric == "write MiB/s":
        value, at_close = total / MiB / seconds, total / MiB / close_s
    else:
        value, at_close = len(files) / seconds, len(files) / close_s
    return [
        _result(scenario, metric, "", client.name, value, meter, len(files), total),
        replace(
            _result(scenario, f"{metric} at close", "", client.name, at_close, meter, len(files), total),
            seconds=close_s,
        ),
    ]
