"""Writes that cannot complete never publish anything partial, never hang a mount, never leave litter."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from pfs.backends import UploadGuard
from pfs.errors import BackendError
from pfs.mount import control, kernel
from tests.conftest import s3_case, unique
from tests.mounting import Mount, wait_until

MiB = 1 << 20


@pytest.fixture
def case(backend_case):
    return backend_case.subcase(unique("w"))


@pytest.fixture
def small_staging(tmp_path):
    """A staging directory on a file system of 8 MiB."""
    path = tmp_path / "staging"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(path)], check=True)
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_a_full_staging_disk_fails_the_write_and_keeps_the_old_version(case, tmp_path, small_staging):
    case.raw.put("keepme", b"good\n")
    args = ("-o", f"staging_dir={small_staging},metadata_ttl=1")
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=args) as m:
        for name in ("keepme", "fresh"):
            with pytest.raises(OSError) as failed:
                write(f"{m.path}/{name}", os.urandom(20 * MiB))
            assert failed.value.errno == errno.ENOSPC
        assert case.raw.get("keepme") == b"good\n"
        assert not case.raw.exists("fresh")
        assert read(f"{m.path}/keepme") == b"good\n"
        assert sorted(os.listdir(m.path)) == ["keepme"]
        stats = control.stats(m.path)
        assert stats["pending_uploads"] == 0 and stats["staging_failures"] == 2
        write(f"{m.path}/keepme", b"better\n")  # the space was given back
        assert case.raw.get("keepme") == b"better\n"


def test_a_name_that_is_not_utf8_is_refused_and_nothing_stays_pending(case, tmp_path):
    with Mount(case.uri, str(tmp_path / "m"), env=case.env) as m:
        bad = os.fsencode(m.path) + b"/bad\xff\xfe"
        for make in (lambda p: open(p, "wb"), os.mkdir, lambda p: os.symlink("target", p)):
            with pytest.raises(OSError) as refused:
                make(bad)
            assert refused.value.errno == errno.EILSEQ
        write(f"{m.path}/good", b"x")
        with pytest.raises(OSError) as refused:
            os.rename(f"{m.path}/good", bad)
        assert refused.value.errno == errno.EILSEQ
        assert not os.path.lexists(bad)
        assert os.listdir(m.path) == ["good"]
        assert control.stats(m.path)["pending_uploads"] == 0
    # leaving the block runs `pfs umount`, which fails the test if anything is left pending


def test_an_empty_object_typed_as_a_directory_is_a_directory_everywhere(request, tmp_path):
    """Older S3 tools wrote directories as an empty object `odd` of type application/x-directory."""
    case = s3_case(request)
    case.raw.put("odd", b"", content_type="application/x-directory")
    case.raw.put("odd2", b"", content_type="application/x-directory")
    case.raw.put("empty", b"")
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=("-o", "metadata_ttl=1")) as m:
        kinds = {e.name: e.is_dir() for e in os.scandir(m.path)}
        assert kinds == {"odd": True, "odd2": True, "empty": False}
        assert os.path.isdir(f"{m.path}/odd") and os.listdir(f"{m.path}/odd") == []
        with pytest.raises(IsADirectoryError):
            write(f"{m.path}/odd", b"hi")
        with pytest.raises(IsADirectoryError):
            os.unlink(f"{m.path}/odd")
        write(f"{m.path}/odd/inside", b"x")
        os.rename(f"{m.path}/odd", f"{m.path}/moved")
        assert not os.path.exists(f"{m.path}/odd")
        assert os.listdir(f"{m.path}/moved") == ["inside"]
        os.rmdir(f"{m.path}/odd2")
        assert sorted(os.listdir(m.path)) == ["empty", "moved"]
        assert control.stats(m.path)["pending_uploads"] == 0
    left = case.raw.list_keys()
    assert "odd" not in left and "odd2" not in left
    assert case.raw.get("moved/inside") == b"x"


def _tag_of_an_exited_process() -> str:
    code = "from pfs.backends.leftovers import owner_tag; print(owner_tag())"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_leftovers_of_dead_mounts_are_cleared_and_those_of_live_ones_kept(tmp_path):
    root = tmp_path / "root"
    tmp, detached = root / ".pfs" / "tmp", root / ".pfs" / "detached"
    tmp.mkdir(parents=True)
    detached.mkdir()
    (tmp / f"{_tag_of_an_exited_process()}upload.part").write_bytes(b"x" * 1000)
    (tmp / "untagged-old.part").write_bytes(b"x")
    os.utime(tmp / "untagged-old.part", (time.time() - 2 * 86400,) * 2)
    (tmp / "untagged-new.part").write_bytes(b"x")  # may be a live upload of an older pfs
    other_node = "o0badc0de.1.2.3.4-mount-5"  # another machine's mount: it may still read it
    (detached / other_node).write_bytes(b"x")
    uri = f"file://{root}"
    killed = Mount(uri, str(tmp_path / "m")).start()
    try:
        write(f"{killed.path}/held", b"held open")
        held = open(f"{killed.path}/held", "rb")
        os.unlink(f"{killed.path}/held")
        assert len(os.listdir(detached)) == 2
        os.kill(killed.pid, signal.SIGKILL)
        assert kernel.wait_for_exit(killed.pid, 10)
        with contextlib.suppress(OSError):
            held.close()
    finally:
        killed.cleanup()
    with Mount(uri, str(tmp_path / "m")) as m:
        assert wait_until(lambda: sorted(os.listdir(tmp)) == ["untagged-new.part"])
        assert os.listdir(detached) == [other_node]
        assert "removed 1 leftover file(s) of dead mounts (9 bytes)" in m.log()  # the detached one


def test_an_upload_is_either_abandoned_or_committed_never_both():
    waiting_gave_up = UploadGuard()
    waiting_gave_up.progressed()
    assert waiting_gave_up.abandon()
    with pytest.raises(BackendError):
        waiting_gave_up.progressed()  # the uploading thread stops at its next chunk...
    with pytest.raises(BackendError):
        waiting_gave_up.commit()  # ...and can never make its version visible
    completing = UploadGuard()
    completing.commit()
    assert not completing.abandon()  # the caller must wait for the one completion request
    completing.retry()  # that request failed and is tried again from the start: abandonable again
    assert completing.abandon()
