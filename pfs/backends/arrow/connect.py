"""Build the pyarrow FileSystem for a `Location`: endpoints, regions, credentials, timeouts.

Timeouts (S3 and BOS). pyarrow's own retries are switched off (`max_attempts=1`) so that the only retry
loop is `pfs.backends.retry`, bounded by `BackendOptions.timeout` (T seconds). Each attempt is bounded by
the AWS SDK's curl transport, configured in whole seconds:

- connect_timeout = clamp(round(T / 8), 1, 5) s: a host that never completes the TCP (and TLS) handshake.
  (A fractional value is honoured for the handshake but, measured here, also stretches the low-speed
  window below by its fraction, so whole seconds keep the arithmetic exact.)
- request_timeout = clamp(floor(T / 4), 1, 10) s. On Linux the SDK uses it as curl's low-speed limit (abort
  when fewer than 1 byte/s arrived during that many whole seconds; fractions are floored, 0 becomes 1),
  not as a cap on the request: a transfer that keeps moving is never cut off, while a server that stops
  answering (measured with a SIGSTOPped server) fails the attempt after exactly request_timeout seconds.

The retry loop starts an attempt only if connect_timeout + request_timeout still fit before the deadline.
So one call against a dead or hung server raises `Transient` after at most max(T, connect_timeout +
request_timeout) seconds. Default T = 30 (4 s + 7 s): a hung server costs 3 attempts, ~21 s; a refused
connection is retried until ~19 s. T = 3 (1 s + 1 s): a hung server fails after one 1 s attempt; a refused
connection is retried for ~1 s.

This module never logs or formats credentials; messages name the endpoint and bucket only.
"""

from __future__ import annotations

import configparser
import ctypes.util
import math
import os
from dataclasses import dataclass
from typing import Literal

import pyarrow.fs as pafs

from pfs.backends.arrow.s3get import Credentials, ObjectGetter
from pfs.backends.location import BOS_DEFAULT_REGION, BOS_ENDPOINTS, Location
from pfs.backends.options import BackendOptions
from pfs.backends.watchdog import run_bounded
from pfs.errors import Transient, UsageError

JVM_OPTS = "-Xmx256m -XX:+UseSerialGC"
JVM_START_SECONDS = 60.0  # the longest the JVM and the HDFS client may take to start in this process
HDFS_HINT = "install a JVM + libhdfs, set JAVA_HOME, ARROW_LIBHDFS_DIR, CLASSPATH"


@dataclass(frozen=True)
class Store:
    """A connected pyarrow FileSystem and what the backend must know about its kind."""

    fs: pafs.FileSystem
    root: str  # the mounted root inside `fs`: '/abs/dir' or 'bucket[/prefix]'
    object_store: bool  # keys and 'dir/' marker objects instead of real directories
    move_replaces: bool  # fs.move() atomically replaces an existing destination file (POSIX rename)
    id: str  # scheme + endpoint + root, no secrets
    endpoint: str  # where requests go, for messages ('' for local directories)
    timeout: float  # the deadline of one call, retries included
    attempt_budget: float  # longest single attempt against a silent server; 0 when not bounded by us
    # Calls may never return inside the client library (libhdfs and its JVM): each one then runs under
    # pfs.backends.watchdog, which gives up on it at the deadline.
    hangs: bool = False
    # Modification times come in whole seconds (libhdfs truncates HDFS's milliseconds): size and mtime
    # do not tell a same-size rewrite within the same second apart.
    mtime_seconds: bool = False
    # One GET of an object's first bytes with its ETag and size (object stores whose credentials are known
    # here); None where opening an object takes pyarrow's HEAD first.
    getter: ObjectGetter | None = None


def s3_timeouts(timeout: float) -> tuple[int, int]:
    """(connect_timeout, request_timeout) in whole seconds for a call deadline of `timeout` seconds."""
    connect = min(5, max(1, round(timeout / 8)))
    request = min(10, max(1, math.floor(timeout / 4)))
    return connect, request


