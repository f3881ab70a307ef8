"""Volume health through pfs-csi: NodeGetVolumeStats reports the staging mount's condition (daemon dead,
hung, backend failing) with a reason, and recovery keeps working while a daemon hangs. Real pfs daemons,
stopped and killed by the test (only daemons it started), a real S3 server stopped under a mount."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time

import grpc
import pytest

from csi import csi_pb2
from pfs.mount import control, kernel
from tests.conftest import unique
from tests.csi_plugin import (
    Mode,
    Plugin,
    capability,
    cleanup_mounts,
    stage_and_publish,
    unpublish_and_unstage,
)
from tests.mounting import wait_until
from testservers.s3 import start_s3_server

PROBE_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("csihealth")
    running = Plugin(str(root), probe_timeout=PROBE_TIMEOUT).start()
    yield running
    running.stop()
    cleanup_mounts(str(root.parent))


@pytest.fixture
def paths(tmp_path):
    yield tmp_path
    cleanup_mounts(str(tmp_path))


def stage(plugin: Plugin, paths, name: str, context: dict[str, str], secrets=None) -> tuple[str, str, str]:
    """Stage and publish a static volume; (volume id, staging path, pod path)."""
    volume_id, staging, target = unique(name), str(paths / name / "staging"), str(paths / name / "pod")
    stage_and_publish(plugin, volume_id, context, staging, target, secrets)
    return volume_id, staging, target


def condition(plugin: Plugin, volume_id: str, path: str) -> tuple[csi_pb2.NodeGetVolumeStatsResponse, float]:
    started = time.monotonic()
    response = plugin.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path)
    )
    return response, time.monotonic() - started


def local_volume(plugin: Plugin, paths, name: str) -> tuple[str, str, str]:
    data = paths / f"{name}-data"
    data.mkdir()
    (data / "a").write_bytes(b"data of " + name.encode())
    return stage(plugin, paths, name, {"uri": f"file://{data}"})


def readable(path: str, timeout: float = 2.0) -> bool:
    """Whether `path` can be read within `timeout` (in a thread: the mount may hang)."""
    result: list[bytes] = []

    def read() -> None:
        try:
            with open(path, "rb") as f:
                result.append(f.read())
        except OSError:
            pass

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result)


def normal(plugin: Plugin, volume_id: str, path: str) -> bool:
    return not condition(plugin, volume_id, path)[0].volume_condition.abnormal


def test_stopped_and_killed_daemons_are_abnormal_until_recovered(plugin, paths):
    # Recovery visits volumes in the order of their state files: the hung one goes first, so a loop that
    # blocked on it would never reach the other.
    volumes = sorted(
        (local_volume(plugin, paths, name) for name in ("one", "two")),
        key=lambda v: hashlib.sha256(v[0].encode()).hexdigest()[:24],
    )
    (volume_id, staging, target), (_, other_staging, other_target) = volumes
    healthy, _ = condition(plugin, volume_id, target)
    assert not healthy.volume_condition.abnormal and healthy.usage

    daemon = control.daemon_pid(staging)
    os.kill(daemon, signal.SIGSTOP)
    try:
        hung, waited = condition(plugin, volume_id, target)
        assert hung.volume_condition.abnormal and "has not answered" in hung.volume_condition.message
        assert waited < PROBE_TIMEOUT + 3
        again, waited = condition(plugin, volume_id, staging)  # the first probe is still stuck: no new wait
        assert again.volume_condition.abnormal and waited < 1
        # Recovery is not held up by the hung daemon: another volume whose daemon dies comes back.
        other_daemon = control.daemon_pid(other_staging)
        os.kill(other_daemon, signal.SIGKILL)
        kernel.wait_for_exit(other_daemon, 10)
        assert wait_until(lambda: readable(f"{other_target}/a"), timeout=15)
        assert wait_until(lambda: "leaving it alone" in plugin.log(), timeout=5)
    finally:
        os.kill(daemon, signal.SIGCONT)
    assert wait_until(
        lambda: not condition(plugin, volume_id, target)[0].volume_condition.abnormal, timeout=10
    )

    os.kill(daemon, signal.SIGKILL)
    kernel.wait_for_exit(daemon, 10)
    dead, _ = condition(plugin, volume_id, target)
    assert dead.volume_condition.abnormal
    assert any(reason in dead.volume_condition.message for reason in ("is gone", "nothing is mounted"))
    assert wait_until(
        lambda: not condition(plugin, volume_id, target)[0].volume_condition.abnormal, timeout=15
    )
    # Healthy is the staging mount's and the target's answer to a probe; the first read through the new
    # daemon may take longer than one `readable` allows on a loaded machine.
    assert wait_until(lambda: readable(f"{target}/a"), timeout=15)
    assert control.daemon_pid(staging) != daemon
    for volume_id, staging, target in volumes:
        unpublish_and_unstage(plugin, volume_id, staging, [target])


def test_a_failing_backend_makes_the_volume_abnormal(plugin, paths):
    server = start_s3_server("rclone", str(paths / "s3"))
    try:
        server.create_bucket("health")
        prefix = unique("vol")
        client = server.raw_client()
        with client.open_output_stream(f"health/{prefix}/a") as f:
            f.write(b"x" * 1000)
        secrets = {"accessKeyId": server.access_key, "secretAccessKey": server.secret_key}
        context = {"uri": server.uri("health", prefix), "timeout": "2", "metadataTTL": "0"}
        volume_id, staging, target = stage(plugin, paths, "s3", context, secrets)
        assert not condition(plugin, volume_id, target)[0].volume_condition.abnormal
        server.stop()
        assert not readable(f"{target}/a", timeout=30)  # the read fails (EIO) once the retries give up
        failing, _ = condition(plugin, volume_id, target)
        assert failing.volume_condition.abnormal, failing.volume_condition.message
        # Every answer, also one that shares a probe the recovery loop (every second) started meanwhile.
        deadline = time.monotonic() + 3 * plugin.recovery_interval
        while time.monotonic() < deadline:
            again, _ = condition(plugin, volume_id, target)
            assert again.volume_condition.abnormal, again.volume_condition.message
        assert "is failing" in failing.volume_condition.message
        assert server.secret_key not in failing.volume_condition.message
        subprocess.run(["umount", "-l", staging], check=True)  # its writes are lost anyway: the store is gone
        unpublish_and_unstage(plugin, volume_id, staging, [target])
    finally:
        server.stop()


def get_volume(plugin: Plugin, volume_id: str) -> csi_pb2.ControllerGetVolumeResponse:
    return plugin.controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id))


def test_controller_reports_whether_a_volume_data_is_in_place(plugin, paths, s3_server, s3_bucket):
    base = paths / "base"
    base.mkdir()
    parameters = {"uri": f"file://{base}"}
    controller, caps = plugin.controller, [capability()]
    create = csi_pb2.CreateVolumeRequest
    created = controller.CreateVolume(
        create(name=unique("pvc"), volume_capabilities=caps, parameters=parameters)
    ).volume
    answer = get_volume(plugin, created.volume_id)
    assert answer.volume == created and not answer.status.volume_condition.abnormal

    snapshot = controller.CreateSnapshot(
        csi_pb2.CreateSnapshotRequest(name=unique("snap"), source_volume_id=created.volume_id)
    ).snapshot
    read_only = [capability(Mode.MULTI_NODE_READER_ONLY)]
    view_request = create(name=unique("pvc"), volume_capabilities=read_only, parameters=parameters)
    view_request.volume_content_source.snapshot.snapshot_id = snapshot.snapshot_id
    view = controller.CreateVolume(view_request).volume
    controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id))
    assert not get_volume(plugin, view.volume_id).status.volume_condition.abnormal  # its own pinned copy
    source_dir = base / created.volume_id.partition("@")[0]
    (source_dir / ".pfs" / "snapshots" / f"{view.volume_context['snapshot']}.parquet").unlink()
    gone = get_volume(plugin, view.volume_id).status.volume_condition
    assert gone.abnormal and "is gone" in gone.message

    shutil.rmtree(source_dir)
    gone = get_volume(plugin, created.volume_id).status.volume_condition
    assert gone.abnormal and "directory" in gone.message and "is gone" in gone.message

    with pytest.raises(grpc.RpcError) as missing:
        get_volume(plugin, f"nothing-here@file://{base}")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # CSI sends no secret with this call: a volume the controller cannot read without one is not judged.
    secrets = {"accessKeyId": s3_server.access_key, "secretAccessKey": s3_server.secret_key}
    private = controller.CreateVolume(
        create(
            name=unique("pvc"), volume_capabilities=caps, secrets=secrets,
            parameters={"uri": s3_server.uri(s3_bucket, unique("private"))},
        )
    ).volume  # fmt: skip
    unchecked = get_volume(plugin, private.volume_id).status.volume_condition
    assert not unchecked.abnormal and unchecked.message.startswith("not checked")
