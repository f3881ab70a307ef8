"""Write-back mode (`-o writeback`): close returns once the bytes are durable in staging, the upload
follows, and a daemon killed with uploads pending loses nothing it acknowledged."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest

from pfs.mount import control, kernel
from tests.conftest import LocalRaw, unique
from tests.mounting import Mount, wait_until

MiB = 1 << 20
# Small files (one PUT each), one that spans several parts, an empty one.
SIZES = [0, 1, 4096, 128 << 10, 3 * MiB, 12 * MiB]


@pytest.fixture
def case(backend_case):
    if backend_case.name == "hdfs":
        pytest.skip("covered on file:// and s3://")
    return backend_case.subcase(unique("wb"))


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def contents() -> dict[str, bytes]:
    return {f"d/f{i}-{size}": os.urandom(size) for i, size in enumerate(SIZES * 3)}


def test_close_returns_before_the_upload_and_fsync_waits_for_it(case, tmp_path):
    args = ("-o", f"writeback,staging_dir={tmp_path / 'staging'}")
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=args) as m:
        os.mkdir(f"{m.path}/d")
        files = contents()
        for rel, data in files.items():
            write(f"{m.path}/{rel}", data)
        assert sorted(os.listdir(f"{m.path}/d")) == sorted(rel[2:] for rel in files)
        for rel, data in files.items():  # this mount reads its own closed files at once
            with open(f"{m.path}/{rel}", "rb") as f:
                assert f.read() == data
        with open(f"{m.path}/d/synced", "wb") as f:
            f.write(b"synced")
            f.flush()
            os.fsync(f.fileno())  # waits for the upload
            assert case.raw.get("d/synced") == b"synced"
        assert wait_until(lambda: control.stats(m.path)["pending_writeback_files"] == 0, 60)
        for rel, data in files.items():
            assert case.raw.get(rel) == data
        assert os.listdir(tmp_path / "staging" / "journal") == []


def test_a_big_file_written_alone_goes_up_while_it_is_written(case, tmp_path):
    if not case.object_store:
        pytest.skip("only object stores upload a file while it is written")
    args = ("-o", f"writeback,staging_dir={tmp_path / 'staging'}")
    data = os.urandom(24 * MiB)
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=args) as m:
        write(f"{m.path}/ckpt", data)
        # Counted once the upload that ran while it was written completed (the close did not wait).
        assert wait_until(lambda: control.stats(m.path).get("uploads_streamed") == 1, 60)
        assert case.raw.get("ckpt") == data


def test_unmount_waits_for_the_write_back_queue(case, tmp_path):
    args = ("-o", f"writeback,staging_dir={tmp_path / 'staging'}")
    files = contents()
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=args) as m:
        os.mkdir(f"{m.path}/d")
        for rel, data in files.items():
            write(f"{m.path}/{rel}", data)
    for rel, data in files.items():
        assert case.raw.get(rel) == data


@contextlib.contextmanager
def uploads_held(case, tmp_path):
    """Uploads that cannot complete while inside: the S3 server frozen, or file://'s disk full."""
    if case.object_store:
        server = case.raw.server
        server.pause()
        try:
            yield
        finally:
            server.resume()
        return
    filler = os.path.join(case.raw.root, "filler")
    subprocess.run(["fallocate", "-l", str(_free_bytes(case.raw.root) - 256 * 1024), filler], check=True)
    try:
        yield
    finally:
        os.unlink(filler)


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_root(case, tmp_path):
    """file://: the backend's root on a 64 MiB file system, so that uploads can be made to fail."""
    if case.object_store:
        yield case
        return
    root = tmp_path / "small-root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", str(root)], check=True)
    try:
        yield type(case)(case.name, f"file://{root}", case.options, raw=LocalRaw(str(root)))
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


def assert_replayed(case, tmp_path, staging, files: dict[str, bytes]) -> None:
    """The next mount of the same backend with the same staging directory uploads every file a dead mount
    acknowledged before it serves, and its journal is empty after."""
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=("-o", f"staging_dir={staging}")) as m2:
        for rel, data in files.items():
            assert case.raw.get(rel) == data
            with open(f"{m2.path}/{rel}", "rb") as f:
                assert f.read() == data
        assert "of dead mounts uploaded" in m2.log()
    assert os.listdir(staging / "journal") == []


@contextlib.contextmanager
def written_while_held(case, tmp_path, staging, files: dict[str, bytes], timeout: int):
    """A write-back mount (`--timeout timeout`) with `files` written and acknowledged while its store
    cannot take uploads (they stay held inside); unmounted after."""
    args = ("-o", f"writeback,staging_dir={staging},metadata_ttl=600", "--timeout", str(timeout))
    m = Mount(case.uri, str(tmp_path / "m"), env=case.env, args=args).start()
    try:
        os.mkdir(f"{m.path}/d")
        os.listdir(f"{m.path}/d")  # names are then known missing without asking the store
        with uploads_held(case, tmp_path):
            for rel, data in files.items():
                write(f"{m.path}/{rel}", data)  # acknowledged: durable in staging
            yield m
    finally:
        m.cleanup()


def test_a_killed_daemon_loses_no_acknowledged_file(small_root, tmp_path):
    case = small_root
    staging = tmp_path / "staging"
    files = contents()
    with written_while_held(case, tmp_path, staging, files, timeout=600) as m:
        pending = control.stats(m.path)["pending_uploads"]  # queued, or failed and kept
        assert pending > 0
        os.kill(m.pid, signal.SIGKILL)
        assert kernel.wait_for_exit(m.pid, 10)
    assert os.listdir(staging / "journal")
    assert_replayed(case, tmp_path, staging, files)


def test_a_killed_daemon_never_replays_what_was_deleted_or_never_closed(case, tmp_path):
    staging = tmp_path / "staging"
    args = ("-o", f"writeback,staging_dir={staging}")
    m = Mount(case.uri, str(tmp_path / "m"), env=case.env, args=args).start()
    try:
        write(f"{m.path}/gone", b"deleted before its upload")
        os.unlink(f"{m.path}/gone")
        with open(f"{m.path}/open", "wb") as f:
            f.write(b"never closed")
            os.kill(m.pid, signal.SIGKILL)
            assert kernel.wait_for_exit(m.pid, 10)
            with contextlib.suppress(OSError):
                f.close()
    finally:
        m.cleanup()
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=("-o", f"staging_dir={staging}")):
        assert not case.raw.exists("gone")
        assert not case.raw.exists("open")
    assert os.listdir(staging / "journal") == []


def test_a_signal_with_files_pending_on_a_dead_store_ends_within_one_timeout(case, tmp_path):
    """SIGTERM uploads what is pending before the daemon ends, but a store that stopped answering is given
    up on after one file's timeout, not one per file; the next mount still uploads every file acknowledged."""
    if not case.object_store:
        pytest.skip("a full file:// backend refuses at once: nothing to wait for")
    staging = tmp_path / "staging"
    files = {f"d/f{i}": os.urandom(4096) for i in range(16)}
    with written_while_held(case, tmp_path, staging, files, timeout=2) as m:
        started = time.monotonic()
        os.kill(m.pid, signal.SIGTERM)
        assert kernel.wait_for_exit(m.pid, 120)
        waited = time.monotonic() - started
    assert waited < 15, f"{waited:.1f} s: one timeout per pending file"  # 16 files x 2 s before
    assert_replayed(case, tmp_path, staging, files)
