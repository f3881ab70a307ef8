"""Read-only mounts in the kernel's no-open mode: the kernel sends no OPEN, FLUSH or RELEASE after the first
file and keeps every file's pages; each version of a file is its own inode, so a file changed on the backend
is read whole in its new version by the next open after the TTL, and never mixed into a reader of the old.
"""

from __future__ import annotations

import json
import os
import time

from pfs.mount import control
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


def test_names_stay_in_the_kernel_past_the_ttl_and_changes_still_show_within_it(tmp_path):
    data = tmp_path / "data"
    (data / "d").mkdir(parents=True)
    for i in range(6):
        (data / "d" / f"f{i}").write_bytes(bytes([i]) * 1000)
    with Mount(f"file://{data}", str(tmp_path / "m"), args=("-o", "ro,metadata_ttl=1")) as mount:
        paths = [os.path.join(mount.path, "d", f"f{i}") for i in range(6)]

        def epoch() -> list[bytes]:
            out = []
            for path in paths:
                with open(path, "rb") as f:
                    out.append(f.read())
            return out

        assert epoch() == [bytes([i]) * 1000 for i in range(6)]
        looked_up = _ops(mount.path).get("lookup", 0)
        time.sleep(3)  # three TTLs: the kernel still holds every name, and is told nothing changed
        assert epoch() == [bytes([i]) * 1000 for i in range(6)]
        assert _ops(mount.path).get("lookup", 0) == looked_up

        (data / "d" / "f0.new").write_bytes(b"N" * 2000)
        os.rename(data / "d" / "f0.new", data / "d" / "f0")
        (data / "d" / "f1").unlink()
        assert wait_until(lambda: os.stat(paths[0]).st_size == 2000, timeout=15)
        assert wait_until(lambda: not os.path.exists(paths[1]), timeout=15)
        with open(paths[0], "rb") as f:
            assert f.read() == b"N" * 2000
        assert [open(p, "rb").read() for p in paths[2:]] == [bytes([i]) * 1000 for i in range(2, 6)]


def test_closing_a_file_read_on_a_read_write_mount_sends_no_flush_and_a_written_one_still_uploads(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"x" * 5000)
    with Mount(f"file://{data}", str(tmp_path / "m")) as mount:
        path = os.path.join(mount.path, "f")
        before = _ops(mount.path)
        for _ in range(5):
            with open(path, "rb") as f:
                assert f.read() == b"x" * 5000
        after = _ops(mount.path)
        assert after["open"] - before.get("open", 0) == 5
        assert after.get("flush", 0) == before.get("flush", 0)  # FOPEN_NOFLUSH on reads
        with open(path, "r+b") as f:
            f.write(b"y")
        assert _ops(mount.path)["flush"] >= after.get("flush", 0) + 1
        assert (data / "f").read_bytes() == b"y" + b"x" * 4999  # uploaded by close, as before
