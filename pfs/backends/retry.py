"""The one retry loop of the backends: retry `Transient` failures with backoff under a deadline.

Only `Transient` is retried: anything else (not found, permission, ...) is an answer, not an outage. The
loop never starts an attempt that could not finish before the deadline, so a call against a server that is
down or hung fails within `timeout` seconds (or one attempt, if a single attempt may take longer). This
module must never swallow an error: after the deadline the last failure is raised as `Transient`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from pfs.errors import Transient

T = TypeVar("T")

FIRST_DELAY = 0.1  # seconds before the first retry
MAX_DELAY = 2.0  # cap of the exponential backoff


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential, with jitter so that
    many clients that failed together do not come back together."""
    ceiling = min(MAX_DELAY, FIRST_DELAY * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def retry_call(
    attempt: Callable[[], T],
    *,
    timeout: float,
    attempt_budget: float = 0.0,
    give_up: Callable[[Transient], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `attempt` until it returns, raises something other than `Transient`, or the deadline nears.

    `attempt_budget` is the longest one attempt can take against a silent server (the transport's own
    timeouts); a retry starts only if it can finish before `timeout` expires. `give_up(exc)` may declare a
    transient failure final (e.g. a refused connection while checking a mount at startup).
    """
    start = clock()
    deadline = start + timeout
    failures = 0
    while True:
        try:
            return attempt()
        except Transient as exc:
            failures += 1
            delay = backoff(failures)
            if (give_up is not None and give_up(exc)) or clock() + delay + attempt_budget > deadline:
                if failures == 1:
                    raise
                elapsed = clock() - start
                raise Transient(f"{exc} (gave up after {failures} attempts in {elapsed:.1f} s)") from exc
            sleep(delay)
