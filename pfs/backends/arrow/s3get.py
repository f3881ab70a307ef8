"""`ObjectGetter`: signed GETs of object byte ranges (with the ETag and size each answer carries), and a
small object written in one signed PUT, over a kept HTTP/1.1 connection per thread (`http1`).

pyarrow's Python API opens an object with a HEAD (its size and metadata) before the first ranged GET, and
cannot be given the size a listing already told. A cold small file then costs two round trips. A GET's
response carries everything the HEAD would have said (ETag, and the object's size in Content-Range), so
the first block comes with one ranged GET. Big reads go through here too: pyarrow's client receives a body
in small pieces, each copied through callbacks, and costs about three times the CPU per byte of reading the
body straight into one buffer here (1 GiB in 8 MiB GETs, 8 at once: ~2.4 s against ~0.7 s of CPU on the
benchmark machine), which is what bounds a cold sequential read on a busy node.
Requests are signed with AWS Signature Version 4; each worker thread keeps its own connection per host.

A small upload (one PutObject) goes the same way: pyarrow's output stream would allocate a whole part
buffer (10 MiB, which the daemon's allocator settings make an mmap of its own) for every file, measured
at 9.7 ms of CPU per 128 KiB file against 1.8 ms with this PUT. Its body goes only once the store has
answered its headers (`Expect: 100-continue`): see `put`. So do the requests of a multipart upload
(`create_upload`, `upload_part`, `complete_upload`, `abort_upload`): a part goes out from the bytes it was
read into, with no copy into a part buffer, and the caller decides how many parts are in flight.

Used only when the credentials are known here (explicit keys or anonymous access); with pyarrow's default
chain (instance roles, ...) the backend reads through pyarrow. Never logs or formats a credential:
messages name the bucket and key.
"""

from __future__ import annotations

import base64
import calendar
import email.utils
import hashlib
import hmac
import os
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from pfs.backends.arrow.http1 import Connection, Disconnected
from pfs.errors import BackendError, NotFound, PermissionDenied, Stale, Transient

_UNSIGNED = "UNSIGNED-PAYLOAD"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# status, reason, headers (lower-case names), body (None: read into the caller's buffers)
_Reply = tuple[int, str, dict[str, str], bytes | None]
_Answer = tuple[int, dict[str, str], bytes | None]  # status, headers, body of a successful request
Body = bytes | memoryview  # what a request sends
# Seconds a store not yet known to answer `Expect: 100-continue` gets to do so; one that answers is then
# given the whole request timeout, one that ignores it is asked with a HEAD before each PUT instead.
FIRST_CONTINUE_WAIT = 1.0


class _NoContinue(Exception):
    """The store did not answer a PUT's headers within FIRST_CONTINUE_WAIT (its body was not sent)."""


