"""The inode table alone, in process: which listing of a name is a new version of its file."""

from __future__ import annotations

import pytest

from pfs.backends import Entry, Kind
from pfs.fs.inodes import InodeTable

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

S = 10**9


def test_a_listing_that_could_not_tell_the_time_keeps_the_known_one():
    # `rclone serve s3` lists some times in a form the AWS SDK reads as 0: that is no news of the file.
    table = InodeTable(0)
    inode = table.add("f", Entry("f", Kind.FILE, 3, 7 * S))
    assert table.add("f", Entry("f", Kind.FILE, 3, 0)) is inode and inode.mtime_ns == 7 * S
    table.add("f", Entry("f", Kind.FILE, 4, 0))  # another size: another version
    assert (inode.size, inode.mtime_ns) == (4, 0)


def test_per_version_a_listing_without_a_time_is_the_same_version():
    table = InodeTable(0)
    table.per_version = True
    inode = table.add("f", Entry("f", Kind.FILE, 3, 7 * S + 123_000_000))
    assert table.add("f", Entry("f", Kind.FILE, 3, 7 * S)) is inode  # HEAD's whole second
    assert table.add("f", Entry("f", Kind.FILE, 3, 0)) is inode  # a time not told
    assert table.add("f", Entry("f", Kind.FILE, 3, 8 * S)) is not inode  # a later one: new version
