"""StagedFile over a real file:// backend: appends and partial writes never download the base object."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pfs.backends import BackendOptions, open_backend
from pfs.fs import staging
from pfs.fs.staging import StagedFile
from tests.pagecache import resident_bytes

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

MiB = 1 << 20


@pytest.fixture
def backend(tmp_path):
    (tmp_path / "root").mkdir()
    return open_backend(f"file://{tmp_path}/root", BackendOptions())


@pytest.fixture
def base(backend, tmp_path):
    data = os.urandom(64 * MiB)
    (tmp_path / "root" / "big").write_bytes(data)
    return data


def staged_over(backend, tmp_path, size: int) -> StagedFile:
    (tmp_path / "staging").mkdir(exist_ok=True)
    return StagedFile(str(tmp_path / "staging"), size, lambda: backend.open_reader("big", size))


def allocated_bytes(staged: StagedFile) -> int:
    return os.fstat(staged._fd).st_blocks * 512


def test_append_stages_only_the_new_bytes(backend, base, tmp_path):
    staged = staged_over(backend, tmp_path, len(base))
    staged.write(len(base), b"one more line\n")
    assert staged.size == len(base) + 14
    assert allocated_bytes(staged) <= 64 * 1024  # the sparse staging file holds the line, not the object
    assert staged.read(len(base) - 4, 100) == base[-4:] + b"one more line\n"
    source = staged.source()
    assert b"".join(iter(lambda: source.read(8 * MiB), b"")) == base + b"one more line\n"


def test_overwrite_in_the_middle_and_truncate(backend, base, tmp_path):
    staged = staged_over(backend, tmp_path, len(base))
    staged.write(10 * MiB, b"X" * 100)
    staged.write(10 * MiB + 50, b"Y" * 100)  # overlaps the first write
    staged.truncate(20 * MiB)
    staged.truncate(21 * MiB)  # extended again: zeros, not the old bytes
    expected = base[: 10 * MiB] + b"X" * 50 + b"Y" * 100 + base[10 * MiB + 150 : 20 * MiB] + bytes(MiB)
    assert staged.read(0, 30 * MiB) == expected
    assert staged.size == 21 * MiB


def test_upload_source_can_rewind_for_a_retry(backend, base, tmp_path):
    staged = staged_over(backend, tmp_path, len(base))
    staged.write(0, b"head")
    source = staged.source()
    assert source.read(4) == b"head"
    source.seek(0)
    assert source.read(8) == b"head" + base[4:8]


def in_memory(tmp_path) -> StagedFile:
    (tmp_path / "staging").mkdir(exist_ok=True)
    return StagedFile(str(tmp_path / "staging"), 0, None, in_memory=True)


def test_a_small_new_file_stays_in_memory_without_a_staging_file(tmp_path):
    staged = in_memory(tmp_path)
    data = os.urandom(128 * 1024)
    assert staged.write_in_memory(0, data)
    assert staged.in_memory and staged._fd == -1 and staged.memory_end == len(data)
    assert staged.write_in_memory(len(data) + 10, b"tail")  # past the end: a hole of zeros
    assert staged.read(0, 1 << 20) == data + bytes(10) + b"tail"
    staged.truncate(100)
    staged.truncate(200)  # extended again: zeros, not the old bytes
    assert staged.read(0, 1000) == data[:100] + bytes(100)
    source = staged.source()
    assert source.read() == data[:100] + bytes(100)
    assert os.listdir(tmp_path / "staging") == []
    staged.close()


def test_a_write_that_cannot_stay_in_memory_moves_the_bytes_to_a_staging_file(tmp_path):
    staged = in_memory(tmp_path)
    head = os.urandom(300_000)
    assert staged.write_in_memory(0, head)
    staged.write(len(head), b"more")  # the worker-thread path: spills first
    assert not staged.in_memory and staged._fd >= 0 and staged.memory_end == 0
    assert not staged.write_in_memory(0, b"x")  # in a staging file now: never back to memory
    staged.write(0, b"H")
    assert staged.read(0, 1 << 20) == b"H" + head[1:] + b"more"
    staged.close()


def test_an_in_memory_file_is_persisted_whole_with_its_label(tmp_path):
    staged = in_memory(tmp_path)
    assert staged.write_in_memory(0, b"journal me")
    target = tmp_path / "entry"
    assert staged.persist(str(target), ("user.pfs.test", b"label"))
    assert target.read_bytes() == b"journal me"
    assert os.getxattr(target, "user.pfs.test") == b"label"
    assert staged.write_in_memory(8, b"us!")
    assert staged.persist(str(target), ("user.pfs.test", b"label"))  # made again: nothing links to memory
    assert target.read_bytes() == b"journal us!"
    staged.close()


def test_a_file_over_a_base_object_never_stages_in_memory(backend, base, tmp_path):
    (tmp_path / "staging").mkdir(exist_ok=True)
    staged = StagedFile(
        str(tmp_path / "staging"), len(base), lambda: backend.open_reader("big", len(base)), in_memory=True
    )
    assert not staged.in_memory and not staged.write_in_memory(0, b"x")
    staged.close()


def test_a_writer_waits_for_the_stream_while_it_reads_on(tmp_path, monkeypatch):
    """An append more than STREAM_LEAD ahead of the upload waits for it; once the upload has read nothing
    for STREAM_PATIENCE (a stalled store), the writer goes on."""
    monkeypatch.setattr(staging, "STREAM_LEAD", 2 * MiB)
    monkeypatch.setattr(staging, "STREAM_PATIENCE", 30.0)
    staged = StagedFile(str(tmp_path), 0, None)
    reader = staged.stream()
    assert reader is not None
    block = os.urandom(MiB)
    for i in range(3):
        staged.write(i * MiB, block)
    ahead = threading.Thread(target=staged.write, args=(3 * MiB, block))
    ahead.start()
    ahead.join(0.3)
    assert ahead.is_alive() and staged.size == 3 * MiB  # 3 MiB ahead of a reader that read nothing
    assert reader.read(2 * MiB) == block * 2
    ahead.join(10)
    assert not ahead.is_alive() and staged.size == 4 * MiB
    monkeypatch.setattr(staging, "STREAM_PATIENCE", 0.3)
    started = time.monotonic()
    staged.write(4 * MiB, block)  # 2 MiB ahead: no wait
    staged.write(5 * MiB, block)  # 3 MiB ahead of a reader silent since: waits out its patience
    assert 0.1 < time.monotonic() - started < 5
    assert staged.finish()
    rest = reader.read(8 * MiB)
    assert rest == block * 4 and reader.read(8 * MiB) == b""
    staged.close()


def test_what_the_stream_has_read_leaves_memory_and_stays_readable(tmp_path, monkeypatch):
    """A file uploaded while it is written keeps only the pages the upload has yet to read (plus a window):
    the rest is written to the staging file and dropped from the page cache, and a read or a rewrite of
    it still finds the bytes."""
    monkeypatch.setattr(staging, "SYNC_AHEAD", MiB)
    staged = StagedFile(str(tmp_path), 0, None)
    reader = staged.stream()
    assert reader is not None
    data = os.urandom(32 * MiB)
    uploaded = bytearray()
    buffer = bytearray(MiB)
    for i in range(32):
        staged.write(i * MiB, data[i * MiB : (i + 1) * MiB])
        got = reader.readinto(buffer)
        uploaded += buffer[:got]
    assert uploaded == data
    assert resident_bytes(staged._fd, 32 * MiB) <= 4 * MiB  # the last windows only, not 32 MiB
    assert staged.read(0, 32 * MiB) == data  # from the disk
    staged.write(5 * MiB, b"rewritten")  # inside what was given back: no longer an append
    assert (
        staged.read(5 * MiB - 1, 11)
        == data[5 * MiB - 1 : 5 * MiB] + b"rewritten" + data[5 * MiB + 9 : 5 * MiB + 10]
    )
    assert not staged.finish()  # rewritten: uploaded whole at close, from the staging file
    staged.close()


def test_a_write_back_file_written_alone_leaves_memory_and_persists_whole(tmp_path, monkeypatch):
    """Write-back mode, no upload reading along: the writer itself drops what is on the disk a window
    behind it, so a big file written at the disk's pace holds a few windows of page cache, and its
    journal entry still has every byte."""
    monkeypatch.setattr(staging, "SYNC_AHEAD", MiB)
    staged = StagedFile(str(tmp_path), 0, None, sync_ahead=True)
    data = os.urandom(32 * MiB)
    for i in range(32):
        staged.write(i * MiB, data[i * MiB : (i + 1) * MiB])
    assert resident_bytes(staged._fd, 32 * MiB) <= 4 * MiB  # the last windows only, not 32 MiB
    assert staged.read(0, 32 * MiB) == data  # from the disk
    entry = tmp_path / "entry.data"
    staged.persist(str(entry), ("user.pfs.test", b"label"))
    assert entry.read_bytes() == data
    staged.close()


def test_a_write_back_writer_never_waits_for_its_stream_which_still_reads_every_byte(tmp_path, monkeypatch):
    """Write-back mode uploads a file while it is written too, but its close does not wait for the
    upload, so neither does its writer: it runs ahead of a stream that has read nothing yet (a default-mode
    writer would wait here), gives its pages back behind itself, and the stream then reads every byte from
    the disk and lets go of what it brought back."""
    monkeypatch.setattr(staging, "SYNC_AHEAD", MiB)
    monkeypatch.setattr(staging, "STREAM_LEAD", 2 * MiB)
    monkeypatch.setattr(staging, "STREAM_PATIENCE", 3600.0)
    staged = StagedFile(str(tmp_path), 0, None, sync_ahead=True)
    reader = staged.stream()
    assert reader is not None
    data = os.urandom(32 * MiB)
    writer = threading.Thread(
        target=lambda: [staged.write(i * MiB, data[i * MiB : (i + 1) * MiB]) for i in range(32)], daemon=True
    )
    writer.start()
    writer.join(60)
    assert not writer.is_alive()  # ran 30 MiB ahead of the stream without waiting for it
    assert resident_bytes(staged._fd, 32 * MiB) <= 4 * MiB
    assert staged.finish()
    uploaded = bytearray()
    buffer = bytearray(4 * MiB)
    while got := reader.readinto(buffer):
        uploaded += buffer[:got]
    assert uploaded == data
    assert resident_bytes(staged._fd, 32 * MiB) <= 4 * MiB
    staged.close()
