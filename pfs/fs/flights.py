"""One backend request for many askers: concurrent requests with the same key share one call and its answer.

Without it, N processes stat-ing names of one directory during an outage each wait a whole deadline, and
the kernel, which lets only one lookup of a name run at a time, queues them one after another. A transient
failure is also kept for a moment (`FAILURE_KEPT_S`), so requests the kernel had queued behind the failed
one fail with it instead of each starting a new deadline. Runs on the trio loop; never blocks it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import trio

from pfs.errors import Transient

# Long enough for the requests queued behind a failed one to arrive, short enough that a server back from
# an outage is asked again at once.
FAILURE_KEPT_S = 1.0
MAX_FAILURES_KEPT = 10_000  # beyond this, failures past their moment are dropped


@dataclass(eq=False)
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    answered: bool = False  # False after `done` when the leading request was cancelled
    result: Any = None
    error: BaseException | None = None


class Flights:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._flying: dict[Hashable, _Flight] = {}
        self._failed: dict[Hashable, tuple[float, Transient]] = {}
        self._clock = clock

    async def run(self, key: Hashable, call: Callable[[], Awaitable[Any]]) -> Any:
        """The answer of `call()`, or of the call with the same `key` already under way (its exception
        too); a transient failure of `key` in the last FAILURE_KEPT_S seconds is raised again at once."""
        if len(self._failed) > MAX_FAILURES_KEPT:
            now = self._clock()
            self._failed = {k: v for k, v in self._failed.items() if now - v[0] < FAILURE_KEPT_S}
        while True:
            failed = self._failed.get(key)
            if failed is not None:
                if self._clock() - failed[0] < FAILURE_KEPT_S:
                    raise failed[1]
                del self._failed[key]
            flight = self._flying.get(key)
            if flight is None:
                return await self._lead(key, call)
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.answered:
                return flight.result

    async def _lead(self, key: Hashable, call: Callable[[], Awaitable[Any]]) -> Any:
        self._flying[key] = flight = _Flight()
        try:
            flight.result = await call()
            flight.answered = True
            return flight.result
        except Exception as exc:
            flight.error = exc
            flight.answered = True
            if isinstance(exc, Transient):
                self._failed[key] = (self._clock(), exc)
            raise
        finally:
            if self._flying.get(key) is flight:
                del self._flying[key]
            flight.done.set()
