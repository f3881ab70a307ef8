"""`Connection`: one kept-alive HTTP/1.1 client connection, as much of the protocol as an object store's
answers need (RFC 9112): a status line and headers, and a body framed by Content-Length, chunked transfer
coding or the connection's end.

The standard library's client parses every answer's headers with the email package and reads them
through two layers of buffered files: measured on the benchmark machine, a HEAD costs 0.36-0.54 ms of
the calling thread's CPU and a 128 KiB PUT 1.4 ms, against about a third of that here. A cold small file
and a small file written each make one or two requests, so that was a fifth of the daemon's CPU per file.

Bytes read past an answer stay in this connection's buffer for the next one; a body can be read straight
into the caller's buffers (one copy, out of the socket).
"""

from __future__ import annotations

import socket
import ssl

_CHUNK = 65536  # bytes asked of the socket at once when filling the buffer
_MAX_HEAD = 65536  # an answer's status line and headers together
_SMALL_BODY = 65536  # a body sent in the same write as its headers (one segment, one system call)


class ProtocolError(ConnectionError):
    """The server's answer is not HTTP/1.1 as expected, or ended early; the connection is unusable."""


class Disconnected(ConnectionResetError):
    """The server closed the connection before the first byte of an answer (a kept connection it had
    closed while idle, or one it dropped)."""


Headers = dict[str, str]  # names in lower case
Body = bytes | memoryview


class Connection:
    def __init__(self, host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection((host, port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The handshake checks the certificate against `host` (its name, or its address).
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self.sock: socket.socket = sock
        self._buf = bytearray()
        self._framing: tuple[str, int] = ("none", 0)  # how the body of the answer being read ends
        self.will_close = False  # the server closes the connection after the current answer

    def close(self) -> None:
        self.sock.close()

    def settimeout(self, seconds: float) -> None:
        self.sock.settimeout(seconds)

    def send(self, method: str, target: str, headers: Headers, body: Body | None = None) -> None:
        """Send a request: its headers, and `body` if given (its Content-Length is the caller's)."""
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        if body is not None and len(body) <= _SMALL_BODY:
            self.sock.sendall(head + body)
            return
        self.sock.sendall(head)
        if body is not None:
            self.sock.sendall(body)

    def send_body(self, body: Body) -> None:
        self.sock.sendall(body)

    def read_head(self, method: str, interim: bool = False) -> tuple[int, str, Headers]:
        """The status, reason and headers of the next answer (a 1xx one only if `interim`, else skipped);
        its body is then read with `read_body` or `read_into`."""
        while True:
            status, reason, headers = self._read_status_and_headers()
            if 100 <= status < 200:
                if interim:
                    self._framing = ("none", 0)
                    return status, reason, headers
                continue
            self._frame(method, status, headers)
            return status, reason, headers

    def body_length(self) -> int | None:
        """The length of the body about to be read, where Content-Length said it (else None)."""
        kind, length = self._framing
        return length if kind == "length" else None

    def read_body(self) -> bytes:
        """The whole body of the answer whose head was just read."""
        kind, length = self._framing
        self._framing = ("none", 0)
        if kind == "length":
            return self._take(length)
        if kind == "chunked":
            return self._read_chunked()
        if kind == "close":
            while self._fill():
                pass
            body = bytes(self._buf)
            self._buf.clear()
            return body
        return b""

    def read_into(self, views: list[memoryview]) -> None:
        """Read a body of exactly the views' total length (its Content-Length said so) into them, in
        order: what is buffered is copied, the rest received straight into the views."""
        kind, length = self._framing
        if kind != "length" or length != sum(map(len, views)):
            raise ValueError("read_into needs a body of exactly the views' length")
        self._framing = ("none", 0)
        for view in views:
            got = min(len(self._buf), len(view))
            if got:
                view[:got] = self._buf[:got]
                del self._buf[:got]
            while got < len(view):
                n = self.sock.recv_into(view[got:])
                if not n:
                    raise ProtocolError(f"the answer's body ended {len(view) - got} bytes early")
                got += n

    def _read_status_and_headers(self) -> tuple[int, str, Headers]:
        end = self._find(b"\r\n\r\n")
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        status_line, _, rest = head.partition("\r\n")
        version, _, code_reason = status_line.partition(" ")
        code, _, reason = code_reason.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.1 status line: {status_line[:100]!r}")
        headers: Headers = {}
        name = ""
        for line in rest.split("\r\n") if rest else ():
            if line[:1] in (" ", "\t") and name:  # an obsolete folded continuation of the previous value
                headers[name] += " " + line.strip()
                continue
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"not a header line: {line[:100]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.will_close = version == "HTTP/1.0" or "close" in headers.get("connection", "").lower()
        return int(code), reason, headers

    def _frame(self, method: str, status: int, headers: Headers) -> None:
        if method == "HEAD" or status in (204, 304):
            self._framing = ("none", 0)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._framing = ("chunked", 0)
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise ProtocolError(f"not a length: {length[:40]!r}")
            self._framing = ("length", int(length))
        else:
            self._framing = ("close", 0)
            self.will_close = True

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            end = self._find(b"\r\n")
            size_text = bytes(self._buf[:end]).partition(b";")[0].strip()
            del self._buf[: end + 2]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"not a chunk size: {size_text[:40]!r}") from None
            if size == 0:
                while True:  # trailer fields, ignored, up to the empty line that ends the body
                    end = self._find(b"\r\n")
                    del self._buf[: end + 2]
                    if end == 0:
                        return b"".join(parts)
            parts.append(self._take(size))
            if self._take(2) != b"\r\n":
                raise ProtocolError("a chunk did not end with CRLF")

    def _take(self, length: int) -> bytes:
        """The next `length` bytes of the body."""
        if len(self._buf) >= length:
            data = bytes(self._buf[:length])
            del self._buf[:length]
            return data
        body = bytearray(length)
        view = memoryview(body)
        got = len(self._buf)
        view[:got] = self._buf
        self._buf.clear()
        while got < length:
            n = self.sock.recv_into(view[got:])
            if not n:
                raise ProtocolError(f"the answer's body ended {length - got} bytes early")
            got += n
        return bytes(body)

    def _find(self, mark: bytes) -> int:
        """Where `mark` starts in the buffer, reading more until it is there."""
        start = 0
        while True:
            at = self._buf.find(mark, start)
            if at >= 0:
                return at
            if len(self._buf) > _MAX_HEAD:
                raise ProtocolError("an answer's head is too long")
            start = max(0, len(self._buf) - len(mark) + 1)
            if not self._fill():
                if self._buf:
                    raise ProtocolError("the server closed the connection in the middle of an answer")
                raise Disconnected("the server closed the connection before answering")

    def _fill(self) -> int:
        data = self.sock.recv(_CHUNK)
        self._buf += data
        return len(data)
