"""Small new files are staged in memory (no staging file, no worker thread per write), within the mount's
memory budget; a write that cannot stay there moves the file to a staging file. Real mounts, real stores."""

from __future__ import annotations

import errno
import os
import time

import pytest

from pfs.mount import control
from tests.conftest import unique
from tests.mounting import Mount, wait_until

KiB, MiB = 1 << 10, 1 << 20
MEMORY_STAGED_MAX = MiB  # pfs.fs.writeback.MEMORY_STAGED_MAX


@pytest.fixture
def case(backend_case):
    return backend_case.subcase(unique("mem"))


def in_memory(path: str) -> int:
    return control.stats(path)["memory_staged_bytes"]


def test_a_small_file_is_whole_right_after_close_and_reads_back_while_open(case, tmp_path):
    data = os.urandom(128 * KiB)
    with Mount(case.uri, str(tmp_path / "m"), env=case.env) as m:
        with open(f"{m.path}/small", "wb+") as f:
            f.write(data[:100])
            f.flush()
            f.write(data[100:])
            f.flush()
            assert in_memory(m.path) == len(data)
            f.seek(0)
            assert f.read() == data  # served from memory
        assert in_memory(m.path) == 0
        assert case.raw.get("small") == data  # on the store once close returned
        with open(f"{m.path}/small", "rb") as f:
            assert f.read() == data
        with open(f"{m.path}/empty", "wb"):
            pass
        assert case.raw.get("empty") == b""
        os.truncate(f"{m.path}/small", 0)  # a truncate to nothing stages nothing of the old content
        assert case.raw.get("small") == b""
        assert control.stats(m.path)["pending_uploads"] == 0


def test_a_file_growing_past_the_threshold_moves_to_a_staging_file(case, tmp_path):
    data = os.urandom(3 * MEMORY_STAGED_MAX)
    chunk = 128 * KiB
    with Mount(case.uri, str(tmp_path / "m"), env=case.env) as m:
        with open(f"{m.path}/grows", "wb") as f:
            for i in range(0, MEMORY_STAGED_MAX, chunk):
                f.write(data[i : i + chunk])
                f.flush()
            assert in_memory(m.path) == MEMORY_STAGED_MAX
            for i in range(MEMORY_STAGED_MAX, len(data), chunk):
                f.write(data[i : i + chunk])
                f.flush()
            assert in_memory(m.path) == 0  # moved: memory is free again
            f.seek(100)
            f.write(b"rewritten")  # out of order, in the staging file now
        expected = data[:100] + b"rewritten" + data[109:]
        assert in_memory(m.path) == 0
        assert case.raw.get("grows") == expected
        with open(f"{m.path}/grows", "rb") as f:
            assert f.read() == expected


def test_files_staged_in_memory_stay_within_the_memory_budget(case, tmp_path):
    # A 4 MiB budget: staged bytes may take half of it; the other files go to staging files.
    args = ("-o", "block_size=1M,memory_limit=4M")
    datas = [os.urandom(512 * KiB + i) for i in range(8)]
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=args) as m:
        files = [open(f"{m.path}/f{i}", "wb") for i in range(len(datas))]
        try:
            for f, data in zip(files, datas, strict=True):
                f.write(data)
                f.flush()
                assert in_memory(m.path) <= 2 * MiB
            assert in_memory(m.path) > 0
        finally:
            for f in files:
                f.close()
        assert in_memory(m.path) == 0
        for i, data in enumerate(datas):
            assert case.raw.get(f"f{i}") == data
            with open(f"{m.path}/f{i}", "rb") as f:
                assert f.read() == data


def test_a_failed_upload_of_a_file_in_memory_fails_close_and_leaves_no_object(request, case, tmp_path):
    if not case.object_store:
        pytest.skip("the store is paused to make the upload fail")
    server = request.getfixturevalue("s3_server")
    args = ("-o", "failed_uploads=drop", "--timeout", "3")
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=args) as m:
        with open(f"{m.path}/first", "wb") as f:  # the store has just answered
            f.write(b"stored")
        f = open(f"{m.path}/doomed", "wb")
        f.write(b"never stored")
        server.pause()
        try:
            with pytest.raises(OSError) as failed:
                f.close()
            assert failed.value.errno == errno.EIO
        finally:
            server.resume()
        # The release that drops the bytes follows close() (the kernel does not wait for it).
        assert wait_until(lambda: control.stats(m.path)["pending_uploads"] == 0)
        assert wait_until(lambda: not os.path.exists(f"{m.path}/doomed"))
        assert in_memory(m.path) == 0
        time.sleep(2)  # room for the server, awake again, to finish anything it had received
    assert not case.raw.exists("doomed")  # found out before its PUT: never sent
    assert case.raw.get("first") == b"stored"
