"""The Kubernetes manifests in deploy/ render offline, validate against the Kubernetes schemas, and say
what the driver needs (no attach, privileged node plugin with /dev/fuse, Bidirectional kubelet dir,
HostToContainer in pods, the snapshot and health-monitor sidecars with their RBAC); the committed gRPC
stubs match proto/csi.proto.

kubernetes-validate knows only the built-in kinds. The VolumeSnapshotClass and VolumeSnapshot objects
(snapshot.storage.k8s.io/v1, CRDs installed with snapshot-controller) are checked here against the fields
those CRDs define: required fields present, no unknown ones, enums and types right, references resolved."""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from csi import DRIVER_NAME
from tests.kustomize import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "deploy", "base")
EXAMPLES = os.path.join(ROOT, "deploy", "examples")
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are meant for
SNAPSHOT_API = "snapshot.storage.k8s.io/v1"
DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _key(doc: dict) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str, str], dict]:
    return {_key(doc): doc for doc in render(BASE)}


def _examples() -> list[dict]:
    documents = []
    for name in sorted(os.listdir(EXAMPLES)):
        with open(os.path.join(EXAMPLES, name)) as f:
            documents += [doc for doc in yaml.safe_load_all(f) if doc]
    return documents


def _builtin(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if doc["apiVersion"] != SNAPSHOT_API]


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_manifests_validate_against_the_schemas(rendered, version):
    for doc in _builtin([*rendered.values(), *_examples()]):
        kubernetes_validate.validate(doc, version, strict=True)


def _check_snapshot_object(doc: dict) -> None:
    """The shape the snapshot.storage.k8s.io/v1 CRDs accept (their openAPIV3Schema, by hand)."""
    metadata = doc["metadata"]
    assert DNS_NAME.fullmatch(metadata["name"]), metadata
    if doc["kind"] == "VolumeSnapshotClass":  # cluster-scoped, no spec
        assert set(doc) <= {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
        assert "namespace" not in metadata and isinstance(doc["driver"], str)
        assert doc["deletionPolicy"] in ("Delete", "Retain")
        assert all(isinstance(v, str) for v in doc.get("parameters", {}).values())
    elif doc["kind"] == "VolumeSnapshot":
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"} and metadata["namespace"]
        spec = doc["spec"]
        assert set(spec) <= {"source", "volumeSnapshotClassName"}
        sources = set(spec["source"])
        assert sources in ({"persistentVolumeClaimName"}, {"volumeSnapshotContentName"}), spec
        assert all(isinstance(v, str) and v for v in spec["source"].values())
    else:
        raise AssertionError(f"unexpected {SNAPSHOT_API} kind {doc['kind']}")


def test_snapshot_objects_have_the_shape_their_crds_accept(rendered):
    docs = [*rendered.values(), *_examples()]
    crd_objects = [doc for doc in docs if doc["apiVersion"] == SNAPSHOT_API]
    assert {doc["kind"] for doc in crd_objects} == {"VolumeSnapshotClass", "VolumeSnapshot"}
    for doc in crd_objects:
        _check_snapshot_object(doc)
    classes = {doc["metadata"]["name"]: doc for doc in crd_objects if doc["kind"] == "VolumeSnapshotClass"}
    assert classes["pfs"]["driver"] == DRIVER_NAME
    parameters = classes["pfs"]["parameters"]
    assert parameters["csi.storage.k8s.io/snapshotter-secret-name"] == "pfs-credentials"
    claims = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d
        for d in docs
        if d["kind"] == "PersistentVolumeClaim"
    }
    for snapshot in (doc for doc in crd_objects if doc["kind"] == "VolumeSnapshot"):
        assert snapshot["spec"]["volumeSnapshotClassName"] in classes
        namespace = snapshot["metadata"]["namespace"]
        assert (namespace, snapshot["spec"]["source"]["persistentVolumeClaimName"]) in claims
    restored = [c for c in claims.values() if "dataSource" in c["spec"]]
    assert restored and all(
        c["spec"]["dataSource"]["apiGroup"] == "snapshot.storage.k8s.io" for c in restored
    )
    snapshots = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in crd_objects
        if d["kind"] == "VolumeSnapshot"
    }
    for claim in restored:
        assert (claim["metadata"]["namespace"], claim["spec"]["dataSource"]["name"]) in snapshots
        assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]  # the instant, pinned kind of restore


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
def test_offline_renderer_agrees_with_kubectl_kustomize(rendered):
    output = subprocess.run(["kubectl", "kustomize", BASE], capture_output=True, text=True, check=True).stdout
    assert {_key(doc): doc for doc in yaml.safe_load_all(output) if doc} == rendered


