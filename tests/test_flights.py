"""Shared backend requests (pfs.fs.flights), in-process: one call for concurrent askers, failures shared
and kept for a moment, a cancelled leader handing over to a waiter."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pfs.errors import NotFound, Transient
from pfs.fs.flights import FAILURE_KEPT_S, Flights

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`


def test_concurrent_askers_share_one_call_and_its_failure():
    calls = []

    async def main() -> None:
        flights = Flights(clock=trio.current_time)
        answers: list[object] = []

        async def call() -> str:
            calls.append(1)
            await trio.sleep(5)
            raise Transient("stalled")

        async def ask() -> None:
            try:
                answers.append(await flights.run(("stat", "a"), call))
            except Transient as exc:
                answers.append((str(exc), trio.current_time()))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(ask)
        assert answers == [("stalled", 5.0)] * 8
        # Queued behind the failure: fails at once, without a new call.
        with pytest.raises(Transient):
            await flights.run(("stat", "a"), call)
        await trio.sleep(FAILURE_KEPT_S)
        with pytest.raises(Transient):
            await flights.run(("stat", "a"), call)  # asked again once the moment has passed

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(calls) == 2


def test_answers_and_other_errors_are_shared_but_not_kept():
    calls = []

    async def main() -> None:
        flights = Flights(clock=trio.current_time)

        async def call() -> str:
            calls.append(1)
            await trio.sleep(1)
            if len(calls) == 1:
                raise NotFound("a")
            return "entry"

        async def ask_missing() -> None:
            with pytest.raises(NotFound):
                await flights.run("a", call)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_missing)
            nursery.start_soon(ask_missing)
        assert await flights.run("a", call) == "entry"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(calls) == 2


def test_a_waiter_asks_itself_when_the_leader_is_cancelled():
    async def main() -> None:
        flights = Flights(clock=trio.current_time)

        async def call() -> str:
            await trio.sleep(1)
            return "entry"

        async with trio.open_nursery() as nursery:
            leader = trio.CancelScope()

            async def lead() -> None:
                with leader:
                    await flights.run("a", call)

            nursery.start_soon(lead)
            await trio.sleep(0.5)
            leader.cancel()
            assert await flights.run("a", call) == "entry"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
