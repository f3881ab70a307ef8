"""HDFS that stops answering: the DataNode, then the NameNode, frozen with SIGSTOP during reads and writes.

libhdfs may wait inside Java for a long time (or for ever) on a frozen daemon; the mount must still answer
EIO within its deadline, publish nothing partial, and work again once the daemon runs again. The daemons are
the test cluster's own (started by scripts/hdfs.sh, pids in $PFS_HDFS_STATE/hdfs.pids); every stop is
undone in a `finally`.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator

import pytest

from tests.conftest import HDFS_URI_ENV, HdfsRaw, unique
from tests.mounting import Mount, timed

TIMEOUT = 3.0
# As in test_faults.py: a failed readahead is retried once by the kernel as a plain read.
BOUND = 2 * TIMEOUT + 5
MiB = 1 << 20
STATE_ENV = "PFS_HDFS_STATE"


def _daemon_pids() -> dict[str, int]:
    state = os.environ.get(STATE_ENV, "")
    pids: dict[str, int] = {}
    try:
        with open(os.path.join(state, "hdfs.pids")) as f:
            for line in f:
                pid, _, name = line.strip().partition(" ")
                if pid.isdigit():
                    pids[name] = int(pid)
    except OSError:
        pass
    return pids


pytestmark = pytest.mark.skipif(
    not os.environ.get(HDFS_URI_ENV) or {"namenode", "datanode"} - set(_daemon_pids()),
    reason=f"needs the HDFS test cluster of scripts/hdfs.sh ({HDFS_URI_ENV} and {STATE_ENV}/hdfs.pids)",
)


class Frozen:
    """SIGSTOP one HDFS daemon for the duration of a `with` block; SIGCONT whatever happens."""

    def __init__(self, name: str) -> None:
        self.pid = _daemon_pids()[name]

    def __enter__(self) -> Frozen:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


@pytest.fixture
def raw() -> HdfsRaw:
    store = HdfsRaw(f"{os.environ[HDFS_URI_ENV].rstrip('/')}/{unique('faults')}")
    store.make_root()
    return store


@pytest.fixture
def mount(raw: HdfsRaw, tmp_path) -> Iterator[Mount]:
    passed = ("JAVA_HOME", "ARROW_LIBHDFS_DIR", "CLASSPATH", "LD_LIBRARY_PATH")
    env = {name: os.environ[name] for name in passed if name in os.environ}
    m = Mount(raw.uri, str(tmp_path / "m"), env=env, args=("--timeout", str(TIMEOUT))).start()
    try:
        yield m
    finally:
        m.finish()


@pytest.mark.parametrize("daemon", ["datanode", "namenode"])
def test_reads_fail_with_eio_in_bounded_time_then_recover(raw, mount, daemon):
    data = os.urandom(64 * MiB)
    raw.put("read", data)
    path = f"{mount.path}/read"
    with open(path, "rb") as f:
        assert f.read(MiB) == data[:MiB]
        with Frozen(daemon):
            code, elapsed = timed(lambda: os.pread(f.fileno(), MiB, 40 * MiB))
            assert elapsed < BOUND
            # An open HDFS file knows where its blocks are: without the NameNode, reads may still succeed.
            assert code == errno.EIO or (daemon == "namenode" and code is None)
            if daemon == "namenode":
                code, elapsed = timed(lambda: os.stat(f"{mount.path}/never-seen"))
                assert (code, elapsed < BOUND) == (errno.EIO, True)
        assert os.pread(f.fileno(), MiB, 40 * MiB) == data[40 * MiB : 41 * MiB]
    with open(path, "rb") as f:
        assert f.read() == data


@pytest.mark.parametrize("daemon", ["datanode", "namenode"])
def test_writes_fail_with_eio_and_publish_nothing_partial(raw, mount, daemon):
    data = os.urandom(24 * MiB)
    f = open(f"{mount.path}/write", "wb")  # creating a name asks the NameNode: before the freeze
    f.write(data[:MiB])
    with Frozen(daemon):
        f.write(data[MiB:])  # staged locally: HDFS is needed only at close
        code, elapsed = timed(f.close)
        assert code == errno.EIO
        assert elapsed < 2 * BOUND  # flush, then release, each within the deadline
    # An upload abandoned during the freeze may finish once the daemon runs again: whole, or not at all.
    if raw.exists("write"):
        assert raw.get("write") == data
    # The bytes stayed staged: unmounting uploads whatever is still pending.
    mount.stop()
    assert raw.get("write") == data
