"""The Kubernetes manifests in deploy/ render offline, validate against the Kubernetes schemas, and say
what the driver needs (no attach, privileged node plugin with /dev/fuse, Bidirectional kubelet dir,
HostToContainer in pods); the committed gRPC stubs match proto/csi.proto."""

from __future__ import annotations

import filecmp
import os
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


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_manifests_validate_against_the_schemas(rendered, version):
    for doc in [*rendered.values(), *_examples()]:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
def test_offline_renderer_agrees_with_kubectl_kustomize(rendered):
    output = subprocess.run(["kubectl", "kustomize", BASE], capture_output=True, text=True, check=True).stdout
    assert {_key(doc): doc for doc in yaml.safe_load_all(output) if doc} == rendered


def test_driver_objects_say_what_the_driver_needs(rendered):
    driver = rendered[("CSIDriver", "", DRIVER_NAME)]["spec"]
    assert driver["attachRequired"] is False and driver["podInfoOnMount"] is False
    assert rendered[("StorageClass", "", "pfs")]["provisioner"] == DRIVER_NAME

    controller = rendered[("Deployment", "pfs-csi", "pfs-csi-controller")]["spec"]["template"]["spec"]
    assert {c["name"] for c in controller["containers"]} == {"pfs-csi", "csi-provisioner", "liveness-probe"}

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
