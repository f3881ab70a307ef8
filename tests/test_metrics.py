"""The Prometheus metrics of a mount, in process: the collector reads `Stats`, the latency histograms, the
trio responder, and the backend's timing of its requests (no kernel, no daemon)."""

from __future__ import annotations

import io
import socket

import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pfs.backends import BackendOptions, open_backend
from pfs.counters import BOUNDS, Stats
from pfs.mount import metrics

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

# One observation per kind of duration: below the first bound, on a bound (which its bucket holds), between
# two, above the last.
DURATIONS = [10e-6, BOUNDS[0], 0.003, 0.003, BOUNDS[-1], 120.0]


def _families(stats: Stats) -> dict:
    text = generate_latest(metrics.registry(stats, lambda: stats.snapshot(memory_cached=7))).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _histograms(family) -> dict[str, dict]:
    """{op: {"buckets": [(le, value)], "count": n, "sum": s}} of a parsed histogram family."""
    found: dict[str, dict] = {}
    for sample in family.samples:
        entry = found.setdefault(sample.labels["op"], {"buckets": []})
        if sample.name.endswith("_bucket"):
            entry["buckets"].append((float(sample.labels["le"]), sample.value))
        else:
            entry[sample.name.rsplit("_", 1)[1]] = sample.value
    return found


def test_collector_serves_the_stats_counters_and_cumulative_histograms():
    stats = Stats()
    for op, times in (("read", 5), ("lookup", 2)):
        for seconds in DURATIONS[:times]:
            stats.count(op)
            stats.fuse_op(op, seconds)
    stats.add("cache_misses", 3)
    for seconds in DURATIONS:
        stats.backend_request("read", seconds)
    stats.backend_request("stat", 0.02)

    families = _families(stats)

    ops = {s.labels["op"]: s.value for s in families["pfs_ops"].samples if s.name == "pfs_ops_total"}
    assert ops == {"read": 5, "lookup": 2} == dict(stats.ops)
    assert families["pfs_cache_misses"].type == "counter"
    assert families["pfs_cache_misses"].samples[0].value == 3
    assert families["pfs_memory_cached"].type == "gauge"
    assert families["pfs_memory_cached"].samples[0].value == 7

    fuse = _histograms(families["pfs_fuse_op_seconds"])
    assert set(fuse) == {"read", "lookup"}
    for op, histogram in fuse.items():
        bounds = [le for le, _ in histogram["buckets"]]
        values = [value for _, value in histogram["buckets"]]
        assert bounds == [*BOUNDS, float("inf")]
        assert values == sorted(values), "buckets are cumulative"
        assert values[-1] == histogram["count"] == stats.ops[op]
    read = dict(fuse["read"]["buckets"])
    assert read[BOUNDS[0]] == 2  # 10 us and exactly the first bound
    assert read[0.0025] == 2 and read[0.005] == 4
    assert read[BOUNDS[-1]] == 5
    assert fuse["read"]["sum"] == pytest.approx(sum(DURATIONS[:5]))

    backend = _histograms(families["pfs_backend_request_seconds"])
    assert backend["read"]["count"] == len(DURATIONS) and backend["stat"]["count"] == 1
    assert dict(backend["read"]["buckets"])[BOUNDS[-1]] == len(DURATIONS) - 1  # 120 s only in +Inf


def test_no_histogram_samples_before_any_request():
    families = _families(Stats())
    assert families["pfs_fuse_op_seconds"].samples == []
    assert families["pfs_backend_request_seconds"].samples == []


def test_backend_times_each_request_by_kind(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    backend = open_backend(f"file://{tmp_path}", BackendOptions())
    seen: list[tuple[str, float]] = []
    backend.on_request = lambda op, seconds: seen.append((op, seconds))
    entry = backend.stat("f.bin")
    backend.list_dir("")
    reader = backend.open_reader("f.bin", entry.size)
    assert reader.read(0, 10) == b"x" * 10
    reader.close()
    backend.write_file("g.bin", io.BytesIO(b"y"), 1)
    ops = [op for op, _ in seen]
    assert {"stat", "list", "read", "write"} <= set(ops), ops
    assert all(seconds >= 0 for _, seconds in seen)


def test_responder_answers_the_exposition_on_the_loopback():
    stats = Stats()
    stats.count("getattr")
    stats.fuse_op("getattr", 0.0001)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scrape() -> bytes:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(metrics.serve, port, metrics.registry(stats, stats.snapshot))
            for _ in range(100):
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    break
                except OSError:
                    await trio.sleep(0.01)
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
            nursery.cancel_scope.cancel()
        return answer

    head, _, body = trio.run(scrape).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and f"Content-Length: {len(body)}".encode() in head
    assert b'pfs_fuse_op_seconds_count{op="getattr"} 1.0' in body
