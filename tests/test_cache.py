"""The read cache through real mounts: hits and misses, consistency, corruption, bounds, sharing, tools."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import subprocess
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pfs.cache import DiskTier
from pfs.fs.ahead import FOLLOW_AFTER
from pfs.fs.versions import TRUST_MARGIN_S
from pfs.mount import control
from tests.conftest import s3_case, unique
from tests.mounting import Mount, run_pfs, wait_until
from testservers.s3 import free_port

MiB = 1 << 20
SMALL_BLOCKS = ("-o", "block_size=1M,metadata_ttl=1")


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def case(backend_case):
    return backend_case.subcase(unique("c"))


def mount(case, tmp_path, name="m", cache="cache", args=SMALL_BLOCKS) -> Mount:
    return Mount(case.uri, str(tmp_path / name), env=case.env, cache_dir=str(tmp_path / cache), args=args)


def _settle(case) -> None:
    """Let a new file's version become trustworthy from its attributes: an object's ETag
    (versions.TRUST_MARGIN_S), and on HDFS, whose modification times come in whole seconds, its size and
    mtime (arrow.backend.YOUNG_NS, the same margin). Before that, a remount asks the store again (an object
    store with one GET that brings the first block along), and HDFS blocks cached by one mount are not the
    next mount's."""
    if case.object_store or case.name == "hdfs":
        time.sleep(TRUST_MARGIN_S + 0.1)


def test_a_remount_reads_from_the_disk_cache(case, tmp_path):
    data = os.urandom(5 * MiB + 123)
    case.raw.put("f.bin", data)
    _settle(case)
    with mount(case, tmp_path) as m:
        assert read(f"{m.path}/f.bin") == data
        first = control.stats(m.path)
    assert first["cache_misses"] == 6 and first["backend_read_bytes"] == len(data)
    with mount(case, tmp_path) as m:
        assert read(f"{m.path}/f.bin") == data
        second = control.stats(m.path)
    assert second.get("cache_misses", 0) == 0 and second.get("backend_read_bytes", 0) == 0
    assert second["cache_hits_disk"] == 6


def test_a_known_object_is_read_from_the_cache_without_asking_the_backend(request, tmp_path):
    """Object stores only: a local directory is revalidated on every open, which costs no request."""
    case = s3_case(request)
    data = os.urandom(2 * MiB)
    case.raw.put("old.bin", data)
    time.sleep(2.1)  # older than the same-second window: its ETag can be trusted for these attributes
    with mount(case, tmp_path) as m:
        assert read(f"{m.path}/old.bin") == data
        assert control.stats(m.path)["backend_opens"] == 1
    with mount(case, tmp_path) as m:
        assert read(f"{m.path}/old.bin") == data
        stats = control.stats(m.path)
    assert stats.get("backend_opens", 0) == 0 and stats.get("backend_read_bytes", 0) == 0


def test_a_directory_read_in_order_costs_one_request_per_file_made_ready_ahead(request, tmp_path):
    """Object stores only: a cold small file is one GET (no HEAD), and the next files of a directory read
    in name order are fetched before their open."""
    case = s3_case(request)
    files = {f"d/f{i:03d}": os.urandom(10_000 + i) for i in range(24)}
    for name, data in files.items():
        case.raw.put(name, data)
    with mount(case, tmp_path, args=("-o", "block_size=1M,metadata_ttl=30")) as m:
        os.listdir(f"{m.path}/d")
        for name in sorted(files):
            assert read(f"{m.path}/{name}") == files[name]
        stats = control.stats(m.path)
    assert stats.get("backend_opens", 0) == 0 and stats["backend_first_reads"] == len(files)
    assert stats["prefetch_files_used"] >= len(files) - FOLLOW_AFTER - 1  # the opens that showed the order


def test_an_object_rewritten_elsewhere_is_seen_after_the_ttl_and_never_mixed(case, tmp_path):
    old, new = b"a" * (3 * MiB), b"b" * (3 * MiB)
    case.raw.put("f.bin", old)
    with mount(case, tmp_path) as m:
        assert read(f"{m.path}/f.bin") == old
        case.raw.put("f.bin", new)  # same size, most likely within the same second
        seen: list[bytes] = []

        def changed() -> bool:
            seen.append(read(f"{m.path}/f.bin"))
            return seen[-1] == new

        assert wait_until(changed, timeout=10, interval=0.1)
        assert all(content in (old, new) for content in seen)


def test_a_corrupt_block_on_disk_is_dropped_and_fetched_again(case, tmp_path):
    data = os.urandom(3 * MiB)
    case.raw.put("f.bin", data)
    _settle(case)
    with mount(case, tmp_path) as m:
        assert read(f"{m.path}/f.bin") == data
    blocks = glob.glob(str(tmp_path / "cache" / "**" / "*.val"), recursive=True)
    assert len(blocks) == 3
    with open(blocks[0], "r+b") as f:
        f.seek(1000)
        f.write(b"\xff" * 16)
    with mount(case, tmp_path) as m:
        assert read(f"{m.path}/f.bin") == data
        stats = control.stats(m.path)
    assert stats["cache_corrupt_blocks"] == 1 and stats["cache_misses"] == 1 and stats["cache_hits_disk"] == 2


