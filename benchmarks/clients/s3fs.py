"""s3fs-fuse with its local file cache (`-o use_cache=DIR`), tuned as its manual suggests for throughput.

Options and why (s3fs(1), version 1.90):
- `use_cache=DIR`: whole-file local cache, kept across remounts (what "warm" measures).
- `parallel_count=16` (default 5) with `multipart_size=8`: big objects are fetched (and uploaded) as parallel
  8 MiB ranged requests.
- `multireq_max=32` (default 20): more parallel HEAD requests while listing.
- `max_stat_cache_size=200000` (default 100,000): the whole 100,000-file metadata tree fits the stat cache.
- `enable_noobj_cache`: remember missing names instead of asking again ("for performance").
The keys are in a passwd file of mode 600, never on the command line.
"""

from __future__ import annotations

import subprocess

from benchmarks.clients.base import ChildMountClient, Env, executable, write_secret
from testservers.s3 import REGION


class S3fsClient(ChildMountClient):
    name = "s3fs"
    options = (
        "use_path_request_style",
        "parallel_count=16",
        "multipart_size=8",
        "multireq_max=32",
        "max_stat_cache_size=200000",
        "enable_noobj_cache",
    )

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.binary = executable("s3fs", "apt-get install s3fs")
        self.passwd = self.dir / "passwd"
        write_secret(self.passwd, f"{env.server.access_key}:{env.server.secret_key}\n")

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        return _version(out)

    def command(self) -> list[str]:
        options = ",".join(
            [
                f"passwd_file={self.passwd}",
                f"url={self.env.server.url}",
                f"endpoint={REGION}",
                f"use_cache={self.cache_dir}",
                *self.options,
            ]
        )
        return [self.binary, self.env.bucket, str(self.mountpoint), "-f", "-o", options]


def _version(text: str) -> str:
    for word in text.split():
        if word.startswith("V") and word[1:2].isdigit():
            return word[1:]
    return ""
