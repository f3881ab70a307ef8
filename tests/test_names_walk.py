"""`NameCache`'s choice between one HEAD per name and one listing, and when to list ahead of a walker;
an inode's mtime read at two precisions. Without a kernel: bookkeeping, and the handlers under trio."""

from __future__ import annotations

import time

import pyfuse3
import pytest
import trio

from pfs.backends import BackendOptions, Entry, Kind, open_backend
from pfs.fs.inodes import Inode
from pfs.fs.names import STATS_BEFORE_LISTING, NameCache
from pfs.fs.operations import Operations
from pfs.options import MountOptions

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`


def test_a_directory_walked_by_path_is_listed_once_its_names_keep_coming():
    names = NameCache(ttl=10.0)
    for i in range(STATS_BEFORE_LISTING):
        assert not names.worth_relisting("d", now=100.0 + i)
        names.stat_ed("d", now=100.0 + i)
    assert names.worth_relisting("d", now=105.0)
    assert not names.worth_relisting("other", now=105.0)
    names.keep("d", {"f": Entry("f", Kind.FILE, 1, 1)}, at=105.0)
    assert not names.worth_relisting("d", now=106.0)  # listed and fresh
    assert names.worth_relisting("d", now=120.0)  # expired small listing: taken again


def test_names_asked_far_apart_stay_single_requests():
    names = NameCache(ttl=1.0)
    for i in range(3 * STATS_BEFORE_LISTING):
        names.stat_ed("d", now=10.0 * i)  # one per TTL: never a walk
        assert not names.worth_relisting("d", now=10.0 * i + 0.5)


def _dirs(*names: str) -> dict[str, Entry]:
    return {n: Entry(n, Kind.DIR) for n in names}


def _files(count: int) -> dict[str, Entry]:
    return {f"f{i}": Entry(f"f{i}", Kind.FILE, 1, 1) for i in range(count)}


def test_a_tree_walked_again_lists_the_next_directory_ahead_once():
    names = NameCache(ttl=10.0)  # "top" itself never listed: its names were asked one by one
    for d in ("top/a", "top/b", "top/b/x", "top/c", "topaz"):
        names.keep(d, _files(3), at=1.0)  # listed by an earlier walk
    again = names.listing("top/a", now=20.0)
    assert again is None  # expired: the walker lists it again ...
    names.keep("top/a", _files(3), at=20.0)
    listed = names.listing("top/a", now=20.5)
    assert listed is not None
    assert names.walk_ahead("top/a", listed, now=20.5) == "top/b"  # ... and the next one goes ahead
    assert names.walk_ahead("top/a", listed, now=20.6) is None  # once per listing
    names.keep("top/b", _files(3), at=21.0)
    listed_b = names.listing("top/b", now=21.5)
    assert listed_b is not None
    assert names.walk_ahead("top/b", listed_b, now=21.5) == "top/c"  # directories only, in name order


def test_no_listing_ahead_where_it_would_be_a_guess_or_a_waste():
    names = NameCache(ttl=10.0)
    names.keep("top/a", _files(1), at=30.0)
    names.keep("top/c", _files(1), at=26.0)  # still young: no need yet
    names.keep("top/d", _files(1), at=1.0)
    listed = names.listing("top/a", now=30.0)
    assert listed is not None
    # top/b was never listed here (its size is unknown): the next one listed before is top/c, listed
    # under half a TTL ago.
    assert names.walk_ahead("top/a", listed, now=30.0) is None
    names.keep("top/b", _files(1), at=30.0)
    listed_b = names.listing("top/b", now=30.0)
    assert listed_b is not None
    assert names.walk_ahead("top/b", listed_b, now=30.0) is None  # top/c again
    names.keep("top/c", _files(1), at=30.0)
    names.keep("top/d", _files(5001), at=1.0)  # too big to list again for a guess
    listed_c = names.listing("top/c", now=30.0)
    assert listed_c is not None
    assert names.walk_ahead("top/c", listed_c, now=30.0) is None
    assert names.walk_ahead("", listed_c, now=30.0) is None  # the root has no next directory


def test_an_object_listed_in_ms_and_stat_ed_in_seconds_keeps_one_mtime_while_its_etag_is_known():
    listed, headed = 1_700_000_000_123_000_000, 1_700_000_000_000_000_000
    inode = Inode(2, "f", Kind.FILE)
    inode.update(Entry("f", Kind.FILE, 100, headed))
    inode.update(Entry("f", Kind.FILE, 100, listed))
    assert inode.mtime_ns == listed  # no ETag known yet: every reading is taken
    inode.etag = "etag-1"  # an open found the version
    inode.update(Entry("f", Kind.FILE, 100, headed))
    assert (inode.mtime_ns, inode.etag) == (listed, "etag-1")  # the same version, read in whole seconds
    inode.update(Entry("f", Kind.FILE, 100, listed + 1_000_000))
    assert (inode.mtime_ns, inode.etag) == (listed + 1_000_000, "")  # two precise times: it changed
    inode.etag = "etag-2"
    inode.update(Entry("f", Kind.FILE, 101, headed))
    assert (inode.size, inode.mtime_ns, inode.etag) == (101, headed, "")  # another size
    inode.etag = "etag-3"
    inode.update(Entry("f", Kind.FILE, 101, headed + 1_000_000_000))
    assert (inode.mtime_ns, inode.etag) == (headed + 1_000_000_000, "")  # another second


def test_a_mount_walking_a_tree_again_lists_the_next_directory_in_the_background(tmp_path):
    """The handlers under trio, no kernel: a lookup in a directory listed again starts the next one's."""
    root = tmp_path / "root"
    for directory in ("a", "b", "c"):
        (root / directory).mkdir(parents=True)
        (root / directory / "f").write_bytes(b"x")
    options = MountOptions(metadata_ttl=0.3, cache_size=0, staging_dir=str(tmp_path / "staging"))
    ops = Operations(open_backend(f"file://{root}", BackendOptions()), options)
    listed: list[str] = []
    list_dir = ops.backend.list_dir
    ops.backend.list_dir = lambda path: listed.append(path) or list_dir(path)  # type: ignore[method-assign]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ops.attach(nursery)
            for directory in ("", "a", "b", "c"):  # an earlier walk listed them all
                await ops._list_backend(directory)
            await trio.sleep(0.35)  # all expired
            listed.clear()
            a = await ops.lookup(pyfuse3.ROOT_INODE, b"a", None)
            assert (await ops.lookup(a.st_ino, b"f", None)).st_size == 1
            with trio.fail_after(5):
                while ops.names.listing("b", time.monotonic()) is None:
                    await trio.sleep(0.01)
            assert listed == ["", "a", "b"]  # b ahead of the walker; c only once b's listing is used
            nursery.cancel_scope.cancel()

    trio.run(main)
