"""Turn results into what people read: a Markdown table with ratios, a resource table, and PNG charts.

Ratios are pfs divided by the other client for figures where more is better, and the other way round for
latencies, so a ratio above 1 always means pfs did better. "Best peer" is the better of rclone mount and s3fs
in the same row. This module only formats; it never measures or changes a figure.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from pathlib import Path

from benchmarks.config import PEERS, PHASES, SCENARIOS, MiB
from benchmarks.results import Result

COLUMNS = (
    "pfs",
    "floor",
    "floor-s3",
    "floor-threads",
    "pfs-ro",
    "pfs-snap",
    "pfs-wb",
    "floor-noopen",
    "floor-wb",
    "rclone",
    "s3fs",
    "raw",
    "raw-parallel",
    "local",
)
DAEMONS = (
    "pfs", "pfs-ro", "pfs-snap", "pfs-wb", "floor", "floor-s3", "floor-threads", "floor-noopen", "floor-wb",
    "rclone", "s3fs",
)  # fmt: skip
LABELS = {
    "seq-1": "big file, sequential, 1 reader",
    "seq-4": "big files, sequential, 4 readers",
    "rand-1m": "random 1 MiB reads",
    "rand-4k": "random 4 KiB reads",
    "small-1": "small files, 1 reader",
    "small-8": "small files, 8 readers",
    "loader": "PyTorch DataLoader epoch, 8 workers",
    "loader-hints": "the same epoch, its order hinted to pfs (pfs.torch.HintedSampler)",
    "meta": "metadata",
    "write-big": "big file write (until on the server)",
    "write-small": "small file writes (until on the server)",
    "write-ckpt": "checkpoint: shards written by 8 threads (until on the server)",
}


def _delay(meta: dict) -> str:
    latency = meta.get("latency_ms")
    return f", {latency:g} ms added to each round trip (benchmarks/latency.py)" if latency else ""


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(pfs: Result | None, other: Result | None) -> str:
    if pfs is None or other is None or pfs.value <= 0 or other.value <= 0:
        return ""
    ratio = pfs.value / other.value if pfs.higher_is_better else other.value / pfs.value
    return f"{ratio:.2f}x"


def _rows(results: list[Result]) -> dict[tuple[str, str, str], dict[str, Result]]:
    """Results by table row, in scenario order, then the order figures were taken, then cold/warm/hot."""
    scenario_order = {name: i for i, name in enumerate(SCENARIOS)}
    metric_order: dict[tuple[str, str], int] = {}
    for r in results:
        metric_order.setdefault((r.scenario, r.metric), len(metric_order))
    phase_order = {p: i for i, p in enumerate(("", *PHASES))}

    def key(r: Result) -> tuple[int, int, int]:
        return (
            scenario_order.get(r.scenario, 99),
            metric_order[(r.scenario, r.metric)],
            phase_order.get(r.phase, 9),
        )

    rows: dict[tuple[str, str, str], dict[str, Result]] = defaultdict(dict)
    for r in sorted(results, key=key):
        rows[r.row][r.client] = r
    return rows


def _best_peer(row: dict[str, Result]) -> Result | None:
    peers = [row[p] for p in PEERS if p in row]
    if not peers:
        return None
    return max(peers, key=lambda r: r.value if r.higher_is_better else -r.value)


def table(results: list[Result]) -> str:
    rows = _rows(results)
    present = [c for c in COLUMNS if any(c in row for row in rows.values())]
    head = ["scenario", "figure", "phase", *present, "pfs / floor", "pfs / floor-s3", "pfs / floor-threads"]
    head += ["pfs-ro / floor-noopen", "pfs-snap / floor-noopen", "pfs-wb / floor-wb"]
    head += ["pfs / best peer", "pfs / raw", "pfs / local"]
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + " |",
    ]
    for (scenario, metric, phase), row in rows.items():
        cells = [LABELS.get(scenario, scenario), metric, phase or "-"]
        cells += [_fmt(row[c].value) if c in row else "" for c in present]
        pfs = row.get("pfs")
        noopen = row.get("floor-noopen")
        cells += [_ratio(pfs, row.get("floor")), _ratio(pfs, row.get("floor-s3"))]
        cells += [_ratio(pfs, row.get("floor-threads")), _ratio(row.get("pfs-ro"), noopen)]
        cells += [_ratio(row.get("pfs-snap"), noopen), _ratio(row.get("pfs-wb"), row.get("floor-wb"))]
        cells += [_ratio(pfs, _best_peer(row)), _ratio(pfs, row.get("raw")), _ratio(pfs, row.get("local"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def resource_table(results: list[Result]) -> str:
    """Peak RSS and CPU seconds of each client daemon, per measured phase."""
    daemons = [c for c in DAEMONS if any(r.client == c for r in results)]
    head = ["scenario", "figure", "phase"]
    head += [f"{c} peak RSS MiB" for c in daemons] + [f"{c} CPU s" for c in daemons]
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + " |",
    ]
    for (scenario, metric, phase), row in _rows(results).items():
        if not any(c in row for c in daemons) or metric.endswith("at close"):
            continue  # an "at close" figure shares its phase's measurement
        cells = [LABELS.get(scenario, scenario), metric, phase or "-"]
        cells += [_fmt(row[c].daemon_peak_rss_mib) if c in row else "" for c in daemons]
        cells += [_fmt(row[c].daemon_cpu_s) if c in row else "" for c in daemons]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(results: list[Result]) -> str:
    """Daemon CPU per operation (a file, or a random read) and per MiB read, for every client daemon: what
    each spends of the machine for the same work, whatever its speed."""
    daemons = [c for c in DAEMONS if any(r.client == c for r in results)]
    head = ["scenario", "phase", *(f"{c} ms/op" for c in daemons), *(f"{c} ms/MiB" for c in daemons)]
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + " |",
    ]
    for (scenario, metric, phase), row in _rows(results).items():
        if not phase or not any(row.get(c) and row[c].daemon_cpu_s is not None for c in daemons):
            continue  # read scenarios only: one row per phase
        cells = [LABELS.get(scenario, scenario), phase]
        per_op = "MiB" not in metric  # a big file's operation is the whole file: its per-MiB figure says it
        cells += [_cpu_per(row.get(c), "op") if per_op else "" for c in daemons]
        cells += [_cpu_per(row.get(c), "MiB") for c in daemons]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_table(results: list[Result], cores: int) -> str:
    """The whole machine's CPU per operation for every client (its reading or writing threads, its daemon,
    the S3 server, the kernel), the server's share of it, and how busy the cores were: where the cores are
    all busy, a client is only faster by costing the machine less per operation."""
    rows = _rows(results)
    measured = [r.client for row in rows.values() for r in row.values() if r.machine_cpu_s is not None]
    present = [c for c in COLUMNS if c in measured]
    lines = [
        "| " + " | ".join(["scenario", "phase", *present]) + " |",
        "| " + " | ".join(["---"] * 2 + ["---:"] * len(present)) + " |",
    ]
    for (scenario, metric, phase), row in rows.items():
        if metric.endswith("at close") or not any(r.machine_cpu_s is not None for r in row.values()):
            continue  # an "at close" figure shares its phase's measurement
        cells = [LABELS.get(scenario, scenario), phase or "-"]
        cells += [_machine_per(row.get(c), cores) for c in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fetched_table(results: list[Result]) -> str:
    """Bytes the S3 server sent for each byte a client read, in every read phase: what a client fetched
    that its reader did not ask for (a block or a window around a small read), or fetched again."""
    rows = _rows(results)
    measured = [r.client for row in rows.values() for r in row.values() if r.server_sent_bytes is not None]
    present = [c for c in COLUMNS if c in measured and c not in ("local", "floor", "floor-noopen")]
    lines = [
        "| " + " | ".join(["scenario", "phase", *present]) + " |",
        "| " + " | ".join(["---"] * 2 + ["---:"] * len(present)) + " |",
    ]
    for (scenario, _, phase), row in rows.items():
        if not phase or not any(r.server_sent_bytes is not None for r in row.values()):
            continue  # read scenarios only
        cells = [LABELS.get(scenario, scenario), phase]
        cells += [_fetched_per(row.get(c)) for c in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fetched_per(r: Result | None) -> str:
    if r is None or r.server_sent_bytes is None or not r.bytes:
        return ""
    return f"{r.server_sent_bytes / r.bytes:.2f}"


def _machine_per(r: Result | None, cores: int) -> str:
    """Per operation, or per MiB for a figure in MiB/s (a big file's operation is the whole file)."""
    amount = (r.bytes / MiB if "MiB" in r.metric else r.ops) if r is not None else 0
    if r is None or r.machine_cpu_s is None or not amount or r.seconds <= 0:
        return ""
    server = f" / {r.server_cpu_s * 1000 / amount:.2f}" if r.server_cpu_s is not None else ""
    busy = r.machine_cpu_s / (r.seconds * cores)
    stolen = (r.stolen_cpu_s or 0) / (r.seconds * cores)
    taken = f" (host {stolen:.0%})" if stolen >= 0.01 else ""
    return f"{r.machine_cpu_s * 1000 / amount:.2f}{server} / {busy:.0%}{taken}"


def _cpu_per(r: Result | None, unit: str) -> str:
    if r is None or r.daemon_cpu_s is None:
        return ""
    amount = r.ops if unit == "op" else r.bytes / MiB
    return f"{r.daemon_cpu_s * 1000 / amount:.3f}" if amount else ""


def _find(results: list[Result], scenario: str, phase: str, client: str, metric: str = "") -> Result | None:
    for r in results:
        if (r.scenario, r.phase, r.client) == (scenario, phase, client) and metric in r.metric:
            return r
    return None


def _peer(results: list[Result], scenario: str, phase: str) -> Result | None:
    found = [r for p in PEERS if (r := _find(results, scenario, phase, p))]
    return max(found, key=lambda r: r.value) if found else None


def targets(results: list[Result]) -> str:
    """The performance targets, each with the figures of this run it is judged by."""
    lines = ["| target | measured | met |", "| --- | --- | --- |"]

    def check(text: str, measured: float | None, goal: float, detail: str) -> None:
        if measured is None:
            lines.append(f"| {text} | not measured in this run | |")
        else:
            lines.append(f"| {text} | {detail} | {'yes' if measured >= goal else 'no'} |")

    def compare(text: str, mine: Result | None, other: Result | None, goal: float, unit: str) -> None:
        if mine is None or other is None:
            check(text, None, goal, "")
            return
        r = mine.value / other.value
        check(text, r, goal, f"{r:.2f}x ({_fmt(mine.value)} vs {other.client} {_fmt(other.value)} {unit})")

    def ratio(
        scenario: str, phase: str, other: Result | None, goal: float, text: str, unit: str, who: str = "pfs"
    ) -> None:
        compare(text, _find(results, scenario, phase, who), other, goal, unit)

    def absolute(scenario: str, phase: str, goal: float, text: str, unit: str, metric: str = "") -> None:
        pfs = _find(results, scenario, phase, "pfs", metric)
        check(text, pfs.value if pfs else None, goal, f"{_fmt(pfs.value)} {unit}" if pfs else "")

    raw = _find(results, "seq-1", "cold", "raw")
    ratio("seq-1", "cold", raw, 1.0, "big file cold >= 1.0x pyarrow stream", "MiB/s")
    parallel = _find(results, "seq-1", "cold", "raw-parallel")
    ratio("seq-1", "cold", parallel, 0.7, "big file cold >= 0.7x raw parallel ranged reads", "MiB/s")
    ratio("seq-1", "cold", _peer(results, "seq-1", "cold"), 1.3, "big file cold >= 1.3x faster peer", "MiB/s")
    four = _peer(results, "seq-4", "cold")
    ratio("seq-4", "cold", four, 1.0, "4 big-file readers cold >= 1.0x faster peer", "MiB/s")
    local = _find(results, "seq-1", "warm", "local")
    ratio("seq-1", "warm", local, 0.8, "big file warm >= 0.8x local disk (page cache dropped)", "MiB/s")
    ratio("seq-1", "warm", _peer(results, "seq-1", "warm"), 2.0, "big file warm >= 2x faster peer", "MiB/s")
    absolute("seq-1", "hot", 5e9 / MiB, "big file hot >= 5 GB/s", "MiB/s")
    for phase, goal in (("warm", 1.5), ("cold", 1.0)):
        text = f"random 4 KiB reads in big files {phase} >= {goal}x faster peer"
        ratio("rand-4k", phase, _peer(results, "rand-4k", phase), goal, text, "reads/s")
    absolute("small-1", "warm", 3000, "small files warm, 1 reader >= 3,000 files/s", "files/s")
    absolute("small-8", "warm", 6000, "small files warm, 8 readers >= 6,000 files/s", "files/s")
    for scenario in ("small-1", "small-8"):
        peer = _peer(results, scenario, "cold")
        ratio(scenario, "cold", peer, 1.5, f"small files cold ({scenario}) >= 1.5x faster peer", "files/s")
    for scenario, phase in itertools.product(("small-1", "small-8"), ("cold", "warm", "hot")):
        mine, peer = _find(results, scenario, phase, "pfs"), _peer(results, scenario, phase)
        cpu = [_cpu_per(r, "op") for r in (mine, peer)] if mine and peer else ["", ""]
        text = f"daemon CPU per small file {phase} ({scenario}) <= the faster peer's"
        if "" in cpu or 0.0 in map(float, cpu):  # a run too short for the clock ticks CPU is counted in
            check(text, None, 1.0, "")
        else:
            detail = f"{cpu[0]} vs {peer.client} {cpu[1]} ms"  # type: ignore[union-attr]
            check(text, float(cpu[1]) / float(cpu[0]), 1.0, detail)  # less is better: the peer's over pfs's
    floor = _find(results, "small-1", "hot", "floor")
    ratio("small-1", "hot", floor, 0.8, "small files hot, 1 reader >= 0.8x floor", "files/s")
    for scenario, phase in (("small-1", "warm"), ("small-8", "warm"), ("small-8", "hot")):
        goal = 0.6
        floor = _find(results, scenario, phase, "floor")
        ratio(scenario, phase, floor, goal, f"small files {phase} ({scenario}) >= {goal}x floor", "files/s")
    for who, mount in (("pfs-ro", "-o ro"), ("pfs-snap", "snapshot")):
        for phase, goal in (("hot", 0.5), ("warm", 0.6)):
            noopen = _find(results, "small-1", phase, "floor-noopen")
            text = f"small files {phase}, {mount} >= {goal}x floor (no-open)"
            ratio("small-1", phase, noopen, goal, text, "files/s", who=who)
        hot = _find(results, "small-1", "hot", who)
        text = f"small files hot, {mount} >= 20,000 files/s"
        check(text, hot.value if hot else None, 20000, f"{_fmt(hot.value)} files/s" if hot else "")
    peer = _peer(results, "loader", "warm")
    ratio("loader", "warm", peer, 1.5, "DataLoader epoch warm >= 1.5x faster peer", "samples/s")
    unhinted = _find(results, "loader", "cold", "pfs")
    text = "shuffled epoch cold, hinted >= 3x pfs without hints"
    ratio("loader-hints", "cold", unhinted, 3.0, text, "samples/s")
    peer = _peer(results, "loader", "cold")
    ratio("loader-hints", "cold", peer, 3.0, "shuffled epoch cold, hinted >= 3x faster peer", "samples/s")
    parallel = _find(results, "loader-hints", "cold", "raw-parallel")
    text = "shuffled epoch cold, hinted >= 0.8x raw parallel GETs in its order"
    ratio("loader-hints", "cold", parallel, 0.8, text, "samples/s")
    absolute("meta", "", 30000, "metadata >= 30,000 stat/s after one listing", "stat/s", "stat")
    peaks = [r.daemon_peak_rss_mib for r in results if r.scenario == "seq-4" and r.client == "pfs"]
    rss = max((p for p in peaks if p is not None), default=None)
    text = "daemon peak RSS <= 300 MiB, 4 readers of 1 GiB files"
    check(text, None if rss is None else 300 - rss, 0, f"{rss:.0f} MiB" if rss is not None else "")

    # Writes, counted until every byte is on the server; write-back's close() against the local disk's.
    def written(scenario: str, client: str | None, goal: float, text: str, who: str = "pfs", close: str = ""):
        small = scenario == "write-small"
        metric = ("files/s" if small else "write MiB/s") + close
        found = [r for r in results if (r.scenario, r.metric) == (scenario, metric)]
        others = [r for r in found if r.client in (PEERS if client is None else (client,))]
        mine = next((r for r in found if r.client == who), None)
        other = max(others, key=lambda r: r.value, default=None)
        compare(text, mine, other, goal, "files/s" if small else "MiB/s")

    written("write-small", None, 1.5, "small files written >= 1.5x faster peer")
    written("write-small", "raw", 0.8, "small files written >= 0.8x raw pyarrow")
    written("write-big", "raw", 1.0, "big file written >= 1.0x raw pyarrow")
    written("write-big", "floor", 1.0, "big file written >= 1.0x floor (pyfuse3 and raw's stream)")
    text = "write-back: big file at close >= 0.8x local disk"
    written("write-big", "local", 0.8, text, who="pfs-wb", close=" at close")
    text = "write-back: big file at close >= 1.0x floor-wb (pyfuse3, fsync at close)"
    written("write-big", "floor-wb", 1.0, text, who="pfs-wb", close=" at close")
    return "\n".join(lines)


def markdown(meta: dict, results: list[Result], charts: list[str]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    cores = meta.get("cores", 2)  # runs recorded before the field: this project's 2-core machines
    fetched_rows = fetched_table(results)
    fetched = [
        "Bytes the S3 server sent for each byte the client's readers read (1.00: exactly what was",
        "asked, and the answers' headers; 0: served from the client's cache; local disk and the floor",
        "use no server):",
        "",
        fetched_rows,
        "",
    ]
    if fetched_rows.count("\n") < 2:
        fetched = []  # no read scenario in this run
    parts = [
        f"- Date: {meta['date']}; run took {meta.get('seconds', 0):.0f} s.",
        f"- Machine: {meta['machine']}.",
        f"- Versions: {versions}.",
        f"- Server: `{meta['server']}` on 127.0.0.1{_delay(meta)}; command: `{meta['command']}`.",
        f"- Code: commit {meta.get('commit') or 'unknown'}.",
        "",
        "Ratios above 1 mean pfs did better (for latency: the other's time divided by pfs's). Cold: client",
        "caches emptied and the page cache dropped; warm: remounted on the same client cache, page cache",
        "dropped; hot: read again in the same mount once its daemon is idle. raw = pyarrow straight to",
        "the server (one stream per reader), raw-parallel = pyarrow ranged GETs of 8 MiB, 8 at a time per",
        "file; local = the same files read from the server's directory on local disk. floor =",
        "benchmarks/floorfs.py, the least a",
        "pyfuse3 filesystem does (open answered with keep_cache; floor-noopen: the kernel's no-open mode),",
        "serving the same files from memory (up to 1 MiB) or local disk; pfs / floor is pfs's own cost.",
        "floor-s3 = the same floor reading the files from the server (a pyarrow GET per small file,",
        "a ranged read per request of a big one, in worker threads, no cache): its cold phases are the",
        "least a pyfuse3 client of this server spends. floor-threads = the floor reading the local disk",
        "in worker threads (trio's), as a filesystem that never blocks its request loop must: the floor",
        "itself reads there on its loop, which serves one reader at a time.",
        "Written through the floor, a new file streams to the server as raw's do (floor-wb: it is fsynced",
        "in a local directory at close instead, the floor of pfs-wb's close).",
        "",
        table(results),
        "",
        "Client daemons (reading threads excluded): peak RSS during the phase and CPU seconds it used.",
        "",
        resource_table(results),
        "",
        "Daemon CPU per operation (a whole file; a random read) and per MiB read, in milliseconds:",
        "",
        cpu_table(results),
        "",
        "The whole machine's CPU in milliseconds per operation (per MiB for figures in MiB/s), the",
        f"S3 server's part of it, and how busy its {cores} cores were during the phase (machine ms /",
        "server ms / busy), with the share the host took from them for other guests where it took",
        "any (steal time: a busy host makes every figure slower):",
        "",
        machine_table(results, cores),
        "",
        *fetched,
        "The read-performance targets, judged by this run's figures:",
        "",
        targets(results),
        "",
        *(f"![{Path(c).stem}]({c})" for c in charts),
    ]
    return "\n".join(parts) + "\n"


def charts(out: Path, results: list[Result]) -> list[str]:
    """One PNG per scenario: a panel per figure, bars per client grouped by phase. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(results)
    names = []
    for scenario in SCENARIOS:
        metrics = list(dict.fromkeys(m for (s, m, _) in rows if s == scenario))
        if not metrics:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.8), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            phases = [p for (s, m, p) in rows if s == scenario and m == metric]
            present = [c for c in COLUMNS if any(c in rows[(scenario, metric, p)] for p in phases)]
            width = 0.8 / max(len(present), 1)
            for i, client in enumerate(present):
                values = [rows[(scenario, metric, p)].get(client) for p in phases]
                xs = [j + i * width for j in range(len(phases))]
                bars = ax.bar(xs, [v.value if v else 0 for v in values], width, label=client)
                ax.bar_label(
                    bars, labels=[_fmt(v.value) if v else "" for v in values], fontsize=6, rotation=90
                )
            ax.set_xticks([j + width * (len(present) - 1) / 2 for j in range(len(phases))])
            ax.set_xticklabels([p or "-" for p in phases])
            ax.set_ylabel(metric + ("" if "ms" not in metric else " (lower is better)"))
            heights = [r.value for p in phases for r in rows[(scenario, metric, p)].values() if r.value > 0]
            if heights and max(heights) / min(heights) > 30:
                ax.set_yscale("log")  # hot reads and local disk are orders of magnitude above the rest
            ax.margins(y=0.2)
            ax.legend(fontsize=7)
        fig.suptitle(LABELS.get(scenario, scenario))
        fig.tight_layout()
        name = f"{scenario}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def write(out: Path, meta: dict, results: list[Result]) -> None:
    names = charts(out, results)
    (out / "results.md").write_text(markdown(meta, results, names))
