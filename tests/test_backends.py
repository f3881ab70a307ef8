"""The backend behaviour suite: written once, run in-process on every `backend_case` (file, s3, hdfs),
then the mistakes `open_backend` must explain in one line, and a server that stops answering."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator

import pytest

from pfs.backends import Backend, BackendOptions, Entry, Kind, open_backend, redact_uri
from pfs.backends.retry import retry_call
from pfs.errors import (
    AlreadyExists,
    BackendError,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
    Stale,
    Transient,
    UsageError,
)
from tests.conftest import BACKENDS, HDFS_SKIP_REASON, HDFS_URI_ENV, BackendCase, unique
from testservers.s3 import free_port, start_s3_server

MiB = 1 << 20


@pytest.fixture
def case(backend_case: BackendCase) -> BackendCase:
    """The module's backend case, narrowed to a fresh root for this test."""
    return backend_case.subcase(unique())


@pytest.fixture
def b(case: BackendCase) -> Iterator[Backend]:
    backend = open_backend(case.uri, case.options)
    yield backend
    backend.close()


def put(b: Backend, path: str, data: bytes) -> Entry:
    return b.write_file(path, io.BytesIO(data), len(data))


def read_all(b: Backend, path: str) -> bytes:
    entry = b.stat(path)
    reader = b.open_reader(path, entry.size)
    try:
        return reader.read(0, entry.size + 10)
    finally:
        reader.close()


def names(entries: list[Entry]) -> dict[str, Kind]:
    return {e.name: e.kind for e in entries}


# ---- files and directories ---------------------------------------------------------------------------


def test_empty_root(b):
    assert b.list_dir("") == []
    assert b.stat("").kind is Kind.DIR
    assert list(b.walk("")) == []


def test_write_stat_list_read(b):
    entry = put(b, "a.txt", b"hello")
    assert (entry.name, entry.kind, entry.size) == ("a.txt", Kind.FILE, 5)
    assert entry.mtime_ns > 0
    assert b.stat("a.txt") == entry
    assert b.list_dir("") == [entry]
    assert read_all(b, "a.txt") == b"hello"
    assert put(b, "empty", b"").size == 0
    assert read_all(b, "empty") == b""


def test_overwrite_replaces_the_content(b):
    put(b, "f", b"first version, longer")
    put(b, "f", b"second")
    assert b.stat("f").size == 6
    assert read_all(b, "f") == b"second"


def test_a_file_being_replaced_is_never_missing_for_readers(case, b):
    """HDFS cannot rename over a file: pfs sets the old one aside a moment, and its readers wait that out."""
    put(b, "f", b"v0")
    other = open_backend(case.uri, case.options)  # another mount's view of the same store
    missing: list[int] = []
    stop = threading.Event()

    def look() -> None:
        while not stop.is_set():
            try:
                other.stat("f")
            except NotFound:
                missing.append(1)

    looking = threading.Thread(target=look)
    looking.start()
    try:
        for i in range(1, 30):
            put(b, "f", f"v{i}".encode())
    finally:
        stop.set()
        looking.join()
        other.close()
    assert not missing
    assert read_all(b, "f") == b"v29"
    assert names(b.list_dir("")) == {"f": Kind.FILE}


def test_a_version_token_never_covers_a_same_size_rewrite(case, b):
    """HDFS mtimes reach pfs in whole seconds: a rewrite within the second must not keep the token."""
    first = put(b, "f", b"version-1")
    case.raw.put("f", b"version-2")  # another client, same size, most likely within the same second
    second = b.stat("f")
    tokens = [b.known_version("f", e.size, e.mtime_ns) for e in (first, second)]
    assert None in tokens or tokens[0] != tokens[1]


