"""The watchdog that bounds calls which may never return (libhdfs inside a JVM), in-process and in seconds."""

from __future__ import annotations

import threading
import time

import pytest

from pfs.backends.watchdog import abandoned, run_bounded
from pfs.errors import NotFound, Transient

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`


def test_a_call_that_never_returns_is_abandoned_at_the_bound():
    release = threading.Event()
    start = time.monotonic()
    with pytest.raises(Transient, match=r"stat x: no answer within 0\.3 s"):
        run_bounded(release.wait, 0.3, "stat x")
    assert time.monotonic() - start < 1.0
    release.set()  # the abandoned worker finishes, and is reused
    assert run_bounded(lambda: 42, 1.0, "again") == 42


def test_results_and_errors_come_back_unchanged():
    assert run_bounded(lambda: b"data", 1.0, "read") == b"data"
    with pytest.raises(NotFound):
        run_bounded(lambda: (_ for _ in ()).throw(NotFound("gone")), 1.0, "stat")


def test_a_transfer_that_keeps_moving_outlives_the_bound_and_one_that_stalls_does_not():
    moved = [0]

    def upload(chunks: int) -> str:
        for _ in range(chunks):
            time.sleep(0.1)
            moved[0] += 1
        return "done"

    assert run_bounded(lambda: upload(8), 0.5, "write", progress=lambda: moved[0]) == "done"  # 0.8 s
    stall = threading.Event()
    start = time.monotonic()
    with pytest.raises(Transient):
        run_bounded(lambda: (upload(2), stall.wait()), 0.5, "write", progress=lambda: moved[0])
    assert 0.6 < time.monotonic() - start < 1.5
    stall.set()


def test_an_abandoned_call_can_tell_before_it_publishes():
    resume, asked = threading.Event(), threading.Event()
    seen: list[bool] = []

    def publish() -> None:
        seen.append(abandoned())
        resume.wait()
        seen.append(abandoned())  # what a rename that would publish a file asks first
        asked.set()

    with pytest.raises(Transient):
        run_bounded(publish, 0.2, "write f")
    resume.set()
    assert asked.wait(5)
    assert seen == [False, True]