def test_driver_objects_say_what_the_driver_needs(rendered):
    driver = rendered[("CSIDriver", "", DRIVER_NAME)]["spec"]
    assert driver["attachRequired"] is False and driver["podInfoOnMount"] is False
    assert rendered[("StorageClass", "", "pfs")]["provisioner"] == DRIVER_NAME

    controller = rendered[("Deployment", "pfs-csi", "pfs-csi-controller")]["spec"]["template"]["spec"]
    sidecars = {
        "csi-provisioner",
        "csi-snapshotter",
        "csi-external-health-monitor-controller",
        "liveness-probe",
    }
    assert {c["name"] for c in controller["containers"]} == {"pfs-csi", *sidecars}
    for container in controller["containers"]:
        assert "--csi-address=/csi/csi.sock" in container["args"] or container["name"] == "pfs-csi"

    node = rendered[("DaemonSet", "pfs-csi", "pfs-csi-node")]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in node["containers"]}
    assert set(containers) == {"pfs-csi", "node-driver-registrar", "liveness-probe"}
    plugin = containers["pfs-csi"]
    assert plugin["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m for m in plugin["volumeMounts"]}
    assert mounts["/var/lib/kubelet"]["mountPropagation"] == "Bidirectional"
    volumes = {v["name"]: v for v in node["volumes"]}
    assert volumes[mounts["/dev/fuse"]["name"]]["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    assert volumes[mounts["/var/cache/pfs"]["name"]]["hostPath"]["path"] == "/var/cache/pfs"
    registration = " ".join(containers["node-driver-registrar"]["args"])
    assert f"/var/lib/kubelet/plugins/{DRIVER_NAME}/csi.sock" in registration


def _rules(rendered, role: str) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rendered[("ClusterRole", "", role)]["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_sidecars_are_granted_what_they_use(rendered):
    bound = {
        doc["roleRef"]["name"]
        for (kind, _, _), doc in rendered.items()
        if kind == "ClusterRoleBinding" and doc["subjects"][0]["name"] == "pfs-csi-controller"
    }
    assert {"pfs-csi-provisioner", "pfs-csi-snapshotter", "pfs-csi-health-monitor"} <= bound
    provisioner = _rules(rendered, "pfs-csi-provisioner")
    assert {"get", "list"} <= provisioner[("snapshot.storage.k8s.io", "volumesnapshots")]
    assert {"get", "list"} <= provisioner[("snapshot.storage.k8s.io", "volumesnapshotcontents")]
    snapshotter = _rules(rendered, "pfs-csi-snapshotter")
    assert {"update", "patch", "watch"} <= snapshotter[("snapshot.storage.k8s.io", "volumesnapshotcontents")]
    assert {"update", "patch"} <= snapshotter[("snapshot.storage.k8s.io", "volumesnapshotcontents/status")]
    assert {"get", "list", "watch"} <= snapshotter[("snapshot.storage.k8s.io", "volumesnapshotclasses")]
    assert "get" in snapshotter[("", "secrets")]
    monitor = _rules(rendered, "pfs-csi-health-monitor")
    for resource in ("persistentvolumes", "persistentvolumeclaims", "pods", "nodes"):
        assert {"get", "list", "watch"} <= monitor[("", resource)]
    assert {"create", "patch"} <= monitor[("", "events")]


def test_examples_use_the_driver_as_documented():
    docs = _examples()
    kinds = [d["kind"] for d in docs]
    assert kinds.count("PersistentVolume") == 2 and "Pod" in kinds and "Secret" in kinds
    pods = [d for d in docs if d["kind"] == "Pod"]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            for mount in container["volumeMounts"]:
                assert mount["mountPropagation"] == "HostToContainer"
    snapshot = next(d for d in docs if d["kind"] == "PersistentVolume" and "snapshot" in str(d))
    assert snapshot["spec"]["accessModes"] == ["ReadOnlyMany"] and snapshot["spec"]["csi"]["readOnly"]


def test_generated_stubs_match_the_proto(tmp_path):
    command = [
        sys.executable, "-m", "grpc_tools.protoc", "--proto_path=csi=proto",
        f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", "proto/csi.proto",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True)
    for name in ("csi_pb2.py", "csi_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / "csi" / name, os.path.join(ROOT, "csi", name), shallow=False), (
            f"csi/{name} is stale: regenerate it (see csi/__init__.py)"
        )


def test_dockerfile_builds_from_the_repository_and_runs_the_plugin():
    with open(os.path.join(ROOT, "deploy", "Dockerfile")) as f:
        lines = [line.split() for line in f if line.strip() and not line.startswith("#")]
    for words in lines:
        if words[0] == "COPY" and not words[1].startswith("--from"):
            for source in words[1:-1]:
                assert os.path.exists(os.path.join(ROOT, source)), source
    assert lines[-1] == ["ENTRYPOINT", '["pfs-csi"]']
