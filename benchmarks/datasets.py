"""The benchmark data: random bytes from a fixed seed, laid out once per set of sizes and kept between runs.

The files are written straight into the directory `rclone serve s3` serves (bucket = subdirectory), which is
far faster than uploading 100,000 objects; the same directory is the local-disk reference. Generated trees
live under /var/tmp/pfs-bench/datasets/<key>/ (key = hash of the sizes and seed) with a `complete` marker, so
a re-run with the same sizes starts at once. This module never deletes a finished dataset.

Layout inside the bucket:
    big/big-0.bin ... big-4.bin      seq-1 reads big-0, seq-4 reads big-1..4 (four readers, one file each)
    rand/rand-1m.bin, rand-4k.bin    one file per random-read scenario
    small-a/dNNN/fNNNNNN.bin         small-1's set; small-b/... is small-8's set
    meta/dNNN/fNNNNNNN               the metadata tree (64-byte files)
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.config import MiB, Sizes

BASE_DIR = Path(os.environ.get("PFS_BENCH_DIR", "/var/tmp/pfs-bench"))
BUCKET = "bench"
CHUNK = 4 * MiB
META_FILE_SIZE = 64


@dataclass(frozen=True)
class Dataset:
    sizes: Sizes
    server_dir: Path  # what start_s3_server("rclone", server_dir) serves: server_dir/data/<bucket>/...

    @property
    def root(self) -> Path:
        """The bucket's contents as a local directory."""
        return self.server_dir / "data" / BUCKET

    def big(self, index: int) -> str:
        return f"big/big-{index}.bin"

    def random_file(self, scenario: str) -> str:
        return f"rand/{scenario}.bin"

    def small_set(self, name: str) -> list[str]:
        s = self.sizes
        return [f"small-{name}/d{i // s.small_per_dir:03d}/f{i:06d}.bin" for i in range(s.small_files)]

    def meta_files(self) -> list[str]:
        s = self.sizes
        return [f"meta/d{i // s.meta_per_dir:03d}/f{i:07d}" for i in range(s.meta_files)]

    def meta_entries(self) -> int:
        """Entries `ls -lR meta` shows: every file and every directory."""
        return self.sizes.meta_files + -(-self.sizes.meta_files // self.sizes.meta_per_dir)

    def files(self) -> Iterator[tuple[str, int]]:
        s = self.sizes
        for index in range(5):
            yield self.big(index), s.big_file
        for scenario in ("rand-1m", "rand-4k"):
            yield self.random_file(scenario), s.random_file
        for name in ("a", "b"):
            for rel in self.small_set(name):
                yield rel, s.small_file
        for rel in self.meta_files():
            yield rel, META_FILE_SIZE


def _write_random(path: Path, size: int, seed: str) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(rng.randbytes(n))
            left -= n


def prepare(sizes: Sizes, log=print) -> Dataset:
    """The dataset for `sizes`, generated now unless a complete copy exists (safe across processes)."""
    server_dir = BASE_DIR / "datasets" / sizes.dataset_key()
    dataset = Dataset(sizes, server_dir)
    server_dir.mkdir(parents=True, exist_ok=True)
    marker = server_dir / "complete"
    with open(server_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second run with the same sizes waits instead of racing
        if marker.exists():
            return dataset
        log(f"generating the dataset in {dataset.root} (kept for later runs)")
        shutil.rmtree(server_dir / "data", ignore_errors=True)
        for rel, size in dataset.files():
            _write_random(dataset.root / rel, size, f"{sizes.seed}:{rel}")
        os.sync()
        marker.write_text(sizes.dataset_key() + "\n")
    return dataset
