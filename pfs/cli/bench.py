"""`pfs bench PATH`: throughput and latency of big and small files in a directory, with pfs's own counters."""

from __future__ import annotations

import os

import click
from rich.console import Console
from rich.table import Table

from pfs.datasets.bench import Bench, BenchOptions, KiB, MiB, Step
from pfs.errors import UsageError


def _steps_table(steps: list[Step], options: BenchOptions) -> Table:
    table = Table(title=f"pfs bench ({options.threads} thread{'s' if options.threads > 1 else ''})")
    table.add_column("step")
    table.add_column("throughput", justify="right")
    table.add_column("latency", justify="right")
    table.add_column("operations", justify="right")
    table.add_column("time", justify="right")
    for step in steps:
        op = "block" if step.unit == "MiB/s" else "file"
        table.add_row(
            step.name,
            f"{step.rate:,.1f} {step.unit}",
            f"{step.latency_ms:.3f} ms/{op}",
            f"{step.ops:,}",
            f"{step.seconds:.2f} s",
        )
    return table


def _counters_table(steps: list[Step]) -> Table:
    table = Table(title="where the time went: pfs counters that changed during each step")
    table.add_column("counter", no_wrap=True)
    for step in steps:
        table.add_column(step.name.replace(" file", ""), justify="right")
    names = sorted({name for step in steps for name in step.counters})
    for name in names:
        table.add_row(
            name, *(f"{step.counters[name]:,.0f}" if name in step.counters else "" for step in steps)
        )
    return table


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("-t", "--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Threads, each with its own big file and small files.")  # fmt: skip
@click.option("--big-file-size", type=click.IntRange(1), default=1024, show_default=True, metavar="MiB",
              help="Size of each thread's big file.")  # fmt: skip
@click.option("--small-file-size", type=click.IntRange(1), default=128, show_default=True, metavar="KiB")
@click.option("--small-file-count", type=click.IntRange(0), default=100, show_default=True, metavar="N",
              help="Small files per thread (0: big files only).")  # fmt: skip
@click.option("--block-size", type=click.IntRange(4), default=1024, show_default=True, metavar="KiB",
              help="Size of each read and write call.")  # fmt: skip
@click.option("--drop-caches/--no-drop-caches", default=None,
              help="Drop the page cache before each read step [on when run as root].")  # fmt: skip
def bench(path: str, threads: int, big_file_size: int, small_file_size: int, small_file_count: int,
          block_size: int, drop_caches: bool | None) -> None:  # fmt: skip
    """Benchmark PATH (a pfs mount or any directory): write, read and stat big and small files.

    Works in a new pfs-bench-* directory under PATH, removed at the end. On a pfs mount it also shows the
    mount's counters for each step.
    """
    can_drop = os.access("/proc/sys/vm/drop_caches", os.W_OK)
    if drop_caches and not can_drop:
        raise UsageError("--drop-caches needs root (writing /proc/sys/vm/drop_caches)")
    options = BenchOptions(
        threads=threads,
        big_file_size=big_file_size * MiB,
        small_file_size=small_file_size * KiB,
        small_file_count=small_file_count,
        block_size=block_size * KiB,
        drop_caches=can_drop if drop_caches is None else drop_caches,
    )
    console = Console()
    runner = Bench(path, options)
    with console.status("starting") as status:
        runner.progress = lambda name: status.update(f"{name} ...")
        try:
            steps = runner.run()
        except OSError as exc:
            raise UsageError(f"benchmark in {path} failed: {exc}") from None
    console.print(_steps_table(steps, options))
    if not options.drop_caches:
        console.print("page cache not dropped before reads: they may come from memory")
    if runner.root:
        console.print(_counters_table(steps))