def test_reader_positional_reads_and_staleness(b):
    data = os.urandom(3 * MiB + 17)
    put(b, "r.bin", data)
    reader = b.open_reader("r.bin", len(data))
    try:
        assert reader.read(MiB, 100) == data[MiB : MiB + 100]
        assert reader.read(len(data) - 5, 100) == data[-5:]
        assert reader.read(len(data), 10) == b""
        chunks: list[bytes] = [b""] * 4
        threads = [
            threading.Thread(target=lambda i=i: chunks.__setitem__(i, reader.read(i * MiB, MiB)))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert b"".join(chunks) == data
    finally:
        reader.close()
    with pytest.raises(Stale):
        b.open_reader("r.bin", len(data) + 1)


def test_a_reader_never_mixes_versions_of_an_object_replaced_behind_it(case, b):
    """Object stores carry an ETag: a same-size replacement fails the next read instead of handing out
    bytes of the new version after bytes of the old."""
    if not case.object_store:
        pytest.skip("file systems have no version token a read could be checked against")
    old, new = os.urandom(2 * MiB), os.urandom(2 * MiB)
    put(b, "v.bin", old)
    reader = b.open_reader("v.bin", len(old))
    try:
        assert reader.read(0, MiB) == old[:MiB]
        case.raw.put("v.bin", new)  # another client, same size
        with pytest.raises(Stale):
            reader.read(MiB, MiB)
    finally:
        reader.close()


def test_first_bytes_and_version_in_one_request(case, b):
    data = os.urandom(MiB + 5)
    put(b, "ü +x.bin", data)
    got = b.read_first("ü +x.bin", len(data), MiB)
    if not case.object_store:
        assert got is None  # a reader costs no extra request there
        return
    assert got is not None
    reader = b.open_reader("ü +x.bin", len(data))
    try:
        assert got == (data[:MiB], reader.version)
    finally:
        reader.close()
    assert b.read_first("ü +x.bin", len(data), 2 * MiB) == (data, reader.version)
    with pytest.raises(Stale):  # not the size it was listed with: replaced since
        b.read_first("ü +x.bin", len(data) - 1, MiB)
    with pytest.raises(NotFound):
        b.read_first("missing", 10, MiB)


def test_make_dir_persists_while_empty(b):
    b.make_dir("d")
    assert b.stat("d").kind is Kind.DIR
    assert names(b.list_dir("")) == {"d": Kind.DIR}
    assert b.list_dir("d") == []
    b.make_dir("d/e")
    assert names(b.list_dir("d")) == {"e": Kind.DIR}
    with pytest.raises(AlreadyExists):
        b.make_dir("d")
    put(b, "f", b"x")
    with pytest.raises(AlreadyExists):
        b.make_dir("f")
    with pytest.raises(NotFound):
        b.make_dir("missing/child")
    with pytest.raises(NotADirectory):
        b.make_dir("f/child")


def test_directories_written_without_markers_appear(case, b):
    case.raw.put("implicit/a/b.bin", b"12345")
    assert names(b.list_dir("")) == {"implicit": Kind.DIR}
    assert b.stat("implicit").kind is Kind.DIR
    assert b.stat("implicit/a").kind is Kind.DIR
    assert names(b.list_dir("implicit/a")) == {"b.bin": Kind.FILE}
    assert read_all(b, "implicit/a/b.bin") == b"12345"


def test_directory_stays_when_its_last_file_goes(case, b):
    b.make_dir("d")
    put(b, "d/f", b"x")
    b.remove_file("d/f")
    assert b.stat("d").kind is Kind.DIR
    assert b.list_dir("d") == []
    case.raw.put("implicit/only", b"x")
    b.remove_file("implicit/only")
    assert b.stat("implicit").kind is Kind.DIR


def test_remove_dir(b):
    b.make_dir("d")
    put(b, "d/f", b"x")
    with pytest.raises(NotEmpty):
        b.remove_dir("d")
    with pytest.raises(IsADirectory):
        b.remove_file("d")
    with pytest.raises(NotADirectory):
        b.remove_dir("d/f")
    b.remove_file("d/f")
    b.remove_dir("d")
    with pytest.raises(NotFound):
        b.stat("d")
    with pytest.raises(NotFound):
        b.remove_dir("d")


def test_missing_things_are_not_found(b):
    put(b, "f", b"x")
    for call in (
        lambda: b.stat("nope"),
        lambda: b.stat("nope/deeper"),
        lambda: b.list_dir("nope"),
        lambda: b.open_reader("nope", 1),
        lambda: b.remove_file("nope"),
        lambda: b.read_symlink("nope"),
        lambda: b.rename("nope", "other"),
        lambda: list(b.walk("nope")),
    ):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(NotADirectory):
        b.list_dir("f")
    with pytest.raises(NotADirectory):
        list(b.walk("f"))


def test_walk_lists_the_tree(case, b):
    b.make_dir("d")
    b.make_dir("d/empty")
    put(b, "d/f", b"abc")
    put(b, "top", b"t")
    b.write_symlink("d/link", "f")
    case.raw.put("implicit/x", b"")
    walked = {path: (e.kind, e.size) for path, e in b.walk("")}
    assert walked == {
        "d": (Kind.DIR, 0),
        "d/empty": (Kind.DIR, 0),
        "d/f": (Kind.FILE, 3),
        "d/link": (Kind.SYMLINK, 1),
        "implicit": (Kind.DIR, 0),
        "implicit/x": (Kind.FILE, 0),
        "top": (Kind.FILE, 1),
    }
    assert [path for path, _ in b.walk("d")] == ["d/empty", "d/f", "d/link"]


def test_space(case, b):
    space = b.space()
    assert space.total_bytes > 0
    assert 0 <= space.free_bytes <= space.total_bytes
    if case.object_store:
        assert space.total_bytes >= 1 << 50


# ---- symlinks ----------------------------------------------------------------------------------------


def test_symlink_round_trip(case, b):
    target = "../dir/файл with spaces"
    entry = b.write_symlink("link", target)
    assert (entry.name, entry.kind, entry.size) == ("link", Kind.SYMLINK, len(target.encode()))
    assert b.stat("link") == entry
    assert b.list_dir("") == [entry]
    assert b.read_symlink("link") == target
    assert case.raw.get("link.rclonelink") == target.encode()  # exactly what `rclone --links` writes
    with pytest.raises(AlreadyExists):
        b.write_symlink("link", "elsewhere")
    b.remove_file("link")
    with pytest.raises(NotFound):
        b.stat("link")
    assert not case.raw.exists("link.rclonelink")


def test_links_written_by_rclone_are_symlinks(case, b):
    case.raw.put("x.rclonelink", b"../t")
    seen = b.stat("x")
    assert seen == Entry("x", Kind.SYMLINK, 4, seen.mtime_ns, seen.meta)  # meta: file:// keeps attributes
    assert names(b.list_dir("")) == {"x": Kind.SYMLINK}
    assert b.read_symlink("x") == "../t"
    with pytest.raises(NotFound):
        b.stat("x.rclonelink")
    with pytest.raises(PermissionDenied):
        put(b, "y.rclonelink", b"data")


def test_a_file_replaces_a_symlink(case, b):
    b.write_symlink("n", "somewhere")
    put(b, "n", b"file now")
    assert b.stat("n").kind is Kind.FILE
    assert not case.raw.exists("n.rclonelink")


# ---- rename ------------------------------------------------------------------------------------------


def test_rename_file_and_replace(b):
    put(b, "a", b"aaa")
    b.rename("a", "b")
    assert read_all(b, "b") == b"aaa"
    with pytest.raises(NotFound):
        b.stat("a")
    put(b, "c", b"c")
    b.rename("c", "b")  # replaces the existing file
    assert read_all(b, "b") == b"c"
    assert names(b.list_dir("")) == {"b": Kind.FILE}
    b.make_dir("d")
    b.rename("b", "d/b")
    assert read_all(b, "d/b") == b"c"
    with pytest.raises(NotFound):
        b.rename("d/b", "missing/b")


def test_rename_symlink(case, b):
    b.write_symlink("l", "target")
    b.rename("l", "m")
    assert b.read_symlink("m") == "target"
    assert names(b.list_dir("")) == {"m": Kind.SYMLINK}
    assert not case.raw.exists("l.rclonelink")


def test_rename_directory_tree(b):
    b.make_dir("src")
    b.make_dir("src/empty")
    b.make_dir("src/sub")
    put(b, "src/sub/f", b"deep")
    put(b, "src/g", b"g")
    b.write_symlink("src/l", "g")
    b.make_dir("dst")  # an empty directory may be replaced
    b.rename("src", "dst")
    with pytest.raises(NotFound):
        b.stat("src")
    assert {p: e.kind for p, e in b.walk("")} == {
        "dst": Kind.DIR,
        "dst/empty": Kind.DIR,
        "dst/g": Kind.FILE,
        "dst/l": Kind.SYMLINK,
        "dst/sub": Kind.DIR,
        "dst/sub/f": Kind.FILE,
    }
    assert read_all(b, "dst/sub/f") == b"deep"


def test_rename_errors(b):
    put(b, "f", b"x")
    b.make_dir("d")
    b.make_dir("full")
    put(b, "full/x", b"x")
    with pytest.raises(IsADirectory):
        b.rename("f", "d")
    with pytest.raises(NotADirectory):
        b.rename("d", "f")
    with pytest.raises(NotEmpty):
        b.rename("d", "full")
    with pytest.raises(PermissionDenied):
        b.rename("d", "d/inside")
    assert names(b.list_dir("")) == {"d": Kind.DIR, "f": Kind.FILE, "full": Kind.DIR}


# ---- names -------------------------------------------------------------------------------------------


def test_name_limits(case, b):
    long_name = "n" * 256
    for call in (
        lambda: b.stat(long_name),
        lambda: put(b, long_name, b"x"),
        lambda: b.make_dir(long_name),
        lambda: b.write_symlink("s" * 250, "t"),  # 250 + len(".rclonelink") > 255
    ):
        with pytest.raises(NameTooLong):
            call()
    assert put(b, "é" * 127, b"x").size == 1  # 254 bytes: fits
    if case.object_store:
        deep = "/".join(["k" * 200] * 6)  # every name fits, the whole key does not
        with pytest.raises(NameTooLong):
            put(b, deep, b"x")


def test_reserved_area_is_hidden(case, b):
    put(b, "visible", b"v")  # on file:// this goes through .pfs/tmp
    case.raw.put(".pfs/snapshots/s1", b"manifest")
    assert names(b.list_dir("")) == {"visible": Kind.FILE}
    assert [p for p, _ in b.walk("")] == ["visible"]
    with pytest.raises(NotFound):
        b.stat(".pfs")
    with pytest.raises(NotFound):
        b.list_dir(".pfs")
    with pytest.raises(PermissionDenied):
        b.make_dir(".pfs")
    with pytest.raises(PermissionDenied):
        put(b, ".pfs/x", b"x")
    area = b.reserved_area()
    assert names(area.list_dir("")).get("snapshots") is Kind.DIR
    assert read_all(area, "snapshots/s1") == b"manifest"


# ---- large and failing writes -------------------------------------------------------------------------


class PatternSource(io.RawIOBase):
    """`size` deterministic bytes, generated on demand (never in memory at once), seekable for retries."""

    def __init__(self, size: int, fail_at: int | None = None) -> None:
        self.size, self.fail_at, self.pos = size, fail_at, 0
        self.block = hashlib.sha256(b"pfs").digest() * (MiB // 32) + b"odd"  # length not a power of two

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos
        return pos

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        if self.fail_at is not None and self.pos + n > self.fail_at:
            raise OSError("the staging file went away")
        start = self.pos % len(self.block)
        view = memoryview(buf)
        done = 0
        while done < n:
            piece = self.block[start : start + n - done]
            view[done : done + len(piece)] = piece
            done += len(piece)
            start = 0
        self.pos += n
        return n

    def digest(self) -> str:
        h, self.pos = hashlib.sha256(), 0
        while chunk := self.read(8 * MiB):
            h.update(chunk)
        self.pos = 0
        return h.hexdigest()


class PeakRss:
    """Samples this process's resident memory while a block runs; `.growth` is the peak above the start."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.growth = self.peak - self.start


@pytest.mark.slow
def test_large_file_is_streamed(b):
    size = 101 * MiB + 123
    source = PatternSource(size)
    expected = source.digest()
    with PeakRss() as rss:
        entry = b.write_file("big.bin", source, size)
    assert entry.size == size
    assert rss.growth < 80 * MiB, f"writing grew memory by {rss.growth / MiB:.0f} MiB"
    h = hashlib.sha256()
    reader = b.open_reader("big.bin", size)
    with PeakRss() as rss:
        for offset in range(0, size, 8 * MiB):
            h.update(reader.read(offset, 8 * MiB))
    reader.close()
    assert h.hexdigest() == expected
    assert rss.growth < 80 * MiB


def test_failed_write_publishes_nothing(case, b):
    put(b, "kept", b"old version")
    for path in ("kept", "new"):
        with pytest.raises(BackendError):
            b.write_file(path, PatternSource(40 * MiB, fail_at=25 * MiB), 40 * MiB)
        with pytest.raises(BackendError):  # the source ends before `size`
            b.write_file(path, io.BytesIO(b"short"), 10)
    assert read_all(b, "kept") == b"old version"
    with pytest.raises(NotFound):
        b.stat("new")
    if not case.object_store:
        assert b.reserved_area().list_dir("tmp") == []  # no temp file left behind


# ---- opening: mistakes explained in one line ----------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("ftp://host/x", "unknown scheme 'ftp'"),
        ("file://relative/dir", "relative path"),
        ("file:relative", "relative path"),
        ("/no/scheme", "file:///no/scheme"),
        ("s3://", "no bucket name"),
        ("s3:///prefix", "no bucket name"),
        ("s3://Upper/x", "invalid bucket name"),
        ("s3://ab", "invalid bucket name"),
        ("s3://bucket/a//b", "prefix"),
        ("s3://bucket?colour=blue", "unknown query parameter 'colour'"),
        ("bos://bucket?region=mars", "unknown BOS region 'mars'"),
    ],
)
def test_bad_uris(uri, fragment):
    with pytest.raises(UsageError) as info:
        open_backend(uri, BackendOptions())
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_local_root_must_be_a_directory(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        open_backend(f"file://{tmp_path}/absent", BackendOptions())
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UsageError, match="is not a directory"):
        open_backend(f"file://{tmp_path}/file", BackendOptions())


def s3_options(server, **overrides) -> BackendOptions:
    return BackendOptions(**{"access_key": server.access_key, "secret_key": server.secret_key, **overrides})


def test_missing_bucket(s3_server):
    with pytest.raises(UsageError, match="bucket 'no-such-bucket' does not exist"):
        open_backend(s3_server.uri("no-such-bucket"), s3_options(s3_server))


def test_missing_prefix_is_an_empty_mount_but_a_file_is_not_a_root(s3_server, s3_bucket):
    b = open_backend(s3_server.uri(s3_bucket, unique("absent")), s3_options(s3_server))
    assert b.list_dir("") == []
    prefix = unique("p")
    put(b, prefix, b"x")  # writes <absent>/<prefix>: a file where the next root would be
    with pytest.raises(UsageError, match="is not a directory"):
        open_backend(s3_server.uri(s3_bucket, b.id.rsplit("/", 1)[1] + "/" + prefix), s3_options(s3_server))


def test_wrong_secret_is_access_denied_and_never_echoed(s3_server, s3_bucket):
    secret = "Wrong-Secret-0123456789"
    uri = s3_server.uri(s3_bucket) + f"&secret_key={secret}&access_key={s3_server.access_key}"
    for options in (s3_options(s3_server, secret_key=secret), BackendOptions()):
        with pytest.raises(UsageError) as info:
            open_backend(uri, options)
        assert "access denied" in str(info.value)
        assert "check the access key and secret key" in str(info.value)
        assert secret not in str(info.value)
        assert secret not in repr(options)
    # Operations of a backend opened without verification fail the same way, silently about the secret.
    b = open_backend(s3_server.uri(s3_bucket), s3_options(s3_server, secret_key=secret), verify=False)
    for call in (lambda: b.stat("x"), lambda: b.list_dir(""), lambda: put(b, "x", b"x")):
        with pytest.raises(PermissionDenied) as denied:
            call()
        assert secret not in str(denied.value)
    assert secret not in b.id


def test_credentials_file(s3_server, s3_bucket, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[ci]\naws_access_key_id = {s3_server.access_key}\naws_secret_access_key = {s3_server.secret_key}\n"
    )
    b = open_backend(s3_server.uri(s3_bucket), BackendOptions(credentials_file=str(creds), profile="ci"))
    assert b.stat("").kind is Kind.DIR
    with pytest.raises(UsageError, match="no profile 'other'"):
        open_backend(s3_server.uri(s3_bucket), BackendOptions(credentials_file=str(creds), profile="other"))


def test_unreachable_endpoint_fails_quickly():
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(UsageError) as info:
        open_backend(
            f"s3://bucket?endpoint_override=127.0.0.1:{port}&scheme=http", BackendOptions(anonymous=True)
        )
    assert str(info.value) == f"cannot reach endpoint 127.0.0.1:{port} (connection refused)"
    assert time.monotonic() - start < 5


def test_hdfs_without_jvm_or_libhdfs_names_what_to_set(monkeypatch):
    for name in ("JAVA_HOME", "ARROW_LIBHDFS_DIR", "CLASSPATH", "HADOOP_HOME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UsageError) as info:
        open_backend("hdfs://127.0.0.1:9000/data", BackendOptions())
    message = str(info.value)
    assert "\n" not in message
    for needed in ("JAVA_HOME", "ARROW_LIBHDFS_DIR", "CLASSPATH", "install a JVM + libhdfs"):
        assert needed in message


def test_backend_id_and_redaction(s3_server, s3_bucket):
    b = open_backend(s3_server.uri(s3_bucket, "some/prefix"), s3_options(s3_server))
    assert b.id == f"s3://{s3_server.endpoint}/{s3_bucket}/some/prefix"
    uri = "s3://AKID:SeCrEt@bucket/p?endpoint_override=h:1&secret_key=SeCrEt&session_token=TOK&region=r"
    assert (
        redact_uri(uri) == "s3://***@bucket/p?endpoint_override=h:1&secret_key=***&session_token=***&region=r"
    )
    assert redact_uri("file:///data/x") == "file:///data/x"
    assert "SeCrEt" not in repr(BackendOptions(secret_key="SeCrEt", access_key="AKID", session_token="TOK"))


def test_bos_goes_to_its_s3_endpoint_by_region():
    options = BackendOptions(access_key="bce-access-key", secret_key="bce-secret-key")
    b = open_backend("bos://my-bucket/data?region=gz", options, verify=False)  # no network here
    assert b.id == "bos://s3.gz.bcebos.com/my-bucket/data"
    assert open_backend("bos://my-bucket", options, verify=False).id == "bos://s3.bj.bcebos.com/my-bucket"


def test_retry_gives_up_within_the_deadline():
    now = [0.0]
    calls = []

    def failing() -> None:
        calls.append(now[0])
        now[0] += 1.0  # every attempt takes a second against a silent server
        raise Transient("no answer")

    with pytest.raises(Transient, match="gave up after"):
        retry_call(
            failing, timeout=10, attempt_budget=1.0, clock=lambda: now[0],
            sleep=lambda s: now.__setitem__(0, now[0] + s),
        )  # fmt: skip
    assert now[0] <= 10 and len(calls) >= 4
    with pytest.raises(NotFound):  # answers are not retried
        retry_call(lambda: (_ for _ in ()).throw(NotFound("x")), timeout=10)


# ---- a server that stops answering --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pausable(tmp_path_factory):
    """A server of our own (never the shared one) that the test may freeze."""
    with start_s3_server("rclone", str(tmp_path_factory.mktemp("pausable"))) as server:
        server.create_bucket("frozen")
        yield server


def test_paused_server_gives_transient_within_the_deadline_then_recovers(pausable):
    timeout = 3.0
    b = open_backend(pausable.uri("frozen"), s3_options(pausable, timeout=timeout))
    data = os.urandom(MiB)
    put(b, "f", data)
    reader = b.open_reader("f", len(data))
    pausable.pause()
    try:
        for call in (lambda: reader.read(0, 1000), lambda: b.stat("f"), lambda: b.read_first("f", MiB, 1000)):
            start = time.monotonic()
            with pytest.raises(Transient):
                call()
            assert time.monotonic() - start < timeout + 1.5
    finally:
        pausable.resume()
    assert reader.read(0, 1000) == data[:1000]
    assert b.stat("f").size == len(data)
    assert b.read_first("f", MiB, 1000) == (data[:1000], reader.version)
    reader.close()


@pytest.mark.skipif(not os.environ.get(HDFS_URI_ENV), reason=HDFS_SKIP_REASON)
def test_hdfs_cluster_is_configured():
    """Stands for the HDFS runs of every backend and mount suite, which join only when this passes."""
    assert "hdfs" in BACKENDS


@pytest.mark.skipif(not os.environ.get(HDFS_URI_ENV), reason=HDFS_SKIP_REASON)
def test_hdfs_takes_its_client_settings_from_the_uri(tmp_path):
    """kerb_ticket (a Kerberos ticket cache for libhdfs; a simple-auth cluster ignores it) and replication."""
    uri = f"{os.environ[HDFS_URI_ENV]}?kerb_ticket={tmp_path}/krb5cc_0&replication=1"
    b = open_backend(uri, BackendOptions())
    try:
        assert b.stat("").kind is Kind.DIR
    finally:
        b.close()
    with pytest.raises(UsageError, match="replication must be a number"):
        open_backend(f"{os.environ[HDFS_URI_ENV]}?replication=three", BackendOptions())
