"""Read-only mounts in the kernel's no-open mode: the kernel sends no OPEN, FLUSH or RELEASE after the first
file and keeps every file's pages; each version of a file is its own inode, so a file changed on the backend
is read whole in its new version by the next open after the TTL, and never mixed into a reader of the old.
"""

from __future__ import annotations

import json
import os

from pfs import control
from tests.mounting import Mount, wait_until


def _ops(path: str) -> dict[str, int]:
    return json.loads(os.getxattr(path, control.STATS))["ops"]


def test_a_read_only_mount_serves_epochs_without_opens(tmp_path):
    data = tmp_path / "data"
    for d in range(2):
        (data / f"d{d}").mkdir(parents=True)
        for i in range(10):
            (data / f"d{d}" / f"f{i}").write_bytes(bytes([d * 10 + i]) * (1000 + i))
    with Mount(f"file://{data}", str(tmp_path / "m"), args=("-o", "ro")) as mount:
        assert "kernel no-open mode: on" in mount.log()
        for _ in range(2):  # two epochs
            for d in range(2):
                for i in range(10):
                    with open(os.path.join(mount.path, f"d{d}", f"f{i}"), "rb") as f:
                        assert f.read() == bytes([d * 10 + i]) * (1000 + i)
        ops = _ops(mount.path)
        assert ops.get("open", 0) <= 1 and ops.get("flush", 0) <= 1 and "release" not in ops
        assert ops["read"] >= 20  # every file was read once, by the daemon, in the first epoch


def test_a_changed_file_is_a_new_version_and_an_open_reader_keeps_the_old(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    old = b"A" * (3 << 20)
    (data / "f").write_bytes(old)
    with Mount(f"file://{data}", str(tmp_path / "m"), args=("-o", "ro,metadata_ttl=1")) as mount:
        path = os.path.join(mount.path, "f")
        with open(path, "rb") as before:
            assert before.read(1 << 20) == old[: 1 << 20]
            (data / "f.new").write_bytes(b"B" * (2 << 20))
            os.rename(data / "f.new", data / "f")
            assert wait_until(lambda: os.stat(path).st_size == 2 << 20, timeout=15)
            with open(path, "rb") as after:
                assert after.read() == b"B" * (2 << 20)
            assert before.read() == old[1 << 20 :]  # the old version, whole