def test_the_disk_tier_stays_within_its_size(case, tmp_path):
    files = {f"f{i:02}": os.urandom(MiB) for i in range(18)}
    for name, data in files.items():
        case.raw.put(name, data)
    with mount(case, tmp_path, args=("-o", "block_size=1M,cache_size=6M")) as m:
        for name, data in files.items():  # three times the cache's size
            assert read(f"{m.path}/{name}") == data
            # Counted once the writer is idle: a directory walk while it culls and writes counts files
            # already gone beside files that replaced them.
            assert wait_until(lambda: control.stats(m.path)["memory_in_flight"] == 0)
            assert _disk_bytes(tmp_path / "cache") <= 7 * MiB
        for name, data in files.items():  # evicted blocks come back from the backend, intact
            assert read(f"{m.path}/{name}") == data
    tier = DiskTier(str(tmp_path / "cache"), size_limit=None)
    assert tier.info()["bytes"] <= 7 * MiB
    tier.close()


def _disk_bytes(directory) -> int:
    """Bytes of block files now (the daemon may remove some while they are counted)."""
    total = 0
    for path in glob.glob(f"{directory}/**/*.val", recursive=True):
        with contextlib.suppress(FileNotFoundError):
            total += os.path.getsize(path)
    return total


def test_free_space_is_kept_on_the_cache_file_system(case, tmp_path):
    small_fs = tmp_path / "small"
    small_fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24M", "tmpfs", str(small_fs)], check=True)
    try:
        for i in range(20):
            case.raw.put(f"f{i:02}", os.urandom(MiB))
        args = ("-o", "block_size=1M,cache_size=1G,free_space_ratio=0.5")
        with mount(case, tmp_path, cache="small/cache", args=args) as m:
            for i in range(20):
                read(f"{m.path}/f{i:02}")
            assert wait_until(lambda: control.stats(m.path)["memory_in_flight"] == 0)
            free = os.statvfs(small_fs)
            assert free.f_bavail * free.f_frsize >= 11 * MiB  # half of 24M, less one block
            assert _disk_bytes(small_fs / "cache") >= 4 * MiB  # and it still caches
    finally:
        subprocess.run(["umount", str(small_fs)], check=True)


