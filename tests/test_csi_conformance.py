"""CSI conformance checks for pfs-csi (controller + node, on file:// volumes).

This is a Python port of the checks the Kubernetes CSI conformance tool (csi-sanity, from
kubernetes-csi/csi-test) makes for a plugin with the capabilities pfs-csi reports (CREATE_DELETE_VOLUME;
STAGE_UNSTAGE_VOLUME, GET_VOLUME_STATS, VOLUME_CONDITION). It is not the Go suite itself, which needs a Go
toolchain and its sources; checks for capabilities pfs-csi does not report (ListVolumes, GetCapacity,
ControllerPublish, snapshots, cloning, expansion) are skipped there too and so are absent here.
"""

from __future__ import annotations

import os

import grpc
import pytest

from csi import csi_pb2
from tests.conftest import unique
from tests.csi_plugin import Mode, Plugin, capability, cleanup_mounts

Code = grpc.StatusCode
ControllerRPC = csi_pb2.ControllerServiceCapability.RPC
NodeRPC = csi_pb2.NodeServiceCapability.RPC
RETRIES = 3  # every call of the idempotency check is made this many times


@pytest.fixture(scope="module")
def sanity(tmp_path_factory):
    root = tmp_path_factory.mktemp("sanity")
    (root / "volumes").mkdir()
    plugin = Plugin(str(root / "plugin"), node_id="sanity-node")
    os.makedirs(plugin.root)
    plugin.start()
    yield plugin, {"uri": f"file://{root}/volumes"}, root
    plugin.stop()
    cleanup_mounts(str(root))


@pytest.fixture
def dirs(tmp_path):
    """Staging and target paths as the conformance tool makes them: the staging dir exists, the target's
    parent exists and the target itself does not."""
    (tmp_path / "staging").mkdir()
    (tmp_path / "pod").mkdir()
    yield str(tmp_path / "staging"), str(tmp_path / "pod" / "target")
    cleanup_mounts(str(tmp_path))


def fails_with(code: grpc.StatusCode, call, request) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    assert info.value.code() == code, info.value.details()


def create(plugin: Plugin, parameters, name: str | None = None, **extra) -> csi_pb2.Volume:
    request = csi_pb2.CreateVolumeRequest(
        name=name or unique("sanity"), volume_capabilities=[capability(Mode.SINGLE_NODE_WRITER)],
        parameters=parameters, **extra,
    )  # fmt: skip
    return plugin.controller.CreateVolume(request).volume


def delete(plugin: Plugin, volume_id: str) -> None:
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id))


# ---- Identity ---------------------------------------------------------------------------------------


def test_identity_plugin_info(sanity):
    plugin, _, _ = sanity
    info = plugin.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name and info.vendor_version and len(info.name) <= 63


def test_identity_capabilities_and_probe(sanity):
    plugin, _, _ = sanity
    caps = plugin.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest()).capabilities
    known = set(csi_pb2.PluginCapability.Service.Type.values())
    assert caps and all(c.service.type in known for c in caps)
    probe = plugin.identity.Probe(csi_pb2.ProbeRequest())
    assert not probe.HasField("ready") or probe.ready.value


# ---- Controller -------------------------------------------------------------------------------------


def test_controller_capabilities(sanity):
    plugin, _, _ = sanity
    caps = plugin.controller.ControllerGetCapabilities(
        csi_pb2.ControllerGetCapabilitiesRequest()
    ).capabilities
    known = set(ControllerRPC.Type.values())
    assert {c.rpc.type for c in caps} <= known
    assert ControllerRPC.CREATE_DELETE_VOLUME in {c.rpc.type for c in caps}


def test_unreported_controller_calls_are_unimplemented(sanity):
    plugin, _, _ = sanity
    fails_with(Code.UNIMPLEMENTED, plugin.controller.ListVolumes, csi_pb2.ListVolumesRequest())
    fails_with(Code.UNIMPLEMENTED, plugin.controller.GetCapacity, csi_pb2.GetCapacityRequest())
    fails_with(
        Code.UNIMPLEMENTED,
        plugin.controller.ControllerPublishVolume,
        csi_pb2.ControllerPublishVolumeRequest(),
    )


