"""Bringing a volume's mounts up on a node: the pfs mount at the staging path, and pod targets bound to it.

NodeStageVolume / NodePublishVolume and recovery call the same two functions, so a recovered mount is made
exactly like the first one.
"""

from __future__ import annotations

import os

from csi.mounter import Mounter, MountError
from csi.state import StagedVolume, StateStore

READY_TIMEOUT = 60.0


def start_staging(mounter: Mounter, store: StateStore, volume: StagedVolume, env: dict[str, str]) -> None:
    """Mount the volume at its staging path; a dead mount left there (ENOTCONN) is detached first."""
    path = volume.staging_path
    if mounter.is_stale(path):
        mounter.unmount(path, lazy=True)
    os.makedirs(path, exist_ok=True)
    mounter.pfs_mount(volume.uri, path, volume.options, store.log_file(volume.volume_id), env)
    if not mounter.wait_ready(path, READY_TIMEOUT):
        raise MountError(f"the pfs mount at {path} did not answer within {READY_TIMEOUT:.0f}s")


def bind_target(mounter: Mounter, staging: str, target: str, read_only: bool) -> None:
    """Bind the staging mount at a pod's target path (read-only when asked)."""
    if mounter.is_stale(target):
        mounter.unmount(target, lazy=True)
    os.makedirs(target, exist_ok=True)
    mounter.bind(staging, target, read_only)
