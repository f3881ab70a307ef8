"""How a mount on this node is doing, found out without ever blocking on it.

A FUSE request to a daemon that is stopped or stuck waits until the daemon answers, and a thread waiting in
one cannot be interrupted or killed. So every probe of a mount (statvfs of its root, then, for a pfs mount,
its `user.pfs.stats` counters) runs in a daemon thread that the caller waits for at most `timeout` seconds.
A probe that does not return in time is abandoned; until it returns, every caller asking about the same
path waits on that probe (for what is left of its bound) instead of starting another, so a hung mount
holds one thread however often it is asked about, and no caller (a CSI call, the recovery loop) waits more
than `timeout`.

What a probe says (`Health.state`):
- MISSING: nothing is mounted there (the mount table says so; no request to the mount at all);
- DEAD: the daemon is gone ("transport endpoint is not connected");
- HUNG: no answer within the bound;
- FAILING: the daemon answers but its backend failed requests recently (the mount's own counters);
- BROKEN: any other error;
- UNMOUNTING: this plugin is taking it down right now (`Prober.quiet`: no probe may hold it busy then);
- OK.

Never makes a request to a mount in the calling thread.
"""

from __future__ import annotations

import enum
import errno
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pfs.mount import control
from pfs.mount import kernel as mount_table

RECENT_FAILURES_S = 60.0  # backend failures this recent make a volume abnormal


class State(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    DEAD = "dead"
    HUNG = "hung"
    FAILING = "failing"
    BROKEN = "broken"
    UNMOUNTING = "unmounting"


@dataclass(frozen=True)
class Health:
    state: State
    message: str
    usage: os.statvfs_result | None = None

    @property
    def abnormal(self) -> bool:
        return self.state is not State.OK


@dataclass(frozen=True)
class _Answer:
    usage: os.statvfs_result | None = None
    counters: dict | None = None
    error: OSError | None = None


class _Probe:
    """One statvfs (and counters read) of a mount, in a daemon thread; abandoned if it never returns."""

    def __init__(self, path: str) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.answer = _Answer()
        threading.Thread(target=self._run, args=(path,), name="csi-probe", daemon=True).start()

    def _run(self, path: str) -> None:
        # Always with the counters: a probe answers every caller asking about the path while it runs, and
        # a volume's condition needs them (a failing backend leaves statvfs answering).
        try:
            usage = os.statvfs(path)  # unlike stat, never answered from the kernel's attribute cache
            self.answer = _Answer(usage, _counters(path))
        except OSError as exc:
            self.answer = _Answer(error=exc)
        finally:
            self.done.set()


def _counters(path: str) -> dict | None:
    try:
        return control.stats(path)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):  # not a pfs mount: no counters
            return None
        raise
    except ValueError:
        return None


class Prober:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._probes: dict[str, _Probe] = {}  # the latest probe of each path, finished or not
        self._quiet: Counter[str] = Counter()  # paths being unmounted, by how many callers
        self._lock = threading.Lock()

    @contextmanager
    def quiet(self, path: str) -> Iterator[None]:
        """Hold probes off `path` while the caller unmounts it: a statvfs or getxattr in flight there makes
        umount(2) fail with EBUSY, and kubelet's NodeGetVolumeStats and the recovery loop probe without the
        volume's lock. A probe already running is waited for, within the timeout (a hung one is left to
        the unmount, which fails or detaches as it would anyway); none starts until the block ends."""
        with self._lock:
            self._quiet[path] += 1
            probe = self._probes.get(path)
        try:
            if probe is not None:
                probe.done.wait(max(0.0, probe.started + self.timeout - time.monotonic()))
            yield
        finally:
            with self._lock:
                self._quiet[path] -= 1
                if not self._quiet[path]:
                    del self._quiet[path]

    def check(self, path: str) -> Health:
        """The health of the mount at `path`, within `timeout` seconds. A probe of `path` still running
        (another caller's) is waited for, not repeated: a hung mount never gets a second thread."""
        if mount_table.mount_at(path) is None:
            with self._lock:  # forget a finished probe of a mount that is gone (a stuck one stays known)
                if path in self._probes and self._probes[path].done.is_set():
                    del self._probes[path]
            return Health(State.MISSING, f"nothing is mounted at {path}")
        with self._lock:
            if path in self._quiet:
                return Health(State.UNMOUNTING, f"{path} is being unmounted")
            probe = self._probes.get(path)
            if probe is None or probe.done.is_set():
                probe = self._probes[path] = _Probe(path)
        if not probe.done.wait(max(0.0, probe.started + self.timeout - time.monotonic())):
            waited = time.monotonic() - probe.started
            message = f"the pfs daemon serving {path} has not answered for {waited:.0f}s (stopped or stuck)"
            return Health(State.HUNG, message)
        return _judge(path, probe.answer)


def _judge(path: str, answer: _Answer) -> Health:
    if answer.error is not None:
        code = answer.error.errno or 0
        if code == errno.ENOTCONN:
            return Health(State.DEAD, f"the pfs daemon serving {path} is gone (its mount is not connected)")
        return Health(State.BROKEN, f"{path}: {os.strerror(code)}")
    counters = answer.counters or {}
    failed_at = counters.get("last_backend_error_at")
    if isinstance(failed_at, int | float) and time.time() - failed_at < RECENT_FAILURES_S:
        age, last = max(0.0, time.time() - failed_at), counters.get("last_backend_error", "")
        return Health(
            State.FAILING,
            f"the storage behind {path} is failing: {counters.get('backend_errors', 0)} failed requests, "
            f"the last {age:.0f}s ago ({last})",
            answer.usage,
        )
    return Health(State.OK, "mounted; the pfs daemon answers", answer.usage)
