"""The disk tier in-process (seconds, no mount): what lies in its directory never makes it read without
bound or raise; a full disk or a broken database only makes it miss."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import subprocess
import threading
import time
import zlib
from collections import Counter

import pytest

from pfs.cache.disk import (
    CHECK_CHUNK,
    DROP_BEHIND,
    CacheUnavailable,
    DiskTier,
    Seen,
    _Check,
    _Index,
    _OpenFiles,
    _Queue,
    _sums,
    _Where,
)
from tests.pagecache import drop_pages, resident_bytes
from tests.test_cache_faults import fill

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

MiB = 1 << 20
BLOCK = os.urandom(MiB)


@pytest.fixture
def tier(tmp_path):
    disk = DiskTier(str(tmp_path / "cache"), 64 * MiB, max_block=MiB)
    yield disk
    disk.close()


def only_block_file(tier: DiskTier) -> str:
    assert tier.flush(10)
    (path,) = glob.glob(f"{tier.directory}/**/*.val", recursive=True)
    return path


@pytest.mark.parametrize("kind", ["symlink", "sparse", "fifo", "directory", "bigger than a block"])
def test_a_block_file_that_is_not_one_reads_as_a_corrupt_block(tier, kind):
    tier.put("b|x|0", BLOCK)
    path = only_block_file(tier)
    os.remove(path)
    if kind == "symlink":
        os.symlink("/dev/zero", path)
    elif kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(2 << 30)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
    else:
        with open(path, "wb") as f:
            f.write(os.urandom(MiB + 1))
    assert tier.get("b|x|0") is None
    assert tier.corrupt_blocks == 1 and "b|x|0" not in tier
    tier.put("b|x|0", BLOCK)  # and it is stored again
    assert tier.flush(10) and tier.get("b|x|0") == BLOCK


def test_a_linked_directory_on_the_way_is_not_followed(tier, tmp_path):
    tier.put("b|x|0", BLOCK)
    path = only_block_file(tier)
    top = os.path.dirname(path)  # the directory holding the block file
    os.rename(top, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", top)
    assert tier.get_range("b|x|0", 0, 100) is None
    assert tier.corrupt_blocks == 1


def test_blocks_stored_two_directories_deep_are_still_read(tier):
    tier.put("b|x|0", BLOCK)
    path = only_block_file(tier)
    deeper = os.path.join(os.path.dirname(path), "cd", os.path.basename(path))  # as diskcache lays them out
    os.mkdir(os.path.dirname(deeper))
    os.rename(path, deeper)
    tier._cache._sql(
        "UPDATE Cache SET filename = ? WHERE key = ?", (os.path.relpath(deeper, tier.directory), "b|x|0")
    )
    tier._index.clear()
    assert tier.get("b|x|0") == BLOCK


def test_random_reads_check_only_their_chunks(tier, monkeypatch):
    tier.put("b|x|0", BLOCK)
    assert tier.flush(10)
    lengths: list[int] = []
    pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: lengths.append(n) or pread(fd, n, at))
    assert tier.get_range("b|x|0", 70_000, 70_100) == BLOCK[70_000:70_100]
    assert lengths == [CHECK_CHUNK]  # one chunk read from the file, not the block


@pytest.mark.parametrize("chunk", [64 * 1024, CHECK_CHUNK])
def test_blocks_checked_by_the_crc32s_of_earlier_versions_are_still_read_and_checked(tier, chunk):
    """A cache filled by an earlier version keeps its CRC32s, of 64 KiB or 16 KiB chunks."""
    tier.put("b|x|0", BLOCK)
    path = only_block_file(tier)
    tier._cache._sql("UPDATE Cache SET tag = ? WHERE key = ?", (_sums(BLOCK, chunk, zlib.crc32), "b|x|0"))
    tier._index.clear()
    assert tier.get_range("b|x|0", 70_000, 70_100) == BLOCK[70_000:70_100]
    assert tier.get("b|x|0") == BLOCK and tier.corrupt_blocks == 0
    with open(path, "r+b") as f:
        f.seek(300_000)
        f.write(b"\xff" * 8)
    assert tier.get_range("b|x|0", 300_004, 300_100) is None  # a chunk holding the damage
    assert tier.corrupt_blocks == 1


def test_a_damaged_byte_anywhere_in_a_block_is_caught(tier):
    for at in (0, CHECK_CHUNK - 1, len(BLOCK) // 2, len(BLOCK) - 1):
        tier.put("b|x|0", BLOCK)
        assert tier.flush(10)
        path = only_block_file(tier)
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(bytes([BLOCK[at] ^ 1]))
        assert tier.get("b|x|0") is None, at
    assert tier.corrupt_blocks == 4


def test_a_database_that_is_not_one_is_set_aside(tmp_path, caplog):
    directory = tmp_path / "cache"
    DiskTier(str(directory), 64 * MiB).close()
    (directory / "cache.db").write_bytes(os.urandom(40000))
    with caplog.at_level(logging.WARNING):
        tier = DiskTier(str(directory), 64 * MiB)
    tier.put("b|x|0", BLOCK)
    assert tier.get("b|x|0") == BLOCK
    tier.close()
    (aside,) = glob.glob(f"{directory}/broken-*")
    assert os.path.exists(f"{aside}/cache.db")
    assert [r.message for r in caplog.records if "set it aside" in r.message]


def test_an_unusable_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheUnavailable) as exc:
        DiskTier(str(tmp_path / "file" / "cache"), 64 * MiB)
    assert "\n" not in str(exc.value) and str(tmp_path / "file" / "cache") in str(exc.value)
    assert "--cache-dir" in str(exc.value)


def test_a_full_disk_misses_and_warns_once(tmp_path, caplog):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(small)], check=True)
    try:
        tier = DiskTier(str(small / "cache"), 64 * MiB, max_block=MiB)
        tier.put("b|x|0", BLOCK)
        assert tier.flush(10)
        fill(small)
        with caplog.at_level(logging.WARNING):
            for i in range(3):
                tier.put(f"b|y|{i}", BLOCK)
                tier.record(f"k{i}", Seen(1, 2, "etag" * 100, 3.0))
                assert tier.flush(10)
                assert tier.get(f"b|y|{i}") is None
        assert tier.get("b|x|0") == BLOCK  # what it holds is still read
        tier.close()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(small / "cache") in warnings[0]


def test_the_version_book_is_text_and_never_unpickles(tier):
    seen = Seen(5, 1_700_000_000_123456789, '"etag with spaces"', 1_700_000_003.25)
    tier.record("k", seen)
    assert tier.seen("k") == seen  # queued
    assert tier.flush(10) and tier.seen("k") == seen  # written
    tier._cache.set("v|k", (5, 1, "etag", 2.0))  # a pickle, as an older version (or anyone) wrote it
    assert tier.seen("k") is None
    tier._cache.set("v|k", "not a version")
    assert tier.seen("k") is None


# ---- the index of block files and the writer -----------------------------------------------------------


def test_a_known_block_is_read_without_the_database(tier):
    tier.put("b|x|0", BLOCK)
    assert tier.flush(10)
    assert tier.get_range("b|x|0", 0, 10) == BLOCK[:10]  # the first lookup may ask the database
    statements: list[str] = []
    tier._cache._con.set_trace_callback(statements.append)  # this thread's connection
    assert tier.get_range("b|x|0", 200_000, 200_004) == BLOCK[200_000:200_004]
    assert tier.get("b|x|0") == BLOCK
    assert statements == []


def test_a_block_evicted_by_another_process_is_a_miss_then_found_again(tier):
    tier.put("b|x|0", BLOCK)
    assert tier.flush(10) and tier.get("b|x|0") == BLOCK  # now in this tier's index
    other = DiskTier(tier.directory, 64 * MiB, max_block=MiB)
    try:
        other.delete("b|x|0")
        assert tier.get_range("b|x|0", 0, 100) is None and tier.corrupt_blocks == 0
        other.put("b|x|0", BLOCK)  # stored again, in another file
        assert other.flush(10)
        assert tier.get_range("b|x|0", 0, 100) == BLOCK[:100]
    finally:
        other.close()


def test_a_missing_piece_is_asked_for_once_a_while_and_a_block_always(tier, monkeypatch):
    assert tier.get_range("p|x|0+65536", 0, 100, piece=True) is None
    assert tier.get_range("b|x|0", 0, 100) is None
    other = DiskTier(tier.directory, 64 * MiB, max_block=MiB)
    try:
        other.put("p|x|0+65536", BLOCK[:65536])
        other.put("b|x|0", BLOCK)
        assert other.flush(10)
    finally:
        other.close()
    assert tier.get_range("b|x|0", 0, 100) == BLOCK[:100]  # blocks are shared by the node's mounts at once
    assert tier.get_range("p|x|0+65536", 0, 100, piece=True) is None  # a piece: not asked again for a while
    monkeypatch.setattr("pfs.cache.disk.ABSENT_S", 0.0)
    assert tier.get_range("p|x|0+65536", 0, 100, piece=True) == BLOCK[:100]
    monkeypatch.undo()
    assert tier.get_range("p|x|1+65536", 0, 100, piece=True) is None
    tier.put("p|x|1+65536", BLOCK[:65536])  # stored here: known at once
    assert tier.flush(10) and tier.get_range("p|x|1+65536", 0, 100, piece=True) == BLOCK[:100]


def test_a_known_block_changed_on_disk_is_dropped(tier):
    tier.put("b|x|0", BLOCK)
    path = only_block_file(tier)
    assert tier.get("b|x|0") == BLOCK
    with open(path, "r+b") as f:
        f.seek(300_000)
        f.write(b"\xff" * 8)
    assert tier.get_range("b|x|0", 0, 100) == BLOCK[:100]  # only the chunks read are checked
    assert tier.get_range("b|x|0", 299_000, 301_000) is None
    assert tier.corrupt_blocks == 1 and "b|x|0" not in tier


def test_a_known_block_replaced_by_a_link_is_not_followed(tier, tmp_path):
    tier.put("b|x|0", BLOCK)
    path = only_block_file(tier)
    assert tier.get("b|x|0") == BLOCK
    (tmp_path / "same").write_bytes(BLOCK)
    os.remove(path)
    os.symlink(tmp_path / "same", path)
    assert tier.get("b|x|0") is None
    assert tier.corrupt_blocks == 1


# ---- reads without a worker thread ---------------------------------------------------------------------


def test_a_block_read_at_random_is_read_again_from_the_page_cache_without_waiting(tier, monkeypatch):
    tier.put("b|x|0", BLOCK)
    assert tier.flush(10)
    assert tier.read_now("b|x|0", 0, 4096) is None  # no ranged read kept its file open yet
    assert tier.get_range("b|x|0", 0, 4096) == BLOCK[:4096]
    flags: list[int] = []
    preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, at, f=0: flags.append(f) or preadv(fd, bufs, at, f))
    assert tier.read_now("b|x|0", 70_000, 74_096) == BLOCK[70_000:74_096]
    assert flags == [os.RWF_NOWAIT]  # never waits for the disk: the trio loop calls it
    assert tier.read_now("b|x|0", 0, 1 << 17) is None  # more than a small read: a worker's job


def test_reading_now_never_waits_for_the_disk(tier):
    tier.put("b|x|0", BLOCK)
    path = only_block_file(tier)
    assert tier.get_range("b|x|0", 0, 4096) == BLOCK[:4096]
    drop_pages(path)
    assert tier.read_now("b|x|0", 500_000, 504_096) is None
    assert tier.get_range("b|x|0", 500_000, 504_096) == BLOCK[500_000:504_096]


def test_a_block_read_twice_at_random_is_read_ahead_whole_once(tier, monkeypatch):
    tier.put("b|x|0", BLOCK)
    assert tier.flush(10)
    advised: list[tuple[int, int, int]] = []
    fadvise = os.posix_fadvise
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, at, n, a: advised.append((at, n, a)) or fadvise(fd, at, n, a)
    )
    for at in (0, 300_000, 600_000, 900_000):
        assert tier.get_range("b|x|0", at, at + 100, read_ahead=True) == BLOCK[at : at + 100]
    deadline = time.monotonic() + 10
    while not advised and time.monotonic() < deadline:  # advised in the background
        time.sleep(0.01)
    assert advised == [(0, 0, os.POSIX_FADV_WILLNEED)]  # after the second read, and only then


def test_a_block_read_at_random_is_read_ahead_whole_only_when_asked(tier, monkeypatch):
    tier.put("b|x|0", BLOCK)
    assert tier.flush(10)
    advised: list[int] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, at, n, a: advised.append(a))
    for at in (0, 300_000, 600_000):
        assert tier.get_range("b|x|0", at, at + 100) == BLOCK[at : at + 100]
    time.sleep(0.1)
    assert not advised  # a reader sampling an object sparsely: only the chunks it reads
    assert tier.get_range("b|x|0", 900_000, 900_100, read_ahead=True) == BLOCK[900_000:900_100]
    deadline = time.monotonic() + 10
    while not advised and time.monotonic() < deadline:
        time.sleep(0.01)
    assert advised == [os.POSIX_FADV_WILLNEED]  # read before: asked now, read ahead at once


def test_reading_now_leaves_damage_and_eviction_to_the_checked_read(tier):
    tier.put("b|x|0", BLOCK)
    path = only_block_file(tier)
    assert tier.get_range("b|x|0", 0, 100) == BLOCK[:100]
    with open(path, "r+b") as f:
        f.seek(300_000)
        f.write(b"\xff" * 8)
    assert tier.read_now("b|x|0", 300_000, 300_100) is None
    assert tier.corrupt_blocks == 0  # the worker's read decides, and drops it
    assert tier.get_range("b|x|0", 300_000, 300_100) is None and tier.corrupt_blocks == 1
    tier.put("b|y|0", BLOCK)
    assert tier.flush(10) and tier.get_range("b|y|0", 0, 100) == BLOCK[:100]
    other = DiskTier(tier.directory, 64 * MiB, max_block=MiB)
    try:
        other.delete("b|y|0")  # evicted by another process: its file is unlinked, still open here
    finally:
        other.close()
    assert tier.read_now("b|y|0", 0, 100) is None
    assert tier.get_range("b|y|0", 0, 100) is None and tier.corrupt_blocks == 1


def test_kept_files_are_bounded_and_closed_only_once_no_read_holds_them(tmp_path):
    files = _OpenFiles(limit=2)
    fds = [os.open(tmp_path, os.O_RDONLY) for _ in range(3)]
    held = files.add("a", fds[0])
    files.give(files.add("b", fds[1]))
    files.give(files.add("c", fds[2]))  # over the limit: "a" goes, but a read holds it
    assert files.take("a") is None
    os.fstat(fds[0])  # still open
    files.give(held)
    with pytest.raises(OSError):
        os.fstat(fds[0])
    files.clear()
    for fd in fds[1:]:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_queued_writes_are_read_from_the_queue_and_written_by_close(tmp_path):
    directory = str(tmp_path / "cache")
    tier = DiskTier(directory, 64 * MiB, max_block=MiB)
    done: list[int] = []
    for i in range(8):
        tier.put(f"b|x|{i}", BLOCK, done=lambda i=i: done.append(i))
        assert tier.get_range(f"b|x|{i}", 5, 9) == BLOCK[5:9]
    tier.record("k", Seen(1, 2, "e", 3.0))
    tier.close()
    assert sorted(done) == list(range(8))
    again = DiskTier(directory, 64 * MiB, max_block=MiB)
    try:
        assert all(again.get(f"b|x|{i}") == BLOCK for i in range(8))
        assert again.seen("k") == Seen(1, 2, "e", 3.0)
    finally:
        again.close()


def test_a_block_deleted_while_the_writer_stores_it_is_gone_after_the_delete(tier):
    """An eviction racing the write of the same block: the write may not land after the delete returns."""
    writing, release = threading.Event(), threading.Event()
    write_batch = tier._write_batch

    def slow_batch(batch):
        writing.set()
        release.wait(10)
        write_batch(batch)

    tier._write_batch = slow_batch
    tier.put("b|x|0", BLOCK)
    assert writing.wait(10)  # taken by the writer, not yet stored
    deleting = threading.Thread(target=tier.delete, args=("b|x|0",))
    deleting.start()
    deleting.join(0.3)
    assert deleting.is_alive()  # waits for the write it cannot stop
    release.set()
    deleting.join(10)
    assert tier.flush(10)
    assert "b|x|0" not in tier and tier.get("b|x|0") is None


def test_a_full_queue_drops_the_write_and_says_it_is_done(tier):
    queue = _Queue(limit=MiB)
    assert queue.add("b|x|0", BLOCK, None, wait=False)
    assert not queue.add("b|x|1", BLOCK, None, wait=False)  # full: the caller drops it
    assert not queue.add("b|x|0", BLOCK, None, wait=False)  # already queued
    assert queue.get("b|x|0") is BLOCK and queue.get("b|x|1") is None
    tier._queue._limit = 0  # the tier with no room: only the first of a burst is queued
    done: list[str] = []
    for key in ("b|x|0", "b|x|1", "b|x|2"):
        tier.put(key, BLOCK, done=lambda key=key: done.append(key))
    assert tier.flush(10)
    assert sorted(done) == ["b|x|0", "b|x|1", "b|x|2"]  # written or dropped, each one is over


def test_the_tier_stays_within_its_size_and_a_key_stored_again_replaces_its_entry(tmp_path):
    tier = DiskTier(str(tmp_path / "cache"), 8 * MiB, max_block=MiB)
    try:
        blocks = {f"b|x|{i}": os.urandom(MiB) for i in range(40)}
        for key, data in blocks.items():  # several batches, each stored in one transaction
            tier.put(key, data)
            tier.record(f"bench/{key}", Seen(MiB, 1, "etag", 1.0))
        assert tier.flush(10)
        files = glob.glob(f"{tier.directory}/**/*.val", recursive=True)
        assert tier._cache.volume() <= 8 * MiB + MiB  # culled as it went: never beyond one block over
        assert len(files) == sum(1 for key in tier._cache.iterkeys() if key.startswith("b|")) <= 9
        assert tier.get("b|x|39") == blocks["b|x|39"] and tier.get("b|x|0") is None  # oldest out first
        again = os.urandom(MiB)
        tier.put("b|x|39", again)
        assert tier.flush(10)
        assert glob.glob(f"{tier.directory}/**/*.val", recursive=True) != files  # the old file is gone
        assert len(glob.glob(f"{tier.directory}/**/*.val", recursive=True)) == len(files)
        tier._index.clear()
        assert tier.get("b|x|39") == again
    finally:
        tier.close()


def test_a_batch_of_blocks_never_takes_the_tier_over_its_size_on_disk(tmp_path):
    """The oldest blocks are culled, and their files removed, before a batch's files are written."""
    tier = DiskTier(str(tmp_path / "cache"), 6 * MiB, max_block=MiB)
    try:
        for i in range(5):
            tier.put(f"b|x|{i}", os.urandom(MiB))
        assert tier.flush(10)
        store, on_disk = tier._cache.disk.store, []

        def store_counting(*args, **kwargs):
            on_disk.append(
                sum(os.path.getsize(f) for f in glob.glob(f"{tier.directory}/**/*.val", recursive=True))
            )
            return store(*args, **kwargs)

        tier._cache.disk.store = store_counting
        tier._write_batch([(f"b|y|{i}", os.urandom(MiB)) for i in range(4)])  # one transaction, as queued
        assert len(on_disk) == 4 and max(on_disk) <= 5 * MiB  # room for the block being written
        assert tier.get("b|y|3") is not None and tier.get("b|x|0") is None
    finally:
        tier.close()


