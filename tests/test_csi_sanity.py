"""The Kubernetes CSI conformance suite (csi-sanity, kubernetes-csi/csi-test) against `pfs-csi --mode all`.

The suite is a Go binary: it is found as $CSI_SANITY, else `../shared/tools/csi-sanity` next to the checkout;
without either the tests skip and say so. It runs once on file:// volumes and once on the loopback S3 server
(credentials passed as the CSI secrets of every call, as a Kubernetes StorageClass does). A run fails on any
failed spec, and on any spec skipped for a capability pfs-csi advertises: skips are only allowed for the
capabilities it does not report (ListVolumes, GetCapacity, ControllerPublish, cloning, expansion, ...).
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import unique
from tests.csi_plugin import Plugin, cleanup_mounts

ENV = "CSI_SANITY"
BESIDE_CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "tools" / "csi-sanity"
RUN_TIMEOUT = 900

# The reasons csi-sanity gives for skipping a spec because a capability is not reported; pfs-csi reports none
# of these (no ListVolumes, GetCapacity, ControllerPublish, cloning, expansion, modification, group
# snapshots). Any other skip (a snapshot or node spec, say) fails the run.
ALLOWED_SKIPS = frozenset(
    {
        "ListVolumes not supported",
        "GetCapacity not supported",
        "ControllerPublishVolume not supported",
        "Controller Publish, UnpublishVolume not supported",
        "ControllerUnpublishVolume not supported",
        "Volume Cloning not supported",
        "ControllerExpandVolume not supported",
        "NodeExpandVolume not supported",
        "ControllerModifyVolume not supported",
        "Modify volume not supported",
        "Modify Volume not supported",
        "GroupControllerService not supported",
    }
)

# Specs that must have run (not been skipped): the snapshot service and the node's volume stats.
EXERCISED = ("CreateSnapshot", "DeleteSnapshot", "ListSnapshots", "source snapshot", "NodeGetVolumeStats")


def find_csi_sanity() -> str | None:
    explicit = os.environ.get(ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return str(BESIDE_CHECKOUT) if os.access(BESIDE_CHECKOUT, os.X_OK) else None


BINARY = find_csi_sanity()
pytestmark = pytest.mark.skipif(
    BINARY is None, reason=f"csi-sanity not found: set ${ENV} or put it at {BESIDE_CHECKOUT}"
)


def _yaml(values: dict[str, object]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_quote(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {_quote(value)}")
    return "\n".join(lines) + "\n"


def _quote(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _secrets_file(credentials: dict[str, str]) -> dict[str, dict[str, str]]:
    calls = (
        "CreateVolumeSecret", "DeleteVolumeSecret", "NodeStageVolumeSecret", "NodePublishVolumeSecret",
        "ControllerValidateVolumeCapabilitiesSecret", "CreateSnapshotSecret", "DeleteSnapshotSecret",
        "ListSnapshotsSecret",
    )  # fmt: skip
    return {call: credentials for call in calls}


def run_csi_sanity(root: Path, base_uri: str, credentials: dict[str, str]) -> ET.Element:
    """Run the whole suite against a fresh plugin; returns the JUnit report's root."""
    plugin = Plugin(str(root / "plugin"), node_id="sanity-node")
    os.makedirs(plugin.root)
    params, secrets, report = root / "params.yaml", root / "secrets.yaml", root / "report.xml"
    params.write_text(_yaml({"uri": base_uri}))
    secrets.write_text(_yaml(_secrets_file(credentials)))
    secrets.chmod(0o600)
    plugin.start()
    try:
        command = [
            BINARY, f"--csi.endpoint=unix://{plugin.socket}", f"--csi.mountdir={root / 'target'}",
            f"--csi.stagingdir={root / 'staging'}", f"--csi.testvolumeparameters={params}",
            f"--csi.secrets={secrets}", f"--ginkgo.junit-report={report}", "--ginkgo.no-color",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    finally:
        plugin.stop()
        cleanup_mounts(str(root))
    output = result.stdout + result.stderr
    summary = re.findall(r"\d+ Passed \| \d+ Failed \| \d+ Pending \| \d+ Skipped", output)
    assert result.returncode == 0 and summary, f"csi-sanity:\n{output[-20000:]}\n{plugin.log()[-5000:]}"
    print(f"csi-sanity on {base_uri.partition('?')[0]}: {summary[-1]}")
    return ET.parse(report).getroot()


def unexpected_skips(report: ET.Element) -> list[str]:
    problems = []
    for case in report.iter("testcase"):
        skipped = case.find("skipped")
        if skipped is None or case.get("status") == "pending":
            continue
        reason = (skipped.get("message") or "").removeprefix("skipped - ")
        if reason not in ALLOWED_SKIPS:
            problems.append(f"{case.get('name')}: {reason.strip()[:200]}")
    return problems


def check(report: ET.Element) -> None:
    failed = [c.get("name") for c in report.iter("testcase") if c.find("failure") is not None]
    assert not failed, failed
    problems = unexpected_skips(report)
    assert not problems, problems
    names = " ".join(c.get("name") or "" for c in report.iter("testcase") if c.find("skipped") is None)
    for exercised in EXERCISED:
        assert exercised in names, f"no {exercised} spec ran"


def test_csi_sanity_file(tmp_path):
    base = tmp_path / "volumes"
    base.mkdir()
    check(run_csi_sanity(tmp_path, f"file://{base}", {}))


def test_csi_sanity_s3(tmp_path, s3_server, s3_bucket):
    credentials = {"accessKeyId": s3_server.access_key, "secretAccessKey": s3_server.secret_key}
    check(run_csi_sanity(tmp_path, s3_server.uri(s3_bucket, unique("sanity")), credentials))
