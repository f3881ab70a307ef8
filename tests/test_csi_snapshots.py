"""VolumeSnapshots through pfs-csi, as Kubernetes drives them, at the gRPC level: a dataset PVC, a
VolumeSnapshot of it, PVCs restored from it (read-only: a view of the snapshot; writable: a copy), pods
reading them while the source keeps changing; on a local directory and on the loopback S3 server."""

from __future__ import annotations

import errno
import os

import grpc
import pytest

from csi import csi_pb2
from pfs.snapshots.store import SnapshotStore
from tests import csi_plugin
from tests.conftest import LocalRaw, S3Raw, unique
from tests.csi_plugin import Mode, Plugin, capability, cleanup_mounts, running_plugin

Code = grpc.StatusCode
DATASET = {"train/shard-0.bin": os.urandom(300_000), "train/shard-1.bin": b"b" * 1000, "labels.csv": b"x,1\n"}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    with running_plugin(str(tmp_path_factory.mktemp("csisnap"))) as running:
        yield running


@pytest.fixture(params=["file", "s3"])
def base(request, tmp_path):
    """(StorageClass parameters, secrets, raw view of the base) on each backend."""
    if request.param == "file":
        (tmp_path / "bucket").mkdir()
        return {"uri": f"file://{tmp_path}/bucket", "metadataTTL": "0"}, {}, LocalRaw(f"{tmp_path}/bucket")
    server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
    prefix = unique("snapbase")
    secrets = {"accessKeyId": server.access_key, "secretAccessKey": server.secret_key}
    return {"uri": server.uri(bucket, prefix), "metadataTTL": "0"}, secrets, S3Raw(server, bucket, prefix)


class Cluster:
    """What the external provisioner, snapshotter and kubelet do, one call each."""

    def __init__(self, plugin: Plugin, parameters: dict[str, str], secrets: dict[str, str], pods) -> None:
        self.plugin, self.parameters, self.secrets, self.pods = plugin, parameters, secrets, pods
        self.staged: list[tuple[str, str, list[str]]] = []

    def create_volume(self, name: str, mode: int = Mode.MULTI_NODE_MULTI_WRITER, snapshot_id: str = ""):
        request = csi_pb2.CreateVolumeRequest(
            name=name,
            volume_capabilities=[capability(mode)],
            parameters=self.parameters,
            secrets=self.secrets,
        )
        if snapshot_id:
            request.volume_content_source.snapshot.snapshot_id = snapshot_id
        return self.plugin.controller.CreateVolume(request).volume

    def delete_volume(self, volume_id: str) -> None:
        request = csi_pb2.DeleteVolumeRequest(volume_id=volume_id, secrets=self.secrets)
        self.plugin.controller.DeleteVolume(request)

    def snapshot(self, name: str, volume_id: str) -> csi_pb2.Snapshot:
        request = csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=volume_id, secrets=self.secrets)
        return self.plugin.controller.CreateSnapshot(request).snapshot

    def delete_snapshot(self, snapshot_id: str) -> None:
        request = csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id, secrets=self.secrets)
        self.plugin.controller.DeleteSnapshot(request)

    def list_snapshots(self, **filters) -> csi_pb2.ListSnapshotsResponse:
        request = csi_pb2.ListSnapshotsRequest(secrets=self.secrets, **filters)
        return self.plugin.controller.ListSnapshots(request)

    def mount(self, volume: csi_pb2.Volume, mode: int = Mode.MULTI_NODE_MULTI_WRITER) -> str:
        """Stage on this node and publish into one pod; the pod's path."""
        pod = unique("pod")
        staging, target = str(self.pods / pod / "staging"), str(self.pods / pod / "vol")
        csi_plugin.stage_and_publish(
            self.plugin, volume.volume_id, volume.volume_context, staging, target, self.secrets, mode
        )
        self.staged.append((volume.volume_id, staging, [target]))
        return target

    def unmount(self, target: str) -> None:
        for volume_id, staging, targets in list(self.staged):
            if target in targets:
                csi_plugin.unpublish_and_unstage(self.plugin, volume_id, staging, targets)
                self.staged.remove((volume_id, staging, targets))


def write_tree(root: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)


def read_tree(root: str) -> dict[str, bytes]:
    tree = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                tree[os.path.relpath(path, root)] = f.read()
    return tree


def fails_with(code: grpc.StatusCode, call, *args, **kwargs) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


@pytest.fixture
def cluster(plugin, base, tmp_path):
    parameters, secrets, _ = base
    made = Cluster(plugin, parameters, secrets, tmp_path / "pods")
    yield made
    for _, _, targets in list(made.staged):
        made.unmount(targets[0])
    cleanup_mounts(str(tmp_path))


