"""Fixtures shared by the test suites: S3 servers on 127.0.0.1 and the `backend_case` matrix.

- `s3_server` (session): one SeaweedFS instance for the whole run, data under pytest's tmp dir.
- `s3_bucket` (module): a fresh, empty bucket on it. SeaweedFS gives every bucket a volume of a limited
  count, so tests share their module's bucket and isolate themselves with prefixes.
- `backend_case` (module, parametrised file / s3 / hdfs): where a suite's data lives, as `.uri`,
  `.options` (credentials for in-process use) and `.env` (the same credentials as environment variables,
  for running the `pfs` command). HDFS runs only when PFS_TEST_HDFS_URI names a reachable root.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import pytest

from pfs.backends import BackendOptions
from pfs.backends.arrow.connect import JVM_OPTS
from testservers.s3 import S3Server, start_s3_server

# Nothing in a test may wait for a cloud metadata service; the loopback servers want plain request bodies
# (see pfs.backends.arrow.connect). Servers get AWS_CA_BUNDLE removed by testservers.s3 itself.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")
# This process's JVM may be started by the raw HDFS client below before any pfs backend: give it the options
# pfs gives its own, so that in-process memory checks measure pfs.
os.environ.setdefault("LIBHDFS_OPTS", JVM_OPTS)

HDFS_URI_ENV = "PFS_TEST_HDFS_URI"
HDFS_SKIP_REASON = (
    f"HDFS tests need {HDFS_URI_ENV}=hdfs://host:port/dir and a client setup: "
    "JAVA_HOME, ARROW_LIBHDFS_DIR (libhdfs.so) and CLASSPATH (`hadoop classpath --glob`)"
)


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class RawStore(Protocol):
    """Direct access to a backend's storage, around pfs: what another client would see or write."""

    def put(self, rel: str, data: bytes) -> None: ...

    def get(self, rel: str) -> bytes: ...

    def exists(self, rel: str) -> bool: ...

    def delete(self, rel: str) -> None: ...


@dataclass
class LocalRaw:
    root: str

    def put(self, rel: str, data: bytes) -> None:
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def get(self, rel: str) -> bytes:
        with open(os.path.join(self.root, rel), "rb") as f:
            return f.read()

    def exists(self, rel: str) -> bool:
        return os.path.lexists(os.path.join(self.root, rel))

    def delete(self, rel: str) -> None:
        os.remove(os.path.join(self.root, rel))


@dataclass
class S3Raw:
    """A plain boto3 client: writes objects without any directory markers, as most tools do."""

    server: S3Server
    bucket: str
    prefix: str

    def _client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.server.url, region_name="us-east-1",
            aws_access_key_id=self.server.access_key, aws_secret_access_key=self.server.secret_key,
        )  # fmt: skip

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def put(self, rel: str, data: bytes, content_type: str = "binary/octet-stream") -> None:
        self._client().put_object(Bucket=self.bucket, Key=self._key(rel), Body=data, ContentType=content_type)

    def list_keys(self) -> list[str]:
        """Every key under this store's prefix, relative to it."""
        listing = self._client().list_objects_v2(Bucket=self.bucket, Prefix=self._key(""))
        return sorted(obj["Key"][len(self._key("")) :] for obj in listing.get("Contents", []))

    def get(self, rel: str) -> bytes:
        return self._client().get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()

    def exists(self, rel: str) -> bool:
        listing = self._client().list_objects_v2(Bucket=self.bucket, Prefix=self._key(rel), MaxKeys=1)
        return any(obj["Key"] == self._key(rel) for obj in listing.get("Contents", []))

    def delete(self, rel: str) -> None:
        self._client().delete_object(Bucket=self.bucket, Key=self._key(rel))


@dataclass
class HdfsRaw:
    uri: str

    def _fs_and_root(self):
        import pyarrow.fs as pafs

        return pafs.FileSystem.from_uri(self.uri)

    def put(self, rel: str, data: bytes) -> None:
        fs, root = self._fs_and_root()
        fs.create_dir(os.path.dirname(f"{root}/{rel}"), recursive=True)
        with fs.open_output_stream(f"{root}/{rel}") as f:
            f.write(data)

    def get(self, rel: str) -> bytes:
        fs, root = self._fs_and_root()
        with fs.open_input_stream(f"{root}/{rel}") as f:
            return f.read()

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        fs, root = self._fs_and_root()
        return fs.get_file_info(f"{root}/{rel}").type != pafs.FileType.NotFound

    def delete(self, rel: str) -> None:
        fs, root = self._fs_and_root()
        fs.delete_file(f"{root}/{rel}")

    def make_root(self) -> None:
        fs, root = self._fs_and_root()
        fs.create_dir(root, recursive=True)


@dataclass
class BackendCase:
    name: str  # "file", "s3" or "hdfs"
    uri: str
    options: BackendOptions
    env: dict[str, str] = field(default_factory=dict)
    raw: RawStore | None = None
    object_store: bool = False

    def subcase(self, name: str) -> BackendCase:
        """A case rooted at a fresh subdirectory `name` of this one (created where a root must exist)."""
        head, question, query = self.uri.partition("?")
        uri = f"{head.rstrip('/')}/{name}{question}{query}"
        if isinstance(self.raw, LocalRaw):
            os.makedirs(os.path.join(self.raw.root, name))
            raw: RawStore | None = LocalRaw(os.path.join(self.raw.root, name))
        elif isinstance(self.raw, S3Raw):
            raw = S3Raw(self.raw.server, self.raw.bucket, f"{self.raw.prefix}/{name}".strip("/"))
        elif isinstance(self.raw, HdfsRaw):
            raw = HdfsRaw(uri)
            raw.make_root()
        else:
            raw = None
        return replace(self, uri=uri, raw=raw)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    with start_s3_server("seaweedfs", str(tmp_path_factory.mktemp("seaweedfs"))) as server:
        yield server


@pytest.fixture(scope="module")
def s3_bucket(s3_server: S3Server) -> str:
    name = unique("pfs")
    s3_server.create_bucket(name)
    return name


def _file_case(tmp_path_factory) -> BackendCase:
    root = tmp_path_factory.mktemp("root")
    return BackendCase("file", f"file://{root}", BackendOptions(), raw=LocalRaw(str(root)))


def s3_case(request) -> BackendCase:
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    prefix = unique("root")
    options = BackendOptions(access_key=server.access_key, secret_key=server.secret_key)
    return BackendCase(
        "s3", server.uri(bucket, prefix), options, env=server.env(),
        raw=S3Raw(server, bucket, prefix), object_store=True,
    )  # fmt: skip


def _hdfs_case() -> BackendCase:
    base = os.environ[HDFS_URI_ENV].rstrip("/")
    uri = f"{base}/{unique('root')}"
    raw = HdfsRaw(uri)
    raw.make_root()
    passed = ("JAVA_HOME", "ARROW_LIBHDFS_DIR", "CLASSPATH", "HADOOP_HOME", "HADOOP_CONF_DIR")
    env = {name: os.environ[name] for name in passed if name in os.environ}
    return BackendCase("hdfs", uri, BackendOptions(), env=env, raw=raw)


# HDFS joins every backend suite when a cluster is configured; test_backends.py reports it as one skip
# (with what to set) when it is not.
BACKENDS = ["file", "s3", *(["hdfs"] if os.environ.get(HDFS_URI_ENV) else [])]


@pytest.fixture(scope="module", params=BACKENDS)
def backend_case(request, tmp_path_factory) -> BackendCase:
    if request.param == "file":
        return _file_case(tmp_path_factory)
    if request.param == "s3":
        return s3_case(request)
    return _hdfs_case()
