"""What POSIX attributes on an object store cost a listing: `ls -lR` of two identical trees through pfs,
one without attributes (as written by any other tool) and one where every file and directory has some
(mode, uid, gid, mtime in each directory's `.pfs.attrs` index), measured in the same run, alternately:

    python -m benchmarks.attrs_bench                        # as root: 100,000 files in 100 directories
    python -m benchmarks.attrs_bench --files 20000 --rounds 5

Both trees are written straight into the directory a `rclone serve s3` serves (as the main harness does),
the indexes in the format pfs writes (pfs/backends/arrow/attrs.py), stamped with each file's size and
modification second as the server reports them; the run checks through the mount that the attributes
applied (and prints any file where they did not). After an untimed warm-up round, each round mounts pfs
afresh (empty cache, page cache dropped) on one tree and times the walk of benchmarks/io.py (readdir + lstat
of every entry). Prints a Markdown table and the ratio of the medians.

Writing the indexes with pfs/backends/arrow/attrs.py is this benchmark's one use of pfs beyond the command
and the mount: setting 100,000 files' attributes through a mount would take longer than the measurement.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.io import FileIO
from benchmarks.measure import drop_caches
from pfs.backends.arrow import attrs
from testservers.s3 import start_s3_server

BUCKET = "bench"
FILE_BYTES = 64
MODE, UID, GID, MTIME_NS = 0o750, 1234, 5678, 1_000_000_000 * 10**9


def pfs(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pfs", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pfs {args[0]} failed: {result.stderr.strip()}")


def make_trees(data: Path, files: int, per_dir: int) -> None:
    """bucket/plain and bucket/attrs: the same files; attrs also has an index in every directory."""
    payload = os.urandom(FILE_BYTES)
    dirs = -(-files // per_dir)
    for tree in ("plain", "attrs"):
        for d in range(dirs):
            directory = data / BUCKET / tree / f"d{d:03d}"
            directory.mkdir(parents=True)
            names = [f"f{i:07d}" for i in range(d * per_dir, min(files, (d + 1) * per_dir))]
            for name in names:
                (directory / name).write_bytes(payload)
            if tree == "attrs":
                records = {}
                for name in names:
                    st = os.stat(directory / name)
                    stamp = [st.st_size, st.st_mtime_ns // 10**9]
                    records[name] = {
                        "mode": MODE,
                        "uid": UID,
                        "gid": GID,
                        "mtime_ns": MTIME_NS,
                        "stamp": stamp,
                    }
                write_index(directory, records)
        if tree == "attrs":
            write_index(data / BUCKET / tree, {f"d{d:03d}": {"mode": MODE, "uid": UID} for d in range(dirs)})


def write_index(directory: Path, records: dict) -> None:
    now = time.time_ns()
    entries = {name: {**rec, "t": now} for name, rec in records.items()}
    (directory / attrs.INDEX).write_bytes(attrs.encode(entries))


def walk_once(uri: str, work: Path, tree: str, files: int, per_dir: int) -> tuple[int, float]:
    mnt, cache = work / f"mnt-{tree}", work / f"cache-{tree}"
    shutil.rmtree(cache, ignore_errors=True)
    mnt.mkdir(exist_ok=True)
    pfs("mount", uri, str(mnt), "--cache-dir", str(cache), "--log-file", str(work / f"{tree}.log"))
    try:
        drop_caches()
        start = time.perf_counter()
        entries = FileIO(str(mnt)).list_tree("")
        seconds = time.perf_counter() - start
        if tree == "attrs":  # did the attributes apply during that walk? (the first and last file)
            for rel in ("d000/f0000000", f"d{(files - 1) // per_dir:03d}/f{files - 1:07d}"):
                st = os.lstat(mnt / rel)
                got = (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns)
                if got != (MODE, UID, GID, MTIME_NS):
                    print(f"attributes not applied to {rel}: {got}", flush=True)
    finally:
        pfs("umount", str(mnt))
    return entries, seconds


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attrs_bench")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-dir", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pfs-attrs-bench-", dir=os.environ.get("PFS_BENCH_DIR", "/var/tmp")))
    try:
        start = time.perf_counter()
        make_trees(work / "server" / "data", args.files, args.per_dir)
        made = time.perf_counter() - start
        with start_s3_server("rclone", str(work / "server")) as server:
            os.environ.update(server.env())  # the mounts' credentials
            seconds: dict[str, list[float]] = {"plain": [], "attrs": []}
            seen: dict[str, int] = {}
            for r in range(-1, args.rounds):  # round -1 warms the server's own caches up, untimed
                order = ("plain", "attrs") if r % 2 == 0 else ("attrs", "plain")
                for tree in order:
                    entries, took = walk_once(server.uri(BUCKET, tree), work, tree, args.files, args.per_dir)
                    seen[tree] = entries
                    if r >= 0:
                        seconds[tree].append(took)
        print(f"host: {platform.node()}, {os.cpu_count()} cores (shared); trees written in {made:.0f} s")
        dirs = -(-args.files // args.per_dir)
        print(f"{args.files:,} files in {dirs} directories per tree, {args.rounds} rounds after a warm-up")
        print("\n| tree | entries | seconds per round | median entries/s |\n| --- | ---: | --- | ---: |")
        medians = {}
        for tree in ("plain", "attrs"):
            medians[tree] = statistics.median(seconds[tree])
            rounds = ", ".join(f"{s:.1f}" for s in seconds[tree])
            print(f"| {tree} | {seen[tree]:,} | {rounds} | {seen[tree] / medians[tree]:,.0f} |")
        print(f"\nattrs / plain, median time: {medians['attrs'] / medians['plain']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
