"""One adapter per client the benchmarks compare: pfs, rclone mount, s3fs, the raw backend, the local disk,
and the floor (the least a pyfuse3 filesystem costs: reading, in two modes and from the server, and writing).

Each adapter knows how to mount and unmount its client on the shared bucket, empty its cache, name its
daemon's pid, and hands the scenarios an `IO` (benchmarks.io) to run the workload through.
"""

from __future__ import annotations

from benchmarks.clients.base import Client, Env
from benchmarks.clients.direct import LocalClient, RawClient
from benchmarks.clients.floor import (
    FloorClient,
    FloorNoOpenClient,
    FloorS3Client,
    FloorThreadsClient,
    FloorWriteBackClient,
)
from benchmarks.clients.pfs import PfsClient, PfsReadOnlyClient, PfsSnapshotClient, PfsWriteBackClient
from benchmarks.clients.rclone import RcloneClient
from benchmarks.clients.s3fs import S3fsClient

ADAPTERS: dict[str, type[Client]] = {
    "pfs": PfsClient,
    "pfs-ro": PfsReadOnlyClient,
    "pfs-snap": PfsSnapshotClient,
    "pfs-wb": PfsWriteBackClient,
    "rclone": RcloneClient,
    "s3fs": S3fsClient,
    "raw": RawClient,
    "local": LocalClient,
    "floor": FloorClient,
    "floor-s3": FloorS3Client,
    "floor-noopen": FloorNoOpenClient,
    "floor-threads": FloorThreadsClient,
    "floor-wb": FloorWriteBackClient,
}


def make(name: str, env: Env) -> Client:
    return ADAPTERS[name](env)


__all__ = ["ADAPTERS", "Client", "Env", "make"]
