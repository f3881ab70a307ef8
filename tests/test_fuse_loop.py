"""The request loop's shortcut past epoll, in process: a pipe stands in for /dev/fuse. Every real mount of
the other suites runs with it installed."""

from __future__ import annotations

import os

import trio
import trio.testing

from pfs.fs import fuse_loop


def _pipes() -> tuple[tuple[int, int], tuple[int, int]]:
    return os.pipe(), os.pipe()


def test_a_waiting_request_is_read_at_once_and_an_empty_descriptor_still_waits():
    (request, kernel), (other, other_writer) = _pipes()
    assert fuse_loop.read_queued_requests_at_once(request)
    try:

        async def main() -> None:
            os.write(kernel, b"x")
            with trio.testing.assert_no_checkpoints():  # no park, no epoll registration
                await trio.lowlevel.wait_readable(request)
            os.read(request, 1)

            async def answer_later() -> None:
                await trio.sleep(0.05)
                os.write(kernel, b"y")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_later)
                with trio.fail_after(5):
                    await trio.lowlevel.wait_readable(request)  # nothing queued: trio's own wait
                assert os.read(request, 1) == b"y"

            os.write(other_writer, b"z")  # any other descriptor: trio's own, which always checkpoints
            with trio.testing.assert_checkpoints():
                await trio.lowlevel.wait_readable(other)

        trio.run(main)
    finally:
        fuse_loop.uninstall()
        for fd in (request, kernel, other, other_writer):
            os.close(fd)


def test_uninstall_puts_trios_own_back_and_no_fuse_descriptor_installs_nothing():
    own = trio.lowlevel.wait_readable
    request, kernel = os.pipe()
    try:
        fuse_loop.read_queued_requests_at_once(request)
        assert trio.lowlevel.wait_readable is not own
        fuse_loop.uninstall()
        assert trio.lowlevel.wait_readable is own
        assert fuse_loop.fuse_descriptor() is None  # this process has no /dev/fuse open
        assert not fuse_loop.read_queued_requests_at_once()
        assert trio.lowlevel.wait_readable is own
    finally:
        os.close(request)
        os.close(kernel)
