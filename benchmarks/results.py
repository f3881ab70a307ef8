"""One measured figure, and results.json: the record every report and chart is drawn from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Result:
    scenario: str  # benchmarks.config.SCENARIOS
    metric: str  # what `value` is, e.g. "read MiB/s", "files/s", "first byte ms"
    phase: str  # cold / warm / hot for reads; "" where the idea does not apply
    client: str
    value: float
    higher_is_better: bool
    seconds: float
    ops: int
    bytes: int
    reader_cpu_s: float
    daemon_cpu_s: float | None = None
    daemon_peak_rss_mib: float | None = None
    server_cpu_s: float | None = None
    server_sent_bytes: int | None = None
    machine_cpu_s: float | None = None
    stolen_cpu_s: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def row(self) -> tuple[str, str, str]:
        return self.scenario, self.metric, self.phase


def save(path: Path, meta: dict, results: list[Result]) -> None:
    path.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1) + "\n")


def load(path: Path) -> tuple[dict, list[Result]]:
    data = json.loads(path.read_text())
    return data["meta"], [Result(**r) for r in data["results"]]