def connect(location: Location, options: BackendOptions) -> Store:
    if location.scheme == "file":
        return Store(
            pafs.LocalFileSystem(), location.path, object_store=False, move_replaces=True,
            id=f"file://{location.path}", endpoint="", timeout=options.timeout, attempt_budget=0.0,
        )  # fmt: skip
    if location.scheme == "hdfs":
        return _hdfs(location, options)
    return _s3(location, options)


def _s3(location: Location, options: BackendOptions) -> Store:
    query = location.query
    endpoint, scheme = _endpoint(location, options)
    region = options.region or query.get("region") or _default_region(location, endpoint)
    connect_timeout, request_timeout = s3_timeouts(options.timeout)
    if endpoint:
        # The AWS SDK inside pyarrow 26 sends aws-chunked bodies with checksum trailers by default; several
        # S3-compatible servers reject them (rclone answers 411) or store the framing as data. Asking for
        # checksums only when required restores plain bodies. The SDK reads these when a client is built, so
        # this must run before the first S3FileSystem; setdefault leaves a user's explicit choice alone.
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")
    kwargs: dict[str, object] = {
        "region": region,
        "scheme": scheme,
        "connect_timeout": connect_timeout,
        "request_timeout": request_timeout,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1),
        # Small objects go up in one PutObject at close instead of create + upload part + complete.
        "allow_delayed_open": True,
        "force_virtual_addressing": _flag(query.get("force_virtual_addressing")),
    }
    credentials = _credentials(location, options)
    kwargs.update(credentials)
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    if query.get("tls_ca_file_path"):
        kwargs["tls_ca_file_path"] = query["tls_ca_file_path"]
    try:
        fs = pafs.S3FileSystem(**kwargs)
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"cannot configure {location.display()}: {str(exc).splitlines()[0]}") from None
    shown_endpoint = endpoint or f"s3.{region}.amazonaws.com"
    root = f"{location.bucket}/{location.path}".rstrip("/")
    getter = None
    known = _known_credentials(credentials)
    if known is not False:
        getter = ObjectGetter(
            shown_endpoint, scheme, region, known, float(connect_timeout + request_timeout),
            virtual=not endpoint or bool(kwargs["force_virtual_addressing"]),
            ca_file=query.get("tls_ca_file_path"),
        )  # fmt: skip
    return Store(
        fs, root, object_store=True, move_replaces=True,
        id=f"{location.scheme}://{shown_endpoint}/{root}", endpoint=shown_endpoint,
        timeout=options.timeout, attempt_budget=connect_timeout + request_timeout, getter=getter,
    )  # fmt: skip


def _known_credentials(kwargs: dict[str, object]) -> Credentials | Literal[False] | None:
    """The keys pyarrow will sign with, None for anonymous access, False when only pyarrow's default chain
    knows them (instance roles, ~/.aws profiles): then objects are opened by pyarrow alone."""
    if kwargs.get("anonymous"):
        return None
    access = kwargs.get("access_key") or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = kwargs.get("secret_key") or os.environ.get("AWS_SECRET_ACCESS_KEY")
    token = kwargs.get("session_token") if "access_key" in kwargs else os.environ.get("AWS_SESSION_TOKEN")
    if not access or not secret:
        return False
    return Credentials(str(access), str(secret), str(token) if token else None)


