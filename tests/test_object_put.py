"""`ObjectGetter.put` sends a body only once the store asks for it (`Expect: 100-continue`), against small
HTTP servers in this process that answer the expectation, ignore it, or refuse the headers: the ways real
stores behave; and against SeaweedFS, which acts on a PUT's headers left without their body."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from pfs.backends.arrow.s3get import Credentials, ObjectGetter
from pfs.errors import PermissionDenied, Transient


class _Store(http.server.BaseHTTPRequestHandler):
    """Objects in a dict; `behaviour`: "continue" (answers the expectation), "ignore" (waits for the body
    without a word, as an HTTP/1.0 server does) or "refuse" (answers the headers with 403)."""

    protocol_version = "HTTP/1.1"
    behaviour = "continue"
    objects: dict[str, bytes] = {}
    requests: list[str] = []

    def handle_expect_100(self) -> bool:
        if self.behaviour == "continue":
            return super().handle_expect_100()
        if self.behaviour == "refuse":
            self.send_response(403)
            self.send_header("content-length", "0")
            self.send_header("connection", "close")
            self.end_headers()
            return False
        return True  # "ignore": read on as if nothing was asked

    def do_PUT(self) -> None:
        self.requests.append(f"PUT expect={self.headers.get('expect')}")
        size = int(self.headers["content-length"])
        body = self.rfile.read(size)
        if len(body) < size:  # the client hung up before its body: as a store does, keep nothing
            return
        self.objects[self.path] = body
        self._answer(200)

    def do_HEAD(self) -> None:
        self.requests.append("HEAD")
        self._answer(200 if self.path in self.objects else 404)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def store() -> Iterator[tuple[type[_Store], ObjectGetter]]:
    handler = type("Store", (_Store,), {"objects": {}, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield handler, ObjectGetter(f"127.0.0.1:{server.server_port}", "http", "us-east-1", None, 5.0)
    finally:
        server.shutdown()
        server.server_close()


def test_the_body_goes_once_the_store_asks_for_it_and_no_head_is_needed(store):
    handler, getter = store
    sent: list[str] = []
    getter.put("b", "k1", b"one", lambda: sent.append("k1"))
    getter.put("b", "k2", b"two", lambda: sent.append("k2"))
    assert handler.objects == {"/b/k1": b"one", "/b/k2": b"two"}
    assert sent == ["k1", "k2"]
    assert handler.requests == ["PUT expect=100-continue"] * 2


def test_a_store_that_ignores_the_expectation_is_asked_with_a_head_before_each_put(store):
    handler, getter = store
    handler.behaviour = "ignore"
    getter.put("b", "k1", b"one", lambda: None)  # waits FIRST_CONTINUE_WAIT once, then learns
    getter.put("b", "k2", b"two", lambda: None)
    assert handler.objects == {"/b/k1": b"one", "/b/k2": b"two"}
    # The first PUT's headers were left without their body, which the store then never kept.
    assert handler.requests[0] == "PUT expect=100-continue"
    assert handler.requests[1:] == ["HEAD", "PUT expect=None", "HEAD", "PUT expect=None"]


def test_headers_refused_send_no_body_and_say_why(store):
    handler, getter = store
    handler.behaviour = "refuse"
    sent: list[str] = []
    with pytest.raises(PermissionDenied, match="put b/k: HTTP 403"):
        getter.put("b", "k", b"secret", lambda: sent.append("k"))
    assert sent == [] and handler.objects == {}


def test_a_caller_that_stopped_waiting_sends_no_body(store):
    handler, getter = store

    def abandoned() -> None:
        raise RuntimeError("the upload was abandoned")

    with pytest.raises(RuntimeError, match="abandoned"):
        getter.put("b", "k", b"late", abandoned)
    assert handler.objects == {}


def test_a_put_left_without_its_body_never_replaces_the_object(s3_server):
    """SeaweedFS stores an empty object for the headers of a PUT whose connection closed before its body
    (read once the paused server wakes): the body's MD5, sent with the headers, makes it refuse that."""
    s3_server.create_bucket("puts")
    getter = ObjectGetter(
        s3_server.endpoint, "http", "us-east-1", Credentials(s3_server.access_key, s3_server.secret_key), 1.0
    )
    getter.put("puts", "ckpt", b"good" * 1000, lambda: None)
    s3_server.pause()
    try:
        with pytest.raises(Transient):  # no answer to the headers: the body never goes
            getter.put("puts", "ckpt", b"newer" * 1000, lambda: None)
    finally:
        s3_server.resume()
    time.sleep(1)  # room for the server to act on the headers it was sent
    part = getter.get("puts", "ckpt", 0, 1 << 20)
    assert (part.size, part.data) == (4000, b"good" * 1000)
