"""`http1.Connection` against a socket in this process that sends exactly the bytes a test gives: the ways
an answer's body can be framed, answers read back to back on one kept connection, the ways a server can
end one early, and TLS with the server's name checked (the https path of real stores)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfs.backends.arrow.http1 import Connection, Disconnected, ProtocolError
from pfs.backends.arrow.s3get import ObjectGetter

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`


class _Server:
    """Accepts one connection; answers each request (read up to its blank line, and `body_of` bytes more)
    with the next canned answer; closes the connection after the last one."""

    def __init__(self, answers: list[bytes], body_of: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.answers = answers
        self.tls = tls
        self.body_of = body_of
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):  # a client that refused the certificate
                conn.close()
                return
        with conn:
            pending = b""
            for answer in self.answers:
                while b"\r\n\r\n" not in pending:
                    pending += conn.recv(65536)
                head, _, pending = pending.partition(b"\r\n\r\n")
                while len(pending) < self.body_of:
                    pending += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + pending[: self.body_of])
                pending = pending[self.body_of :]
                conn.sendall(answer)

    def close(self) -> None:
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def serve() -> Iterator:
    servers: list[_Server] = []

    def start(answers: list[bytes], body_of: int = 0) -> Connection:
        server = _Server(answers, body_of)
        servers.append(server)
        return Connection("127.0.0.1", server.port, 5.0)

    yield start
    for server in servers:
        server.close()


def _ask(conn: Connection, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn.send(method, "/bucket/key", {"host": "example"})
    status, _, headers = conn.read_head(method)
    return status, headers, conn.read_body()


def test_answers_framed_every_way_are_read_back_to_back_on_one_connection(serve) -> None:
    conn = serve(
        [
            b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "e1"\r\n\r\nhello',
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",  # a HEAD: a length, but no body
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-Folded: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end",
        ]
    )
    assert _ask(conn) == (200, {"content-length": "5", "etag": '"e1"'}, b"hello")
    assert _ask(conn)[::2] == (200, b"abcde")
    assert _ask(conn, "HEAD") == (200, {"content-length": "3"}, b"")
    assert _ask(conn, "DELETE") == (204, {"x-folded": "a b"}, b"")
    assert not conn.will_close
    assert _ask(conn)[::2] == (200, b"to the end")
    assert conn.will_close
    conn.close()


def test_a_body_is_read_into_the_callers_buffers(serve) -> None:
    body = bytes(range(256)) * 1024
    conn = serve([b"HTTP/1.1 206 Partial Content\r\nContent-Length: 262144\r\n\r\n" + body])
    conn.send("GET", "/bucket/key", {"host": "example"})
    assert conn.read_head("GET")[0] == 206
    assert conn.body_length() == len(body)
    buffers = [bytearray(100_000), bytearray(len(body) - 100_000)]
    conn.read_into([memoryview(b) for b in buffers])
    assert b"".join(buffers) == body
    conn.close()


def test_a_body_and_its_headers_go_out_in_order(serve) -> None:
    conn = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"] * 2, body_of=70_000)
    big = b"x" * 70_000
    conn.send("PUT", "/bucket/a", {"host": "example", "content-length": str(len(big))}, big)
    assert conn.read_head("PUT")[0] == 200 and conn.read_body() == b""
    conn.send("PUT", "/bucket/b", {"host": "example", "content-length": str(len(big))})
    conn.send_body(memoryview(big))
    assert conn.read_head("PUT")[0] == 200
    conn.close()


def test_a_100_continue_is_handed_over_when_asked_for(serve) -> None:
    conn = serve([b"HTTP/1.1 100 Continue\r\n\r\n"])
    conn.send("PUT", "/bucket/key", {"host": "example", "expect": "100-continue"})
    assert conn.read_head("PUT", interim=True)[0] == 100
    conn.close()


@pytest.mark.parametrize(
    "answer, error, message",
    [
        (b"", Disconnected, "before answering"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", ProtocolError, "in the middle of an answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", ProtocolError, "5 bytes early"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", ProtocolError, "not an HTTP/1.1 status line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", ProtocolError, "not a header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", ProtocolError, "not a chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", ProtocolError, "not a length"),
    ],
    ids=["closed", "head cut", "body cut", "not http", "bad header", "bad chunk", "bad length"],
)
def test_an_answer_that_ends_early_or_is_not_http_is_an_error(serve, answer, error, message) -> None:
    conn = serve([answer])
    with pytest.raises(error, match=message):
        _ask(conn)
    conn.close()


def test_a_head_without_end_is_refused(serve) -> None:
    conn = serve([b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 70_000])
    with pytest.raises(ProtocolError, match="too long"):
        _ask(conn)
    conn.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def _tls_server(certificate: tuple[Path, Path], answers: list[bytes]) -> _Server:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return _Server(answers, tls=context)


def test_answers_come_over_tls_once_the_certificate_names_the_host(certificate) -> None:
    """The path of every store reached over https (AWS S3, BOS): the handshake checks the server's name."""
    server = _tls_server(certificate, [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    conn = Connection("localhost", server.port, 5.0, trusting)
    assert _ask(conn)[::2] == (200, b"ok")
    conn.close()
    server.close()

    server = _tls_server(certificate, [b""])
    with pytest.raises(ssl.SSLCertVerificationError):
        Connection("localhost", server.port, 5.0, ssl.create_default_context())  # the system's CAs only
    server.close()


def test_the_object_getter_reads_a_range_over_https(certificate) -> None:
    body = b"0123456789"
    server = _tls_server(
        certificate,
        [
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\nContent-Range: bytes 2-5/10\r\n"
            b'ETag: "v1"\r\n\r\n' + body[2:6]
        ],
    )
    getter = ObjectGetter(
        f"localhost:{server.port}", "https", "us-east-1", None, 5.0, ca_file=str(certificate[0])
    )
    part = getter.get("bucket", "key", 2, 4)
    assert (part.data, part.etag, part.size) == (b"2345", "v1", 10)
    server.close()