@dataclass(frozen=True)
class Credentials:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Part:
    """What one ranged GET of an object told."""

    data: bytes | None  # None: read into the buffers the caller gave
    etag: str
    size: int  # of the whole object
    modified_s: int | None = None  # its Last-Modified, in whole seconds (None: not said)


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
        # Parts' bodies are hashed into their signature where nothing else protects them on the way (as
        # the AWS SDK does: signed over HTTP, not over TLS, which checks every byte itself).
        self._sign_parts = scheme != "https"
        self._continues: bool | None = None  # does the store answer `Expect: 100-continue` (None: unknown)

    def first(self, bucket: str, key: str, length: int) -> tuple[Part, bytes]:
        """Bytes [0, length) of `bucket/key` (fewer if the object is shorter), with its ETag and size."""
        part = self.get(bucket, key, 0, length)
        return part, part.data or b""  # asked without buffers: the body is in the answer

    def get(
        self, bucket: str, key: str, offset: int, length: int, into: list[memoryview] | None = None
    ) -> Part:
        """Bytes [offset, offset + length) of `bucket/key` (fewer at its end), its ETag and size. The body
        is read straight into one buffer: the only copy is the one out of the socket. With `into` (views
        of `length` bytes in all) an answer of exactly that range is read into them, one after another
        (the Part then has no data): buffers reused by the caller, where a new one costs a page fault
        per page."""
        host, path = self._where(bucket, key)
        headers = {"host": host, "range": f"bytes={offset}-{offset + length - 1}"}
        status, answer, body = self._ask("GET", host, path, headers, f"get {bucket}/{key}", into=into)
        if body is None and _range_start(answer) != offset:
            raise BackendError(f"asked for bytes from {offset}, answered {answer.get('content-range')}")
        return Part(
            None if body is None else _body_at(offset, length, status, answer, body),
            _etag(answer),
            _object_size(status, answer, body or b""),
            _modified_s(answer),
        )

    def head(self, bucket: str, key: str) -> tuple[str, int]:
        """The ETag and size of `bucket/key`."""
        host, path = self._where(bucket, key)
        _, answer, _ = self._ask("HEAD", host, path, {"host": host}, f"head {bucket}/{key}")
        size = answer.get("content-length", "")
        if not size.isdigit():
            raise BackendError(f"head {bucket}/{key}: answered without the object's size")
        return _etag(answer), int(size)

    def put(self, bucket: str, key: str, data: bytes, before_body: Callable[[], None]) -> None:
        """Store `data` as object `bucket/key` in one PutObject (the payload's hash is signed with it),
        calling `before_body()` right before the body goes out (it may raise to send nothing).

        The body goes only once the store has answered the request's headers (`Expect: 100-continue`): a
        PUT sent whole to a store that stopped answering is carried out when the store wakes, maybe long
        after its caller was told it failed, and headers without their body never are. So the request is
        its own check that the store is alive; a store that ignores the expectation is asked with a HEAD
        just before the PUT instead.

        The body's MD5 goes with the headers (`Content-MD5`), which every store checks: SeaweedFS, given
        the headers of a PUT whose connection then closed before any body (a caller that gave up, a
        daemon killed), stores an empty object under the key, over the file that was there. Signed with
        the headers, it also protects the body on the way, so the body's SHA-256 is not computed too."""
        host, path = self._where(bucket, key)
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        headers = {"host": host, "content-length": str(len(data)), "content-md5": md5}
        what = f"put {bucket}/{key}"
        if self._continues is not False:
            try:
                self._ask("PUT", host, path, dict(headers), what, data, sign_body=False, go_ahead=before_body)
                return
            except _NoContinue:
                pass  # silent so far: asked with a HEAD, as a store that ignores the expectation is
        asked = time.monotonic()
        self.exists(bucket, key)  # alive (else this raises)
        if self._continues is None and time.monotonic() - asked < FIRST_CONTINUE_WAIT:
            self._continues = False  # and quick: it ignores the expectation
        before_body()
        self._ask("PUT", host, path, headers, what, data, sign_body=False)

    def create_upload(self, bucket: str, key: str) -> str:
        """Start a multipart upload of `bucket/key`; its upload id."""
        host, path = self._where(bucket, key)
        what = f"start upload of {bucket}/{key}"
        _, _, body = self._ask("POST", host, path, {"host": host}, what, query={"uploads": ""})
        upload_id = _xml_text(body or b"", "UploadId", what)
        if not upload_id:
            raise BackendError(f"{what}: answered without an upload id")
        return upload_id

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: Body) -> str:
        """Store part `number` (from 1) of an upload; its ETag, as the completion must name it."""
        host, path = self._where(bucket, key)
        headers = {"host": host, "content-length": str(len(data))}
        query = {"partNumber": str(number), "uploadId": upload_id}
        what = f"upload part {number} of {bucket}/{key}"
        _, answer, _ = self._ask("PUT", host, path, headers, what, data, query, self._sign_parts)
        etag = answer.get("etag", "")
        if not etag:
            raise BackendError(f"{what}: answered without the part's ETag")
        return etag

    def complete_upload(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> None:
        """Make the object of an upload appear, made of `etags` (parts 1, 2, ... in order)."""
        host, path = self._where(bucket, key)
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_escape(etag)}</ETag></Part>"
            for n, etag in enumerate(etags, 1)
        )
        data = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        headers = {"host": host, "content-length": str(len(data)), "content-type": "application/xml"}
        what = f"complete upload of {bucket}/{key}"
        _, _, body = self._ask("POST", host, path, headers, what, data, {"uploadId": upload_id})
        # A completion can fail after its 200 status was sent: the error is then the body.
        body = body or b""
        if _xml_root(body, what).tag.rpartition("}")[2] == "Error":
            raise BackendError(f"{what}: {_xml_text(body, 'Code', what)} {_xml_text(body, 'Message', what)}")

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Drop an upload's parts; the object never appears."""
        host, path = self._where(bucket, key)
        what = f"abort upload of {bucket}/{key}"
        self._ask("DELETE", host, path, {"host": host}, what, query={"uploadId": upload_id})

    def exists(self, bucket: str, key: str) -> bool:
        """Whether object `bucket/key` exists: one HEAD (pyarrow's look at a missing key costs three)."""
        host, path = self._where(bucket, key)
        try:
            self._ask("HEAD", host, path, {"host": host}, f"stat {bucket}/{key}")
        except NotFound:
            return False
        return True

    def _where(self, bucket: str, key: str) -> tuple[str, str]:
        host, path = (f"{bucket}.{self._endpoint}", "/") if self._virtual else (self._endpoint, f"/{bucket}/")
        return host, path + quote(key, safe="/-_.~")

    def _ask(
        self,
        method: str,
        host: str,
        path: str,
        headers: dict[str, str],
        what: str,
        data: Body | None = None,
        query: dict[str, str] | None = None,
        sign_body: bool = True,
        go_ahead: Callable[[], None] | None = None,
        into: list[memoryview] | None = None,
    ) -> _Answer:
        """One signed request (with `data` as its body, its hash signed unless `sign_body` is false, sent
        only when the server asks for it if there is a `go_ahead`, see `_send_when_asked`); a successful
        answer, or the error its status means (204 counts as success)."""
        canonical_query = _canonical_query(query or {})
        payload = hashlib.sha256(data).hexdigest() if data is not None and sign_body else _UNSIGNED
        self._sign(method, path, headers, payload, canonical_query)
        target = f"{path}?{canonical_query}" if canonical_query else path
        try:
            status, reason, answer, body = self._request(method, host, target, headers, data, go_ahead, into)
        except OSError as exc:
            raise Transient(f"{what}: {type(exc).__name__}: {exc}") from None
        if status in (200, 204, 206):
            return status, answer, body
        what = f"{what}: HTTP {status} {reason}"
        if status == 404:
            raise NotFound(what)
        if status == 403:
            raise PermissionDenied(what)
        if status == 416:  # the range starts past the end: the object is shorter now
            raise Stale(what)
        if status in _RETRY_STATUS:
            raise Transient(what)
        raise BackendError(what)

    def _request(
        self,
        method: str,
        host: str,
        path: str,
        headers: dict[str, str],
        data: Body | None = None,
        go_ahead: Callable[[], None] | None = None,
        into: list[memoryview] | None = None,
    ) -> _Reply:
        """One request on this thread's kept connection; a connection the server closed while idle is
        replaced once at once (that is no outage). A ranged answer of exactly the length of the views
        `into` is read into them (its body None; the caller checks where its range starts)."""
        conns: dict[str, Connection] = self._local.__dict__.setdefault("conns", {})
        for fresh in (False, True):
            conn = conns.get(host)
            if conn is None or fresh:
                _drop(conns, host)
                conn = conns[host] = self._connect(host)
            try:
                if go_ahead is None:
                    conn.send(method, path, headers, data)
                else:
                    assert data is not None
                    early = self._send_when_asked(conn, method, path, headers, data, go_ahead)
                    if early is not None:  # the server answered the headers: it may not read on
                        _drop(conns, host)
                        return early
                status, reason, answer = conn.read_head(method)
                if into is not None and _fits(status, answer, conn.body_length(), into):
                    conn.read_into(into)
                    body = None
                else:
                    body = conn.read_body()
            except (Disconnected, BrokenPipeError, ConnectionResetError):
                if fresh:
                    _drop(conns, host)
                    raise
                continue
            except BaseException:
                _drop(conns, host)
                raise
            if conn.will_close:
                _drop(conns, host)
            return status, reason, answer, body
        raise AssertionError("unreachable")

    def _send_when_asked(
        self,
        conn: Connection,
        method: str,
        path: str,
        headers: dict[str, str],
        data: Body,
        go_ahead: Callable[[], None],
    ) -> _Reply | None:
        """Send the request's headers with `Expect: 100-continue`, and its body right after `go_ahead()`
        once the server asks for it; the server's final answer (its body unread) if it gave one instead.
        Raises _NoContinue if a store not yet known to answer the expectation stays silent."""
        conn.send(method, path, {**headers, "expect": "100-continue"})  # not signed, as the AWS SDKs leave it
        if not self._continues:
            conn.settimeout(min(self._timeout, FIRST_CONTINUE_WAIT))
        try:
            status, reason, answer = conn.read_head(method, interim=True)
        except TimeoutError:
            if self._continues:
                raise
            raise _NoContinue from None
        conn.settimeout(self._timeout)
        if status != 100:
            return status, reason, answer, b""
        self._continues = True
        go_ahead()
        conn.send_body(data)
        return None

    def _connect(self, host: str) -> Connection:
        name, port = _host_port(host, 443 if self._scheme == "https" else 80)
        return Connection(name, port, self._timeout, self._ssl if self._scheme == "https" else None)

    def _sign(self, method: str, path: str, headers: dict[str, str], payload: str, query: str = "") -> None:
        """Add AWS Signature Version 4 headers to `headers`; `payload`: the body's SHA-256 (hex), or
        unsigned (as for any GET); `query`: the canonical query string."""
        creds = self._credentials
        if creds is None:
            return
        now = time.gmtime()
        stamp, day = time.strftime("%Y%m%dT%H%M%SZ", now), time.strftime("%Y%m%d", now)
        headers["x-amz-date"] = stamp
        headers["x-amz-content-sha256"] = payload
        if creds.session_token:
            headers["x-amz-security-token"] = creds.session_token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(
            [method, path, query, "".join(f"{n}:{headers[n].strip()}\n" for n in names), signed, payload]
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


def _canonical_query(query: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml_root(body: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise BackendError(f"{what}: unreadable answer: {exc}") from None


def _xml_text(body: bytes, tag: str, what: str) -> str:
    """The text of the first element named `tag` (in any namespace) of an XML answer."""
    for element in _xml_root(body, what).iter():
        if element.tag.rpartition("}")[2] == tag:
            return element.text or ""
    return ""


def _object_size(status: int, answer: dict[str, str], body: bytes) -> int:
    """The whole object's size: after the '/' of Content-Range (some servers send it with a 200 too), else
    the length of a 200's body (a server that ignored the range sent the whole object)."""
    total = answer.get("content-range", "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    if status == 206:
        raise BackendError(f"a ranged GET answered without the object's size: {answer.get('content-range')}")
    return len(body)


def _etag(answer: dict[str, str]) -> str:
    return answer.get("etag", "").strip('"')


def _modified_s(answer: dict[str, str]) -> int | None:
    when = email.utils.parsedate(answer.get("last-modified", ""))
    return None if when is None else calendar.timegm(when)


def _fits(status: int, answer: dict[str, str], length: int | None, views: list[memoryview]) -> bool:
    """Whether the answer is a range (206, or a 200 with a Content-Range, as some servers send) of a body
    exactly as long as `views` together."""
    return status in (200, 206) and "content-range" in answer and length == sum(map(len, views))


def _drop(conns: dict[str, Connection], host: str) -> None:
    """Close and forget this thread's connection to `host`, if it has one."""
    conn = conns.pop(host, None)
    if conn is not None:
        conn.close()


def _host_port(host: str, default: int) -> tuple[str, int]:
    """The name (an IPv6 address without its brackets) and port of `host` ("name", "name:port")."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name.strip("[]"), int(port)
    return host.strip("[]"), default


def _range_start(answer: dict[str, str]) -> int | None:
    start = answer.get("content-range", "").removeprefix("bytes ").partition("-")[0]
    return int(start) if start.isdigit() else None


def _body_at(offset: int, length: int, status: int, answer: dict[str, str], body: bytes) -> bytes:
    """The asked bytes of an answer: the body as it is when it starts at `offset` (Content-Range, sent by
    some servers with a 200 too), else the slice of a whole object sent by a server that ignored the
    range."""
    start = _range_start(answer)
    if start is not None:
        if start != offset:
            raise BackendError(f"asked for bytes from {offset}, answered from {start}")
        return body if len(body) <= length else body[:length]
    if status == 206:
        raise BackendError(f"a ranged GET answered without its range: {answer.get('content-range')}")
    return body[offset : offset + length]
