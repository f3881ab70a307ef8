"""The sizes of a run (full or --quick) and the names of the scenarios and clients.

A full run has the sizes the performance targets are stated for (>= 1 GiB big files, >= 10,000 small files of
128 KiB, a >= 100,000-entry tree); --quick keeps every scenario and client with tiny sizes (a smoke test).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

SCENARIOS = (
    "seq-1", "seq-4", "rand-1m", "rand-4k", "small-1", "small-8", "loader", "loader-hints",
    "meta", "write-big", "write-small", "write-ckpt",
)  # fmt: skip
READ_SCENARIOS = ("seq-1", "seq-4", "rand-1m", "rand-4k", "small-1", "small-8", "loader", "loader-hints")
CLIENTS = (
    "pfs", "pfs-ro", "pfs-snap", "pfs-wb", "rclone", "s3fs", "raw", "local",
    "floor", "floor-s3", "floor-threads", "floor-noopen", "floor-wb",
)  # fmt: skip
PEERS = ("rclone", "s3fs")
PHASES = ("cold", "warm", "hot")


@dataclass(frozen=True)
class Sizes:
    big_file: int  # bytes of each big file (seq-1 reads one, seq-4 four others)
    random_file: int  # bytes of each file the random scenarios read
    random_1m_reads: int
    random_4k_reads: int
    small_files: int  # files in each of the two small-file sets (small-1 and small-8 read different sets)
    small_file: int
    small_per_dir: int
    meta_files: int  # files of the metadata tree
    meta_per_dir: int
    ttfb_files: int  # files opened for time-to-first-byte
    write_big: int
    write_small_files: int
    write_ckpt_shards: int  # a checkpoint: this many shards written by CKPT_THREADS threads at once
    write_ckpt_shard: int
    stat_time_limit: float  # seconds a stat-every-file loop may run before it reports its rate so far
    seed: int = 20261122

    def dataset_key(self) -> str:
        """Names the generated data: the same sizes and seed always give the same bytes."""
        data = {k: v for k, v in asdict(self).items() if not k.startswith(("write_", "stat_", "random_"))}
        data |= {"random_file": self.random_file, "layout": 1}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


FULL = Sizes(
    big_file=1 * GiB,
    random_file=1 * GiB,
    random_1m_reads=256,
    random_4k_reads=2000,
    small_files=10_000,
    small_file=128 * KiB,
    small_per_dir=500,
    meta_files=100_000,
    meta_per_dir=1000,
    ttfb_files=100,
    write_big=1 * GiB,
    write_small_files=1000,
    write_ckpt_shards=64,
    write_ckpt_shard=32 * MiB,
    stat_time_limit=60.0,
)

QUICK = Sizes(
    big_file=8 * MiB,
    random_file=8 * MiB,
    random_1m_reads=8,
    random_4k_reads=64,
    small_files=48,
    small_file=128 * KiB,
    small_per_dir=16,
    meta_files=300,
    meta_per_dir=100,
    ttfb_files=10,
    write_big=8 * MiB,
    write_small_files=16,
    write_ckpt_shards=8,
    write_ckpt_shard=1 * MiB,
    stat_time_limit=10.0,
)