def _endpoint(location: Location, options: BackendOptions) -> tuple[str, str]:
    """(host:port or '' for AWS itself, 'http' | 'https'); options beat the URI, the URI beats the env."""
    query = location.query
    endpoint = options.endpoint or query.get("endpoint_override") or ""
    if not endpoint and location.scheme == "bos":
        region = options.region or query.get("region") or BOS_DEFAULT_REGION
        if region not in BOS_ENDPOINTS:
            known = ", ".join(BOS_ENDPOINTS)
            raise UsageError(f"unknown BOS region '{region}' (known: {known}; or give an endpoint)")
        endpoint = BOS_ENDPOINTS[region]
    if not endpoint and location.scheme == "s3":
        # The variables pyarrow's from_uri honours, so a URI means the same here as there.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    scheme = query.get("scheme") or "https"
    if "://" in endpoint:
        scheme, _, endpoint = endpoint.partition("://")
    if scheme not in ("http", "https"):
        raise UsageError(f"unknown endpoint scheme '{scheme}' for {location.display()} (http or https)")
    return endpoint.rstrip("/"), scheme


def _default_region(location: Location, endpoint: str) -> str:
    if location.scheme == "bos":
        return location.query.get("region") or BOS_DEFAULT_REGION
    env = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if env:
        return env
    if endpoint:
        return "us-east-1"  # S3-compatible servers accept any region; this one needs no lookup
    try:
        return pafs.resolve_s3_region(location.bucket)
    except OSError as exc:
        raise UsageError(
            f"cannot find the region of bucket '{location.bucket}' ({str(exc).splitlines()[0]}); "
            "pass region=..."
        ) from None


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def _credentials(location: Location, options: BackendOptions) -> dict[str, object]:
    """Keyword arguments for S3FileSystem. Order: options, URI (user:pass@, then query), credentials file,
    BCE_* variables for bos://, then pyarrow's default chain (AWS_* variables, ~/.aws, instance roles)."""
    query = location.query
    if options.anonymous or _flag(query.get("anonymous")):
        return {"anonymous": True}
    sources = (
        (options.access_key, options.secret_key, options.session_token),
        (location.user, location.password, query.get("session_token")),
        (query.get("access_key"), query.get("secret_key"), query.get("session_token")),
    )
    for access, secret, token in sources:
        if access or secret:
            return _pair(access, secret, token, location)
    if options.credentials_file:
        return _from_credentials_file(options.credentials_file, options.profile or "default", location)
    if location.scheme == "bos" and os.environ.get("BCE_ACCESS_KEY_ID"):
        return _pair(
            os.environ.get("BCE_ACCESS_KEY_ID"), os.environ.get("BCE_SECRET_ACCESS_KEY"),
            os.environ.get("BCE_SESSION_TOKEN"), location,
        )  # fmt: skip
    return {}


def _pair(access: str | None, secret: str | None, token: str | None, location: Location) -> dict[str, object]:
    if not access or not secret:
        missing = "secret key" if access else "access key"
        raise UsageError(f"{location.display()}: the {missing} is missing (keys go in pairs)")
    pair: dict[str, object] = {"access_key": access, "secret_key": secret}
    if token:
        pair["session_token"] = token
    return pair


def _from_credentials_file(path: str, profile: str, location: Location) -> dict[str, object]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as exc:
        reason = getattr(exc, "strerror", None) or "not an ini file"
        raise UsageError(f"cannot read credentials file {path}: {reason}") from None
    # ~/.aws/credentials names sections 'name'; ~/.aws/config names them 'profile name'.
    section = next((s for s in (profile, f"profile {profile}") if parser.has_section(s)), None)
    if section is None:
        raise UsageError(f"credentials file {path} has no profile '{profile}'")
    values = parser[section]
    if not values.get("aws_access_key_id") or not values.get("aws_secret_access_key"):
        raise UsageError(f"profile '{profile}' in {path} needs aws_access_key_id and aws_secret_access_key")
    access, secret = values["aws_access_key_id"], values["aws_secret_access_key"]
    return _pair(access, secret, values.get("aws_session_token"), location)


