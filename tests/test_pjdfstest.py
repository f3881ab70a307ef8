"""pjdfstest, the POSIX file system conformance suite, on a pfs mount of file://: at least 95% of its subtests
must pass (README.md lists what still fails and why).

The suite is built from the sources in ../shared/tools next to the checkout (skipped with that reason where
there are none) and run as root from inside the mount with `prove -r`, a few minutes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.mounting import Mount

TOOLS = Path(__file__).resolve().parents[2] / "shared" / "tools"
BUILD = TOOLS / "build-pjdfstest.sh"
REQUIRED = 0.95
TIMEOUT = 900  # seconds for the whole suite: about 4 minutes here, on a busy machine up to twice that


def _missing() -> str | None:
    if not BUILD.exists():
        return f"pjdfstest's sources are not at {TOOLS} (a checkout elsewhere has no ../shared)"
    if os.geteuid() != 0:
        return "pjdfstest runs as root"
    for tool in ("prove", "autoreconf", "make", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (scripts/setup.sh installs it)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def failed_subtests(report: str) -> dict[str, int]:
    """prove's summary: failed subtests per .t file ('rename/00.t' -> 3)."""
    found = re.finditer(r"tests/(\S+\.t)\s+\(Wstat: \d+ Tests: \d+ Failed: (\d+)\)", report)
    return {m.group(1): int(m.group(2)) for m in found}


def test_failed_subtests_are_read_from_proves_summary():
    report = """
/x/tests/chmod/03.t (Wstat: 0 Tests: 5 Failed: 4)
  Failed tests:  1-4
/x/tests/rename/00.t         (Wstat: 0 Tests: 122 Failed: 74)
Files=238, Tests=8798, 419 wallclock secs
"""
    assert failed_subtests(report) == {"chmod/03.t": 4, "rename/00.t": 74}


def test_pjdfstest_on_file_passes_at_least_95_percent(tmp_path):
    built = subprocess.run(
        [str(BUILD), str(tmp_path / "pjdfstest")], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stderr[-2000:]
    suite = tmp_path / "pjdfstest" / "tests"
    # Other users (nobody, 65534...) must reach the mounted directory: a 0755 path from / to it.
    top = tempfile.mkdtemp(prefix="pfs-pjdfstest-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        base = os.path.join(top, "base")
        os.mkdir(base)
        os.chmod(base, 0o755)
        with Mount(f"file://{base}", os.path.join(top, "m"), args=("-o", "allow_other")) as mount:
            run = subprocess.run(
                ["prove", "-r", str(suite)], cwd=mount.path, capture_output=True, text=True, timeout=TIMEOUT
            )
    finally:
        shutil.rmtree(top, ignore_errors=True)
    total = re.search(r"Tests=(\d+)", run.stdout)
    assert total, f"prove printed no summary:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    tests = int(total.group(1))
    failed = failed_subtests(run.stdout)
    passed = 1 - sum(failed.values()) / tests
    listing = ", ".join(f"{name} {count}" for name, count in sorted(failed.items()))
    print(f"pjdfstest on file://: {passed:.1%} of {tests} subtests pass; failing: {listing}")
    assert passed >= REQUIRED, f"{passed:.1%} of {tests} subtests pass; failing subtests by file: {listing}"