def test_create_volume_without_name_or_capabilities(sanity):
    plugin, parameters, _ = sanity
    fails_with(
        Code.INVALID_ARGUMENT,
        plugin.controller.CreateVolume,
        csi_pb2.CreateVolumeRequest(volume_capabilities=[capability()], parameters=parameters),
    )
    fails_with(
        Code.INVALID_ARGUMENT,
        plugin.controller.CreateVolume,
        csi_pb2.CreateVolumeRequest(name=unique("sanity"), parameters=parameters),
    )


@pytest.mark.parametrize("required", [0, 1 << 30])
def test_create_volume_returns_appropriate_values(sanity, required):
    plugin, parameters, _ = sanity
    capacity = csi_pb2.CapacityRange(required_bytes=required) if required else None
    volume = create(plugin, parameters, capacity_range=capacity)
    assert volume.volume_id
    assert volume.capacity_bytes == 0 or volume.capacity_bytes >= required
    delete(plugin, volume.volume_id)


def test_create_volume_same_name_same_capacity_is_idempotent(sanity):
    plugin, parameters, _ = sanity
    name, capacity = unique("sanity"), csi_pb2.CapacityRange(required_bytes=1 << 30)
    first = create(plugin, parameters, name=name, capacity_range=capacity)
    second = create(plugin, parameters, name=name, capacity_range=capacity)
    assert first.volume_id == second.volume_id and first.capacity_bytes == second.capacity_bytes
    delete(plugin, first.volume_id)


def test_create_volume_same_name_other_capacity_fails(sanity):
    plugin, parameters, _ = sanity
    name = unique("sanity")
    first = create(
        plugin, parameters, name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 30)
    )
    fails_with(
        Code.ALREADY_EXISTS,
        plugin.controller.CreateVolume,
        csi_pb2.CreateVolumeRequest(
            name=name, volume_capabilities=[capability(Mode.SINGLE_NODE_WRITER)], parameters=parameters,
            capacity_range=csi_pb2.CapacityRange(required_bytes=2 << 30),
        ),
    )  # fmt: skip
    delete(plugin, first.volume_id)


def test_create_volume_with_maximum_length_name(sanity):
    plugin, parameters, _ = sanity
    volume = create(plugin, parameters, name="N" * 128)
    assert volume.volume_id
    delete(plugin, volume.volume_id)


def test_delete_volume(sanity):
    plugin, parameters, _ = sanity
    fails_with(Code.INVALID_ARGUMENT, plugin.controller.DeleteVolume, csi_pb2.DeleteVolumeRequest())
    delete(plugin, "reallyfakevolumeid")  # an id that names nothing is already deleted
    delete(plugin, f"gone@file://{parameters['uri'].removeprefix('file://')}-missing-base")
    volume = create(plugin, parameters)
    delete(plugin, volume.volume_id)
    delete(plugin, volume.volume_id)


def test_validate_volume_capabilities(sanity):
    plugin, parameters, _ = sanity
    validate = plugin.controller.ValidateVolumeCapabilities
    request = csi_pb2.ValidateVolumeCapabilitiesRequest
    fails_with(Code.INVALID_ARGUMENT, validate, request(volume_capabilities=[capability()]))
    volume = create(plugin, parameters)
    fails_with(Code.INVALID_ARGUMENT, validate, request(volume_id=volume.volume_id))
    asked = [capability(Mode.SINGLE_NODE_WRITER)]
    answer = validate(
        request(volume_id=volume.volume_id, volume_context=volume.volume_context, volume_capabilities=asked)
    )
    assert answer.HasField("confirmed") and list(answer.confirmed.volume_capabilities) == asked
    delete(plugin, volume.volume_id)
    fails_with(Code.NOT_FOUND, validate, request(volume_id=volume.volume_id, volume_capabilities=asked))


# ---- Node -------------------------------------------------------------------------------------------


def test_node_capabilities_and_info(sanity):
    plugin, _, _ = sanity
    caps = plugin.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest()).capabilities
    assert {c.rpc.type for c in caps} <= set(NodeRPC.Type.values())
    assert plugin.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id == "sanity-node"


