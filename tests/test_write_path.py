"""The write path's fast routes: a new file written in order is uploaded while it is written (object
stores), anything else falls back to the staged upload at close; never a partial object."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from pfs.mount import control, kernel
from tests.conftest import unique
from tests.mounting import Mount

MiB = 1 << 20


@pytest.fixture
def case(backend_case):
    if not backend_case.object_store:
        pytest.skip("only object stores upload a file while it is written")
    return backend_case.subcase(unique("wp"))


def test_a_sequential_write_is_uploaded_while_written_and_appears_only_at_close(case, tmp_path):
    data = os.urandom(40 * MiB)
    with Mount(case.uri, str(tmp_path / "m"), env=case.env) as m:
        with open(f"{m.path}/seq", "wb") as f:
            for i in range(0, len(data), MiB):
                f.write(data[i : i + MiB])
            f.flush()
            assert not case.raw.exists("seq")  # parts are up, the object is not
        assert case.raw.get("seq") == data
        with open(f"{m.path}/seq", "rb") as f:
            assert f.read() == data
        assert control.stats(m.path).get("uploads_streamed") == 1


def test_what_a_stream_has_uploaded_is_read_and_rewritten_from_the_staging_disk(case, tmp_path):
    """The pages a streamed upload has read leave memory once on the staging disk: reading them back through
    the mount while the file is open, and rewriting one (the file then goes up whole at close), still
    finds every byte."""
    data = bytearray(os.urandom(72 * MiB))
    with Mount(case.uri, str(tmp_path / "m"), env=case.env) as m:
        with open(f"{m.path}/given-back", "w+b") as f:  # one handle: closing a reader would publish
            for i in range(0, len(data), MiB):
                f.write(data[i : i + MiB])
            f.flush()
            f.seek(0)
            assert f.read(32 * MiB) == data[: 32 * MiB]
            f.seek(3 * MiB)
            f.write(b"x" * 4096)
            data[3 * MiB : 3 * MiB + 4096] = b"x" * 4096
        assert case.raw.get("given-back") == bytes(data)
        assert not control.stats(m.path).get("uploads_streamed")


def test_a_write_out_of_order_falls_back_to_the_whole_upload(case, tmp_path):
    data = bytearray(os.urandom(24 * MiB))
    with Mount(case.uri, str(tmp_path / "m"), env=case.env) as m:
        with open(f"{m.path}/rewritten", "wb") as f:
            f.write(data[: 20 * MiB])
            f.flush()
            f.seek(MiB)
            f.write(b"x" * 4096)  # rewrites a range that may already be uploaded
            data[MiB : MiB + 4096] = b"x" * 4096
            f.seek(20 * MiB)
            f.write(data[20 * MiB :])
        assert case.raw.get("rewritten") == bytes(data)
        assert not control.stats(m.path).get("uploads_streamed")


def test_a_rewrite_with_o_trunc_is_streamed_too_and_the_old_version_stays_until_close(case, tmp_path):
    case.raw.put("ckpt", b"the previous checkpoint")
    data = os.urandom(20 * MiB)
    with Mount(case.uri, str(tmp_path / "m"), env=case.env) as m:
        with open(f"{m.path}/ckpt", "wb") as f:
            f.write(data)
            f.flush()
            assert case.raw.get("ckpt") == b"the previous checkpoint"
        assert case.raw.get("ckpt") == data
        assert control.stats(m.path).get("uploads_streamed") == 1


@pytest.mark.parametrize("name", ["old", "new"])
def test_a_daemon_killed_while_a_file_is_streamed_publishes_nothing(case, tmp_path, name):
    case.raw.put("old", b"the good version")
    m = Mount(case.uri, str(tmp_path / "m"), env=case.env).start()
    try:
        f = open(f"{m.path}/{name}", "wb")
        f.write(os.urandom(30 * MiB))
        f.flush()
        os.kill(m.pid, signal.SIGKILL)
        assert kernel.wait_for_exit(m.pid, 10)
    finally:
        m.cleanup()
    assert case.raw.get("old") == b"the good version"
    assert not case.raw.exists("new")


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmHWM:"))


def test_many_big_files_closed_at_once_upload_within_the_memory_budget(case, tmp_path):
    # A checkpoint: eight 24 MiB shards written at once. Each upload holds up to 40 MiB of parts in
    # flight: all eight at once would hold 320 MiB; the budget lets a few go at a time.
    limit = 96 * MiB
    datas = [os.urandom(24 * MiB) for _ in range(8)]
    args = ("-o", f"block_size=1M,memory_limit={limit}")
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=args) as m:
        before = _peak_rss(m.pid)

        def write(i: int) -> None:
            with open(f"{m.path}/shard{i}", "wb") as f:
                for at in range(0, len(datas[i]), MiB):
                    f.write(datas[i][at : at + MiB])

        threads = [threading.Thread(target=write, args=(i,)) for i in range(len(datas))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, data in enumerate(datas):
            assert case.raw.get(f"shard{i}") == data
        stats = control.stats(m.path)
        assert stats["memory_peak"] <= limit
        assert _peak_rss(m.pid) - before < limit + 64 * MiB  # the budget, and the allocator's slack
