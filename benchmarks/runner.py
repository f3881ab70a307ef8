"""One benchmark run: start the server, prepare the data, run every scenario against every client, report.

Scenarios are the outer loop and clients the inner one, so the figures of one scenario are taken minutes
apart at most and share the machine's noise; each scenario's files are read once beforehand (see
scenarios.prime) and the client order rotates from one scenario to the next, so no client is always first.
Every mount, daemon and server started here is released on any exit: normal end, error, Ctrl-C, SIGTERM or
SIGHUP (turned into KeyboardInterrupt so `finally` blocks run).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks import clients, datasets, latency, report, scenarios, servers
from benchmarks.config import FULL, QUICK, READ_SCENARIOS, GiB
from benchmarks.measure import can_drop_caches
from benchmarks.results import Result, save


@dataclass
class RunOptions:
    quick: bool
    scenarios: list[str]
    clients: list[str]
    out: Path
    server: str
    command: str
    latency_ms: float = 0.0  # added to every round trip to the server (benchmarks/latency.py)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _versions(active: list[clients.Client]) -> dict[str, str]:
    import pyarrow
    import pyfuse3
    import trio

    found = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "pyarrow": pyarrow.__version__,
        "pyfuse3": pyfuse3.__version__,
        "trio": trio.__version__,
    }
    for client in active:
        if client.name not in ("raw", "local"):
            found[client.name] = client.version()
    return found


def _commit() -> str:
    """The commit of the code being measured (empty outside a git checkout)."""
    here = Path(__file__).resolve().parent
    result = subprocess.run(
        ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip()


def _machine() -> str:
    cpu = "unknown cpu"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    distro = ""
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        distro = next(
            (line.split("=", 1)[1].strip().strip('"') for line in f if line.startswith("PRETTY")), ""
        )
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {distro}, kernel {platform.release()}"


def run(options: RunOptions) -> list[Result]:
    if not can_drop_caches():
        raise SystemExit("benchmarks: must run as root (cold and warm phases drop the page cache)")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    sizes = QUICK if options.quick else FULL
    started = datetime.datetime.now(datetime.UTC)
    run_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    run_dir = datasets.BASE_DIR / "runs" / run_id
    run_dir.mkdir(parents=True)
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, run_dir, True)
        dataset = datasets.prepare(sizes, log=_log)
        server = servers.start(options.server, dataset, run_dir, log=_log)
        # rclone serve s3 leaves the emptied directories of this run's writes: removed once it has stopped.
        stack.callback(shutil.rmtree, dataset.root / "_writes" / run_id, True)
        stack.callback(server.stop)
        reached = server  # what the clients (and the raw reads) talk to: the server, or a delay in front
        if options.latency_ms:
            port = stack.enter_context(latency.delayed(server.port, options.latency_ms))
            reached = replace(server, port=port)
        raw_fs = reached.raw_client()
        env = clients.Env(reached, datasets.BUCKET, dataset.root, run_dir, raw_fs)
        active = []
        for name in options.clients:
            client = clients.make(name, env)
            stack.callback(client.close)  # closed in reverse order, each whatever the others did
            active.append(client)
        ctx = scenarios.Context(sizes, dataset, raw_fs, datasets.BUCKET, run_id, servers.Store(server))
        meta = {
            "date": f"{started:%Y-%m-%d %H:%M} UTC",
            "machine": _machine(),
            "cores": os.cpu_count() or 1,
            "versions": _versions(active),
            "command": options.command,
            "commit": _commit(),
            "server": options.server,
            "latency_ms": options.latency_ms,
            "quick": options.quick,
            "sizes": asdict(sizes),
            "scenarios": options.scenarios,
            "clients": options.clients,
        }
        for client in active:
            scenarios.warm_up(ctx, client)
        for index, scenario in enumerate(options.scenarios):
            scenarios.prime(ctx, scenario)
            # Each scenario starts with the next client, so no client is always first after priming.
            shift = index % len(active)
            for client in active[shift:] + active[:shift]:
                skip = scenarios.runs_on(scenario, client)
                if skip:
                    _log(f"{scenario}: {client.name} skipped: {skip}")
                    continue
                _log(f"{scenario}: {client.name}")
                found = _run_one(ctx, scenario, client)
                for result in found:
                    phase = f" {result.phase}" if result.phase else ""
                    figure = f"{result.value:,.1f} ({result.seconds:.2f} s)"
                    _log(f"  {result.metric}{phase} [{result.client}]: {figure}")
                results += found
        meta["seconds"] = round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1)
        options.out.mkdir(parents=True, exist_ok=True)
        save(options.out / "results.json", meta, results)
        report.write(options.out, meta, results)
        _log(f"results in {options.out} (results.json, results.md, *.png)")
    return results


def _run_one(ctx: scenarios.Context, scenario: str, client: clients.Client) -> list[Result]:
    if scenario in READ_SCENARIOS:
        return scenarios.run_read(ctx, scenario, client)
    if scenario == "meta":
        return scenarios.run_meta(ctx, client)
    return scenarios.run_write(ctx, scenario, client)


def _log(message: str) -> None:
    print(message, flush=True)


def command_line() -> str:
    return " ".join(["python -m benchmarks", *sys.argv[1:]])