def test_pvc_snapshot_restore_flow(cluster, base):
    dataset = cluster.create_volume(unique("pvc-dataset"))
    writer = cluster.mount(dataset)
    write_tree(writer, DATASET)
    os.symlink("train/shard-1.bin", f"{writer}/latest")

    name = unique("snapshot")
    snap = cluster.snapshot(name, dataset.volume_id)
    assert snap.ready_to_use and snap.source_volume_id == dataset.volume_id
    assert snap.size_bytes == sum(len(d) for d in DATASET.values())  # files' bytes
    assert snap.creation_time.seconds > 0
    assert cluster.snapshot(name, dataset.volume_id) == snap  # a retried CreateSnapshot: the same answer
    other = cluster.create_volume(unique("pvc-other"))
    fails_with(Code.ALREADY_EXISTS, cluster.snapshot, name, other.volume_id)

    # The dataset keeps changing after the snapshot: new files and directories.
    write_tree(writer, {"train/shard-2.bin": b"new after the snapshot", "eval/x": b"later"})

    # ReadOnlyMany restore: a view of the snapshot, instant, nothing copied.
    view = cluster.create_volume(unique("pvc-pinned"), Mode.MULTI_NODE_READER_ONLY, snap.snapshot_id)
    assert view.content_source.snapshot.snapshot_id == snap.snapshot_id
    assert view.volume_context["snapshot"].startswith("volume+")
    assert view.capacity_bytes >= snap.size_bytes
    pod = cluster.mount(view, Mode.MULTI_NODE_READER_ONLY)
    assert read_tree(pod) == {**DATASET, "latest": DATASET["train/shard-1.bin"]}
    assert os.readlink(f"{pod}/latest") == "train/shard-1.bin"
    with pytest.raises(OSError) as refused:
        open(f"{pod}/train/new", "w")
    assert refused.value.errno in (errno.EROFS, errno.EACCES)

    # ReadWriteOnce restore: an independent copy that can be written.
    copy = cluster.create_volume(unique("pvc-copy"), Mode.SINGLE_NODE_WRITER, snap.snapshot_id)
    assert "snapshot" not in copy.volume_context
    scratch = cluster.mount(copy, Mode.SINGLE_NODE_WRITER)
    assert read_tree(scratch) == {**DATASET, "latest": DATASET["train/shard-1.bin"]}
    write_tree(scratch, {"labels.csv": b"relabelled\n"})
    assert open(f"{writer}/labels.csv", "rb").read() == DATASET["labels.csv"]

    # The snapshot is listed, by id, by source volume and in pages.
    assert [e.snapshot for e in cluster.list_snapshots(snapshot_id=snap.snapshot_id).entries] == [snap]
    assert [e.snapshot for e in cluster.list_snapshots(source_volume_id=dataset.volume_id).entries] == [snap]
    assert not cluster.list_snapshots(source_volume_id=other.volume_id).entries
    second = cluster.snapshot(unique("snapshot"), dataset.volume_id)
    first_page = cluster.list_snapshots(source_volume_id=dataset.volume_id, max_entries=1)
    assert len(first_page.entries) == 1 and first_page.next_token
    rest = cluster.list_snapshots(source_volume_id=dataset.volume_id, starting_token=first_page.next_token)
    assert {e.snapshot.snapshot_id for e in [*first_page.entries, *rest.entries]} == {
        snap.snapshot_id, second.snapshot_id,
    }  # fmt: skip
    assert not rest.next_token
    fails_with(Code.ABORTED, cluster.list_snapshots, starting_token="not-a-token")

    # The source's data outlives what reads it; the view outlives its VolumeSnapshot.
    cluster.unmount(writer)
    fails_with(Code.FAILED_PRECONDITION, cluster.delete_volume, dataset.volume_id)
    cluster.delete_snapshot(snap.snapshot_id)
    cluster.delete_snapshot(snap.snapshot_id)  # NOT_FOUND is success
    cluster.delete_snapshot(second.snapshot_id)
    assert not cluster.list_snapshots(source_volume_id=dataset.volume_id).entries
    cluster.unmount(pod)
    pod = cluster.mount(view, Mode.MULTI_NODE_READER_ONLY)  # a new node mounts it after the deletion
    assert read_tree(pod)["labels.csv"] == DATASET["labels.csv"]
    cluster.unmount(pod)
    fails_with(Code.FAILED_PRECONDITION, cluster.delete_volume, dataset.volume_id)
    cluster.delete_volume(view.volume_id)
    cluster.delete_volume(dataset.volume_id)
    cluster.unmount(scratch)
    cluster.delete_volume(copy.volume_id)
    cluster.delete_volume(other.volume_id)


