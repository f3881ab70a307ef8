"""pjdfstest, the POSIX file system conformance suite, on a pfs mount of file://: at least 95% of its subtests
must pass (README.md lists what still fails and why).

The suite is built from the sources in ../shared/tools next to the checkout (skipped with that reason where
there are none) and run as root from inside the mount with `prove -r`. Most of its time is spent in `sleep 1`
(ctime checks), so its families run side by side, each from a directory of its own (a test's checks of its
working directory's times must not see another family's changes)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.mounting import Mount

TOOLS = Path(__file__).resolve().parents[2] / "shared" / "tools"
BUILD = TOOLS / "build-pjdfstest.sh"
REQUIRED = 0.95
TIMEOUT = 900  # seconds for one family
PARALLEL = 4  # families run at once
SLOWEST = ("rename", "chown", "unlink", "open")  # started first: the run lasts about as long as rename


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


def subtests_run(report: str) -> int:
    found = re.search(r"Files=\d+, Tests=(\d+)", report)
    assert found, f"prove printed no summary:\n{report[-3000:]}"
    return int(found.group(1))


def run_family(suite: Path, family: str, mount: str) -> str:
    """prove's output for one family, run from its own directory of the mount."""
    cwd = os.path.join(mount, family)
    os.mkdir(cwd)
    os.chmod(cwd, 0o755)
    run = subprocess.run(
        ["prove", "-r", str(suite / family)], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )
    return run.stdout + run.stderr


def test_failed_subtests_are_read_from_proves_summary():
    report = """
/x/tests/chmod/03.t (Wstat: 0 Tests: 5 Failed: 4)
  Failed tests:  1-4
/x/tests/rename/00.t         (Wstat: 0 Tests: 122 Failed: 74)
Files=238, Tests=8798, 419 wallclock secs
"""
    assert failed_subtests(report) == {"chmod/03.t": 4, "rename/00.t": 74}
    assert subtests_run(report) == 8798


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
        families = sorted((p.name for p in suite.iterdir() if p.is_dir()), key=lambda f: f not in SLOWEST)
        with (
            Mount(f"file://{base}", os.path.join(top, "m"), args=("-o", "allow_other")) as mount,
            ThreadPoolExecutor(PARALLEL) as pool,
        ):
            reports = list(pool.map(lambda family: run_family(suite, family, mount.path), families))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    tests = sum(subtests_run(report) for report in reports)
    failed = {name: count for report in reports for name, count in failed_subtests(report).items()}
    passed = 1 - sum(failed.values()) / tests
    listing = ", ".join(f"{name} {count}" for name, count in sorted(failed.items()))
    print(f"pjdfstest on file://: {passed:.1%} of {tests} subtests pass; failing: {listing}")
    assert passed >= REQUIRED, f"{passed:.1%} of {tests} subtests pass; failing subtests by file: {listing}"
