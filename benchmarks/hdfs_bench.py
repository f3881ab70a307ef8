"""pfs on HDFS, next to pyarrow's own HadoopFileSystem reading the same bytes:

    bash -c 'source scripts/hdfs.sh && python -m benchmarks.hdfs_bench'    # as root; starts the test HDFS
    python -m benchmarks.hdfs_bench [--size-mib 1024] [--small-files 1000] [--only read,sync]

Needs the client variables of an HDFS (PFS_TEST_HDFS_URI, JAVA_HOME, ARROW_LIBHDFS_DIR, CLASSPATH), which
scripts/hdfs.sh sets after starting the single-node test kit. Parts:

- read: one file read sequentially with 1 MiB reads (benchmarks/io.py, the same code as the main harness):
  through a pfs mount cold (empty cache, fresh mount, page cache dropped), hot (again at once) and warm
  (remounted on the filled cache, page cache dropped); and directly with pyarrow's HadoopFileSystem
  (`open_input_stream`, 1 MiB `readinto`), with the page cache dropped (cold: the DataNode reads its disk)
  and at once again (hot: the DataNode's block file in the page cache).
- sync: `pfs sync` of a local tree of small files into HDFS (new files), then again (nothing to copy), after
  the same files written straight through pyarrow by as many threads (the HDFS client's own pace).

Only public surfaces are used: the `pfs` command line, the mount, and pyarrow for the direct client.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.fs as pafs

from benchmarks.config import MiB
from benchmarks.io import ArrowIO, FileIO
from benchmarks.measure import drop_caches
from pfs.mount import control

CHUNK = 64 * MiB


def pfs(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pfs", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pfs {args[0]} failed: {result.stderr.strip()}")
    return result


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds


def timed(fn) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def write_file(fs: pafs.FileSystem, path: str, size: int) -> None:
    block = os.urandom(CHUNK)
    with fs.open_output_stream(path) as f:
        left = size
        while left:
            n = min(left, CHUNK)
            f.write(block[:n])
            left -= n


def bench_read(uri: str, fs: pafs.FileSystem, root: str, size: int, work: str) -> list[tuple[str, str, str]]:
    write_file(fs, f"{root}/big.bin", size)
    rows = []
    direct = ArrowIO(fs, root)
    for phase in ("cold", "hot"):
        if phase == "cold":
            drop_caches()
        n, seconds = timed(lambda: direct.read_sequential("big.bin"))
        assert n == size
        rows.append(("pyarrow HadoopFileSystem", phase, f"{rate(size, seconds):,.0f}"))
    mnt, cache = f"{work}/mnt", f"{work}/cache"
    os.makedirs(mnt)
    through = FileIO(mnt)
    pfs("mount", uri, mnt, "--cache-dir", cache, "--log-file", f"{work}/pfs.log")
    try:
        for phase in ("cold", "hot", "warm"):
            if phase == "warm":
                pfs("umount", mnt)
                pfs("mount", uri, mnt, "--cache-dir", cache, "--log-file", f"{work}/pfs.log")
            if phase != "hot":
                drop_caches()
            n, seconds = timed(lambda: through.read_sequential("big.bin"))
            assert n == size
            rows.append(("pfs mount", phase, f"{rate(size, seconds):,.0f}"))
    finally:
        if control.daemon_pid(mnt):
            pfs("umount", mnt)
    return rows


def bench_sync(uri: str, fs: pafs.FileSystem, root: str, count: int, work: str) -> list[tuple[str, ...]]:
    src = f"{work}/small"
    fs.create_dir(f"{root}/sync")  # pfs sync writes into an existing directory
    for i in range(count):
        d = f"{src}/d{i // 100:02d}"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/f{i:05d}.bin", "wb") as f:
            f.write(os.urandom(4096))
    names = sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs_ in os.walk(src) for f in fs_)
    rows = [_direct_writes(fs, f"{root}/direct", src, names, count)]
    dst = f"{uri}/sync"
    for what in ("new", "unchanged"):
        result, wall = timed(lambda: pfs("sync", src, dst))
        # The command's own figure leaves out starting Python, the JVM and the HDFS client (seconds here).
        said = re.search(r" in ([0-9.]+) s", result.stdout + result.stderr)
        assert said is not None, result.stdout + result.stderr
        own = float(said.group(1))
        rows.append(
            (f"`pfs sync` {count:,} x 4 KiB, {what}", f"{count / own:,.0f}", f"{own:.2f}", f"{wall:.1f}")
        )
    return rows


def _direct_writes(fs: pafs.FileSystem, root: str, src: str, names: list[str], count: int) -> tuple[str, ...]:
    """The HDFS client's own pace for the same files: pyarrow, one `open_output_stream` per file, as many
    threads as `pfs sync` uses here (8 per core), directories made first."""
    for d in {os.path.dirname(n) for n in names}:
        fs.create_dir(f"{root}/{d}", recursive=True)

    def put(name: str) -> None:
        with open(os.path.join(src, name), "rb") as f, fs.open_output_stream(f"{root}/{name}") as out:
            out.write(f.read())

    threads = min(64, 8 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        _, seconds = timed(lambda: list(pool.map(put, names)))
    return (f"pyarrow, {threads} threads, {count:,} x 4 KiB", f"{count / seconds:,.0f}", f"{seconds:.2f}", "")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hdfs_bench")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--only", default="read,sync")
    args = parser.parse_args()
    base = os.environ.get("PFS_TEST_HDFS_URI")
    if not base:
        sys.exit("set PFS_TEST_HDFS_URI and the HDFS client variables (source scripts/hdfs.sh)")
    uri = f"{base.rstrip('/')}/bench-{uuid.uuid4().hex[:8]}"
    fs, root = pafs.FileSystem.from_uri(uri)
    fs.create_dir(root, recursive=True)
    parts = set(args.only.split(","))
    work = tempfile.mkdtemp(prefix="pfs-hdfs-bench-")
    try:
        print(f"host: {platform.node()}, {os.cpu_count()} cores; HDFS {base}")
        print("\n| client | phase | MiB/s |\n| --- | --- | ---: |")
        if "read" in parts:
            for row in bench_read(uri, fs, root, args.size_mib * MiB, work):
                print("| " + " | ".join(row) + " |", flush=True)
        if "sync" in parts:
            print("\n| work | files/s | seconds (sync) | seconds (whole command) |")
            print("| --- | ---: | ---: | ---: |")
            for cells in bench_sync(uri, fs, root, args.small_files, work):
                print("| " + " | ".join(cells) + " |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        fs.delete_dir(root)


if __name__ == "__main__":
    main()
