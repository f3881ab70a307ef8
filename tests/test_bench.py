"""The benchmark harness and `pfs bench`, run for real at tiny sizes (no speed is asserted anywhere).

`python -m benchmarks run --quick` starts its own `rclone serve s3`, mounts pfs, rclone, s3fs and the floor
(benchmarks/floorfs.py, in its read and write modes) on it, runs
every scenario against every client and writes results.json, results.md and the charts; this checks that
every figure exists and is a sane number, and that nothing is left mounted.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import loader, report
from benchmarks.clients import ADAPTERS
from benchmarks.config import CLIENTS, PHASES, READ_SCENARIOS, SCENARIOS
from benchmarks.results import Result
from tests.mounting import Mount, run_pfs

# The quick run mounts eight clients three times per read scenario: minutes on a busy 2-core machine.
pytestmark = pytest.mark.timeout(900)

DAEMON_CLIENTS = (
    "pfs",
    "pfs-ro",
    "pfs-snap",
    "pfs-wb",
    "rclone",
    "s3fs",
    "floor",
    "floor-s3",
    "floor-threads",
    "floor-noopen",
    "floor-wb",
)


def _fuse_mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str]:
    base = tmp_path_factory.mktemp("bench")
    out = base / "out"
    env = {**os.environ, "PFS_BENCH_DIR": str(base / "state")}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _fuse_mounts_under(str(base)) == []
    assert not os.listdir(base / "state" / "runs"), "the run's mounts and caches were not removed"
    return json.loads((out / "results.json").read_text()), str(out)


def test_quick_run_measures_every_scenario_for_every_client(quick_run):
    data, _ = quick_run
    results = data["results"]
    for scenario in SCENARIOS:
        for client in CLIENTS:
            mine = [r for r in results if r["scenario"] == scenario and r["client"] == client]
            writing = scenario.startswith("write")
            skipped = not (ADAPTERS[client].writes if writing else ADAPTERS[client].reads)
            hinted_elsewhere = scenario == "loader-hints" and client not in ("pfs", "pfs-ro")
            if skipped or hinted_elsewhere or (scenario.startswith("loader") and client == "raw"):
                assert not mine, f"{client} ran {scenario}"
                continue
            if scenario.startswith("loader") and not loader.available():
                continue  # the run said it skipped it
            assert mine, f"{scenario} did not run for {client}"
            if scenario in READ_SCENARIOS:
                assert {r["phase"] for r in mine} == set(PHASES), (scenario, client)


def test_quick_run_numbers_are_sane(quick_run):
    data, _ = quick_run
    for r in data["results"]:
        where = f"{r['scenario']} {r['metric']} {r['phase']} {r['client']}"
        assert math.isfinite(r["value"]) and r["value"] > 0, where
        assert r["seconds"] > 0 and r["ops"] > 0, where
        assert r["reader_cpu_s"] >= 0, where
        if r["client"] in DAEMON_CLIENTS:
            assert r["daemon_peak_rss_mib"] > 1, where
            assert r["daemon_cpu_s"] >= 0, where
        # The whole machine's share and the server's, for every client (local ones leave the server idle).
        assert r["machine_cpu_s"] >= 0 and r["stolen_cpu_s"] >= 0, where
        assert r["server_cpu_s"] >= 0 and r["server_sent_bytes"] >= 0, where
        if (r["scenario"], r["phase"], r["client"]) == ("seq-1", "cold", "raw"):
            assert r["server_sent_bytes"] >= r["bytes"], where  # a direct read: every byte from the server
        if r["metric"] == "read MiB/s":
            expected = data["meta"]["sizes"]["big_file"] if r["scenario"].startswith("seq") else 0
            assert r["bytes"] >= expected, where


def test_quick_run_report_and_charts(quick_run):
    data, out = quick_run
    assert data["meta"]["quick"] is True and data["meta"]["versions"]["pfs"]
    report = open(os.path.join(out, "results.md")).read()
    assert (
        "| pfs / floor | pfs / floor-s3 | pfs / floor-threads | pfs-ro / floor-noopen"
        " | pfs-snap / floor-noopen | pfs-wb / floor-wb"
        " | pfs / best" in report
    )
    assert "| big file written >= 1.0x floor (pyfuse3 and raw's stream) |" in report
    assert "floor-noopen ms/op" in report
    assert "The whole machine's CPU in milliseconds per operation" in report
    assert "Bytes the S3 server sent for each byte" in report
    for scenario in SCENARIOS:
        if scenario.startswith("loader") and not loader.available():
            continue
        with open(os.path.join(out, f"{scenario}.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"({scenario}.png)" in report


def _check_bench_output(stdout: str) -> None:
    for step in (
        "write big file",
        "read big file",
        "write small files",
        "read small files",
        "stat small files",
    ):
        assert step in stdout
    assert "MiB/s" in stdout and "files/s" in stdout and "ms/block" in stdout and "ms/file" in stdout


def test_pfs_bench_on_a_plain_directory(tmp_path):
    result = run_pfs("bench", str(tmp_path), "--big-file-size", "4", "--small-file-count", "5", "-t", "2")
    assert result.returncode == 0, result.stderr
    _check_bench_output(result.stdout)
    assert "where the time went" not in result.stdout
    assert os.listdir(tmp_path) == []


def test_pfs_bench_on_a_pfs_mount_shows_the_daemon_counters(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    with Mount(f"file://{source}", str(tmp_path / "mnt")) as mount:
        result = run_pfs("bench", mount.path, "--big-file-size", "4", "--small-file-count", "5", "-t", "2")
        assert result.returncode == 0, result.stderr
    _check_bench_output(result.stdout)
    assert "where the time went" in result.stdout
    assert "ops.read" in result.stdout and "bytes_read" in result.stdout
    assert [n for n in os.listdir(source) if n.startswith("pfs-bench")] == []


def test_pfs_bench_refuses_a_missing_path(tmp_path):
    result = run_pfs("bench", str(tmp_path / "nope"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_targets_leave_out_cpu_too_little_to_count():
    """A run too short for the clock ticks daemon CPU is counted in (the `--quick` smoke) shows 0 ms per
    file: its CPU target is not judged, and the report is still written."""

    def small(client: str, cpu: float) -> Result:
        return Result("small-1", "files/s", "cold", client, 100.0, True, 1.0, 16, 16 << 17, 0.1, cpu)

    text = report.targets([small("pfs", 0.0), small("s3fs", 0.01)])
    line = "| daemon CPU per small file cold (small-1) <= the faster peer's | not measured in this run | |"
    assert line in text
