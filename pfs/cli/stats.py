"""`pfs stats`: the counters of a running mount, as a live view or as JSON."""

from __future__ import annotations

import json
import sys
import time

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pfs.cli.common import human
from pfs.errors import UsageError
from pfs.mount import control


def _read(mountpoint: str) -> dict:
    try:
        return control.stats(mountpoint)
    except OSError:
        raise UsageError(f"{mountpoint} is not a pfs mount") from None


def _rates(now: dict, before: dict | None, seconds: float) -> dict[str, float]:
    """Per-second rates over the last interval (since the mount started when there is no earlier sample)."""
    before = before or {"ops": {}}
    if not seconds:
        return {}

    def delta(key: str) -> float:
        return now.get(key, 0) - before.get(key, 0)

    hits = delta("cache_hits_memory") + delta("cache_hits_disk") + delta("cache_waits")
    lookups = hits + delta("cache_misses")
    reads = delta("backend_reads")
    return {
        "ops": (sum(now["ops"].values()) - sum(before["ops"].values())) / seconds,
        "read": delta("bytes_read") / seconds,
        "written": delta("bytes_uploaded") / seconds,
        "hit_ratio": hits / lookups if lookups else float("nan"),
        "backend_reads": reads / seconds,
        "backend_bytes": delta("backend_read_bytes") / seconds,
        "backend_latency_ms": delta("backend_read_us") / reads / 1000 if reads else float("nan"),
    }


def _table(mountpoint: str, data: dict, rates: dict[str, float]) -> Table:
    table = Table(title=f"pfs {mountpoint}  (up {data['uptime_s']:.0f} s)", show_header=False, box=None)
    table.add_column(style="bold cyan", justify="right")
    table.add_column()
    ratio = rates.get("hit_ratio", float("nan"))
    latency = rates.get("backend_latency_ms", float("nan"))
    rows = [
        ("requests", f"{rates.get('ops', 0):,.0f}/s"),
        ("read", f"{human(rates.get('read', 0))}/s   (total {human(data.get('bytes_read', 0))})"),
        (
            "uploaded",
            f"{human(rates.get('written', 0))}/s   (total {human(data.get('bytes_uploaded', 0))})",
        ),
        ("cache hits", "-" if ratio != ratio else f"{ratio:.1%} of block reads"),
        (
            "backend",
            f"{rates.get('backend_reads', 0):,.0f} reads/s, {human(rates.get('backend_bytes', 0))}/s, "
            + ("-" if latency != latency else f"{latency:.1f} ms each"),
        ),
        (
            "memory",
            f"rss {human(data.get('rss_bytes', 0))}, blocks {human(data.get('memory_cached', 0))} + "
            f"{human(data.get('memory_in_flight', 0))} in flight "
            f"(limit {human(data.get('memory_limit', 0))})",
        ),
        ("hints", _hints(data)),
        ("pending uploads", _pending(data)),
        ("corrupt blocks", str(data.get("cache_corrupt_blocks", 0))),
        ("top requests", ", ".join(f"{k}={v:,}" for k, v in _busiest(data["ops"]))),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _hints(data: dict) -> str:
    """What the files readers named ahead (pfs prefetch, pfs.torch) did: opened after their fetch started
    (hits), opened before it (misses), fetched and never opened (dropped)."""
    if not data.get("hint_paths"):
        return "-"
    counts = {k: data.get(f"hint_{k}", 0) for k in ("paths", "fetches", "hits", "misses", "dropped")}
    opened = counts["hits"] + counts["misses"]
    share = f" ({counts['hits'] / opened:.0%})" if opened else ""
    return (
        f"{counts['hits']:,} hits{share}, {counts['misses']:,} misses, {counts['dropped']:,} dropped; "
        f"{counts['fetches']:,} fetched ahead of {counts['paths']:,} named"
    )


def _pending(data: dict) -> str:
    text = str(data.get("pending_uploads", 0))
    queued = data.get("pending_writeback_files", 0)
    if queued:
        queued_bytes = human(data.get("pending_writeback_bytes", 0))
        text += f"   ({queued} closed, in the write-back queue: {queued_bytes})"
    failed = data.get("pending_failed_uploads", 0)
    if failed:
        names = data.get("failed_uploads", [])
        more = f" and {failed - len(names)} more" if failed > len(names) else ""
        text += f"   ({failed} failed, retried at unmount: {', '.join(names)}{more})"
    return text


def _busiest(ops: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(ops.items(), key=lambda item: -item[1])[:6]


@click.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw counters once, as JSON.")
@click.option("--once", is_flag=True, help="Print the view once instead of refreshing it.")
@click.option("-i", "--interval", type=click.FloatRange(0.2), default=1.0, show_default=True, help="Seconds.")
def stats(mountpoint: str, as_json: bool, once: bool, interval: float) -> None:
    """Show what a running mount is doing: requests, throughput, cache hits, backend latency, memory.

    Refreshes every second until Ctrl-C; rates are over the last interval (with --once, since the mount
    started)."""
    data = _read(mountpoint)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    if once or not sys.stdout.isatty():
        console.print(_table(mountpoint, data, _rates(data, None, data["uptime_s"])))
        return
    before, taken = data, time.monotonic()
    with Live(_table(mountpoint, data, {}), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(interval)
            now, at = _read(mountpoint), time.monotonic()
            live.update(_table(mountpoint, now, _rates(now, before, at - taken)))
            before, taken = now, at
