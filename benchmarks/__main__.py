"""python -m benchmarks run [--quick] [--scenarios ...] [--clients ...] [--out DIR] [--server KIND]
python -m benchmarks report RESULTS_JSON [--out DIR]     (redraw the table and charts of a finished run)
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from benchmarks import report, runner
from benchmarks.config import CLIENTS, SCENARIOS
from benchmarks.datasets import BASE_DIR
from benchmarks.results import load


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmarks (as root: the page cache is dropped)")
    run.add_argument("--quick", action="store_true", help="tiny sizes, every scenario and client (CI smoke)")
    run.add_argument("--scenarios", type=lambda t: _names(t, SCENARIOS, "scenario"), default=list(SCENARIOS),
                     help=f"comma-separated subset of {','.join(SCENARIOS)}")  # fmt: skip
    run.add_argument("--clients", type=lambda t: _names(t, CLIENTS, "client"), default=list(CLIENTS),
                     help=f"comma-separated subset of {','.join(CLIENTS)}")  # fmt: skip
    run.add_argument("--server", choices=("rclone", "seaweedfs"), default="rclone")
    run.add_argument("--latency", type=float, default=0.0, metavar="MS",
                     help="add MS ms to every round trip to the server, as a real store has")  # fmt: skip
    run.add_argument("--out", type=Path, help="where results.json, results.md and the charts go")
    redraw = sub.add_parser("report", help="redraw results.md and the charts from a results.json")
    redraw.add_argument("results", type=Path)
    redraw.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.command == "report":
        meta, results = load(args.results)
        out = args.out or args.results.parent
        out.mkdir(parents=True, exist_ok=True)
        report.write(out, meta, results)
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    options = runner.RunOptions(
        quick=args.quick, scenarios=args.scenarios, clients=args.clients,
        out=args.out or BASE_DIR / "results" / stamp, server=args.server, command=runner.command_line(),
        latency_ms=args.latency,
    )  # fmt: skip
    try:
        runner.run(options)
    except KeyboardInterrupt:
        raise SystemExit("benchmarks: interrupted; every mount and server was released") from None


if __name__ == "__main__":
    main()
