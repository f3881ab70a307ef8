"""A cache that cannot help never hurts: a full, read-only or corrupt cache directory, or files in it that are
not blocks, leave reads correct and mounts starting, with one warning and one-line messages."""

from __future__ import annotations

import glob
import os
import subprocess

import pytest

from pfs.mount import control
from tests.conftest import s3_case
from tests.mounting import Mount, run_pfs, tmpfs

MiB = 1 << 20
ARGS = ("-o", "block_size=1M,metadata_ttl=1")


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def fill(directory) -> None:
    """Write until the file system holding `directory` has no byte left."""
    with open(directory / "filler", "wb") as f:
        chunk = b"\0" * (256 << 10)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    with open(directory / "filler-tail", "wb", buffering=0) as f:  # the last partial chunk
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


def warnings_about(log: str, what: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and what in line]


def test_a_full_cache_disk_never_fails_a_read_nor_a_mount(request, tmp_path):
    case = s3_case(request)
    files = {f"f{i}": os.urandom(MiB + i) for i in range(4)}
    for name, data in files.items():
        case.raw.put(name, data)
    with tmpfs(tmp_path / "small", "8M") as small:
        cache = str(small / "cache")
        first = Mount(case.uri, str(tmp_path / "m"), env=case.env, cache_dir=cache, args=ARGS)
        with first:
            assert read(f"{first.path}/f0") == files["f0"]
            fill(small)
            assert read(f"{first.path}/f1") == files["f1"]  # a first open records its version: cannot
            assert read(f"{first.path}/f1") == files["f1"]
        assert len(warnings_about(first.log(), f"disk cache {cache}")) == 1
        second = Mount(case.uri, str(tmp_path / "m2"), env=case.env, cache_dir=cache, args=ARGS)
        with second:  # a new mount on the full disk starts and reads
            for name in ("f0", "f2", "f3"):
                assert read(f"{second.path}/{name}") == files[name]
        assert len(warnings_about(second.log(), f"disk cache {cache}")) == 1


@pytest.mark.parametrize("kind", ["symlink to /dev/urandom", "2 GiB sparse file", "fifo"])
def test_cache_files_that_are_not_blocks_are_never_read(tmp_path, kind):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = os.urandom(3 * MiB)
    (data_dir / "f.bin").write_bytes(data)
    m = Mount(f"file://{data_dir}", str(tmp_path / "m"), cache_dir=str(tmp_path / "cache"), args=ARGS)
    with m:
        assert read(f"{m.path}/f.bin") == data
    block = sorted(glob.glob(str(tmp_path / "cache" / "**" / "*.val"), recursive=True))[0]
    os.remove(block)
    if kind.startswith("symlink"):
        os.symlink("/dev/urandom", block)
    elif kind == "fifo":
        os.mkfifo(block)
    else:
        with open(block, "wb") as f:
            f.truncate(2 << 30)
    with m:
        assert read(f"{m.path}/f.bin") == data
        stats = control.stats(m.path)
    assert stats["cache_corrupt_blocks"] == 1 and stats["cache_misses"] == 1
    assert stats["rss_bytes"] < 400 * MiB
    assert len(warnings_about(m.log(), block)) == 1


def test_a_corrupt_cache_database_is_set_aside_with_one_warning(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "f").write_bytes(b"hello")
    cache = tmp_path / "cache"
    m = Mount(f"file://{data_dir}", str(tmp_path / "m"), cache_dir=str(cache), args=ARGS)
    with m:
        assert read(f"{m.path}/f") == b"hello"
    for command in ("info", "clear", "mount"):
        (cache / "cache.db").write_bytes(os.urandom(40000))
        if command == "mount":
            with m:
                assert read(f"{m.path}/f") == b"hello"
            lines = warnings_about(m.log(), str(cache / "cache.db"))
        else:
            result = run_pfs("cache", command, "--cache-dir", str(cache))
            assert result.returncode == 0, result.stderr
            lines = result.stderr.splitlines()
        assert len(lines) == 1 and "set it aside in" in lines[0] and "pfs cache clear" in lines[0]
        assert "Traceback" not in lines[0]
    assert len(glob.glob(str(cache / "broken-*"))) == 1  # the ones before it went with the clear
    assert run_pfs("cache", "clear", "--cache-dir", str(cache)).returncode == 0
    assert glob.glob(str(cache / "broken-*")) == []


def test_a_read_only_cache_directory_is_one_line_and_mounts_without_it(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "f").write_bytes(b"hello")
    cache, frozen = tmp_path / "cache", tmp_path / "frozen"
    with Mount(f"file://{data_dir}", str(tmp_path / "m"), cache_dir=str(cache), args=ARGS) as m:
        read(f"{m.path}/f")
    frozen.mkdir()
    subprocess.run(["mount", "--bind", str(cache), str(frozen)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(frozen)], check=True)
        for command in ("info", "clear"):
            result = run_pfs("cache", command, "--cache-dir", str(frozen))
            assert result.returncode == 1 and "Traceback" not in result.stderr
            assert result.stderr.count("\n") == 1 and str(frozen) in result.stderr
            assert "--cache-dir" in result.stderr
        m = Mount(f"file://{data_dir}", str(tmp_path / "m"), cache_dir=str(frozen), args=ARGS)
        with m:
            assert read(f"{m.path}/f") == b"hello"
        assert len(warnings_about(m.log(), str(frozen))) == 1
    finally:
        subprocess.run(["umount", "-l", str(frozen)], check=True)
