"""Run chaos scenarios and print their figures: ``python -m tests.chaos [S1 S2 S3 S10] [--full]``.

CI runs the reduced sizes through pytest (``tests/test_chaos.py``); ``--full`` runs the sizes
quoted in the README. Each run keeps its history and report.json under ``--workdir``.

``python -m tests.chaos --cluster [leader rolling ...] [--full]`` runs the cluster scenarios
instead (``tests/chaos/cluster.py``; CI runs them through ``tests/test_cluster_chaos.py``) and
prints their markdown table, then each run's account; each run keeps its history, its nodes'
stores and a result.txt under ``--workdir``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from oqron_nats import __version__
from oqron_nats.testing.server import find_binary

from . import cluster
from .harness import Outcome, run, scenarios


def row(outcome: Outcome) -> str:
    """One table row of a scenario's figures."""
    r = outcome.report
    causes = ", ".join(f"{k} {v}" for k, v in r.by_cause.items() if v) or "none"
    latency = r.recovery_latency
    recovery = f"{latency.p50:.1f} / {latency.p99:.1f} s" if latency.p50 is not None else "-"
    faults = ", ".join(f"{k} {v}" for k, v in sorted(r.faults.items())) or "none"
    return (
        f"| {outcome.scenario.name} | {outcome.scenario.jobs} | {faults} | {len(r.lost)} | "
        f"{len(r.double_completions)} | {len(r.completed_again)} | "
        f"{len(r.duplicates)} ({causes}) | "
        f"{r.unexplained} | {recovery} | {outcome.drain_seconds:.0f} s | "
        f"{'ok' if r.ok else 'FAILED'} |"
    )


def environment() -> str:
    """The versions and the date of a run."""
    server = subprocess.run(
        [find_binary(), "--version"], capture_output=True, text=True, check=False
    )
    return (
        f"oqron_nats {__version__}, {server.stdout.strip()}, nats-py {version('nats-py')}, "
        f"Python {platform.python_version()}, {platform.machine()}, {datetime.now(UTC):%Y-%m-%d}"
    )


def header() -> list[str]:
    """The table header and the run's environment."""
    return [
        f"{environment()}; sync_interval: always",
        "",
        "| scenario | jobs | faults | lost | double completions | completed jobs run again "
        "| duplicate executions (by cause) | unexplained | recovery p50 / p99 | drain | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]


async def main() -> int:
    """Run the chosen scenarios; exit 1 if any fails its checks."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("names", nargs="*", help="scenarios (default: all)")
    parser.add_argument("--full", action="store_true", help="full size instead of the CI size")
    parser.add_argument(
        "--cluster", action="store_true", help="the 3-node cluster scenarios instead"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--strategy", choices=["fifo", "lifo", "priority"], default="fifo",
        help="the queue's strategy",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="where histories and reports are kept")
    args = parser.parse_args()
    # this process is an application: keep the harness's own client quiet (workers log to files)
    logging.getLogger("oqron_nats").setLevel(logging.ERROR)
    if args.cluster:
        return await cluster_main(args.names, args.full, args.seed, args.workdir, args.strategy)
    chosen = scenarios(args.full)
    names = args.names or list(chosen)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="oqron-chaos-"))
    lines = header()
    print("\n".join(lines), flush=True)
    ok = True
    for name in names:
        scenario = dataclasses.replace(chosen[name], strategy=args.strategy)
        where = workdir / f"{name}-{args.strategy}-seed{args.seed}"
        outcome = await run(scenario, where, args.seed)
        ok &= outcome.report.ok
        print(row(outcome), flush=True)
        for line in outcome.report.lines()[5:]:
            print(f"    {line}", flush=True)
    print(f"\nhistories and report.json files: {workdir}")
    return 0 if ok else 1


async def cluster_main(
    names: list[str], full: bool, seed: int, workdir: Path | None, strategy: str
) -> int:
    """Run the cluster scenarios; print the table, then every run's account."""
    unknown = set(names) - set(cluster.SCENARIOS)
    if unknown:
        print(f"unknown cluster scenarios {sorted(unknown)}; known: {list(cluster.SCENARIOS)}")
        return 2
    workdir = workdir or Path(tempfile.mkdtemp(prefix="oqron-cluster-chaos-"))
    size = cluster.FULL if full else cluster.CI
    print(f"{environment()}; 3 nodes on loopback, R3; {'full' if full else 'CI'} size: {size}")
    print("", *cluster.table_header(), sep="\n", flush=True)
    outcomes = []
    for name in names or list(cluster.SCENARIOS):
        outcome = await cluster.run_scenario(name, workdir, full, seed, strategy)
        outcomes.append(outcome)
        print(cluster.table_row(outcome), flush=True)
    print(f"\n{cluster.TABLE_NOTE}\n")
    for outcome in outcomes:
        print("\n".join(outcome.lines()))
    print(f"\nhistories, node stores and result.txt files: {workdir}")
    return 0 if all(outcome.ok for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
