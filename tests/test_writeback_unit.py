"""`WriteBack`, the owner of a mount's staged files, driven under trio without a kernel.

Real backends (a file:// directory, the session's SeaweedFS server, an rclone server of this module's own
that can be stopped), real staging directories (a 1 MiB tmpfs where one must fill up), the mount's worker
threads (pfs/fs/workers.py): the only thing missing is FUSE. `Owner` plays the part of pfs/fs/operations.py,
calling `WriteBack` as its create, open, write, flush, fsync and release handlers do.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from pfs.backends import Backend, BackendOptions, Entry, Kind, open_backend
from pfs.cache.memory import MemoryTier
from pfs.counters import Stats
from pfs.errors import NoSpace, Transient, errno_of
from pfs.fs import writeback
from pfs.fs.inodes import Inode, InodeTable
from pfs.fs.journal import Journal, replay
from pfs.fs.workers import Workers
from pfs.fs.writeback import WriteBack
from tests.conftest import LocalRaw, S3Raw, s3_case, unique
from tests.mounting import tmpfs
from testservers.s3 import S3Server, start_s3_server

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

KiB, MiB = 1 << 10, 1 << 20
REPO = Path(__file__).resolve().parent.parent


class _HeldSource(io.RawIOBase):
    """An upload's source that, once the upload has read all of it, waits for `hold` before the upload
    goes on to publish: what it publishes is fixed, and the test decides when it lands."""

    def __init__(self, source: Any, size: int, hold: Callable[[], None]) -> None:
        super().__init__()
        self._source, self._left, self._hold = source, size, hold

    def read(self, n: int | None = -1) -> bytes:
        data = self._source.read(n)
        self._left -= len(data)
        if self._left <= 0 and self._hold is not None:
            hold, self._hold = self._hold, None
            hold()
        return data

    def readable(self) -> bool:
        return True


class Owner:
    """What a mount builds around `WriteBack`, and its handlers' calls of it (pfs/fs/operations.py).

    Every whole-file upload (`Backend.write_file`) is counted, and what it published is read back from the
    store right after it returned (`published`); `hold`, if set, is called on the upload's thread once it
    has read its source, before it publishes."""

    def __init__(
        self,
        backend: Backend,
        staging: str,
        *,
        keep_failed: bool = True,
        journal: bool = False,
        memory: MemoryTier | None = None,
    ) -> None:
        self.backend = backend
        self.staging = staging
        self.stats = Stats()
        self.inodes = InodeTable(root_mtime_ns=0)
        self.discarded: list[str] = []
        self.created: list[str] = []
        self.published: list[tuple[str, bytes]] = []
        self.uploading = self.most_uploading = 0
        self.hold: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._workers = Workers(4, "wb-test")
        self.journal = Journal(staging, backend.id) if journal else None
        self.wb = WriteBack(
            backend,
            lambda inode: backend,
            staging,
            self._run,
            self.stats,
            lambda inode: self.discarded.append(inode.path),
            lambda inode, entry: self.created.append(inode.path),
            keep_failed=keep_failed,
            journal=self.journal,
            memory=memory,
        )

    async def _run(self, fn: Callable, *args: Any, cancellable: bool = False) -> Any:
        if isinstance(fn, functools.partial) and fn.func == self.backend.write_file:
            fn = functools.partial(self._upload, fn)
        return await self._workers.run(fn, *args, cancellable=cancellable)

    def _upload(self, write: Callable, path: str, source: Any, size: int, *rest: Any) -> Entry:
        with self._lock:
            self.uploading += 1
            self.most_uploading = max(self.most_uploading, self.uploading)
        try:
            if self.hold is not None:
                source = _HeldSource(source, size, self.hold)
            entry = write(path, source, size, *rest)
        finally:
            with self._lock:
                self.uploading -= 1
        reader = self.backend.open_reader(path, entry.size)
        try:
            self.published.append((path, reader.read(0, entry.size)))
        finally:
            reader.close()
        return entry

    def counter(self, name: str) -> int:
        return self.stats.snapshot().get(name, 0)

    # ---- the handlers' calls ----------------------------------------------------------------------------

    def existing(self, path: str) -> Inode:
        return self.inodes.add(path, self.backend.stat(path))

    async def create(self, path: str) -> Inode:
        inode = self.inodes.add(path, Entry(path.rpartition("/")[2], Kind.FILE, 0, time.time_ns()))
        inode.on_backend = False
        async with self.wb.pinned(inode):
            await self.wb.stage(inode, empty=True)
            assert inode.staged is not None
            inode.staged.modified = True  # an empty new file is published too
            inode.open_handles += 1
        return inode

    async def open(self, inode: Inode, truncate: bool = False) -> None:
        async with self.wb.pinned(inode):
            staged = await self.wb.stage(inode, empty=truncate)
            if truncate:
                await self._run(staged.truncate, 0)
            inode.open_handles += 1

    async def write(self, inode: Inode, offset: int, data: bytes) -> int:
        return await self.wb.write(inode, offset, data)

    async def flush(self, inode: Inode) -> None:
        await self.wb.close(inode)

    async def fsync(self, inode: Inode) -> None:
        await self.wb.upload(inode)

    async def release(self, inode: Inode) -> None:
        try:
            await self.wb.close(inode, again=False)
        finally:
            inode.open_handles -= 1
            await self.wb.unstage_if_idle(inode)

    def serve(self, body: Callable[[], Awaitable[None]], limit: float = 30.0) -> None:
        """Run `body` under trio with the write-back's background tasks attached, as a mount does."""

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                self.wb.attach(nursery)
                with trio.fail_after(limit):
                    await body()
                nursery.cancel_scope.cancel()

        trio.run(main)

    def journal_entries(self) -> list[str]:
        assert self.journal is not None
        return sorted(name for name in os.listdir(self.journal.dir) if name.endswith(".data"))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.005)


