"""Prometheus metrics of a running mount, served on 127.0.0.1:PORT when `metrics_port` is set.

The metrics come from prometheus_client, through a private registry per mount whose one collector reads the
mount's `Stats` (pfs/counters.py) at each scrape: the counters `pfs stats` shows, so the two never
disagree, and the latency histograms of FUSE requests and backend requests.

The HTTP side is a small responder on the mount's trio loop, not prometheus_client's threaded server: a
scrape then reads the counters on the loop that updates them (no dict changes size under a reading thread)
and no extra thread runs in the daemon. Rendering costs the loop 2-3 ms once per scrape (measured: 2.5 ms
with 20 FUSE and 10 backend histograms); a thread would not spare the loop that time, as it would hold the
GIL for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pfs.counters import BOUNDS, Latency, Stats

log = logging.getLogger(__name__)

_HELP = {"ops": "FUSE requests served, by operation"}
_LE = [floatToGoString(bound) for bound in BOUNDS] + ["+Inf"]


class StatsCollector(Collector):
    """The mount's counters (`counters()`: what `pfs stats` shows) and the latencies in `stats`."""

    def __init__(self, stats: Stats, counters: Callable[[], dict]) -> None:
        self._stats = stats
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        yield from _counters(self._counters())
        fuse, backend = self._stats.latencies()
        yield _histogram("pfs_fuse_op_seconds", "Time to answer a FUSE request, by operation", fuse)
        text = "Time of a request to the backend (retries included), by kind"
        yield _histogram("pfs_backend_request_seconds", text, backend)


def registry(stats: Stats, counters: Callable[[], dict]) -> CollectorRegistry:
    """A registry of its own for one mount: the process-wide default one holds nothing pfs serves."""
    own = CollectorRegistry(auto_describe=False)
    own.register(StatsCollector(stats, counters))
    return own


def _counters(counters: dict) -> Iterator[Metric]:
    for key, value in sorted(counters.items()):
        if isinstance(value, dict):
            family = CounterMetricFamily(f"pfs_{key}", _HELP.get(key, key), labels=["op"])
            for item, count in sorted(value.items()):
                family.add_metric([item], count)
            yield family
        elif isinstance(value, int | float):  # not the text of the last backend error
            if _is_counter(key):
                yield CounterMetricFamily(f"pfs_{key}", key, value=value)
            else:
                yield GaugeMetricFamily(f"pfs_{key}", key, value=value)


def _is_counter(key: str) -> bool:
    # last_backend_error_at is a point in time, not an amount: a gauge
    return not key.startswith(("memory_", "rss", "uptime", "pending", "last_"))


def _histogram(name: str, text: str, latencies: dict[str, Latency]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text, labels=["op"])
    for op, latency in sorted(latencies.items()):
        cumulative, buckets = 0, []
        for le, count in zip(_LE, latency.counts, strict=True):
            cumulative += count
            buckets.append((le, cumulative))
        family.add_metric([op], buckets, latency.total)
    return family


async def serve(port: int, metrics: CollectorRegistry) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
                body = generate_latest(metrics)
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                await stream.send_all(head.encode() + body)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    log.info("serving metrics on http://127.0.0.1:%d/metrics", port)
    await trio.serve_tcp(answer, port, host="127.0.0.1")
