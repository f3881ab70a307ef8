"""Sequential read of one large object: through a pfs mount (cold) next to a direct pyarrow stream.

    python -m benchmarks.seqread [--size-mib 1024] [--rounds 3] [--server rclone|seaweedfs]

Both readers run in the same process run against the same object on the same loopback server, alternating,
with the page cache dropped before every read, so their ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow.fs as pafs

from pfs.testserver import start_s3_server

MiB = 1 << 20
CHUNK = 4 * MiB


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def read_file(path: str) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            total += len(chunk)
    return total


def read_pyarrow(fs: pafs.FileSystem, key: str) -> int:
    total = 0
    with fs.open_input_stream(key) as f:
        while chunk := f.read(CHUNK):
            total += len(chunk)
    return total


def timed(fn) -> float:
    drop_caches()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", default="rclone", choices=["rclone", "seaweedfs"])
    parser.add_argument("-o", dest="mount_options", default="", help="extra pfs mount options")
    args = parser.parse_args()
    size = args.size_mib * MiB

    with (
        tempfile.TemporaryDirectory(prefix="pfs-bench-") as work,
        start_s3_server(args.server, f"{work}/s3") as srv,
    ):
        srv.create_bucket("bench")
        fs = srv.raw_client()
        block = os.urandom(16 * MiB)
        with fs.open_output_stream("bench/big.bin") as f:
            for _ in range(size // len(block)):
                f.write(block)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": srv.access_key, "AWS_SECRET_ACCESS_KEY": srv.secret_key}
        mountpoint = f"{work}/mnt"
        os.mkdir(mountpoint)
        uri = f"s3://bench?endpoint_override={srv.endpoint}&scheme=http"
        extra = ["-o", args.mount_options] if args.mount_options else []
        subprocess.run([sys.executable, "-m", "pfs", "mount", uri, mountpoint, *extra], env=env, check=True)
        try:
            read_file(f"{mountpoint}/big.bin")  # first touch of fresh memory is slow in this VM
            results: dict[str, list[float]] = {"pfs mount (cold)": [], "pyarrow stream": []}
            for _ in range(args.rounds):
                results["pfs mount (cold)"].append(timed(lambda: read_file(f"{mountpoint}/big.bin")))
                results["pyarrow stream"].append(timed(lambda: read_pyarrow(fs, "bench/big.bin")))
        finally:
            subprocess.run([sys.executable, "-m", "pfs", "umount", mountpoint], check=True)

    rates = {name: size / MiB / statistics.median(times) for name, times in results.items()}
    print(
        f"sequential read of a {args.size_mib} MiB object from a loopback {args.server} S3 server, "
        f"median of {args.rounds} rounds"
    )
    for name, rate in rates.items():
        print(f"  {name:<18} {rate:8.0f} MiB/s")
    print(f"  ratio pfs / pyarrow: {rates['pfs mount (cold)'] / rates['pyarrow stream']:.2f}")


if __name__ == "__main__":
    main()
