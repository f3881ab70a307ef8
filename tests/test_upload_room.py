"""The uploads' share of a mount's memory budget, under trio without a kernel (pfs/fs/writeback.py)."""

from __future__ import annotations

import pytest
import trio

from pfs.backends import BackendOptions, open_backend
from pfs.cache.memory import MemoryTier
from pfs.counters import Stats
from pfs.fs.writeback import UPLOAD_SHARE, WriteBack

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

MiB = 1 << 20


def writeback(tmp_path, memory: MemoryTier) -> WriteBack:
    (tmp_path / "root").mkdir()
    (tmp_path / "staging").mkdir()
    backend = open_backend(f"file://{tmp_path}/root", BackendOptions())

    async def run(fn, *args, **kwargs):
        return fn(*args)

    return WriteBack(
        backend, lambda inode: backend, str(tmp_path / "staging"), run, Stats(),
        lambda inode: None, lambda inode, entry: None, memory=memory,
    )  # fmt: skip


def test_closed_uploads_wait_for_room_and_one_always_goes(tmp_path):
    memory = MemoryTier(100 * MiB)
    wb = writeback(tmp_path, memory)
    running, most = 0, 0

    async def upload(nbytes: int) -> None:
        nonlocal running, most
        async with wb._upload_room(nbytes):
            running += 1
            most = max(most, running)
            assert memory.reserved <= max(memory.limit * UPLOAD_SHARE, nbytes)
            await trio.sleep(0.01)
            running -= 1

    async def main() -> None:
        nonlocal most
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(upload, 20 * MiB)  # two fit in the share
        assert (most, memory.reserved) == (2, 0)
        most = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload, 80 * MiB)  # more than the share: goes alone
            nursery.start_soon(upload, 80 * MiB)
        assert (most, memory.reserved) == (1, 0)

    trio.run(main)


def test_cached_blocks_make_way_for_an_upload(tmp_path):
    memory = MemoryTier(100 * MiB)
    for i in range(10):
        memory.put(f"block{i}", bytes(10 * MiB))
    wb = writeback(tmp_path, memory)

    async def main() -> None:
        async with wb._upload_room(40 * MiB):
            assert memory.used <= memory.limit
            assert memory.reserved == 40 * MiB
        assert memory.reserved == 0

    trio.run(main)


def test_a_file_still_written_does_not_hold_up_a_closed_one(tmp_path):
    memory = MemoryTier(100 * MiB)
    wb = writeback(tmp_path, memory)
    memory.reserve(50 * MiB)  # a stream's parts: its writer may write for hours

    async def main() -> None:
        with trio.fail_after(5):
            async with wb._upload_room(40 * MiB):
                pass

    trio.run(main)
