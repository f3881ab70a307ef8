"""Snapshots and sync, measured against their targets (issue "Dataset tools"):

    python -m benchmarks.snapshot_bench [--manifest-entries 1000000] [--tree-entries 100000]
                                        [--small-files 10000] [--upload-mib 1024] [--only PART,...]

Parts (all by default): manifest (load time and RSS of a synthetic manifest, lookup cost at three sizes),
create (`pfs snapshot create` entries/s next to one raw pyarrow recursive listing), ls (`ls -lR` of a
snapshot mount next to a live mount of the same bucket), sync (N small files: `pfs sync` next to
`rclone copy` with its defaults), upload (one large file: `pfs sync` next to pyarrow's own copy_files).

Everything runs against `rclone serve s3` on 127.0.0.1 (testservers.s3); trees are written straight into
its backing directory, with modification times a day old (objects modified within minutes of a snapshot
cost one HEAD each for their ETag: see pfs/snapshots/backend.py). Prints a Markdown table.

Every part drives pfs as a user does (the `pfs` command and mounts) except `manifest`, a component
benchmark of pfs/snapshots/manifest.py: a million-entry manifest is encoded and loaded in process, because
a bucket of a million objects to snapshot would take longer to write than everything else here.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

MiB = 1 << 20
DAY_NS = 86400 * 10**9


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _rows(manifest: Any, paths: list[str]) -> list:  # a pfs.snapshots.manifest.Manifest
    return [manifest.row(p) for p in paths]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- manifest ---------------------------------------------------------------------------------------------


def synthetic_manifest(entries: int) -> bytes:
    """A dataset-like tree: train/cNNNN/img-NNNNNN.jpg, 1,000 files per directory, ETag-like tokens."""
    from pfs.backends import Entry, Kind
    from pfs.snapshots.manifest import Row, SnapshotInfo, encode

    rows, dirs = [Row("train", Entry("train", Kind.DIR))], max(1, entries // 1000)
    per_dir = (entries - 1 - dirs) // dirs + 1
    rng = random.Random(0)
    for d in range(dirs):
        rows.append(Row(f"train/c{d:05d}", Entry(f"c{d:05d}", Kind.DIR)))
        for i in range(per_dir):
            if len(rows) >= entries:
                break
            entry = Entry(
                f"img-{i:06d}.jpg", Kind.FILE, rng.randrange(10_000, 200_000), 1_700_000_000 * 10**9
            )
            rows.append(Row(f"train/c{d:05d}/{entry.name}", entry, version=f"{rng.getrandbits(128):032x}"))
    return encode(rows, SnapshotInfo("bench", "", "synthetic"))


def load_child(path: str) -> None:
    """Run in a fresh process: load the manifest at `path`, print time and memory as JSON."""
    import pyarrow.parquet  # noqa: F401 - count the library in the baseline, not in the manifest

    from pfs.snapshots.manifest import Manifest

    with open(path, "rb") as f:
        data = f.read()
    before = rss_mib()
    seconds = timed(lambda: globals().setdefault("manifest", Manifest.decode(data)))
    manifest = globals()["manifest"]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "before": before,
                "after": rss_mib(),
                "peak": rss_mib("VmHWM"),
                "entries": len(manifest),
            }
        )
    )


def bench_manifest(entries: int, work: str) -> list[tuple[str, str]]:
    from pfs.snapshots.manifest import Manifest

    path = f"{work}/manifest.parquet"
    with open(path, "wb") as f:
        f.write(synthetic_manifest(entries))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.snapshot_bench", "--load-child", path],
        capture_output=True,
        text=True,
        check=True,
    )
    load = json.loads(out.stdout)
    rows = [
        (
            f"manifest load, {load['entries']:,} entries ({os.path.getsize(path) / MiB:.1f} MiB Parquet)",
            f"{load['seconds']:.2f} s (target <= 2 s)",
        ),
        (
            "RSS of the loading process after load / peak",
            f"{load['after']:.0f} / {load['peak']:.0f} MiB (target <= 300 MiB)",
        ),
        ("of which the manifest (RSS after - before load)", f"{load['after'] - load['before']:.0f} MiB"),
    ]
    costs = []
    for n in (10_000, 100_000, entries):
        manifest = Manifest.decode(synthetic_manifest(n))
        paths = [
            f"train/c{random.randrange(max(1, n // 1000)):05d}/img-{random.randrange(999):06d}.jpg"
            for _ in range(20_000)
        ]
        seconds = timed(functools.partial(_rows, manifest, paths))
        costs.append(f"{n:,}: {seconds / len(paths) * 1e6:.1f} us")
    rows.append(("lookup by path, per call (entries: cost)", "; ".join(costs)))
    return rows


# ---- a bucket on rclone serve s3 --------------------------------------------------------------------------


def write_tree(root: str, entries: int, size: int = 64) -> int:
    """About `entries` entries (100 directories, files spread over them) with day-old mtimes."""
    old = time.time() - 86400
    dirs = 100
    files = entries - dirs
    payload = os.urandom(size)
    for d in range(dirs):
        os.makedirs(f"{root}/d{d:03d}", exist_ok=True)
    for i in range(files):
        path = f"{root}/d{i % dirs:03d}/f{i:06d}.bin"
        with open(path, "wb") as f:
            f.write(payload)
        os.utime(path, (old, old))
    return dirs + files


def pfs_cli(*args: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pfs", *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def bench_create_and_ls(server, entries: int, work: str) -> list[tuple[str, str]]:
    import pyarrow.fs as pafs

    bucket = "tree"
    server.create_bucket(bucket)
    total = write_tree(f"{server.data_dir}/data/{bucket}", entries)
    uri = server.uri(bucket)
    fs = server.raw_client()
    listing = timed(lambda: fs.get_file_info(pafs.FileSelector(bucket, recursive=True)))
    env = {**os.environ, **server.env()}
    create = pfs_cli("snapshot", "create", uri, "bench", env=env)
    rows = [
        (
            f"raw pyarrow recursive listing, {total:,} entries",
            f"{listing:.2f} s = {total / listing:,.0f} entries/s",
        ),
        (
            "`pfs snapshot create` (the command, process start included; 16 listings in flight)",
            f"{create:.2f} s = {total / create:,.0f} entries/s ({listing / create:.2f}x the raw listing)",
        ),
    ]
    walks = {
        "`ls -lR`": ["ls", "-lR"],
        # stat of every entry without ls's two getxattr requests per entry: the namespace alone
        "`find -printf '%s %T@'`": ["find", "-printf", "%s %T@\n"],
    }
    for name, command in walks.items():
        times = {}
        for label, extra in (("live", []), ("snapshot", ["--snapshot", "bench"])):
            mnt = f"{work}/mnt-{label}"
            os.makedirs(mnt, exist_ok=True)
            pfs_cli("mount", uri, mnt, "--log-file", f"{work}/{label}.log", *extra, env=env)
            try:
                argv = [command[0], mnt, *command[1:]]
                run = functools.partial(subprocess.run, argv, check=True, stdout=subprocess.DEVNULL)
                times[label] = timed(run)
            finally:
                pfs_cli("umount", mnt, env=env)
        ratio = times["live"] / times["snapshot"]
        rows.append(
            (
                f"{name} of the {total:,}-entry bucket, fresh mounts: live / snapshot",
                f"{times['live']:.2f} s / {times['snapshot']:.2f} s = {ratio:.1f}x (target >= 5x)",
            )
        )
    shutil.rmtree(f"{server.data_dir}/data/{bucket}")
    return rows


# ---- sync -------------------------------------------------------------------------------------------------


def rclone_env(server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return env | {
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": server.url,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": server.access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": server.secret_key,
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
    }


def rclone_copy(server, src: str, bucket: str) -> float:
    start = time.perf_counter()
    # -q only hides the notice that no config file exists (the remote is configured by environment).
    subprocess.run(["rclone", "copy", "-q", src, f"bench:{bucket}"], env=rclone_env(server), check=True)
    return time.perf_counter() - start


_buckets = itertools.count()


def fresh_bucket(server, name: str) -> str:
    """A new, empty bucket (rclone serve s3 remembers buckets: a removed one must not be reused)."""
    bucket = f"{name}-{next(_buckets)}"
    server.create_bucket(bucket)
    return bucket


def empty_bucket(server, bucket: str) -> None:
    """Free the disk space of a bucket's objects on rclone (its directory stays, as the server expects)."""
    if server.kind != "rclone":
        return  # SeaweedFS keeps its own volume files: the space comes back with the temporary directory
    for parent, _, names in os.walk(f"{server.data_dir}/data/{bucket}"):
        for name in names:
            os.remove(os.path.join(parent, name))


