"""The S3 server every client talks to, holding the benchmark data set.

`rclone serve s3` (default, the fastest here) serves the generated data directory as it is: nothing is
uploaded. SeaweedFS stores objects its own way, so the data set is copied into it through S3 first (slow for
the 100,000-file tree). Either way the server is ours and is stopped by its pid when the run ends.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pyarrow.fs as pafs

from benchmarks.datasets import BUCKET, Dataset
from testservers.s3 import S3Server, s3_request, start_s3_server


def start(kind: str, dataset: Dataset, run_dir: Path, log=print) -> S3Server:
    if kind == "rclone":
        server = start_s3_server("rclone", str(dataset.server_dir))
        try:
            log("listing the data set once (rclone computes each ETag, an MD5, at the first look)")
            _list_everything(server)
        except BaseException:
            server.stop()
            raise
        return server
    server = start_s3_server("seaweedfs", str(run_dir / "seaweedfs"))
    try:
        server.create_bucket(BUCKET)
        log(f"copying the data set into SeaweedFS ({dataset.root})")
        pafs.copy_files(
            str(dataset.root), BUCKET, source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=server.raw_client(), use_threads=True,
        )  # fmt: skip
    except BaseException:
        server.stop()
        raise
    return server


def _list_everything(server: S3Server) -> None:
    """One recursive listing with a long timeout, so that the clients' first requests find the ETags known:
    on a busy machine hashing the big files took 44 s for one directory, and clients (pfs's and pyarrow's
    low-speed limit is a few seconds) gave up waiting for the first answer."""
    fs = pafs.S3FileSystem(
        endpoint_override=server.endpoint, scheme="http", region="us-east-1",
        access_key=server.access_key, secret_key=server.secret_key, request_timeout=1800,
    )  # fmt: skip
    fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True))


class Store:
    """Creates and removes the write scenarios' directories on the server, through S3, around the clients.

    Through S3 because `rclone serve s3` caches its directory listings (changes made in its directory behind
    its back show late). Objects are deleted one by one with plain DELETE requests: pyarrow's delete_dir
    re-creates a parent directory marker, which `rclone serve s3` would store as an empty file.
    """

    def __init__(self, server: S3Server) -> None:
        self.server = server
        self.fs = server.raw_client()

    def make_dir(self, rel: str) -> None:
        """A directory with one empty object in it, so that it exists for every client."""
        with self.fs.open_output_stream(f"{BUCKET}/{rel}/.keep"):
            pass

    def remove_dir(self, rel: str) -> None:
        selector = pafs.FileSelector(f"{BUCKET}/{rel}", recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.is_file:
                path = "/" + urllib.parse.quote(info.path)
                s3_request(self.server.url, "DELETE", path, self.server.access_key, self.server.secret_key)
