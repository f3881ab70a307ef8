"""`ObjectGetter`: the first bytes of an object together with its ETag and size, in one signed GET.

pyarrow's Python API opens an object with a HEAD (its size and metadata) before the first ranged GET, and
cannot be given the size a listing already told. A cold small file then costs two round trips. A GET's
response carries everything the HEAD would have said (ETag, and the object's size in Content-Range), so
this module asks for the first block with one ranged GET, signed with AWS Signature Version 4 over the
standard library's HTTP client (one kept connection per worker thread).

It answers only that one question; everything else goes through pyarrow. Used only when the credentials
are known here (explicit keys or anonymous access); with pyarrow's default chain (instance roles, ...) the
backend keeps the HEAD + GET path. Never logs or formats a credential: messages name the bucket and key.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from pfs.errors import BackendError, NotFound, PermissionDenied, Stale, Transient

_UNSIGNED = "UNSIGNED-PAYLOAD"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_Answer = tuple[int, str, dict[str, str], bytes]  # status, reason, headers (lower-case names), body


@dataclass(frozen=True)
class Credentials:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class First:
    """What one GET of an object's first bytes told."""

    data: bytes
    etag: str
    size: int  # of the whole object


class ObjectGetter:
    def __init__(
        self,
        endpoint: str,
        scheme: str,
        region: str,
        credentials: Credentials | None,
        timeout: float,
        virtual: bool = False,
        ca_file: str | None = None,
    ) -> None:
        self._endpoint, self._scheme, self._region = endpoint, scheme, region
        self._credentials = credentials  # None: anonymous, requests go unsigned
        self._timeout = timeout
        self._virtual = virtual
        self._ssl = ssl.create_default_context(cafile=ca_file or os.environ.get("AWS_CA_BUNDLE") or None)
        self._local = threading.local()  # each worker thread keeps its own connection per host
        self._keys: tuple[str, bytes] | None = None  # (date, signing key) of the day

    def first(self, bucket: str, key: str, length: int) -> First:
        """Bytes [0, length) of `bucket/key` (fewer if the object is shorter), its ETag and size."""
        host, path = (f"{bucket}.{self._endpoint}", "/") if self._virtual else (self._endpoint, f"/{bucket}/")
        path += quote(key, safe="/-_.~")
        headers = {"host": host, "range": f"bytes=0-{length - 1}"}
        self._sign("GET", path, headers)
        try:
            status, reason, answer, body = self._request(host, path, headers)
        except (OSError, http.client.HTTPException) as exc:
            raise Transient(f"get {bucket}/{key}: {type(exc).__name__}: {exc}") from None
        if status in (200, 206):
            return First(body[:length], answer.get("etag", "").strip('"'), _object_size(status, answer, body))
        what = f"get {bucket}/{key}: HTTP {status} {reason}"
        if status == 404:
            raise NotFound(what)
        if status == 403:
            raise PermissionDenied(what)
        if status == 416:  # the range starts past the end: the object is empty now
            raise Stale(what)
        if status in _RETRY_STATUS:
            raise Transient(what)
        raise BackendError(what)

    def _request(self, host: str, path: str, headers: dict[str, str]) -> _Answer:
        """One request on this thread's kept connection; a connection the server closed while idle is
        replaced once at once (that is no outage)."""
        for fresh in (False, True):
            conn = self._connection(host, fresh)
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if fresh:
                    raise
                continue
            except BaseException:
                conn.close()
                self._local.conns.pop(host, None)
                raise
            answer = {k.lower(): v for k, v in response.getheaders()}
            if response.will_close:
                conn.close()
                self._local.conns.pop(host, None)
            return response.status, response.reason, answer, body
        raise AssertionError("unreachable")

    def _connection(self, host: str, fresh: bool) -> http.client.HTTPConnection:
        conns: dict[str, http.client.HTTPConnection] = getattr(self._local, "conns", None) or {}
        self._local.conns = conns
        conn = conns.get(host)
        if conn is None or fresh:
            if self._scheme == "https":
                conn = http.client.HTTPSConnection(host, timeout=self._timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(host, timeout=self._timeout)
            conns[host] = conn
        if conn.sock is None:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _sign(self, method: str, path: str, headers: dict[str, str]) -> None:
        """Add AWS Signature Version 4 headers (unsigned payload, as for any GET) to `headers`."""
        creds = self._credentials
        if creds is None:
            return
        now = time.gmtime()
        stamp, day = time.strftime("%Y%m%dT%H%M%SZ", now), time.strftime("%Y%m%d", now)
        headers["x-amz-date"] = stamp
        headers["x-amz-content-sha256"] = _UNSIGNED
        if creds.session_token:
            headers["x-amz-security-token"] = creds.session_token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(
            [method, path, "", "".join(f"{n}:{headers[n].strip()}\n" for n in names), signed, _UNSIGNED]
        )
        scope = f"{day}/{self._region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        credential = f"{creds.access_key}/{scope}"
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature={signature}"
        )

    def _key(self, day: str) -> bytes:
        keys = self._keys
        if keys is None or keys[0] != day:
            assert self._credentials is not None
            key = f"AWS4{self._credentials.secret_key}".encode()
            for part in (day, self._region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = keys = (day, key)
        return keys[1]


def _object_size(status: int, answer: dict[str, str], body: bytes) -> int:
    """The whole object's size: after the '/' of Content-Range (some servers send it with a 200 too), else
    the length of a 200's body (a server that ignored the range sent the whole object)."""
    total = answer.get("content-range", "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    if status == 206:
        raise BackendError(f"a ranged GET answered without the object's size: {answer.get('content-range')}")
    return len(body)
