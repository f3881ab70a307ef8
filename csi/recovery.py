"""Mount recovery: bring back staging mounts whose pfs daemon died, and re-bind every published target.

Runs once when the node plugin starts and then every `interval` seconds. A staging mount that is missing
from the mount table or answers ENOTCONN ("Transport endpoint is not connected") is mounted again from the
state dir (with its stored credentials); then each recorded target that is not a live mount is bound again.
A pod sees the new mount only if its volumeMount has `mountPropagation: HostToContainer`.

Every look at a mount is a bounded probe (csi/health.py), so a hung daemon (stopped, stuck) costs one pass
at most the probe timeout and never blocks the loop; it is logged and left alone (it may still answer,
and killing it would lose its pending writes), while NodeGetVolumeStats reports it abnormal.
"""

from __future__ import annotations

import logging
import os
import threading

from csi import bringup
from csi.health import State
from csi.locks import OperationLocks
from csi.mounter import Mounter, MountError
from csi.state import StagedVolume, StateStore

log = logging.getLogger(__name__)

REPAIRABLE = frozenset({State.MISSING, State.DEAD})  # what a remount or a new bind repairs


class Recovery:
    def __init__(self, store: StateStore, mounter: Mounter, locks: OperationLocks) -> None:
        self.store = store
        self.mounter = mounter
        self.locks = locks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hung: set[str] = set()  # volumes whose daemon was found hung (logged once)

    def run_once(self) -> None:
        for volume in self.store.all():
            # Look before locking: holding the volume's lock for a mere check would make a concurrent
            # CSI call on a healthy volume fail with ABORTED.
            if self._all_healthy(volume) or not self.locks.try_acquire(volume.volume_id):
                continue  # healthy, or a CSI call is working on it right now
            try:
                current = self.store.get(volume.volume_id)  # that call may have changed or removed it
                if current is not None and not self._all_healthy(current):
                    self._repair(current)
            except (MountError, OSError) as exc:
                log.error("cannot recover volume %s: %s (will retry)", volume.volume_id, exc)
            finally:
                self.locks.release(volume.volume_id)

    def _all_healthy(self, volume: StagedVolume) -> bool:
        staging = self.mounter.health(volume.staging_path)
        if staging.state is State.HUNG:
            if volume.volume_id not in self._hung:
                log.warning("volume %s: %s; leaving it alone", volume.volume_id, staging.message)
            self._hung.add(volume.volume_id)
            return True  # nothing to repair that a remount could: its binds hang with it
        if volume.volume_id in self._hung:
            log.info("volume %s: the pfs daemon at %s answers again", volume.volume_id, volume.staging_path)
            self._hung.discard(volume.volume_id)
        return staging.state not in REPAIRABLE and all(map(self._healthy, volume.targets))

    def _healthy(self, path: str) -> bool:
        return self.mounter.health(path).state not in REPAIRABLE

    def _repair(self, volume: StagedVolume) -> None:
        if not self._healthy(volume.staging_path):
            log.warning(
                "volume %s: staging mount at %s is gone; remounting", volume.volume_id, volume.staging_path
            )
            bringup.start_staging(self.mounter, self.store, volume, self.store.secrets(volume.volume_id))
            log.info("volume %s: remounted at %s", volume.volume_id, volume.staging_path)
        for target, read_only in volume.targets.items():
            if not self.locks.try_acquire(target):
                continue
            try:
                if self._healthy(target):
                    continue
                if not self.mounter.is_mounted(target) and not os.path.isdir(target):
                    self.store.set_target(
                        volume.volume_id, target, None
                    )  # the pod and its directory are gone
                    continue
                bringup.bind_target(self.mounter, volume.staging_path, target, read_only)
                log.info("volume %s: re-bound %s", volume.volume_id, target)
            finally:
                self.locks.release(target)

    def start(self, interval: float) -> None:
        def loop() -> None:
            while True:
                self.run_once()
                if self._stop.wait(interval):
                    return

        self._thread = threading.Thread(target=loop, name="recovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
