"""`Versions`, the one owner of "which version does this open read", run under trio without a kernel.

Real backends (a file:// directory and the session's SeaweedFS server), a real disk tier in a tmp dir; the
only thing missing is FUSE. Counters (`backend_opens`) show which choices needed a request.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from pfs.backends import Backend, BackendOptions, open_backend
from pfs.cache import BlockCache, CacheConfig, DiskTier
from pfs.counters import Stats
from pfs.errors import Stale
from pfs.fs import versions as versions_module
from pfs.fs.inodes import Inode, InodeTable
from pfs.fs.versions import TRUST_MARGIN_S, Versions, Want
from tests.conftest import s3_case

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`


async def _inline(fn: Callable, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


class Mount:
    """What a mount builds around `Versions`: a backend, a block cache with a disk tier, counters."""

    def __init__(self, backend: Backend, cache_dir: str) -> None:
        self.backend = backend
        self.stats = Stats()
        self.disk = DiskTier(cache_dir, 1 << 30)
        self.cache = BlockCache(CacheConfig(block_size=1 << 20), self.disk, self.stats, _inline, _inline)
        self.replaced: list[int] = []
        self.handoffs = 0  # worker calls `Versions` made
        self.versions = Versions(
            backend,
            self.cache,
            self.stats,
            self._run,
            self._run,
            lambda inode: self.replaced.append(inode.ino),
        )
        self.inodes = InodeTable(root_mtime_ns=0)

    async def _run(self, fn: Callable, *args: Any) -> Any:
        self.handoffs += 1
        return await _inline(fn, *args)

    def inode(self, path: str) -> Inode:
        return self.inodes.add(path, self.backend.stat(path))

    def opens(self) -> int:
        """Requests that looked at an object: a HEAD, or the one GET that brought its first block too."""
        counters = self.stats.snapshot()
        return counters.get("backend_opens", 0) + counters.get("backend_first_reads", 0)

    async def read_all(self, inode: Inode) -> bytes:
        obj, opener = await self.versions.choose(inode)
        return bytes(await self.cache.read(obj, 0, obj.size, opener, None))

    def close(self) -> None:
        self.disk.close()


@pytest.fixture
def local(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    mount = Mount(open_backend(f"file://{root}", BackendOptions()), str(tmp_path / "cache"))
    yield root, mount
    mount.close()


def test_a_local_file_is_stat_ed_on_every_choice_and_a_rewrite_is_a_new_version(local):
    root, mount = local
    (root / "f").write_bytes(b"one")
    inode = mount.inode("f")

    async def main() -> None:
        first, _ = await mount.versions.choose(inode)
        assert await mount.read_all(inode) == b"one"
        (root / "f").write_bytes(b"second")
        os.utime(root / "f", ns=(1, 2))
        second, _ = await mount.versions.choose(inode)  # no TTL in between: the stat is free
        assert second != first and second.size == 6
        assert await mount.read_all(inode) == b"second"

    trio.run(main)
    assert mount.opens() == 2  # one reader per version read, none to choose


def test_a_replaced_object_fails_the_read_and_marks_the_inode(local):
    root, mount = local
    (root / "f").write_bytes(b"aaaa")
    inode = mount.inode("f")

    async def main() -> None:
        obj, opener = await mount.versions.choose(inode)
        (root / "f").write_bytes(b"bbbbbbbb")  # another writer, after the choice
        with pytest.raises(Stale):
            await mount.cache.read(obj, 0, 4, opener, None)

    trio.run(main)
    assert mount.replaced == [inode.ino] and inode.attrs_at == 0.0


def test_idle_kept_readers_are_closed_beyond_the_limit(local, monkeypatch):
    root, mount = local
    monkeypatch.setattr(versions_module, "MAX_IDLE_READERS", 2)
    monkeypatch.setattr(versions_module, "IDLE_S", 0.0)
    for i in range(5):
        (root / f"f{i}").write_bytes(b"x" * (i + 1))
    inodes = [mount.inode(f"f{i}") for i in range(5)]

    async def main() -> None:
        for inode in inodes:  # no release ever comes (the kernel's no-open mode)
            assert await mount.read_all(inode) == b"x" * (inode.size)

    trio.run(main)
    assert len(mount.versions._kept) == 2
    mount.versions.release(inodes[-1])
    assert len(mount.versions._kept) == 1


@pytest.fixture
def s3(request, tmp_path):
    case = s3_case(request)
    backend = open_backend(case.uri, case.options)
    mounts: list[Mount] = []

    def mount() -> Mount:
        m = Mount(backend, str(tmp_path / "cache"))  # every mount of the test shares the disk tier
        mounts.append(m)
        return m

    yield case, mount
    for m in mounts:
        m.close()
    backend.close()


def test_an_object_etag_is_fetched_once_then_trusted_from_memory_and_after_a_remount(s3):
    case, new_mount = s3
    case.raw.put("old", b"settled")
    time.sleep(TRUST_MARGIN_S + 0.2)  # seen well after its modification: no same-second rewrite can hide
    first = new_mount()
    inode = first.inode("old")

    async def twice(mount: Mount, node: Inode) -> None:
        assert await mount.read_all(node) == b"settled"
        await mount.versions.choose(node)

    trio.run(twice, first, inode)
    assert first.opens() == 1  # the GET of the first choice brought the block too; then memory
    first.disk.flush()  # what a daemon's exit does: the book and the block are queued for the disk tier
    again = new_mount()  # a remount on the same node: the book and the block are on disk
    trio.run(twice, again, again.inode("old"))
    assert again.opens() == 0


def test_an_open_asks_the_book_and_the_store_in_one_worker_call(s3):
    case, new_mount = s3
    case.raw.put("old", b"settled")
    time.sleep(TRUST_MARGIN_S + 0.2)
    first = new_mount()
    assert trio.run(first.read_all, first.inode("old")) == b"settled"
    assert (first.handoffs, first.opens()) == (1, 1)  # nothing in the book: the GET in the same call
    first.disk.flush()
    again = new_mount()
    assert trio.run(again.read_all, again.inode("old")) == b"settled"
    assert (again.handoffs, again.opens()) == (1, 0)  # the book's ETag and the block, no request


def test_a_fresh_object_etag_is_not_trusted_across_a_remount(s3):
    case, new_mount = s3
    case.raw.put("new", b"just written")
    first = new_mount()
    trio.run(first.read_all, first.inode("new"))
    again = new_mount()
    assert trio.run(again.read_all, again.inode("new")) == b"just written"
    assert again.opens() == 1  # a same-second rewrite would keep size and mtime: ask again


def test_a_same_size_rewrite_is_read_whole_never_mixed(s3):
    case, new_mount = s3
    case.raw.put("obj", b"A" * 1000)
    mount = new_mount()
    inode = mount.inode("obj")

    async def main() -> None:
        obj, opener = await mount.versions.choose(inode)
        mount.versions.release(inode)  # its reader is gone: the miss opens the object again
        await mount.cache.evict(obj)  # and the block its choice brought is gone too
        case.raw.put("obj", b"B" * 1000)
        with pytest.raises(Stale):
            await mount.cache.read(obj, 0, 1000, opener, None)
        inode.update(mount.backend.stat("obj"))
        inode.etag = ""
        assert await mount.read_all(inode) == b"B" * 1000

    trio.run(main)
    assert mount.replaced == [inode.ino]


def test_a_cold_object_costs_one_get_and_its_later_blocks_check_the_version(s3):
    case, new_mount = s3
    data = os.urandom((1 << 20) + 100)  # two blocks
    case.raw.put("two", data)
    mount = new_mount()
    assert trio.run(mount.read_all, mount.inode("two")) == data
    counters = mount.stats.snapshot()
    assert counters.get("backend_first_reads") == 1  # the version and block 0 in one GET
    assert counters.get("backend_opens") == 1  # block 1: a reader, checked to have that ETag


def _wants(mount: Mount, names: list[str]) -> list[Want]:
    return [Want(n, *(lambda e: (e.size, e.mtime_ns))(mount.backend.stat(n))) for n in names]


async def _ready(mount: Mount, wants: list[Want]) -> list[bool]:
    started = [mount.versions.prefetch(want) for want in wants]
    for ahead in list(mount.versions._ahead.values()):
        await ahead.done.wait()
    return started


def test_files_made_ready_ahead_are_opened_without_another_request(s3):
    case, new_mount = s3
    names = [f"d/f{i}" for i in range(5)]
    for name in names:
        case.raw.put(name, name.encode() * 100)
    mount = new_mount()
    mount.versions._fresh_s = 60.0
    inodes = [mount.inode(name) for name in names]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            mount.versions.attach(nursery)
            assert await _ready(mount, _wants(mount, names)) == [True] * 5
            for name, inode in zip(names, inodes, strict=True):
                assert await mount.read_all(inode) == name.encode() * 100

    trio.run(main)
    counters = mount.stats.snapshot()
    assert mount.opens() == 5 and counters.get("prefetch_files_used") == 5


def test_prefetch_stays_within_the_memory_budget(s3):
    case, new_mount = s3
    names = [f"b/f{i}" for i in range(5)]
    for name in names:
        case.raw.put(name, b"x" * 1000)
    mount = new_mount()
    mount.cache.memory.limit = 4000  # in flight at most 3/4 of it: three files of 1000 bytes

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            mount.versions.attach(nursery)
            assert await _ready(mount, _wants(mount, names)) == [True, True, True, False, False]
        assert mount.cache.memory.reserved == 0  # every prefetch gave its room back

    trio.run(main)


def _small_files(s3, count: int) -> tuple[Mount, list[str], list[Want]]:
    """`count` objects of 1,000 bytes under x/, and a mount that knows them."""
    case, new_mount = s3
    names = [f"x/f{i:02d}" for i in range(count)]
    for name in names:
        case.raw.put(name, b"y" * 1000)
    mount = new_mount()
    return mount, names, _wants(mount, names)


def test_files_made_ready_and_never_opened_are_dropped(s3, monkeypatch):
    monkeypatch.setattr(versions_module, "MAX_AHEAD", 2)
    mount, names, wants = _small_files(s3, 3)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            mount.versions.attach(nursery)
            for want in wants:
                await _ready(mount, [want])

    trio.run(main)
    assert list(mount.versions._ahead) == names[1:]
    assert mount.stats.snapshot().get("prefetch_files_dropped") == 1
    assert mount.cache.memory.cached == 2 * 1000  # the dropped file's block left memory


def test_making_files_ready_stops_paying_once_most_are_dropped_unopened(s3, monkeypatch):
    monkeypatch.setattr(versions_module, "MAX_AHEAD", 2)
    monkeypatch.setattr(versions_module, "AHEAD_SLACK", 2)
    mount, _, wants = _small_files(s3, 12)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            mount.versions.attach(nursery)
            await _ready(mount, wants[:5])  # three dropped unopened
            assert not mount.versions.ahead_pays()
            for want in wants[5:]:  # each opened, as by a reader in order (the two left dropped)
                await _ready(mount, [want])
                await mount.read_all(mount.inode(want.path))
            assert mount.versions.ahead_pays()

    trio.run(main)


def test_a_file_changed_after_it_was_made_ready_is_read_as_it_is_now(s3):
    case, new_mount = s3
    case.raw.put("c", b"old")
    mount = new_mount()
    mount.versions._fresh_s = 60.0

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            mount.versions.attach(nursery)
            await _ready(mount, _wants(mount, ["c"]))
            case.raw.put("c", b"newer")
            assert await mount.read_all(mount.inode("c")) == b"newer"

    trio.run(main)


def _settled(case, names: list[str]) -> list[str]:
    """Store each name's bytes (its name, 100 times), and wait until versions seen now are trusted (seen
    well after their modification)."""
    for name in names:
        case.raw.put(name, name.encode() * 100)
    time.sleep(TRUST_MARGIN_S + 0.2)
    return names


def test_a_file_whose_pages_and_block_left_memory_is_made_ready_from_the_disk_tier(s3):
    """A second pass whose kernel pages were taken (memory pressure): the version is known from memory,
    the block comes back from the disk tier ahead of the open, with no request to the store."""
    case, new_mount = s3
    names = _settled(case, [f"kept/f{i}" for i in range(3)])
    mount = new_mount()
    inodes = [mount.inode(name) for name in names]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            mount.versions.attach(nursery)
            for inode in inodes:  # the first pass: one GET each, block and version to the disk tier
                await mount.read_all(inode)
            mount.disk.flush()
            for inode in inodes:
                mount.cache.memory.discard(mount.versions.object(inode).key(0))
            before = mount.opens()
            assert await _ready(mount, _wants(mount, names)) == [True] * 3
            assert all(mount.versions.object(i).key(0) in mount.cache.memory for i in inodes)
            for name, inode in zip(names, inodes, strict=True):
                assert await mount.read_all(inode) == name.encode() * 100
            assert mount.opens() == before

    trio.run(main)


def test_files_made_ready_together_after_a_remount_cost_one_disk_call_and_no_request(s3):
    """A warm epoch: the versions and first blocks of files started together come from the disk tier in
    one worker call (a thread hand-off per file cost the loop more than the lookups themselves)."""
    case, new_mount = s3
    names = _settled(case, [f"warm/f{i}" for i in range(4)])
    first = new_mount()

    async def read_each(mount: Mount) -> None:
        for name in names:
            assert await mount.read_all(mount.inode(name)) == name.encode() * 100

    trio.run(read_each, first)
    first.disk.flush()
    mount = new_mount()  # a remount: nothing in memory
    mount.versions._fresh_s = 60.0
    calls: list[str] = []

    async def counted(fn: Callable, *args: Any) -> Any:
        calls.append(fn.__name__)
        return await _inline(fn, *args)

    mount.versions._run_disk = counted

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            mount.versions.attach(nursery)
            assert await _ready(mount, _wants(mount, names)) == [True] * 4
            await read_each(mount)

    trio.run(main)
    assert calls == ["_recall_many"]
    counters = mount.stats.snapshot()
    assert mount.opens() == 0
    assert counters.get("prefetch_files_used") == 4 and counters.get("cache_hits_disk") == 4