def test_two_mounts_share_one_cache_directory(case, tmp_path):
    files = {f"f{i}": os.urandom(2 * MiB + i) for i in range(8)}
    late = os.urandom(3 * MiB)
    for name, data in [*files.items(), ("late", late)]:
        case.raw.put(name, data)
    _settle(case)  # else the last mount asks the store again about objects this new
    with mount(case, tmp_path, "a") as a, mount(case, tmp_path, "b") as b:
        errors: list[str] = []

        def reader(root: str, names: list[str]) -> None:
            for name in names:
                if read(f"{root}/{name}") != files[name]:
                    errors.append(f"{root}/{name}")

        # Both mounts fill the one cache at once (two readers can both miss a block and fetch it).
        names = list(files)
        threads = [
            threading.Thread(target=reader, args=(root, order))
            for root in (a.path, b.path)
            for order in (names, names[::-1])
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        # A block one running mount fetched is found by the other, which was mounted before it was stored.
        assert read(f"{a.path}/late") == late
        control.flush(a.path)  # its blocks are in the shared cache now
        fetched = control.stats(b.path).get("backend_read_bytes", 0)
        assert read(f"{b.path}/late") == late
        assert control.stats(b.path).get("backend_read_bytes", 0) == fetched
    with mount(case, tmp_path, "c") as c:
        for name, data in files.items():
            assert read(f"{c.path}/{name}") == data
        assert control.stats(c.path).get("cache_misses", 0) == 0


def test_warmup_fills_the_cache_and_check_reports_it(case, tmp_path):
    files = {f"d/sub/f{i}": os.urandom(300_000 + i) for i in range(12)}
    for name, data in files.items():
        case.raw.put(name, data)
    # A version seen within TRUST_MARGIN_S of its modification is asked for again after a remount.
    time.sleep(TRUST_MARGIN_S + 0.2)
    with mount(case, tmp_path) as m:
        before = run_pfs("warmup", "--check", f"{m.path}/d")
        assert before.returncode == 0 and "(0.0%)" in before.stdout
        halves = [run_pfs("warmup", "--partition", f"{i}/2", f"{m.path}/d") for i in (0, 1)]
        assert all(r.returncode == 0 for r in halves)
        counts = [int(r.stdout.split()[2]) for r in halves]
        assert sum(counts) == 12 and all(counts)
        after = run_pfs("warmup", "--check", f"{m.path}/d")
        assert "12 files" in after.stdout and "(100.0%)" in after.stdout
    with mount(case, tmp_path) as m:
        for name, data in files.items():
            assert read(f"{m.path}/{name}") == data
        assert control.stats(m.path).get("cache_misses", 0) == 0
        evicted = run_pfs("warmup", "--evict", f"{m.path}/d")
        assert evicted.returncode == 0 and "(0.0%)" in run_pfs("warmup", "--check", f"{m.path}/d").stdout


def test_warmup_bad_input_is_one_line(tmp_path):
    (tmp_path / "plain").write_bytes(b"x")
    for args, message in [
        ((str(tmp_path / "missing"),), "no such file"),
        ((str(tmp_path / "plain"),), "not on a pfs mount"),
        (("--partition", "3/2", str(tmp_path)), "between 0 and N-1"),
        (("--partition", "x", str(tmp_path)), "I/N"),
    ]:
        result = run_pfs("warmup", *args)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_memory_budget_holds_with_many_open_files(case, tmp_path):
    files = {f"f{i:02}": os.urandom(3 * MiB) for i in range(24)}
    for name, data in files.items():
        case.raw.put(name, data)
    with mount(case, tmp_path, args=("-o", "block_size=1M,memory_limit=8M,cache_size=0")) as m:
        handles = {name: open(f"{m.path}/{name}", "rb", buffering=0) for name in files}
        try:
            got = {name: b"" for name in files}
            for _ in range(12):  # interleaved sequential streams, 256 KiB at a time
                for name, f in handles.items():
                    got[name] += f.read(256 * 1024)
            assert got == files
        finally:
            for f in handles.values():
                f.close()
        stats = control.stats(m.path)
    assert stats["memory_peak"] <= 8 * MiB
    assert stats["prefetch_blocks"] > 0


def test_random_reads_fetch_only_their_blocks(case, tmp_path):
    data = os.urandom(16 * MiB)
    case.raw.put("f.bin", data)
    with mount(case, tmp_path) as m, open(f"{m.path}/f.bin", "rb", buffering=0) as f:
        for offset in random.Random(7).sample(range(0, 16 * MiB - 4096, 3 * MiB + 4096), 4):
            f.seek(offset)
            assert f.read(4096) == data[offset : offset + 4096]
        stats = control.stats(m.path)
    # 4 KiB each from the backend (no whole block for a block read once), and nothing ahead
    assert stats.get("cache_misses_partial", 0) + stats.get("cache_misses", 0) <= 5
    assert stats.get("prefetch_blocks", 0) == 0 and stats.get("fill_blocks", 0) == 0
    assert stats["backend_read_bytes"] < 4 * MiB  # not one whole (default, 4 MiB) block


def test_stats_metrics_and_cache_commands(case, tmp_path):
    case.raw.put("f.bin", os.urandom(2 * MiB))
    port = free_port()
    with mount(case, tmp_path, args=(*SMALL_BLOCKS, "--metrics-port", str(port))) as m:
        read(f"{m.path}/f.bin")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "pfs_cache_misses_total 2" in metrics and 'pfs_ops_total{op="read"}' in metrics
        samples = {
            (sample.name, sample.labels.get("op"), sample.labels.get("le")): sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
        }
        reads = samples[("pfs_ops_total", "read", None)]
        assert samples[("pfs_fuse_op_seconds_count", "read", None)] == reads > 0
        assert samples[("pfs_fuse_op_seconds_bucket", "read", "+Inf")] == reads
        assert samples[("pfs_fuse_op_seconds_count", "open", None)] >= 1
        # Two blocks missed the cache: at least two requests for bytes went to the backend.
        assert samples[("pfs_backend_request_seconds_count", "read", None)] >= 2
        assert samples[("pfs_backend_request_seconds_sum", "read", None)] > 0
        shown = run_pfs("stats", "--once", m.path)
        assert shown.returncode == 0 and "cache hits" in shown.stdout and "backend" in shown.stdout
        counters = json.loads(run_pfs("stats", "--json", m.path).stdout)
        assert counters["cache_misses"] == 2
    cache = str(tmp_path / "cache")
    info = json.loads(run_pfs("cache", "info", "--json", "--cache-dir", cache).stdout)
    assert info["bytes"] >= 2 * MiB
    cleared = run_pfs("cache", "clear", "--cache-dir", cache)
    assert cleared.returncode == 0 and "cleared" in cleared.stdout
    assert json.loads(run_pfs("cache", "info", "--json", "--cache-dir", cache).stdout)["bytes"] < MiB
    missing = run_pfs("cache", "info", "--cache-dir", str(tmp_path / "none"))
    assert missing.returncode != 0 and "no pfs cache" in missing.stderr


@pytest.mark.parametrize(
    "option, message",
    [
        ("cache_size=lots", "bad value for option 'cache_size'"),
        ("memory_limit=1M", "memory_limit must hold at least 4 blocks"),
        ("block_size=1K", "block_size must be between"),
        ("free_space_ratio=2", "bad value for option 'free_space_ratio'"),
    ],
)
def test_bad_cache_options_are_one_line_errors(tmp_path, option, message):
    (tmp_path / "data").mkdir()
    (tmp_path / "m").mkdir()
    result = run_pfs("mount", f"file://{tmp_path}/data", str(tmp_path / "m"), "-o", option)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
