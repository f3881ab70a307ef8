"""The CSI node service: stage a volume as one pfs mount per node, bind it into each pod that uses it.

Every call is idempotent (kubelet retries): a call that finds its work already done succeeds without doing
it again. Stage/unstage hold the volume's lock, publish/unpublish the target's; a concurrent second call
on the same one gets ABORTED.
"""

from __future__ import annotations

import logging
import os

import grpc

from csi import bringup, csi_pb2, csi_pb2_grpc, volume
from csi.health import State
from csi.locks import OperationLocks
from csi.mounter import Mounter, MountError
from csi.requests import require, require_capability
from csi.state import StagedVolume, StateStore

log = logging.getLogger(__name__)

NodeRPC = csi_pb2.NodeServiceCapability.RPC


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, node_id: str, store: StateStore, mounter: Mounter, locks: OperationLocks) -> None:
        self.node_id = node_id
        self.store = store
        self.mounter = mounter
        self.locks = locks

    def NodeStageVolume(self, request, context):
        require(context, volume_id=request.volume_id, staging_target_path=request.staging_target_path)
        require_capability(context, request.volume_capability, present=request.HasField("volume_capability"))
        staging = os.path.realpath(request.staging_target_path)
        with self.locks.hold(request.volume_id, context):
            existing = self.store.get(request.volume_id)
            if self.mounter.is_mounted(staging) and not self.mounter.is_stale(staging):
                if existing is not None and existing.staging_path == staging:
                    return csi_pb2.NodeStageVolumeResponse()
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{staging} already holds another mount")
            if existing is not None and existing.staging_path != staging:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"volume {request.volume_id} is already staged at {existing.staging_path}",
                )
            attributes = dict(request.volume_context)
            try:
                uri = volume.volume_uri(request.volume_id, attributes)
                flags = list(request.volume_capability.mount.mount_flags)
                read_only = volume.is_read_only(request.volume_capability)
                # Pods run as any user: without allow_other only root could enter the mount.
                options = ["allow_other", *volume.mount_options(attributes, read_only, flags)]
                env = volume.credentials_env(dict(request.secrets))
            except volume.UnknownVolume as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            except volume.VolumeError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            record = StagedVolume(
                request.volume_id, uri, staging, options, existing.targets if existing else {}
            )
            # Recorded first: should the plugin die mid-mount, a retry or recovery knows the mount is ours.
            self.store.save_secrets(request.volume_id, env)
            self.store.save(record)
            try:
                bringup.start_staging(self.mounter, self.store, record, env)
            except (MountError, OSError) as exc:
                if existing is None:
                    self.store.remove(request.volume_id)
                context.abort(grpc.StatusCode.INTERNAL, f"cannot mount volume {request.volume_id}: {exc}")
            log.info("staged %s at %s", request.volume_id, staging)
        return csi_pb2.NodeStageVolumeResponse()

    def NodeUnstageVolume(self, request, context):
        require(context, volume_id=request.volume_id, staging_target_path=request.staging_target_path)
        staging = os.path.realpath(request.staging_target_path)
        with self.locks.hold(request.volume_id, context):
            record = self.store.get(request.volume_id)
            if record is not None:
                busy = [target for target in record.targets if self.mounter.is_mounted(target)]
                if busy:
                    context.abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"volume {request.volume_id} is still published at {len(busy)} target(s)",
                    )
            if self.mounter.is_mounted(staging):
                try:  # uploads pending writes, unmounts, waits for the daemon to exit
                    self.mounter.pfs_umount(staging)
                except MountError as exc:
                    context.abort(grpc.StatusCode.INTERNAL, f"cannot unmount {staging}: {exc}")
            self.store.remove(request.volume_id)
            log.info("unstaged %s from %s", request.volume_id, staging)
        return csi_pb2.NodeUnstageVolumeResponse()

    def NodePublishVolume(self, request, context):
        require(
            context,
            volume_id=request.volume_id,
            staging_target_path=request.staging_target_path,
            target_path=request.target_path,
        )
        require_capability(context, request.volume_capability, present=request.HasField("volume_capability"))
        target = os.path.realpath(request.target_path)
        read_only = request.readonly or volume.is_read_only(request.volume_capability)
        with self.locks.hold(target, context):
            record = self.store.get(request.volume_id)
            if record is None:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"volume {request.volume_id} is not staged on this node",
                )
            if record.staging_path != os.path.realpath(request.staging_target_path):
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"volume {request.volume_id} is staged at {record.staging_path}, "
                    f"not {request.staging_target_path}",
                )
            if self.mounter.is_mounted(target) and not self.mounter.is_stale(target):
                if record.targets.get(target, read_only) != read_only:
                    context.abort(
                        grpc.StatusCode.ALREADY_EXISTS, f"{target} is already published with other options"
                    )
            else:
                try:
                    bringup.bind_target(self.mounter, record.staging_path, target, read_only)
                except (MountError, OSError) as exc:
                    context.abort(grpc.StatusCode.INTERNAL, f"cannot publish at {target}: {exc}")
            self.store.set_target(request.volume_id, target, read_only)
        return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(self, request, context):
        require(context, volume_id=request.volume_id, target_path=request.target_path)
        target = os.path.realpath(request.target_path)
        with self.locks.hold(target, context):
            # Forgotten first: recovery must not take a target being unpublished for a broken one.
            self.store.set_target(request.volume_id, target, None)
            try:
                while self.mounter.is_mounted(target):  # every layer, should a retry have stacked binds
                    self.mounter.unmount(target, lazy=self.mounter.is_stale(target))
                if os.path.isdir(target):
                    os.rmdir(target)
                elif os.path.lexists(target):
                    os.remove(target)
            except (MountError, OSError) as exc:
                context.abort(grpc.StatusCode.INTERNAL, f"cannot unpublish {target}: {exc}")
        return csi_pb2.NodeUnpublishVolumeResponse()

    def NodeGetVolumeStats(self, request, context):
        require(context, volume_id=request.volume_id, volume_path=request.volume_path)
        record = self.store.get(request.volume_id)
        if record is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} is not staged on this node")
        # Only the parent is resolved: resolving the mount itself would ask it, and it may be hung.
        parent, name = os.path.split(os.path.abspath(request.volume_path))
        path = os.path.join(os.path.realpath(parent), name)
        if path != record.staging_path and path not in record.targets:
            context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} is not mounted at {path}")
        # The condition is the staging mount's (its daemon and backend); the usage is the asked path's.
        health = self.mounter.health(record.staging_path)
        asked = health if path == record.staging_path else self.mounter.health(path)
        if asked.state is State.MISSING and not os.path.exists(path):
            context.abort(grpc.StatusCode.NOT_FOUND, f"{path} does not exist")
        if not health.abnormal and asked.abnormal:
            health = asked  # e.g. a pod's bind mount is gone while the staging mount is fine
        condition = csi_pb2.VolumeCondition(abnormal=health.abnormal, message=health.message)
        if asked.usage is None:
            return csi_pb2.NodeGetVolumeStatsResponse(volume_condition=condition)
        st, usage = asked.usage, csi_pb2.VolumeUsage
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=[
                usage(
                    unit=usage.BYTES,
                    total=st.f_blocks * st.f_frsize,
                    available=st.f_bavail * st.f_frsize,
                    used=(st.f_blocks - st.f_bfree) * st.f_frsize,
                ),
                usage(
                    unit=usage.INODES, total=st.f_files, available=st.f_favail, used=st.f_files - st.f_ffree
                ),
            ],
            volume_condition=condition,
        )

    def NodeGetCapabilities(self, request, context):
        kinds = [NodeRPC.STAGE_UNSTAGE_VOLUME, NodeRPC.GET_VOLUME_STATS, NodeRPC.VOLUME_CONDITION]
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[csi_pb2.NodeServiceCapability(rpc=NodeRPC(type=kind)) for kind in kinds]
        )

    def NodeGetInfo(self, request, context):
        return csi_pb2.NodeGetInfoResponse(node_id=self.node_id)
