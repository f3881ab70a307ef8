"""The pfs demo: a loopback S3 server with a generated dataset, mounted with pfs and used as a directory.

Run by the README's first command. Everything it starts (server, mount) it stops again, unless --keep.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testservers/: beside pfs/, not installed
from testservers.s3 import start_s3_server

MiB = 1 << 20
STATE = "/var/tmp/pfs/demo"


def pfs(*args: str, env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "pfs", *args], env={**os.environ, **env})
    if result.returncode != 0:
        sys.exit(result.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mountpoint", default="/mnt/pfs-demo")
    parser.add_argument("--keep", action="store_true", help="leave the server and the mount running")
    args = parser.parse_args()

    server = start_s3_server("seaweedfs", f"{STATE}/s3")
    env = {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    try:
        server.create_bucket("demo")
        s3 = server.raw_client()
        print(f"S3 server on {server.url}: generating a dataset (100 images, one 256 MiB shard) ...")
        for i in range(100):
            with s3.open_output_stream(f"demo/dataset/images/img-{i:03d}.jpg") as f:
                f.write(os.urandom(64 * 1024))
        with s3.open_output_stream("demo/dataset/shards/train-0000.tar") as f:
            for _ in range(256):
                f.write(os.urandom(MiB))

        uri = f"s3://demo/dataset?endpoint_override={server.endpoint}&scheme=http"
        os.makedirs(args.mountpoint, exist_ok=True)
        print(f"\n$ pfs mount '{uri}' {args.mountpoint}")
        pfs("mount", uri, args.mountpoint, env=env)
        try:
            print(f"\n$ ls -l {args.mountpoint} {args.mountpoint}/shards")
            subprocess.run(["ls", "-l", args.mountpoint, f"{args.mountpoint}/shards"])
            print(f"$ ls {args.mountpoint}/images | wc -l")
            print(len(os.listdir(f"{args.mountpoint}/images")))

            start = time.perf_counter()
            with open(f"{args.mountpoint}/shards/train-0000.tar", "rb") as f:
                total = sum(len(chunk) for chunk in iter(lambda: f.read(4 * MiB), b""))
            seconds = time.perf_counter() - start
            print(f"\nread the 256 MiB shard through the mount: {total / MiB / seconds:.0f} MiB/s")

            checkpoint = f"{args.mountpoint}/checkpoints/step-100.pt"
            os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
            with open(checkpoint, "wb") as f:
                f.write(os.urandom(8 * MiB))
            info = s3.get_file_info("demo/dataset/checkpoints/step-100.pt")
            print(f"wrote {checkpoint}: the bucket now holds it ({info.size} bytes)")
        finally:
            if not args.keep:
                print(f"\n$ pfs umount {args.mountpoint}")
                pfs("umount", args.mountpoint, env=env)
    finally:
        if args.keep:
            print(f"\nleft running: the S3 server on {server.url} and the mount at {args.mountpoint}")
        else:
            server.stop()
    print("demo finished")


if __name__ == "__main__":
    main()
