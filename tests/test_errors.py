"""Concurrent work fails with the error itself, not trio's ExceptionGroup around it: callers map it to
errno and print it as one line (pfs/errors.py `ungrouped`). In-process, under trio without a kernel."""

from __future__ import annotations

import errno

import pytest
import trio

from pfs.backends import BackendOptions, open_backend
from pfs.cache import BlockCache, CacheConfig, DiskTier
from pfs.counters import Stats
from pfs.errors import NotFound, Transient, errno_of, ungrouped

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`


async def _fail(exc: Exception) -> None:
    await trio.lowlevel.checkpoint()
    raise exc


def test_a_nursery_s_one_failure_is_raised_as_itself():
    async def main() -> None:
        with ungrouped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_fail, NotFound("gone"))
                nursery.start_soon(trio.sleep, 0)

    with pytest.raises(NotFound, match="gone") as raised:
        trio.run(main)
    assert errno_of(raised.value) == errno.ENOENT


def test_a_failure_is_raised_rather_than_the_cancellations_it_caused():
    async def main() -> None:
        with ungrouped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(_fail, Transient("no answer"))

    with pytest.raises(Transient, match="no answer"):
        trio.run(main)


def test_warming_a_file_gone_from_the_backend_fails_with_not_found(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    backend = open_backend(f"file://{root}", BackendOptions())
    disk = DiskTier(str(tmp_path / "cache"), 1 << 30)

    async def in_thread(fn, *args):
        return await trio.to_thread.run_sync(fn, *args)

    config = CacheConfig(block_size=1 << 20, fetch_blocks=1)  # a task per block: three fail at once
    cache = BlockCache(config, disk, Stats(), in_thread, in_thread)
    obj = cache.object(backend.id, "gone", "v1", 3 << 20)

    async def opener():
        return await in_thread(backend.open_reader, "gone", obj.size)

    try:
        with pytest.raises(NotFound):
            trio.run(cache.warm, obj, opener)
    finally:
        disk.close()
        backend.close()