def hdfs_missing() -> list[str]:
    """What libhdfs needs and this environment lacks (empty when all is there)."""
    missing = []
    java_home = os.environ.get("JAVA_HOME", "")
    if not java_home:
        missing.append("JAVA_HOME is not set")
    elif not os.path.isdir(java_home):
        missing.append(f"JAVA_HOME={java_home} does not exist")
    dirs = (
        os.environ.get("ARROW_LIBHDFS_DIR"),
        os.path.join(os.environ.get("HADOOP_HOME", "/"), "lib/native"),
    )
    found = any(d and os.path.isfile(os.path.join(d, "libhdfs.so")) for d in dirs)
    if not found and not ctypes.util.find_library("hdfs"):
        missing.append("libhdfs.so not found (set ARROW_LIBHDFS_DIR)")
    if not os.environ.get("CLASSPATH"):
        missing.append("CLASSPATH has no Hadoop jars (set it to `hadoop classpath --glob`)")
    return missing


def _hdfs(location: Location, options: BackendOptions) -> Store:
    missing = hdfs_missing()
    if missing:
        raise UsageError(f"hdfs needs a JVM, libhdfs and Hadoop jars: {'; '.join(missing)} ({HDFS_HINT})")
    # The JVM libhdfs starts sizes its heap from the machine's memory and grows it lazily: a 100 MiB upload
    # grew this process by 140-240 MiB with Java's defaults, by well under 80 MiB with these (measured here).
    # It reads the variable when it starts, at the first HadoopFileSystem; a user's own setting wins.
    os.environ.setdefault("LIBHDFS_OPTS", JVM_OPTS)
    replication = location.query.get("replication")
    if replication is not None and not replication.isdigit():
        raise UsageError(f"replication must be a number in {location.display()}")
    kwargs: dict[str, object] = {
        "user": location.user,
        "replication": int(replication) if replication else 3,
        "extra_conf": hdfs_client_conf(options.timeout),
    }
    ticket = location.query.get("kerb_ticket")
    if ticket:
        kwargs["kerb_ticket"] = ticket
    try:
        # Starting the JVM and the client asks nothing of the cluster (the first call, verify's stat, does,
        # under the deadline), but it loads a few hundred jars: seconds on a busy machine. Bounded anyway,
        # as a stuck start would otherwise hold `pfs mount` for ever.
        fs = run_bounded(
            lambda: pafs.HadoopFileSystem(location.host, location.port, **kwargs),
            max(options.timeout, JVM_START_SECONDS), f"connect {location.display()}",
        )  # fmt: skip
    except Transient as exc:
        raise UsageError(f"cannot connect to {location.display()}: {exc}") from None
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Unable to load" in first:
            raise UsageError(f"hdfs: {first} ({HDFS_HINT})") from None
        raise UsageError(f"cannot connect to {location.display()}: {first}") from None
    endpoint = f"{location.host}:{location.port}"
    return Store(
        fs, location.path, object_store=False, move_replaces=False,
        id=f"hdfs://{endpoint}{location.path}", endpoint=endpoint,
        timeout=options.timeout, attempt_budget=0.0, hangs=True, mtime_seconds=True,
    )  # fmt: skip


def hdfs_client_conf(timeout: float) -> dict[str, str]:
    """Hadoop client settings that make libhdfs give up on a silent NameNode or DataNode by itself, in the
    same steps as the S3 transport (s3_timeouts), so that calls the watchdog abandoned end and free their
    threads. Hadoop's defaults wait much longer: 45 connect retries of 20 s, and NameNode calls never time
    out while pings succeed (a stopped NameNode's kernel still acknowledges them)."""
    connect_s, request_s = s3_timeouts(timeout)
    return {
        "ipc.client.connect.timeout": str(connect_s * 1000),
        "ipc.client.connect.max.retries": "1",
        "ipc.client.connect.max.retries.on.timeouts": "1",
        "ipc.client.ping": "false",  # then ipc.ping.interval is the NameNode call's read timeout
        "ipc.ping.interval": str(request_s * 1000),
        "dfs.client.socket-timeout": str(request_s * 1000),  # reads from and acks of DataNodes
    }
