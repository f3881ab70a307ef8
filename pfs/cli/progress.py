"""Progress bars of the long commands (warmup, snapshot, sync): rich, loaded only by them."""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress, ProgressColumn, Task
from rich.text import Text


def progress_bar(*columns: str | ProgressColumn) -> Progress:
    """A rich progress bar on stderr, drawn only on a terminal (nothing at all in logs and pipes)."""
    console = Console(stderr=True)
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


class RateColumn(ProgressColumn):
    """Items per second, e.g. '12,345 entries/s'."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self._unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed or 0:,.0f} {self._unit}/s", style="progress.data.speed")
