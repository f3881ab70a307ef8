"""The CSI plugin end to end: a real `pfs-csi` process on a unix socket, real pfs mounts, real backends
(a local directory and the loopback SeaweedFS server), called through the generated gRPC stubs."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from csi import DRIVER_NAME, csi_pb2
from csi.mounter import Mounter
from pfs.mount import control, kernel
from tests.conftest import S3Raw, unique
from tests.csi_plugin import (
    Mode,
    Plugin,
    capability,
    cleanup_mounts,
    running_plugin,
    stage_and_publish,
    unpublish_and_unstage,
)
from tests.mounting import wait_until

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    with running_plugin(str(tmp_path_factory.mktemp("csi"))) as running:
        yield running


@pytest.fixture
def paths(tmp_path):
    yield tmp_path
    cleanup_mounts(str(tmp_path))


def code_of(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value.code()


def twice(call, request):
    """Call an RPC twice (a kubelet retry) and insist on the same answer."""
    first = call(request)
    assert call(request) == first
    return first


def test_identity(plugin):
    info = plugin.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name == DRIVER_NAME and info.vendor_version
    caps = plugin.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest()).capabilities
    assert [c.service.type for c in caps] == [csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE]
    assert plugin.identity.Probe(csi_pb2.ProbeRequest()).ready.value


@pytest.fixture(params=["file", "s3"])
def base(request, tmp_path):
    """(base URI for a StorageClass, secrets, raw view of the base) on each backend."""
    if request.param == "file":
        root = tmp_path / "bucket"
        root.mkdir()
        from tests.conftest import LocalRaw

        return f"file://{root}", {}, LocalRaw(str(root))
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    prefix = unique("base")
    secrets = {"accessKeyId": server.access_key, "secretAccessKey": server.secret_key}
    return server.uri(bucket, prefix), secrets, S3Raw(server, bucket, prefix)


def test_lifecycle_two_targets(plugin, paths, base):
    base_uri, secrets, raw = base
    name = unique("pvc")
    created = twice(
        plugin.controller.CreateVolume,
        csi_pb2.CreateVolumeRequest(
            name=name,
            volume_capabilities=[capability()],
            parameters={"uri": base_uri, "metadataTTL": "0"},
            secrets=secrets,
        ),
    ).volume
    assert created.volume_context["uri"].startswith(base_uri.partition("?")[0].rstrip("/") + "/" + name)
    assert created.volume_context["metadataTTL"] == "0"
    staging, target_a, target_b = (str(paths / p) for p in ("staging", "pod-a/vol", "pod-b/vol"))
    os.makedirs(staging)
    twice(
        plugin.node.NodeStageVolume,
        csi_pb2.NodeStageVolumeRequest(
            volume_id=created.volume_id, staging_target_path=staging, volume_capability=capability(),
            volume_context=created.volume_context, secrets=secrets,
        ),
    )  # fmt: skip
    assert os.stat(staging).st_ino == 1
    daemon = control.daemon_pid(staging)
    for target, read_only in ((target_a, False), (target_b, True)):
        twice(
            plugin.node.NodePublishVolume,
            csi_pb2.NodePublishVolumeRequest(
                volume_id=created.volume_id, staging_target_path=staging, target_path=target,
                volume_capability=capability(), readonly=read_only, volume_context=created.volume_context,
            ),
        )  # fmt: skip
    with open(f"{target_a}/hello.txt", "w") as f:
        f.write("written through pod a")
    with open(f"{target_b}/hello.txt") as f:
        assert f.read() == "written through pod a"
    with pytest.raises(OSError) as refused:
        open(f"{target_b}/other.txt", "w")
    assert refused.value.errno == errno.EROFS
    stats = plugin.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=created.volume_id, volume_path=target_a)
    )
    assert {u.unit for u in stats.usage} == {csi_pb2.VolumeUsage.BYTES, csi_pb2.VolumeUsage.INODES}
    assert not stats.volume_condition.abnormal
    if secrets:  # credentials reach the daemons through the environment and a private file, never argv
        _assert_secret_not_on_command_lines(secrets["secretAccessKey"])
        _assert_private_files(plugin.state_dir, secrets["secretAccessKey"])
    for target in (target_a, target_b):
        twice(
            plugin.node.NodeUnpublishVolume,
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=created.volume_id, target_path=target),
        )
        assert not os.path.exists(target)
    twice(
        plugin.node.NodeUnstageVolume,
        csi_pb2.NodeUnstageVolumeRequest(volume_id=created.volume_id, staging_target_path=staging),
    )
    assert kernel.mount_at(staging) is None and kernel.wait_for_exit(daemon, 10)
    assert raw.get(f"{name}/hello.txt") == b"written through pod a"
    twice(
        plugin.controller.DeleteVolume,
        csi_pb2.DeleteVolumeRequest(volume_id=created.volume_id, secrets=secrets),
    )
    assert not raw.exists(f"{name}/hello.txt")


def _assert_secret_not_on_command_lines(secret: str) -> None:
    """No pfs or plugin process shows the secret in its arguments (test servers are not ours to judge)."""
    ours = (b"-m\0pfs", b"-m\0csi", b"pfs.mount.daemon")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if any(mark in command for mark in ours):
            assert secret.encode() not in command, f"process {pid} has the secret on its command line"


def _assert_private_files(state_dir: str, secret: str) -> None:
    for directory, _, files in os.walk(state_dir):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                holds_secret = secret.encode() in f.read()
            if holds_secret:
                assert os.path.basename(directory) == "secrets" and os.stat(path).st_mode & 0o077 == 0, path
            assert os.stat(directory).st_mode & 0o077 == 0 or directory == state_dir


def test_secrets_never_logged(plugin, s3_server, s3_bucket, paths):
    """A volume whose store enforces credentials: they come only from the CSI secrets, and no log has them."""
    secrets = {"accessKeyId": s3_server.access_key, "secretAccessKey": s3_server.secret_key}
    base_uri = s3_server.uri(s3_bucket, unique("sec"))
    created = plugin.controller.CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name=unique("pvc"),
            volume_capabilities=[capability()],
            parameters={"uri": base_uri},
            secrets=secrets,
        )
    ).volume
    staging = str(paths / "staging")
    request = csi_pb2.NodeStageVolumeRequest(
        volume_id=created.volume_id, staging_target_path=staging, volume_capability=capability(),
        volume_context=created.volume_context, secrets=secrets,
    )  # fmt: skip
    plugin.node.NodeStageVolume(request)
    wrong = {**secrets, "secretAccessKey": "not-the-" + s3_server.secret_key}
    bad = plugin.controller.CreateVolume  # the store refuses wrong keys: the error must not echo them
    assert code_of(bad, csi_pb2.CreateVolumeRequest(
        name=unique("pvc"), volume_capabilities=[capability()], parameters={"uri": base_uri}, secrets=wrong,
    )) != Code.OK  # fmt: skip
    plugin.node.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id=created.volume_id, staging_target_path=staging)
    )
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=created.volume_id, secrets=secrets))
    logged = plugin.log()
    assert "NodeStageVolume called" in logged and "accessKeyId" in logged  # the calls are logged, keys only
    assert s3_server.secret_key not in logged and s3_server.access_key not in logged
    for name in os.listdir(os.path.join(plugin.state_dir, "logs")):
        with open(os.path.join(plugin.state_dir, "logs", name)) as f:
            assert s3_server.secret_key not in f.read()


def _stage_and_publish(plugin: Plugin, paths, volume_id: str, context: dict[str, str], targets: int = 1):
    staging = str(paths / "staging")
    plugin.node.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=staging, volume_capability=capability(),
            volume_context=context,
        )
    )  # fmt: skip
    published = []
    for i in range(targets):
        target = str(paths / f"pod-{i}" / "vol")
        plugin.node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id, staging_target_path=staging, target_path=target,
                volume_capability=capability(), volume_context=context,
            )
        )  # fmt: skip
        published.append(target)
    return staging, published


def _static_volume(plugin: Plugin, paths, name: str, data: bytes, targets: int = 1, **attributes: str):
    """A static volume over a local directory holding one file; staged and published at `targets` pods."""
    data_dir = paths / "data"
    data_dir.mkdir()
    (data_dir / name).write_bytes(data)
    volume_id = unique("static")
    context = {"uri": f"file://{data_dir}", **attributes}
    staging, published = _stage_and_publish(plugin, paths, volume_id, context, targets=targets)
    return volume_id, data_dir, staging, published


def _read_into(path: str, result: list[bytes]) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        result.append(f.read())


def _read_eventually(path: str, timeout: float) -> tuple[bytes, float]:
    """Read `path` until it works; return the bytes and how long that took (reads run in a thread: a
    read on a broken FUSE mount must not hang the test)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        result: list[bytes] = []
        worker = threading.Thread(target=_read_into, args=(path, result), daemon=True)
        worker.start()
        worker.join(timeout=max(0.1, timeout - (time.monotonic() - started)))
        if result:
            return result[0], time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{path} was not readable within {timeout}s")


