"""The mount's worker threads (pfs/fs/workers.py), in-process under trio: results, errors, cancellation
and the thread limit."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from pfs.fs import workers
from pfs.fs.workers import Workers

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`


def test_results_and_errors_come_back_to_the_caller() -> None:
    pool = Workers(2, "test")

    def fail() -> None:
        raise ValueError("from the thread")

    async def main() -> None:
        assert await pool.run(lambda a, b: (a + b, threading.current_thread().name), 1, 2) == (3, "test-1")
        with pytest.raises(ValueError, match="from the thread"):
            await pool.run(fail)

    trio.run(main)


def test_no_more_calls_run_at_once_than_threads() -> None:
    pool = Workers(3, "test")
    running, most = 0, 0
    lock = threading.Lock()

    def call() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(pool.run, call)

    trio.run(main)
    assert most == 3
    assert pool.threads <= 3


def test_a_queued_call_whose_caller_is_cancelled_never_runs() -> None:
    pool = Workers(1, "test")
    release, ran = threading.Event(), []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, release.wait)  # holds the only thread
            await trio.sleep(0.05)
            with trio.move_on_after(0.05) as scope:
                await pool.run(ran.append, "queued")
            assert scope.cancelled_caught
            release.set()
        assert await pool.run(lambda: "next") == "next"  # the thread serves the next call, not the dropped

    trio.run(main)
    assert ran == []


def test_a_running_call_is_waited_for_unless_the_caller_may_abandon_it() -> None:
    pool = Workers(2, "test")
    finished = []

    def slow(name: str) -> None:
        time.sleep(0.3)
        finished.append(name)

    async def main() -> None:
        started = trio.current_time()
        with trio.move_on_after(0.05):
            await pool.run(slow, "waited")
        assert finished == ["waited"]  # its effect is known to the caller when cancellation reaches it
        assert trio.current_time() - started >= 0.3

        started = trio.current_time()
        with trio.move_on_after(0.05):
            await pool.run(slow, "abandoned", cancellable=True)
        assert trio.current_time() - started < 0.25
        assert finished == ["waited"]
        await trio.sleep(0.4)
        assert finished == ["waited", "abandoned"]  # the thread finished on its own

    trio.run(main)


def test_idle_threads_end_and_new_ones_start_when_work_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "IDLE_S", 0.05)
    pool = Workers(4, "test")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(pool.run, time.sleep, 0.05)
        assert pool.threads == 4
        await trio.sleep(0.3)
        assert pool.threads == 0
        assert await pool.run(lambda: 7) == 7
        assert pool.threads == 1

    trio.run(main)


def test_calls_from_another_trio_run_are_served_by_the_same_threads() -> None:
    pool = Workers(1, "test")

    async def main() -> int:
        return await pool.run(lambda: 1)

    assert trio.run(main) + trio.run(main) == 2