def test_writable_restore_of_a_changed_object_fails_and_leaves_nothing(cluster, base):
    _, _, raw = base
    dataset = cluster.create_volume(unique("pvc-dataset"))
    writer = cluster.mount(dataset)
    write_tree(writer, DATASET)
    cluster.unmount(writer)
    snap = cluster.snapshot(unique("snapshot"), dataset.volume_id)
    volume_dir = dataset.volume_id.partition("@")[0]
    raw.put(f"{volume_dir}/train/shard-1.bin", b"rewritten by another client, other size")

    name = unique("pvc-restore")
    for _ in range(2):  # a retry fails the same way: nothing half-restored was kept
        message = fails_with(
            Code.FAILED_PRECONDITION, cluster.create_volume, name, Mode.SINGLE_NODE_WRITER, snap.snapshot_id
        )
        assert "train/shard-1.bin changed since the snapshot" in message and "nothing was restored" in message
        assert not raw.exists(f"{name}/labels.csv") and not raw.exists(f".{name}.csi.json")
    cluster.delete_snapshot(snap.snapshot_id)
    fails_with(Code.NOT_FOUND, cluster.create_volume, name, Mode.SINGLE_NODE_WRITER, snap.snapshot_id)
    cluster.delete_volume(dataset.volume_id)


def test_snapshot_is_the_manifest_pfs_snapshot_create_writes(cluster, base, tmp_path):
    """`pfs snapshot list` and `show` see a VolumeSnapshot: it is one of the volume's pfs snapshots."""
    from pfs.backends import BackendOptions, open_backend

    parameters, secrets, _ = base
    dataset = cluster.create_volume(unique("pvc-dataset"))
    writer = cluster.mount(dataset)
    write_tree(writer, DATASET)
    cluster.unmount(writer)
    snap = cluster.snapshot("nightly", dataset.volume_id)
    options = BackendOptions(access_key=secrets.get("accessKeyId"), secret_key=secrets.get("secretAccessKey"))
    uri = parameters["uri"].partition("?")
    backend = open_backend(f"{uri[0].rstrip('/')}/{dataset.volume_id.partition('@')[0]}?{uri[2]}", options)
    try:
        store = SnapshotStore(backend, "volume")
        assert store.names() == ["nightly"]
        assert store.info("nightly").bytes == snap.size_bytes == sum(map(len, DATASET.values()))
    finally:
        backend.close()
    cluster.delete_snapshot(snap.snapshot_id)
    cluster.delete_volume(dataset.volume_id)


class Recording:
    """A real backend that notes every call made to it (and to its reserved area)."""

    def __init__(self, backend, calls: list[str]) -> None:
        self._backend, self.calls = backend, calls

    def __getattr__(self, name: str):
        attribute = getattr(self._backend, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self.calls.append(f"{name} {args[0] if args else ''}".strip())
            result = attribute(*args, **kwargs)
            return Recording(result, self.calls) if name == "reserved_area" else result

        return call


def test_read_only_restore_lists_nothing_and_copies_no_data(tmp_path):
    """The instant restore: the manifest is read and written again, nothing else is asked of the store."""
    from csi import snapshots, volume
    from pfs.backends import BackendOptions, open_backend

    source = volume.DynamicVolume("dataset", f"file://{tmp_path}")
    for rel, data in DATASET.items():
        os.makedirs(os.path.dirname(tmp_path / "dataset" / rel), exist_ok=True)
        (tmp_path / "dataset" / rel).write_bytes(data)
    tree = open_backend(source.uri, BackendOptions())
    try:
        SnapshotStore(tree, "dataset").create("nightly")
        calls: list[str] = []
        ref = snapshots.SnapshotRef("nightly", source)
        snapshots.make_view(Recording(tree, calls), ref, "pinned")  # type: ignore[arg-type]
    finally:
        tree.close()
    assert not [c for c in calls if c.startswith(("list_dir", "walk", "open_reader train", "copy_file"))]
    written = [c for c in calls if c.startswith(("write_file", "put_file", "make_dir"))]
    assert written == ["write_file snapshots/volume+pinned.parquet"], calls
    assert sorted(os.listdir(tmp_path / "dataset" / ".pfs" / "snapshots")) == [
        "nightly.parquet", "volume+pinned.parquet",
    ]  # fmt: skip