def test_an_unmount_holds_the_probes_off_its_path(paths):
    """A probe in flight (a statvfs, a getxattr) makes umount(2) fail with EBUSY, and kubelet's
    NodeGetVolumeStats and the recovery loop probe a mount without the volume's lock. The plugin's
    unmounts hold its probes off their path, so they succeed however often the mount is asked about.
    The plugin's Mounter in process, on real mounts."""
    data, mnt = paths / "data", str(paths / "mnt")
    data.mkdir()
    os.mkdir(mnt)
    mounter = Mounter()

    def ask(stop: threading.Event) -> None:
        while not stop.is_set():
            mounter.health(mnt)

    for _ in range(3):
        mounter.pfs_mount(f"file://{data}", mnt, [], str(paths / "pfs.log"), {})
        stop = threading.Event()
        askers = [threading.Thread(target=ask, args=(stop,), daemon=True) for _ in range(2)]
        for asker in askers:
            asker.start()
        try:
            time.sleep(0.2)
            mounter.pfs_umount(mnt)
        finally:
            stop.set()
            for asker in askers:
                asker.join(timeout=10)
        assert kernel.mount_at(mnt) is None


def test_recovery_after_daemon_is_killed(plugin, paths):
    volume_id, data_dir, staging, targets = _static_volume(
        plugin, paths, "shard-0", b"x" * 100_000, targets=2
    )
    daemon = control.daemon_pid(staging)
    os.kill(daemon, signal.SIGKILL)
    kernel.wait_for_exit(daemon, 10)
    for target in targets:
        data, waited = _read_eventually(f"{target}/shard-0", timeout=10)
        assert data == b"x" * 100_000 and waited < 10
    assert control.daemon_pid(staging) != daemon
    assert "remounting" in plugin.log()
    # the recovered mount is a normal one: writes work and the volume unstages cleanly
    with open(f"{targets[0]}/after-recovery", "w") as f:
        f.write("ok")
    unpublish_and_unstage(plugin, volume_id, staging, targets)
    assert (data_dir / "after-recovery").read_text() == "ok"