@pytest.fixture
def root(tmp_path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def staging(tmp_path) -> str:
    path = tmp_path / "staging"
    path.mkdir()
    return str(path)


@pytest.fixture
def small_root(tmp_path) -> Iterator[Path]:
    """The root of a file:// backend on a file system of 1 MiB: its uploads fail with ENOSPC, until some
    of it is freed."""
    with tmpfs(tmp_path / "small-root", "1m") as path:
        yield path


@pytest.fixture
def small_staging(tmp_path) -> Iterator[str]:
    with tmpfs(tmp_path / "small-staging", "1m") as path:
        yield str(path)


def file_backend(root: Path) -> Backend:
    return open_backend(f"file://{root}", BackendOptions())


@pytest.fixture(params=["file", "s3"])
def store(request, root) -> tuple[Backend, Any]:
    """A backend and direct access to its data around pfs (conftest's LocalRaw or S3Raw)."""
    if request.param == "file":
        return file_backend(root), LocalRaw(str(root))
    case = s3_case(request)
    return open_backend(case.uri, case.options), case.raw


@pytest.fixture
def s3(request) -> tuple[Backend, S3Raw]:
    """A fresh prefix on the session's SeaweedFS server."""
    case = s3_case(request)
    assert isinstance(case.raw, S3Raw)
    return open_backend(case.uri, case.options), case.raw


OUTAGE_TIMEOUT = 1.0  # the backend's `--timeout` in the outage tests


@pytest.fixture(scope="module")
def rclone(tmp_path_factory) -> Iterator[S3Server]:
    """An S3 server of this module's own: stopped and started again by its tests."""
    with start_s3_server("rclone", str(tmp_path_factory.mktemp("wbunit-rclone"))) as server:
        server.create_bucket("wbunit")
        yield server


def memory() -> MemoryTier:
    return MemoryTier(256 * MiB)


# ---- publishing --------------------------------------------------------------------------------------------


def test_a_flush_publishes_the_base_object_with_the_written_ranges(store, staging):
    backend, raw = store
    base = os.urandom(3 * MiB + 5)
    raw.put("d/f", base)
    owner = Owner(backend, staging, memory=memory())
    expected = bytearray(base)
    writes = [
        (MiB, b"x" * 100),
        (MiB + 50, b"y" * 100),
        (2 * MiB + 7, os.urandom(4 * KiB)),
        (len(base), b"tail"),
    ]

    async def main() -> None:
        inode = owner.existing("d/f")
        await owner.open(inode)
        for offset, data in writes:
            assert await owner.write(inode, offset, data) == len(data)
            expected[offset : offset + len(data)] = data
        assert raw.get("d/f") == base  # nothing lands before the flush
        await owner.flush(inode)
        assert raw.get("d/f") == expected
        assert (inode.size, inode.on_backend) == (len(expected), True)
        await owner.release(inode)  # nothing written since the flush: no second upload
        assert inode.staged is None
        new = await owner.create("d/new")
        await owner.write(new, 0, b"hello")
        assert not raw.exists("d/new")
        await owner.release(new)
        assert raw.get("d/new") == b"hello"

    owner.serve(main)
    assert owner.published == [("d/f", bytes(expected)), ("d/new", b"hello")]
    assert (owner.created, owner.discarded) == (["d/new"], [])
    assert owner.counter("bytes_uploaded") == len(expected) + 5
    assert owner.wb.counters()["pending_uploads"] == 0


def test_one_upload_at_a_time_per_inode_and_the_last_write_wins(root, staging):
    """Two handles of one file: the second writes and flushes while the first one's upload, which read the
    older bytes, is about to publish them. The second upload waits for it, so the newer bytes land last."""
    owner = Owner(file_backend(root), staging, memory=memory())
    first, second = os.urandom(256 * KiB), os.urandom(256 * KiB)
    read_first, go = threading.Event(), threading.Event()

    def hold() -> None:
        owner.hold = None  # only the first upload waits
        read_first.set()
        go.wait(10)

    owner.hold = hold

    async def main() -> None:
        inode = await owner.create("f")
        await owner.open(inode)  # the second handle
        await owner.write(inode, 0, first)
        returned: list[tuple[int, bytes]] = []

        async def flush(n: int) -> None:
            await owner.flush(inode)
            returned.append((n, (root / "f").read_bytes()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush, 1)
            await trio.to_thread.run_sync(read_first.wait, 10)  # the first upload has read `first`
            await owner.write(inode, 0, second)
            nursery.start_soon(flush, 2)
            await trio.sleep(0.2)
            assert returned == [] and owner.uploading == 1  # the second flush waits for the first upload
            go.set()
        assert returned == [(1, first), (2, second)]
        await owner.release(inode)
        await owner.release(inode)
        assert inode.staged is None

    owner.serve(main)
    assert owner.published == [("f", first), ("f", second)]
    assert owner.most_uploading == 1
    assert (root / "f").read_bytes() == second


# ---- failed uploads ----------------------------------------------------------------------------------------


def fill(small_root: Path) -> None:
    """Leave about 400 KiB free on the 1 MiB backend root."""
    (small_root / "filler").write_bytes(bytes(600 * KiB))


def test_a_failed_upload_is_kept_staged_and_a_later_flush_publishes_it(small_root, staging, caplog):
    (small_root / "f").write_bytes(b"old")
    fill(small_root)
    owner = Owner(file_backend(small_root), staging, memory=memory())
    new = os.urandom(600 * KiB)

    async def main() -> None:
        inode = owner.existing("f")
        await owner.open(inode, truncate=True)
        await owner.write(inode, 0, new)
        with pytest.raises(NoSpace) as failed:
            await owner.flush(inode)
        assert errno_of(failed.value) == errno.ENOSPC
        assert (small_root / "f").read_bytes() == b"old"
        assert inode.staged is not None and inode.staged.failure and inode.staged.broken is None
        counters = owner.wb.counters()
        assert counters["failed_uploads"] == ["f"] and counters["pending_failed_uploads"] == 1
        await owner.release(inode)  # its flush has just tried: not tried again behind the writer's back
        assert owner.counter("upload_failures") == 1
        assert inode.staged is not None  # kept, with no handle open
        (small_root / "filler").unlink()  # the store has room again
        await owner.open(inode)
        await owner.flush(inode)
        assert (small_root / "f").read_bytes() == new
        assert inode.staged.failure is None
        await owner.release(inode)
        assert inode.staged is None

    owner.serve(main)
    assert "failed, kept staged" in caplog.text
    assert owner.published == [("f", new)] and owner.discarded == []
    assert owner.wb.counters()["pending_uploads"] == 0
    assert not list(small_root.rglob("*.part"))  # the failed upload left no temporary file


def test_a_failed_upload_is_dropped_when_not_kept(small_root, staging, caplog):
    (small_root / "f").write_bytes(b"old")
    fill(small_root)
    owner = Owner(file_backend(small_root), staging, keep_failed=False, memory=memory())

    async def main() -> None:
        inode = owner.existing("f")
        fresh = await owner.create("fresh")
        for node in (inode, fresh):
            if node is inode:
                await owner.open(node, truncate=True)
            await owner.write(node, 0, os.urandom(600 * KiB))
            with pytest.raises(NoSpace) as failed:
                await owner.flush(node)
            assert errno_of(failed.value) == errno.ENOSPC
            assert node.staged is not None and isinstance(node.staged.broken, NoSpace)
            with pytest.raises(NoSpace, match="was not uploaded"):
                await owner.fsync(node)  # never tried again
            with pytest.raises(NoSpace):
                await owner.release(node)
            assert node.staged is None
        (small_root / "filler").unlink()
        await owner.wb.flush_all()  # nothing left to upload

    owner.serve(main)
    assert caplog.text.count("failed, dropped") == 2
    assert owner.discarded == ["f", "fresh"]
    assert (small_root / "f").read_bytes() == b"old"
    assert not (small_root / "fresh").exists()
    assert owner.published == [] and owner.counter("uploads_dropped") == 2
    assert owner.wb.counters()["pending_uploads"] == 0


def outage_backend(rclone: S3Server, prefix: str) -> tuple[Backend, S3Raw]:
    """A backend on this module's rclone server that gives up after OUTAGE_TIMEOUT, and a raw view of it."""
    options = BackendOptions(
        access_key=rclone.access_key, secret_key=rclone.secret_key, timeout=OUTAGE_TIMEOUT
    )
    return open_backend(rclone.uri("wbunit", prefix), options), S3Raw(rclone, "wbunit", prefix)


def test_an_upload_to_a_stopped_store_is_kept_and_flush_all_publishes_it_once_it_is_back(rclone, staging):
    prefix = unique("o")
    backend, raw = outage_backend(rclone, prefix)
    raw.put("f", b"old")
    owner = Owner(backend, staging, memory=memory())

    async def main() -> None:
        inode = owner.existing("f")
        await owner.open(inode, truncate=True)
        await owner.write(inode, 0, b"new")
        rclone.stop()
        try:
            started = time.monotonic()
            with pytest.raises(Transient) as failed:
                await owner.flush(inode)
            assert errno_of(failed.value) == errno.EIO
            assert time.monotonic() - started < OUTAGE_TIMEOUT + 3
            assert owner.wb.counters()["failed_uploads"] == ["f"]
            await owner.release(inode)
            with pytest.raises(Transient):
                await owner.wb.flush_all()  # the store still does not answer
        finally:
            rclone.start()
        assert raw.get("f") == b"old"
        await owner.wb.flush_all()
        assert raw.get("f") == b"new"
        assert owner.wb.counters()["pending_uploads"] == 0
        assert inode.staged is None  # uploaded, and no handle left: nothing stays staged

    owner.serve(main)
    assert owner.published == [("f", b"new")]


def test_an_upload_to_a_store_that_stopped_answering_is_abandoned_and_kept(rclone, staging):
    """A frozen server (SIGSTOP) takes the connection but never answers: the upload moves no data, the
    flush fails with EIO once no data moved for the backend's timeout (the transport's own timeouts are
    longer: the watch abandons it, `uploads_stalled`), and the bytes stay staged for the next flush."""
    prefix = unique("p")
    backend, raw = outage_backend(rclone, prefix)
    raw.put("f", b"old")
    owner = Owner(backend, staging, memory=memory())
    new = os.urandom(300 * KiB)

    async def main() -> None:
        answered = await owner.create("answered")  # the store is known to answer before it freezes
        await owner.release(answered)
        inode = owner.existing("f")
        await owner.open(inode, truncate=True)
        await owner.write(inode, 0, new)
        rclone.pause()
        try:
            started = time.monotonic()
            with pytest.raises(Transient) as failed:
                await owner.flush(inode)
            assert errno_of(failed.value) == errno.EIO
            assert time.monotonic() - started < OUTAGE_TIMEOUT + 2
            assert inode.staged is not None and inode.staged.failure
        finally:
            rclone.resume()
        await owner.flush(inode)
        assert raw.get("f") == new
        await owner.release(inode)
        assert inode.staged is None

    owner.serve(main)
    assert owner.published == [("answered", b""), ("f", new)]
    assert owner.counter("uploads_stalled") == 1


# ---- broken staged files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("journal", [False, True], ids=["default", "write-back"])
def test_a_broken_staged_file_is_never_published(root, small_staging, journal):
    old = os.urandom(2 * MiB)
    (root / "f").write_bytes(old)
    owner = Owner(file_backend(root), small_staging, journal=journal, memory=memory())

    async def main() -> None:
        inode = owner.existing("f")
        await owner.open(inode)
        await owner.write(inode, 0, b"a new head")  # fits in the staging directory
        with pytest.raises(NoSpace) as full:
            await owner.write(inode, 100, os.urandom(2 * MiB))  # does not
        assert errno_of(full.value) == errno.ENOSPC
        assert inode.staged is not None and inode.staged.broken is not None
        with pytest.raises(NoSpace):
            await owner.write(inode, 0, b"x")  # broken for good
        for close in (owner.flush, owner.fsync):
            with pytest.raises(NoSpace):
                await close(inode)
        await owner.wb.flush_all()  # not pending: nothing to raise, nothing to upload
        with pytest.raises(NoSpace):
            await owner.release(inode)
        assert inode.staged is None

    owner.serve(main)
    assert (root / "f").read_bytes() == old
    assert owner.published == [] and owner.discarded == ["f"]
    assert owner.counter("staging_failures") == 1
    if journal:
        assert owner.journal_entries() == []


# ---- write-back mode ---------------------------------------------------------------------------------------


def test_write_back_close_returns_before_the_upload_and_flush_all_waits_for_it(root, staging):
    owner = Owner(file_backend(root), staging, journal=True, memory=memory())
    data = os.urandom(3 * MiB)
    read, go = threading.Event(), threading.Event()

    def hold() -> None:
        read.set()
        go.wait(10)

    owner.hold = hold

    async def main() -> None:
        inode = await owner.create("f")
        await owner.write(inode, 0, data)
        await owner.flush(inode)  # returns once the bytes are durable in the journal
        assert not (root / "f").exists()
        entries = owner.journal_entries()
        assert len(entries) == 1
        assert (Path(owner.journal.dir) / entries[0]).read_bytes() == data
        assert owner.wb.counters()["pending_writeback_files"] == 1
        await owner.release(inode)  # queued already: returns at once
        await trio.to_thread.run_sync(read.wait, 10)  # the background upload has read the file
        flushed = trio.Event()

        async def flush_all() -> None:
            await owner.wb.flush_all()
            flushed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush_all)
            await trio.sleep(0.2)
            assert not flushed.is_set()  # waits for the upload in flight
            assert owner.journal_entries() == entries and not (root / "f").exists()
            go.set()
        assert (root / "f").read_bytes() == data
        assert owner.journal_entries() == []  # uploaded: nothing left to replay
        await until(lambda: inode.staged is None)

    owner.serve(main)
    assert owner.published == [("f", data)] and owner.created == ["f"]


def die_after_close(root: str, staging: str, path: str, data_file: str) -> None:
    """A write-back owner killed (SIGKILL) right after a close returned: the file is durable in its
    journal, and its background upload never started (no checkpoint came after the close)."""
    owner = Owner(file_backend(Path(root)), staging, journal=True, memory=memory())

    async def main() -> None:
        inode = await owner.create(path)
        await owner.write(inode, 0, Path(data_file).read_bytes())
        await owner.flush(inode)
        await owner.release(inode)
        os.kill(os.getpid(), signal.SIGKILL)

    owner.serve(main)


def test_the_journal_entry_of_a_killed_owner_is_replayed_by_the_next_mount(root, staging, tmp_path):
    data = os.urandom(2 * MiB + 3)
    (tmp_path / "data").write_bytes(data)
    (root / "d").mkdir()
    code = (
        "from tests.test_writeback_unit import die_after_close\n"
        f"die_after_close({str(root)!r}, {staging!r}, 'd/f', {str(tmp_path / 'data')!r})"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    dead = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=60)
    assert dead.returncode == -signal.SIGKILL
    assert not (root / "d" / "f").exists()
    folder = Path(staging) / "journal"
    assert len(os.listdir(folder)) == 1
    done = replay(staging, file_backend(root))
    assert (done.files, done.bytes, done.failed) == (1, len(data), 0)
    assert (root / "d" / "f").read_bytes() == data
    assert os.listdir(folder) == []


# ---- uploads while written (object stores) -----------------------------------------------------------------


def test_a_new_file_is_uploaded_while_written_and_appears_only_at_close(s3, staging):
    backend, raw = s3
    owner = Owner(backend, staging, memory=memory())
    data = os.urandom(writeback.STREAM_AFTER + 2 * MiB)

    async def main() -> None:
        inode = await owner.create("big")
        for offset in range(0, len(data), MiB):
            await owner.write(inode, offset, data[offset : offset + MiB])
        assert not raw.exists("big")
        await owner.release(inode)
        assert raw.get("big") == data
        assert inode.staged is None

    owner.serve(main)
    assert owner.counter("uploads_streamed") == 1
    assert owner.published == []  # no whole upload at close
    assert owner.created == ["big"]


def test_a_file_rewritten_while_streamed_is_uploaded_whole_at_close(s3, staging):
    backend, raw = s3
    owner = Owner(backend, staging, memory=memory())
    data = bytearray(os.urandom(writeback.STREAM_AFTER + MiB))

    async def main() -> None:
        inode = await owner.create("big")
        for offset in range(0, len(data), MiB):
            await owner.write(inode, offset, bytes(data[offset : offset + MiB]))
        await owner.write(inode, 10, b"rewritten")  # not at the end: the stream can never complete
        data[10:19] = b"rewritten"
        await owner.release(inode)
        assert raw.get("big") == data

    owner.serve(main)
    assert owner.counter("uploads_streamed") == 0
    assert owner.published == [("big", bytes(data))]
