"""Run `pfs-csi` in tests as Kubernetes does: a separate process on a unix socket, called through the
generated gRPC stubs, with its log captured to a file the tests read."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from csi import csi_pb2, csi_pb2_grpc
from pfs.mount import control, kernel

Mode = csi_pb2.VolumeCapability.AccessMode.Mode
# The plugin must get credentials from CSI requests only, never from its own environment.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def capability(mode: int = Mode.MULTI_NODE_MULTI_WRITER, block: bool = False) -> csi_pb2.VolumeCapability:
    cap = csi_pb2.VolumeCapability(access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))
    if block:
        cap.block.SetInParent()
    else:
        cap.mount.SetInParent()
    return cap


@dataclass
class Plugin:
    root: str  # state dir, socket and log live here
    node_id: str = "node-1"
    mode: str = "all"
    recovery_interval: float = 1.0
    probe_timeout: float | None = None  # the plugin's default unless set
    process: subprocess.Popen | None = field(default=None, repr=False)
    channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def socket(self) -> str:
        return os.path.join(self.root, "csi.sock")

    @property
    def log_file(self) -> str:
        return os.path.join(self.root, "plugin.log")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, "state")

    def start(self) -> Plugin:
        env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_ENV}
        with open(self.log_file, "a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "csi", "--endpoint", f"unix://{self.socket}",
                    "--node-id", self.node_id, "--mode", self.mode, "--state-dir", self.state_dir,
                    "--recovery-interval", str(self.recovery_interval),
                    *(["--probe-timeout", str(self.probe_timeout)] if self.probe_timeout else []),
                ],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        grpc.channel_ready_future(self.channel).result(timeout=30)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.stop(sig)
        self.start()

    @property
    def identity(self) -> csi_pb2_grpc.IdentityStub:
        return csi_pb2_grpc.IdentityStub(self.channel)

    @property
    def controller(self) -> csi_pb2_grpc.ControllerStub:
        return csi_pb2_grpc.ControllerStub(self.channel)

    @property
    def node(self) -> csi_pb2_grpc.NodeStub:
        return csi_pb2_grpc.NodeStub(self.channel)

    def log(self) -> str:
        with open(self.log_file) as f:
            return f.read()


def stage_and_publish(
    plugin: Plugin, volume_id: str, context: dict[str, str], staging: str, target: str,
    secrets: dict[str, str] | None = None, mode: int = Mode.MULTI_NODE_MULTI_WRITER,
) -> None:  # fmt: skip
    """What kubelet does before a pod starts: stage the volume on the node, publish it at the pod's path."""
    cap = capability(mode)
    plugin.node.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=staging, volume_capability=cap,
            volume_context=context, secrets=secrets or {},
        )
    )  # fmt: skip
    plugin.node.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=volume_id, staging_target_path=staging, target_path=target,
            volume_capability=cap, volume_context=context,
        )
    )  # fmt: skip


def unpublish_and_unstage(plugin: Plugin, volume_id: str, staging: str, targets: list[str]) -> None:
    for target in targets:
        _as_kubelet(
            plugin.node.NodeUnpublishVolume,
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target),
        )
    _as_kubelet(
        plugin.node.NodeUnstageVolume,
        csi_pb2.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging),
    )


def _as_kubelet(call, request, patience: float = 30.0):
    """`call(request)`, called again while it answers ABORTED (another operation on the volume, such as the
    plugin's recovery of a mount that went away, is in progress), as the kubelet does."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return call(request)
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.ABORTED or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def cleanup_mounts(root: str) -> None:
    """After a test: detach every mount under `root` and end the pfs daemons behind them."""
    root = os.path.abspath(root)
    pids = set()
    for entry in reversed(kernel.mounts()):
        if entry.mountpoint.startswith(root + "/"):
            if entry.fstype == "fuse.pfs" and not kernel.is_stale(entry.mountpoint):
                with contextlib.suppress(OSError):
                    pids.add(control.daemon_pid(entry.mountpoint))
            subprocess.run(["umount", "-l", entry.mountpoint], capture_output=True)
    for pid in pids:
        if not kernel.wait_for_exit(pid, 10):
            os.kill(pid, signal.SIGKILL)
            kernel.wait_for_exit(pid, 10)


@contextlib.contextmanager
def running_plugin(root: str) -> Iterator[Plugin]:
    """A plugin on `root` for a test module; afterwards every mount under `root`'s parent is detached (the
    tests' own directories are its siblings)."""
    plugin = Plugin(root).start()
    try:
        yield plugin
    finally:
        plugin.stop()
        cleanup_mounts(os.path.dirname(root))