def test_recovery_when_the_staging_mount_is_missing(plugin, paths):
    """Someone detached the staging mount: it is mounted again, and the pods' binds keep serving."""
    volume_id, _, staging, [target] = _static_volume(plugin, paths, "a", b"still here")
    first = control.daemon_pid(staging)
    subprocess.run(["umount", "-l", staging], check=True)
    assert wait_until(lambda: f"volume {volume_id}: remounted" in plugin.log(), timeout=10)
    second = control.daemon_pid(staging)
    assert second != first and open(f"{target}/a").read() == "still here"
    unpublish_and_unstage(plugin, volume_id, staging, [target])
    assert kernel.wait_for_exit(first, 10) and kernel.wait_for_exit(second, 10)


def test_plugin_restart_keeps_and_repairs_mounts(plugin, paths):
    volume_id, _, staging, [target] = _static_volume(plugin, paths, "a", b"kept")
    daemon = control.daemon_pid(staging)
    plugin.restart(signal.SIGKILL)  # a crash: the mount is untouched and the new plugin adopts it
    assert open(f"{target}/a").read() == "kept" and control.daemon_pid(staging) == daemon
    plugin.stop(signal.SIGKILL)  # the daemon dies while no plugin runs: the next one repairs it on start
    os.kill(daemon, signal.SIGKILL)
    kernel.wait_for_exit(daemon, 10)
    plugin.start()
    data, _ = _read_eventually(f"{target}/a", timeout=10)
    assert data == b"kept"
    unpublish_and_unstage(plugin, volume_id, staging, [target])


