"""Parse and validate a data-source URI into a `Location`, before anything touches the network.

Supported forms:

    file:///abs/dir                       a local directory (absolute path only)
    s3://bucket[/prefix][?query]          AWS S3 or any S3-compatible store
    s3://ACCESS:SECRET@bucket/prefix      credentials in the URI, as pyarrow accepts them
    bos://bucket[/prefix]?region=bj       Baidu BOS through its S3-compatible endpoint (see BOS_ENDPOINTS)
    hdfs://host[:port]/path               HDFS through libhdfs (port 8020 by default)
    hdfs:///path                          HDFS at fs.defaultFS from core-site.xml

S3 query parameters are the ones pyarrow's `FileSystem.from_uri` takes (region, scheme, endpoint_override,
tls_ca_file_path, ...) plus access_key / secret_key / session_token / anonymous / force_virtual_addressing.
HDFS takes user, replication (of new files, default 3) and kerb_ticket (the path of a Kerberos ticket cache).
Every mistake raises `UsageError` with one line that never contains a secret. This module never imports
pyarrow and never does I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from pfs.backends.options import redact_uri
from pfs.errors import UsageError

SCHEMES = ("file", "s3", "bos", "hdfs")

# Region -> host of BOS's S3-compatible API (not the native *.bcebos.com API, which speaks another protocol).
#
# | region | location                    | S3-compatible endpoint |
# |--------|-----------------------------|------------------------|
# | bj     | North China - Beijing       | s3.bj.bcebos.com       |
# | bd     | North China - Baoding       | s3.bd.bcebos.com       |
# | su     | East China - Suzhou         | s3.su.bcebos.com       |
# | gz     | South China - Guangzhou     | s3.gz.bcebos.com       |
# | hkg    | Hong Kong                   | s3.hkg.bcebos.com      |
# | fwh    | Financial cloud, Wuhan      | s3.fwh.bcebos.com      |
#
# Any other BOS region (or a private deployment) works by passing its endpoint explicitly.
BOS_ENDPOINTS = {region: f"s3.{region}.bcebos.com" for region in ("bj", "bd", "su", "gz", "hkg", "fwh")}
BOS_DEFAULT_REGION = "bj"

# Parameters pyarrow's S3 URIs accept that have no effect here: pfs never creates or deletes buckets, and
# chooses delayed opens itself. Accepted so that a URI that works with pyarrow works with pfs.
IGNORED_S3_PARAMS = frozenset({"allow_bucket_creation", "allow_bucket_deletion", "allow_delayed_open"})
S3_PARAMS = frozenset({
    "region", "scheme", "endpoint_override", "tls_ca_file_path", "force_virtual_addressing", "anonymous",
    "access_key", "secret_key", "session_token",
}) | IGNORED_S3_PARAMS  # fmt: skip
HDFS_PARAMS = frozenset({"user", "replication", "kerb_ticket"})
HDFS_DEFAULT_PORT = 8020

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class Location:
    scheme: str  # one of SCHEMES
    path: str  # file/hdfs: absolute root directory; s3/bos: key prefix without slashes ('' = whole bucket)
    bucket: str = ""  # s3/bos only
    host: str = ""  # hdfs only ('default' = fs.defaultFS)
    port: int = 0  # hdfs only
    user: str | None = field(default=None, repr=False)  # hdfs user, or the S3 access key from user:pass@
    password: str | None = field(default=None, repr=False)  # the S3 secret key from user:pass@
    query: dict[str, str] = field(default_factory=dict, repr=False)  # may hold secrets

    def display(self) -> str:
        """The URI without query or credentials: safe for messages."""
        if self.scheme == "file":
            return f"file://{self.path}"
        if self.scheme == "hdfs" and self.host == "default":
            return f"hdfs://{self.path}"
        if self.scheme == "hdfs":
            return f"hdfs://{self.host}:{self.port}{self.path}"
        return f"{self.scheme}://{self.bucket}/{self.path}".rstrip("/")


def parse_location(uri: str) -> Location:
    """Split `uri` into a validated `Location`; UsageError (one line, no secrets) on any mistake."""
    shown = redact_uri(uri)
    if "://" not in uri and not uri.startswith("file:"):
        hint = f": use file://{uri}" if uri.startswith("/") else ""
        raise UsageError(f"'{shown}' is not a URI (expected file://, s3://, bos:// or hdfs://){hint}")
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise UsageError(f"cannot parse '{shown}': {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(f"unknown scheme '{scheme}' in '{shown}' (supported: {', '.join(SCHEMES)})")
    try:
        query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError:
        raise UsageError(f"malformed query string in '{shown}'") from None
    if scheme == "file":
        return _file(parts, query, shown)
    if scheme == "hdfs":
        return _hdfs(parts, query, shown)
    return _bucket(scheme, parts, query, shown)


def _file(parts: SplitResult, query: dict[str, str], shown: str) -> Location:
    path = unquote(parts.path)
    if parts.netloc not in ("", "localhost") or not path.startswith("/"):
        relative = path if parts.netloc in ("", "localhost") else f"{parts.netloc}{path}"
        raise UsageError(f"'{shown}' names a relative path '{relative}': use file:///absolute/path")
    if query:
        raise UsageError(f"file:// URIs take no query parameters: '{shown}'")
    return Location("file", _normalise(path))


def _hdfs(parts: SplitResult, query: dict[str, str], shown: str) -> Location:
    _check_params(query, HDFS_PARAMS, "hdfs", shown)
    path = unquote(parts.path) or "/"
    if not path.startswith("/"):
        raise UsageError(f"'{shown}': the HDFS path must be absolute")
    host = parts.hostname or ""
    port = parts.port if parts.port is not None else (HDFS_DEFAULT_PORT if host else 0)
    user = query.get("user") or (unquote(parts.username) if parts.username else None)
    return Location("hdfs", _normalise(path), host=host or "default", port=port, user=user, query=query)


def _bucket(scheme: str, parts: SplitResult, query: dict[str, str], shown: str) -> Location:
    _check_params(query, S3_PARAMS, scheme, shown)
    bucket = parts.netloc.rpartition("@")[2]
    if not bucket:
        raise UsageError(f"'{shown}' has no bucket name: use {scheme}://bucket/prefix")
    if not _BUCKET.match(bucket) or _IPV4.match(bucket) or ".." in bucket:
        rule = "3-63 characters: lowercase letters, digits, '.', '-'"
        raise UsageError(f"invalid bucket name '{bucket}' in '{shown}' ({rule})")
    prefix = unquote(parts.path).strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise UsageError(f"'{shown}': the prefix must not contain empty, '.' or '..' components")
    return Location(
        scheme, prefix, bucket=bucket,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        query=query,
    )  # fmt: skip


def _normalise(path: str) -> str:
    # normpath keeps a leading '//' (POSIX allows it a special meaning); pfs does not want that.
    return "/" + os.path.normpath(path).lstrip("/")


def _check_params(query: dict[str, str], allowed: frozenset[str], scheme: str, shown: str) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise UsageError(f"unknown query parameter '{unknown[0]}' in '{shown}' (known for {scheme}: {known})")