def test_node_calls_without_required_fields(sanity, dirs):
    plugin, parameters, _ = sanity
    staging, target = dirs
    volume = create(plugin, parameters)
    node, vid, cap = plugin.node, volume.volume_id, capability(Mode.SINGLE_NODE_WRITER)
    stage, publish = csi_pb2.NodeStageVolumeRequest, csi_pb2.NodePublishVolumeRequest
    invalid = Code.INVALID_ARGUMENT
    fails_with(invalid, node.NodeStageVolume, stage(staging_target_path=staging, volume_capability=cap))
    fails_with(invalid, node.NodeStageVolume, stage(volume_id=vid, volume_capability=cap))
    fails_with(invalid, node.NodeStageVolume, stage(volume_id=vid, staging_target_path=staging))
    fails_with(invalid, node.NodeUnstageVolume, csi_pb2.NodeUnstageVolumeRequest(staging_target_path=staging))
    fails_with(invalid, node.NodeUnstageVolume, csi_pb2.NodeUnstageVolumeRequest(volume_id=vid))
    fails_with(invalid, node.NodePublishVolume, publish(staging_target_path=staging, target_path=target,
                                                        volume_capability=cap))  # fmt: skip
    fails_with(invalid, node.NodePublishVolume, publish(volume_id=vid, staging_target_path=staging,
                                                        volume_capability=cap))  # fmt: skip
    fails_with(invalid, node.NodePublishVolume, publish(volume_id=vid, staging_target_path=staging,
                                                        target_path=target))  # fmt: skip
    fails_with(invalid, node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(target_path=target))
    fails_with(invalid, node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid))
    stats = csi_pb2.NodeGetVolumeStatsRequest
    fails_with(invalid, node.NodeGetVolumeStats, stats(volume_path=target))
    fails_with(invalid, node.NodeGetVolumeStats, stats(volume_id=vid))
    fails_with(Code.NOT_FOUND, node.NodeGetVolumeStats, stats(volume_id="fake-volume-id", volume_path=target))
    delete(plugin, vid)


def _lifecycle(plugin: Plugin, parameters, staging: str, target: str, repeat: int) -> None:
    """Create, stage, publish, stats, unpublish, unstage, delete; every step made `repeat` times."""
    node, cap = plugin.node, capability(Mode.SINGLE_NODE_WRITER)
    volume = create(plugin, parameters)
    vid, context = volume.volume_id, volume.volume_context
    steps = [
        (node.NodeStageVolume, csi_pb2.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=cap, volume_context=context)),
        (node.NodePublishVolume, csi_pb2.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap,
            volume_context=context)),
        (node.NodeGetVolumeStats, csi_pb2.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target)),
    ]  # fmt: skip
    for call, request in steps:
        for _ in range(repeat):
            call(request)
    assert os.path.ismount(target) and os.stat(staging).st_ino == 1
    fails_with(
        Code.NOT_FOUND,
        node.NodeGetVolumeStats,
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume.volume_id, volume_path=f"{target}-does-not-exist"),
    )
    for _ in range(repeat):
        node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.volume_id, target_path=target)
        )
    assert not os.path.exists(target)  # NodeUnpublishVolume removes the target path
    for _ in range(repeat):
        node.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(volume_id=volume.volume_id, staging_target_path=staging)
        )
    assert not os.path.ismount(staging)
    for _ in range(repeat):
        delete(plugin, volume.volume_id)


def test_node_lifecycle_works(sanity, dirs):
    plugin, parameters, _ = sanity
    _lifecycle(plugin, parameters, *dirs, repeat=1)


def test_node_lifecycle_is_idempotent(sanity, dirs):
    plugin, parameters, _ = sanity
    _lifecycle(plugin, parameters, *dirs, repeat=RETRIES)


def test_node_lifecycle_when_paths_do_not_exist_yet(sanity, tmp_path):
    """The CO may leave creating the staging and target directories to the plugin."""
    plugin, parameters, _ = sanity
    try:
        _lifecycle(plugin, parameters, str(tmp_path / "new" / "staging"), str(tmp_path / "new" / "target"), 1)
    finally:
        cleanup_mounts(str(tmp_path))