def test_staging_and_target_paths_are_made_when_missing(plugin, paths):
    """csi-sanity always creates the staging directory first; a CO may leave that to the plugin."""
    data_dir = paths / "data"
    data_dir.mkdir()
    (data_dir / "a").write_bytes(b"made")
    volume_id, context = unique("static"), {"uri": f"file://{data_dir}"}
    staging, target = str(paths / "new" / "staging"), str(paths / "new" / "pod" / "vol")
    stage_and_publish(plugin, volume_id, context, staging, target)
    assert open(f"{target}/a").read() == "made"
    unpublish_and_unstage(plugin, volume_id, staging, [target])
    assert not os.path.exists(target) and not os.path.ismount(staging)


def test_static_read_only_volume(plugin, paths):
    volume_id, _, staging, [target] = _static_volume(
        plugin, paths, "f", b"static", readOnly="true", metadataTTL="5"
    )
    assert open(f"{target}/f").read() == "static"
    with pytest.raises(OSError) as refused:
        open(f"{target}/new", "w")
    assert refused.value.errno == errno.EROFS
    unpublish_and_unstage(plugin, volume_id, staging, [target])


def test_bad_requests_get_the_right_codes(plugin, paths):
    node, controller = plugin.node, plugin.controller
    s, t = str(paths / "s"), str(paths / "t")
    cap, block = capability(), capability(block=True)
    stage, publish = csi_pb2.NodeStageVolumeRequest, csi_pb2.NodePublishVolumeRequest
    create, base = csi_pb2.CreateVolumeRequest, {"uri": f"file://{paths}"}
    invalid, missing = Code.INVALID_ARGUMENT, Code.NOT_FOUND
    single_writer = capability(Mode.MULTI_NODE_SINGLE_WRITER)
    cases = [
        (node.NodeStageVolume, stage(staging_target_path=s, volume_capability=cap), invalid),
        (node.NodeStageVolume, stage(volume_id="v", volume_capability=cap), invalid),
        (node.NodeStageVolume, stage(volume_id="v", staging_target_path=s), invalid),
        (node.NodeStageVolume, stage(volume_id="v", staging_target_path=s, volume_capability=block), invalid),
        (
            node.NodeStageVolume,
            stage(volume_id="unknown", staging_target_path=s, volume_capability=cap),
            missing,
        ),
        (
            node.NodeStageVolume,
            stage(
                volume_id="v",
                staging_target_path=s,
                volume_capability=cap,
                volume_context={"uri": "file:///x", "weird key": "1"},
            ),
            invalid,
        ),
        (
            node.NodeStageVolume,
            stage(
                volume_id="v",
                staging_target_path=s,
                volume_capability=cap,
                volume_context=base,
                secrets={"password": "p"},
            ),
            invalid,
        ),
        (
            node.NodePublishVolume,
            publish(volume_id="v", staging_target_path=s, volume_capability=cap),
            invalid,
        ),
        (node.NodePublishVolume, publish(volume_id="v", staging_target_path=s, target_path=t), invalid),
        (
            node.NodePublishVolume,
            publish(volume_id="unknown", staging_target_path=s, target_path=t, volume_capability=cap),
            Code.FAILED_PRECONDITION,
        ),
        (node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(volume_id="v"), invalid),
        (node.NodeUnstageVolume, csi_pb2.NodeUnstageVolumeRequest(volume_id="v"), invalid),
        (
            node.NodeGetVolumeStats,
            csi_pb2.NodeGetVolumeStatsRequest(volume_id="unknown", volume_path=t),
            missing,
        ),
        (controller.CreateVolume, create(volume_capabilities=[cap], parameters=base), invalid),
        (controller.CreateVolume, create(name="n", parameters=base), invalid),
        (controller.CreateVolume, create(name="n", volume_capabilities=[block], parameters=base), invalid),
        (controller.CreateVolume, create(name="n", volume_capabilities=[cap]), invalid),
        (
            controller.CreateVolume,
            create(name="n", volume_capabilities=[cap], parameters={"uri": "s3://b/p?secret_key=abc"}),
            invalid,
        ),
        (
            controller.CreateVolume,
            create(name="n", volume_capabilities=[single_writer], parameters=base),
            invalid,
        ),
        (
            controller.CreateVolume,
            create(
                name="n",
                volume_capabilities=[cap],
                parameters=base,
                capacity_range=csi_pb2.CapacityRange(required_bytes=10, limit_bytes=5),
            ),
            Code.OUT_OF_RANGE,
        ),
        (controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(), invalid),
        (
            controller.ValidateVolumeCapabilities,
            csi_pb2.ValidateVolumeCapabilitiesRequest(
                volume_id=f"nope@file://{paths}", volume_capabilities=[cap]
            ),
            missing,
        ),
    ]
    for call, request, expected in cases:
        assert code_of(call, request) == expected, (call, request)
    assert not os.path.exists(s) or kernel.mount_at(s) is None


