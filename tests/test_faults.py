"""A backend that stops answering: requests fail with EIO within the deadline, nothing partial is published,
and the mount recovers by itself once the server is back."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from subprocess import PIPE

import pyarrow.fs as pafs
import pytest

from pfs.mount import control, kernel
from tests.mounting import Mount, run_pfs, timed, wait_until
from testservers.s3 import start_s3_server

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


def faults_mount(server, path: str, *args: str) -> Mount:
    env = {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    uri = f"s3://faults?endpoint_override={server.endpoint}&scheme=http"
    return Mount(uri, path, env=env, args=("--timeout", str(TIMEOUT), *args))


@pytest.fixture
def mount(server, tmp_path):
    m = faults_mount(server, str(tmp_path / "m")).start()
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


@contextlib.contextmanager
def paused(server):
    server.pause()
    try:
        yield
    finally:
        server.resume()


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
    assert kernel.wait_for_exit(mount.pid, 10)
    info = raw.get_file_info("faults/crash")
    assert info.type == pafs.FileType.NotFound or info.size == len(data)
    assert run_pfs("umount", mount.path).returncode == 0  # clears the dead mount


@pytest.mark.parametrize("size", [64 << 10, 24 * MiB], ids=["one-put", "multipart"])
@pytest.mark.parametrize("kind", ["paused", "stopped"])
def test_writes_fail_with_eio_and_publish_nothing_partial(server, raw, mount, kind, size):
    # A paused server keeps what it was sent and carries it out when it wakes: a whole PUT sent to it
    # would publish the file after its close() failed; a multipart upload is never completed.
    name = f"write-{kind}-{size}"
    data = os.urandom(size)
    f = open(f"{mount.path}/{name}", "wb")  # creating a name needs the backend (does it exist?)
    f.write(data[: size // 2])
    back = outage(server, kind)
    try:
        f.write(data[size // 2 :])  # staged locally: no backend needed until close
        code, elapsed = timed(f.close)
        assert code == errno.EIO
        assert elapsed < 2 * BOUND  # flush, then release, each within the deadline
        if kind == "paused":  # abandoned at the deadline, a one-request upload too: its body never went
            assert elapsed < TIMEOUT + 3
    finally:
        back()
    time.sleep(1)  # room for the server to carry out what it was sent while paused
    # Nothing tries again behind the writer's back (not the release that follows the failed close).
    assert raw.get_file_info(f"faults/{name}").type == pafs.FileType.NotFound
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
        assert kernel.mount_at(mount.path) is not None
    finally:
        server.resume()
    f.close()
    mount.stop()
    with raw.open_input_file("faults/pending") as g:
        assert g.read() == b"must not be lost"


def _read_bytes(pid: int) -> int:
    """Bytes the process has read so far (its staging file, while it uploads)."""
    with open(f"/proc/{pid}/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_a_stalled_upload_fails_close_within_the_timeout_and_is_not_completed_behind_its_back(
    server, raw, mount
):
    data = os.urandom(128 * MiB)
    f = open(f"{mount.path}/stalled", "wb")
    before = _read_bytes(mount.pid)  # the writes coming in, and the staged bytes going out
    result: list[tuple[int | None, float]] = []
    started: list[float] = []

    def write_and_close() -> None:
        for i in range(0, len(data), MiB):  # a new file written in order is uploaded as it is written
            f.write(data[i : i + MiB])
        started.append(time.monotonic())
        result.append(timed(f.close))

    writer = threading.Thread(target=write_and_close)
    writer.start()
    try:
        assert wait_until(lambda: _read_bytes(mount.pid) - before > 96 * MiB, timeout=20, interval=0.005)
        server.pause()  # mid-upload: some parts are on the server, more are on their way
        paused_at = time.monotonic()
        writer.join(60)
        code, elapsed = result[0]
        assert code == errno.EIO
        # What was in flight, then no data moving for TIMEOUT (before: 28 s, whatever the timeout). The
        # close restarts the stall clock (waiting for the writer is no stall of the store), so the bound
        # runs from the close, or from the pause if the close came first: the writes still coming after
        # the pause took 1.1-1.2 s here, and counted in, the bound was met by 0-0.1 s.
        assert started[0] + elapsed - max(started[0], paused_at) < TIMEOUT + 3
    finally:
        server.resume()
    time.sleep(TIMEOUT)  # room for anything still running in the daemon to finish the upload
    assert raw.get_file_info("faults/stalled").type == pafs.FileType.NotFound
    assert control.stats(mount.path)["failed_uploads"] == ["stalled"]
    # The documented default: a failed upload stays staged and unmounting retries it (refusing until that
    # works: the server may still be digesting what it received while it was stopped).
    assert wait_until(lambda: run_pfs("umount", mount.path).returncode == 0, timeout=60, interval=1)
    with raw.open_input_file("faults/stalled") as g:
        assert g.read() == data


def test_umount_names_what_cannot_be_uploaded_and_discard_drops_it(server, raw, mount):
    f = open(f"{mount.path}/doomed", "wb")
    f.write(b"never reaches the server")
    with paused(server):
        assert timed(f.close)[0] == errno.EIO
        refused = run_pfs("umount", mount.path)
        assert refused.returncode == 2
        assert "doomed" in refused.stderr and "--discard" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert control.stats(mount.path)["failed_uploads"] == ["doomed"]
        discarded = run_pfs("umount", "--discard", mount.path)
        assert discarded.returncode == 0, discarded.stderr
        assert "doomed" in discarded.stderr
        assert kernel.mount_at(mount.path) is None
    assert raw.get_file_info("faults/doomed").type == pafs.FileType.NotFound
    assert "doomed: pending upload discarded" in mount.log()


def test_failed_uploads_can_be_dropped_at_once(server, raw, tmp_path):
    with faults_mount(server, str(tmp_path / "drop"), "-o", "failed_uploads=drop") as m:
        with open(f"{m.path}/keep", "wb") as f:
            f.write(b"old")
        f = open(f"{m.path}/keep", "wb")
        f.write(b"new")
        with paused(server):
            assert timed(f.close)[0] == errno.EIO
        assert wait_until(lambda: control.stats(m.path)["pending_uploads"] == 0)
        assert "upload of keep failed, dropped" in m.log()
        with open(f"{m.path}/keep", "rb") as g:
            assert g.read() == b"old"
    with raw.open_input_file("faults/keep") as g:
        assert g.read() == b"old"


def test_concurrent_lookups_during_a_stall_share_one_request_and_fail_together(server, raw, tmp_path):
    """Eight processes stat different names of one directory whose listing has expired, while the server
    is stopped: they wait on one shared request and all fail within one deadline, not one after another."""
    names = [f"f{i}" for i in range(8)]
    for name in names:
        with raw.open_output_stream(f"faults/shared/{name}") as f:
            f.write(b"x")
    env = {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    uri = f"s3://faults?endpoint_override={server.endpoint}&scheme=http"
    timeout = 5
    args = ("--timeout", str(timeout), "--metadata-ttl", "2")
    with Mount(uri, str(tmp_path / "m"), env=env, args=args) as m:
        assert sorted(os.listdir(f"{m.path}/shared")) == names
        time.sleep(2.5)  # the directory's listing and every entry under it have expired
        script = "import os, sys, time\ns = time.monotonic()\ntry:\n    os.stat(sys.argv[1])\n" + (
            "except OSError as e:\n    print(e.errno, time.monotonic() - s)\nelse:\n    print(0, 0)\n"
        )
        server.pause()
        try:
            procs = [
                subprocess.Popen([sys.executable, "-c", script, f"{m.path}/shared/{name}"], stdout=PIPE)
                for name in names
            ]
            results = [p.communicate(timeout=120)[0].split() for p in procs]
        finally:
            server.resume()
    codes = [int(code) for code, _ in results]
    times = sorted(float(took) for _, took in results)
    assert codes == [errno.EIO] * len(names), results
    assert times[-1] < timeout + 4, times  # one deadline for all, not one after another (8 x 3.2 s)
    assert times[-1] - times[0] < 3, times