def bench_small_files(server, count: int, work: str) -> list[tuple[str, str]]:
    src = f"{work}/small"
    rng = random.Random(1)
    for i in range(count):
        os.makedirs(f"{src}/d{i % 100:03d}", exist_ok=True)
        with open(f"{src}/d{i % 100:03d}/f{i:06d}.bin", "wb") as f:
            f.write(rng.randbytes(rng.randrange(1024, 32 * 1024)))
    env = {**os.environ, **server.env()}
    pfs_times, rclone_times = [], []
    for _ in range(2):  # alternating, fresh destination each time
        rclone_times.append(rclone_copy(server, src, fresh_bucket(server, "small-rclone")))
        bucket = fresh_bucket(server, "small-pfs")
        pfs_times.append(pfs_cli("sync", src, server.uri(bucket), env=env))
    best_pfs, best_rclone = min(pfs_times), min(rclone_times)
    shutil.rmtree(src)
    return [
        (
            f"copy {count:,} files of 1-32 KiB to S3, best of 2: rclone copy (defaults) / pfs sync",
            f"{best_rclone:.2f} s / {best_pfs:.2f} s = {best_rclone / best_pfs:.1f}x (target >= 3x)",
        )
    ]


def bench_upload(server, mib: int, work: str) -> list[tuple[str, str]]:
    """pyarrow's copy_files and the `pfs sync` command (process start included), alternating, best of 2
    each, a fresh bucket every time."""
    import pyarrow.fs as pafs

    src = f"{work}/big"
    os.makedirs(src)
    block = os.urandom(16 * MiB)
    with open(f"{src}/big.bin", "wb") as f:
        for _ in range(mib // 16):
            f.write(block)
    fs, local = server.raw_client(), pafs.LocalFileSystem()
    env = {**os.environ, **server.env()}
    times: dict[str, list[float]] = {"arrow": [], "command": []}
    for _ in range(2):
        buckets = [fresh_bucket(server, name) for name in ("up-arrow", "up-cmd")]
        times["arrow"].append(
            timed(
                functools.partial(
                    pafs.copy_files,
                    f"{src}/big.bin",
                    f"{buckets[0]}/big.bin",
                    source_filesystem=local,
                    destination_filesystem=fs,
                )
            )
        )
        times["command"].append(pfs_cli("sync", src, server.uri(buckets[1]), env=env))
        for bucket in buckets:
            empty_bucket(server, bucket)
    shutil.rmtree(src)
    arrow, command = (min(t) for t in times.values())
    return [
        (
            f"upload one {mib} MiB file, best of 2: pyarrow copy_files / `pfs sync` command",
            f"{mib / arrow:.0f} / {mib / command:.0f} MiB/s = {arrow / command:.2f}x (target >= 0.8x)",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest-entries", type=int, default=1_000_000)
    parser.add_argument("--tree-entries", type=int, default=100_000)
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--upload-mib", type=int, default=1024)
    parser.add_argument("--only", default="manifest,create,sync,upload", help="comma-separated parts")
    parser.add_argument(
        "--sync-server", default="rclone", choices=["rclone", "seaweedfs"], help="server for sync and upload"
    )
    parser.add_argument("--load-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        load_child(args.load_child)
        return
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")
    from testservers.s3 import start_s3_server

    parts = set(args.only.split(","))
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="pfs-snapbench-") as work:
        if "manifest" in parts:
            rows += bench_manifest(args.manifest_entries, work)
        if "create" in parts:
            with start_s3_server("rclone", f"{work}/s3") as server:
                rows += bench_create_and_ls(server, args.tree_entries, work)
        with start_s3_server(args.sync_server, f"{work}/s3-sync") as server:
            if "sync" in parts:
                rows += bench_small_files(server, args.small_files, work)
            if "upload" in parts:
                rows += bench_upload(server, args.upload_mib, work)
    print(
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}."
    )
    print(f"- Command: `python -m benchmarks.snapshot_bench {' '.join(sys.argv[1:])}`".rstrip() + "\n")
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