def test_the_index_keeps_the_most_recently_used():
    index = _Index(limit=2)
    for key in "abc":
        index.put(key, _Where(key, 1, _Check.of(1, b"")))
        index.get("a")
    assert index.get("a") is not None and index.get("b") is None and index.get("c") is not None


def test_big_block_files_give_their_pages_back_behind_the_writer_and_small_ones_keep_them(
    tmp_path, monkeypatch
):
    """A big block's file starts its writeback when written and gives its pages back DROP_BEHIND files later
    (the reader has its bytes in the FUSE file's page cache already); a small file's block keeps them."""
    advised: Counter[int] = Counter()
    fadvise = os.posix_fadvise

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        advised[os.fstat(fd).st_ino] += 1
        fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", advise)
    tier = DiskTier(str(tmp_path / "cache"), 256 * MiB, max_block=MiB)
    blocks = {f"b|x|{i}": os.urandom(MiB) for i in range(DROP_BEHIND + 4)}
    small = os.urandom(128 << 10)
    try:
        for key, data in blocks.items():
            tier.put(key, data)
        tier.put("b|small|0", small)
        assert tier.flush(10)
        files = {
            os.stat(path).st_ino: path for path in glob.glob(f"{tier.directory}/**/*.val", recursive=True)
        }
        (small_ino,) = [ino for ino, path in files.items() if os.path.getsize(path) == len(small)]
        assert small_ino not in advised
        assert sorted(advised.values()) == [1] * DROP_BEHIND + [2] * 4  # at its write, and DROP_BEHIND later
        last = [ino for ino, count in advised.items() if count == 1]
        assert not [
            path for path in _open_files() if path.endswith(".val")
        ]  # evicted, it would keep its space
        os.sync()  # the last ones are written now: closing gives their pages back
    finally:
        tier.close()
    assert set(advised.values()) == {2} and len(advised) == len(blocks)
    for ino in [*last, small_ino]:
        fd = os.open(files[ino], os.O_RDONLY)
        try:
            assert resident_bytes(fd, os.fstat(fd).st_size) == (len(small) if ino == small_ino else 0)
        finally:
            os.close(fd)
    reopened = DiskTier(str(tmp_path / "cache"), 256 * MiB, max_block=MiB)
    try:
        assert all(reopened.get(key) == data for key, data in blocks.items())  # read back from the disk
    finally:
        reopened.close()


def _open_files() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # (the listing's own descriptor)
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
    return paths


def test_a_full_tier_drops_only_what_makes_room(tmp_path):
    """Culling stops once the tier is under its limit: dropping a fixed number of blocks each time (16,
    diskcache's way) emptied a small tier at every overflow."""
    tier = DiskTier(str(tmp_path / "cache"), 8 * MiB, max_block=MiB)
    try:
        for i in range(20):
            tier.put(f"b|x|{i}", BLOCK)
            assert tier.flush(10)
        kept = [i for i in range(20) if tier.get(f"b|x|{i}") is not None]
        assert 6 <= len(kept) <= 8 and kept == list(range(20 - len(kept), 20))  # the newest ones
    finally:
        tier.close()