def test_concurrent_calls_on_one_volume_are_aborted(plugin, paths):
    """While a stage is in progress (here: a store that accepts connections and never answers), a second
    call for the same volume is refused with ABORTED instead of mounting twice."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        uri = f"s3://bucket/p?endpoint_override=127.0.0.1:{port}&scheme=http"
        request = csi_pb2.NodeStageVolumeRequest(
            volume_id=unique("slow"),
            staging_target_path=str(paths / "staging"),
            volume_capability=capability(),
            volume_context={"uri": uri, "timeout": "3"},
            secrets={"accessKeyId": "a", "secretAccessKey": "b"},
        )
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(code_of, plugin.node.NodeStageVolume, request)
            time.sleep(0.5)
            second = pool.submit(code_of, plugin.node.NodeStageVolume, request)
            assert second.result() == Code.ABORTED
            assert first.result() == Code.INTERNAL  # the store never answered
    assert "did not" in plugin.log() or "cannot mount" in plugin.log()


def test_volume_attributes_become_mount_options():
    """Attributes map to `-o` items by name, so options pfs adds later work with no plugin change."""
    from csi.volume import mount_options

    attributes = {
        "uri": "s3://b/p", "snapshot": "week-1", "cacheDir": "/var/cache/pfs", "cacheSize": "20G",
        "metadataTTL": "30", "anonymous": "true", "readOnly": "false", "mountOptions": "threads=8,debug",
        "csi.storage.k8s.io/pod.name": "trainer-0", "storage.kubernetes.io/csiProvisionerIdentity": "x",
    }  # fmt: skip
    assert mount_options(attributes, read_only=True, mount_flags=["uid=1000"]) == [
        "anonymous", "cache_dir=/var/cache/pfs", "cache_size=20G", "metadata_ttl=30", "snapshot=week-1",
        "ro", "threads=8", "debug", "uid=1000",
    ]  # fmt: skip


def test_command_line_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "csi", "--endpoint", f"unix://{tmp_path}/s.sock", "--mode", "node"],
        capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "NODE_ID"},
    )  # fmt: skip
    assert result.returncode == 2 and "--node-id" in result.stderr and "Traceback" not in result.stderr


def test_delete_keeps_data_when_the_storage_class_retains_it(plugin, tmp_path):
    base = f"file://{tmp_path}"
    kept = plugin.controller.CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name="kept", volume_capabilities=[capability()], parameters={"uri": base, "retain": "true"}
        )
    ).volume
    assert "retain" not in kept.volume_context
    (tmp_path / "kept" / "model.pt").write_bytes(b"weights")
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=kept.volume_id))
    assert (tmp_path / "kept" / "model.pt").read_bytes() == b"weights"
    assert not (tmp_path / ".kept.csi.json").exists()
