"""A backend that stops answering: requests fail with EIO within the deadline, nothing partial is published,
and the mount recovers by itself once the server is back."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time

import pyarrow.fs as pafs
import pytest

from pfs import mounter
from pfs.testserver import start_s3_server
from tests.mounting import Mount, run_pfs, timed

TIMEOUT = 3.0
# A failed readahead is retried once by the kernel as a plain read, and each try may use the whole deadline.
BOUND = 2 * TIMEOUT + 5
MiB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_s3_server("rclone", str(tmp_path_factory.mktemp("faults-s3"))) as srv:
        srv.create_bucket("faults")
        yield srv


@pytest.fixture
def raw(server):
    return server.raw_client()


@pytest.fixture
def mount(server, tmp_path):
    env = {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    uri = f"s3://faults?endpoint_override={server.endpoint}&scheme=http"
    m = Mount(uri, str(tmp_path / "m"), env=env, args=("--timeout", str(TIMEOUT))).start()
    try:
        yield m
    finally:
        m.finish()


def outage(server, kind: str):
    if kind == "paused":
        server.pause()
        return server.resume
    server.stop()
    return server.restart


@pytest.mark.parametrize("kind", ["paused", "stopped"])
def test_reads_fail_with_eio_in_bounded_time_then_recover(server, raw, mount, kind):
    data = os.urandom(64 * MiB)
    with raw.open_output_stream(f"faults/read-{kind}") as f:
        f.write(data)
    path = f"{mount.path}/read-{kind}"
    with open(path, "rb") as f:
        assert f.read(MiB) == data[:MiB]
        back = outage(server, kind)
        try:
            code, elapsed = timed(lambda: os.pread(f.fileno(), MiB, 40 * MiB))
            assert code == errno.EIO
            assert elapsed < BOUND
            code, elapsed = timed(lambda: os.stat(f"{mount.path}/never-seen"))
            assert code == errno.EIO
            assert elapsed < BOUND
        finally:
            back()
        assert os.pread(f.fileno(), MiB, 40 * MiB) == data[40 * MiB : 41 * MiB]
    with open(path, "rb") as f:
        assert f.read() == data


def test_killed_daemon_never_publishes_a_partial_object(server, raw, mount):
    data = os.urandom(96 * MiB)
    f = open(f"{mount.path}/crash", "wb")
    f.write(data)

    def close() -> None:
        with contextlib.suppress(OSError):  # the daemon dies under it
            f.close()

    closing = threading.Thread(target=close)
    closing.start()  # close() uploads; kill the daemon while that upload is under way
    time.sleep(0.3)
    os.kill(mount.pid, signal.SIGKILL)
    closing.join(30)
    assert mounter.wait_for_exit(mount.pid, 10)
    info = raw.get_file_info("faults/crash")
    assert info.type == pafs.FileType.NotFound or info.size == len(data)
    assert run_pfs("umount", mount.path).returncode == 0  # clears the dead mount


@pytest.mark.parametrize("kind", ["paused", "stopped"])
def test_writes_fail_with_eio_and_publish_nothing_partial(server, raw, mount, kind):
    name = f"write-{kind}"
    data = os.urandom(24 * MiB)  # several multipart parts
    f = open(f"{mount.path}/{name}", "wb")  # creating a name needs the backend (does it exist?)
    f.write(data[:MiB])
    back = outage(server, kind)
    try:
        f.write(data[MiB:])  # staged locally: no backend needed until close
        code, elapsed = timed(f.close)
        assert code == errno.EIO
        assert elapsed < 2 * BOUND  # flush, then release, each within the deadline
    finally:
        back()
    # The release that follows the failed close may already have retried after the server came back: the
    # object is absent or whole, never partial.
    info = raw.get_file_info(f"faults/{name}")
    assert info.type == pafs.FileType.NotFound or info.size == len(data)
    # The bytes stayed staged: unmounting uploads whatever is still pending.
    mount.stop()
    with raw.open_input_file(f"faults/{name}") as f:
        assert f.read() == data


def test_a_hung_backend_call_does_not_block_other_requests(server, raw, mount):
    with raw.open_output_stream("faults/slow") as f:
        f.write(os.urandom(8 * MiB))
    with open(f"{mount.path}/slow", "rb", buffering=0) as f:
        server.pause()
        try:
            stuck = threading.Thread(target=lambda: timed(lambda: os.pread(f.fileno(), MiB, 4 * MiB)))
            stuck.start()
            time.sleep(0.2)  # the read is now waiting on the paused server
            start = time.monotonic()
            os.statvfs(mount.path)  # answered by the daemon without the backend
            assert time.monotonic() - start < 0.5
            stuck.join(BOUND)
        finally:
            server.resume()


def test_umount_keeps_the_mount_while_pending_writes_cannot_be_uploaded(server, raw, mount):
    f = open(f"{mount.path}/pending", "wb")
    f.write(b"must not be lost")
    f.flush()
    server.pause()
    try:
        result = run_pfs("umount", mount.path)
        assert result.returncode != 0
        assert "not unmounting" in result.stderr
        assert mounter.mount_at(mount.path) is not None
    finally:
        server.resume()
    f.close()
    mount.stop()
    with raw.open_input_file("faults/pending") as g:
        assert g.read() == b"must not be lost"
