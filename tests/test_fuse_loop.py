"""The trio pyfuse3's request loop is given, in process: a pipe stands in for /dev/fuse. Every real mount of
the other suites runs with it installed."""

from __future__ import annotations

import os

import pyfuse3
import pytest
import trio
import trio.testing

from pfs.fs import fuse_loop

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`


@pytest.fixture
def adapted():
    """pyfuse3's trio adapted for a pipe's read end; (that end, its write end)."""
    request, kernel = os.pipe()
    assert fuse_loop.adapt_request_loop(request)
    yield request, kernel
    fuse_loop.uninstall()
    os.close(request)
    os.close(kernel)


def test_a_waiting_request_is_read_at_once_and_an_empty_descriptor_still_waits(adapted):
    request, kernel = adapted
    loop_trio = pyfuse3.trio
    other, other_writer = os.pipe()

    async def main() -> None:
        os.write(kernel, b"x")
        with trio.testing.assert_no_checkpoints():  # no park, no epoll registration
            await loop_trio.lowlevel.wait_readable(request)
        os.read(request, 1)

        async def answer_later() -> None:
            await trio.sleep(0.05)
            os.write(kernel, b"y")

        async with loop_trio.open_nursery() as nursery:
            nursery.start_soon(answer_later)
            with trio.fail_after(5):
                await loop_trio.lowlevel.wait_readable(request)  # nothing queued: trio's own wait
            assert os.read(request, 1) == b"y"

        os.write(other_writer, b"z")  # any other descriptor: trio's own, which always checkpoints
        with trio.testing.assert_checkpoints():
            await loop_trio.lowlevel.wait_readable(other)

    try:
        trio.run(main)
    finally:
        os.close(other)
        os.close(other_writer)


def test_only_pyfuse3_sees_the_adapted_trio_and_uninstall_gives_it_trio_back(adapted):
    assert pyfuse3.trio is not trio and trio.Lock is not fuse_loop._Baton  # trio itself is untouched
    assert pyfuse3.trio.Lock is fuse_loop._Baton
    assert pyfuse3.trio.ClosedResourceError is trio.ClosedResourceError  # the rest is trio's
    assert pyfuse3.trio.lowlevel.current_trio_token is trio.lowlevel.current_trio_token
    fuse_loop.uninstall()
    assert pyfuse3.trio is trio
    assert fuse_loop.fuse_descriptor() is None  # this process has no /dev/fuse open
    assert not fuse_loop.adapt_request_loop()
    assert pyfuse3.trio is trio


def test_the_baton_checkpoints_every_taker_and_passes_in_order():
    baton = fuse_loop._Baton()
    order: list[int] = []

    async def take(n: int, hold: float) -> None:
        async with baton:
            order.append(n)
            await trio.sleep(hold)

    async def main() -> None:
        with trio.testing.assert_checkpoints():  # free: still a checkpoint, so requests take turns
            async with baton:
                pass
        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(take, n, 0.02)
                await trio.testing.wait_all_tasks_blocked()
        assert order == [0, 1, 2, 3]

    trio.run(main)


def test_a_waiter_cancelled_before_its_turn_never_holds_the_baton():
    baton = fuse_loop._Baton()
    held: list[str] = []

    async def take(name: str) -> None:
        async with baton:
            held.append(name)
            await trio.sleep(0.01)

    async def main() -> None:
        waiting = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            await baton.__aenter__()  # held here
            nursery.start_soon(_cancelled_taker, baton, waiting)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(take, "next")
            await trio.testing.wait_all_tasks_blocked()
            waiting.cancel()
            await trio.testing.wait_all_tasks_blocked()
            await baton.__aexit__(None, None, None)
        assert held == ["next"]
        with trio.testing.assert_checkpoints():
            async with baton:  # free again
                pass

    trio.run(main)


async def _cancelled_taker(baton: fuse_loop._Baton, scope: trio.CancelScope) -> None:
    with scope:
        async with baton:
            raise AssertionError("a cancelled waiter took the baton")
