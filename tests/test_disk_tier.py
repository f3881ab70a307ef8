"""The disk tier in-process (seconds, no mount): what lies in its directory never makes it read without
bound or raise; a full disk or a broken database only makes it miss."""

from __future__ import annotations

import glob
import logging
import os
import subprocess

import pytest

from pfs.cache.disk import CacheUnavailable, DiskTier, Seen
from tests.test_cache_faults import fill

MiB = 1 << 20
BLOCK = os.urandom(MiB)


@pytest.fixture
def tier(tmp_path):
    disk = DiskTier(str(tmp_path / "cache"), 64 * MiB, max_block=MiB)
    yield disk
    disk.close()


def only_block_file(tier: DiskTier) -> str:
    (path,) = glob.glob(f"{tier.directory}/**/*.val", recursive=True)
    return path


@pytest.mark.parametrize("kind", ["symlink", "sparse", "fifo", "directory", "bigger than a block"])
def test_a_block_file_that_is_not_one_reads_as_a_corrupt_block(tier, kind):
    tier.put("b|x|0", BLOCK)
    path = only_block_file(tier)
    os.remove(path)
    if kind == "symlink":
        os.symlink("/dev/zero", path)
    elif kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(2 << 30)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
    else:
        with open(path, "wb") as f:
            f.write(os.urandom(MiB + 1))
    assert tier.get("b|x|0") is None
    assert tier.corrupt_blocks == 1 and "b|x|0" not in tier
    tier.put("b|x|0", BLOCK)  # and it is stored again
    assert tier.get("b|x|0") == BLOCK


def test_a_linked_directory_on_the_way_is_not_followed(tier, tmp_path):
    tier.put("b|x|0", BLOCK)
    path = only_block_file(tier)
    top = os.path.dirname(os.path.dirname(path))
    os.rename(top, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", top)
    assert tier.get_range("b|x|0", 0, 100) is None
    assert tier.corrupt_blocks == 1


def test_random_reads_check_only_their_chunks(tier):
    tier.put("b|x|0", BLOCK)
    assert tier.get_range("b|x|0", 70_000, 70_100) == BLOCK[70_000:70_100]


def test_a_database_that_is_not_one_is_set_aside(tmp_path, caplog):
    directory = tmp_path / "cache"
    DiskTier(str(directory), 64 * MiB).close()
    (directory / "cache.db").write_bytes(os.urandom(40000))
    with caplog.at_level(logging.WARNING):
        tier = DiskTier(str(directory), 64 * MiB)
    tier.put("b|x|0", BLOCK)
    assert tier.get("b|x|0") == BLOCK
    tier.close()
    (aside,) = glob.glob(f"{directory}/broken-*")
    assert os.path.exists(f"{aside}/cache.db")
    assert [r.message for r in caplog.records if "set it aside" in r.message]


def test_an_unusable_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheUnavailable) as exc:
        DiskTier(str(tmp_path / "file" / "cache"), 64 * MiB)
    assert "\n" not in str(exc.value) and str(tmp_path / "file" / "cache") in str(exc.value)
    assert "--cache-dir" in str(exc.value)


def test_a_full_disk_misses_and_warns_once(tmp_path, caplog):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(small)], check=True)
    try:
        tier = DiskTier(str(small / "cache"), 64 * MiB, max_block=MiB)
        tier.put("b|x|0", BLOCK)
        fill(small)
        with caplog.at_level(logging.WARNING):
            for i in range(3):
                tier.put(f"b|y|{i}", BLOCK)
                tier.record(f"k{i}", Seen(1, 2, "etag" * 100, 3.0))
                assert tier.get(f"b|y|{i}") is None
        assert tier.get("b|x|0") == BLOCK  # what it holds is still read
        tier.close()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(small / "cache") in warnings[0]


def test_the_version_book_is_text_and_never_unpickles(tier):
    seen = Seen(5, 1_700_000_000_123456789, '"etag with spaces"', 1_700_000_003.25)
    tier.record("k", seen)
    assert tier.seen("k") == seen
    tier._cache.set("v|k", (5, 1, "etag", 2.0))  # a pickle, as an older version (or anyone) wrote it
    assert tier.seen("k") is None
    tier._cache.set("v|k", "not a version")
    assert tier.seen("k") is None
