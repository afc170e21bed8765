"""The benchmark suite: ``python -m bench`` (or ``./dev.py bench``); ``--quick`` for a smoke run.

It starts its own nats-server, measures raw nats-py (the floor), oqron_nats and its peers in
the same run, and prints one Markdown table saying for each target whether it holds. Figures
are only comparable within one run: absolute numbers drift between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from oqron_nats import __version__
from oqron_nats.testing.server import LocalServer, find_binary

from . import floor, ours, peers
from .report import Row, rate, ratio_row, render


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does."""

    sequential: int = 2_000
    bulk: int = 10_000
    process: int = 20_000
    latency_seconds: float = 10.0
    idle_seconds: float = 10.0
    latency_rate: float = 500.0


QUICK = Sizes(sequential=200, bulk=1_000, process=1_000, latency_seconds=1.0, idle_seconds=1.0)


def header() -> str:
    """The machine, the versions and the date."""
    server = subprocess.run(
        [find_binary(), "--version"], capture_output=True, text=True, check=False
    )
    return (
        f"oqron_nats {__version__}, {server.stdout.strip()}, nats-py {version('nats-py')}, "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{datetime.now(UTC):%Y-%m-%d}"
    )


async def measure(url: str, sizes: Sizes, with_peers: bool) -> list[Row]:
    """Run every workload and build the table."""
    raw = await floor.measure(
        url, sequential=sizes.sequential, bulk=sizes.bulk, process=sizes.process
    )
    progress("floor", raw)
    rows = [
        ratio_row("add() one at a time", await ours.add_sequential(url, sizes.sequential),
                  "raw js.publish", raw["raw_publish"], 0.40),
        ratio_row(f"add_bulk() of {sizes.bulk:,}", await ours.add_bulk(url, sizes.bulk),
                  "raw publish_async", raw["raw_publish_async"], 0.40),
    ]  # fmt: skip
    progress("enqueue", rows)
    runs: dict[tuple[int, bool], ours.ProcessRun] = {}
    for concurrency in (10, 100):
        for guaranteed in (True, False):
            run = await ours.process(
                url, sizes.process, concurrency=concurrency, guaranteed=guaranteed
            )
            runs[concurrency, guaranteed] = run
            target = 0.30 if guaranteed else 0.50
            row = ratio_row(
                f"process, concurrency {concurrency}, guaranteed_worker={guaranteed}",
                run.per_s, "raw fetch(100)+ack", raw["raw_fetch_ack"], target,
            )  # fmt: skip
            cpu = (f"; CPU per job: worker {run.cpu_per_job * 1e6:.0f} µs, "
                   f"raw client {raw['raw_fetch_ack_cpu'] * 1e6:.0f} µs; "
                   f"requests per job: {run.requests_per_job:.1f}")  # fmt: skip
            rows.append(dataclasses.replace(row, compared=row.compared + cpu))
            progress("process", rows[-1])
    one = runs[100, True]
    two = await ours.process(url, sizes.process, concurrency=100, guaranteed=True, processes=2)
    rows.append(scale_row(one.per_s, two.per_s))
    rss_mb = one.workers[0]["maxrss_kb"] / 1024
    rows.append(Row("worker peak RSS, concurrency 100", f"{rss_mb:.0f} MB", "", "< 80 MB",
                    rss_mb < 80))  # fmt: skip
    cuts = await ours.latency(
        url, rate=sizes.latency_rate, seconds=sizes.latency_seconds, concurrency=10
    )
    rows.append(latency_row(cuts, sizes.latency_rate))
    idle = await ours.idle(url, sizes.idle_seconds)
    rows.append(Row("idle worker CPU", f"{idle['idle_cpu']:.2%} of a core", "", "< 1 %",
                    idle["idle_cpu"] < 0.01))  # fmt: skip
    progress("scale, latency, idle", rows[-3:])
    if with_peers:
        rows += await peer_rows(url, sizes, one.per_s)
    return rows


def scale_row(one: float, two: float) -> Row:
    """Two worker processes against one."""
    factor = two / one
    return Row("process, 2 worker processes", rate(two), f"{factor:.2f}x one process ({rate(one)})",
               ">= 1.6x", factor >= 1.6)  # fmt: skip


def latency_row(cuts: dict[str, float], at: float) -> Row:
    """Enqueue to handler start."""
    p50, p99 = cuts["p50"] * 1000, cuts["p99"] * 1000
    return Row(f"latency add() to handler start at {at:.0f} jobs/s",
               f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", f"{cuts['n']} jobs",
               "p50 <= 2 ms, p99 <= 10 ms", p50 <= 2 and p99 <= 10)  # fmt: skip


async def peer_rows(url: str, sizes: Sizes, ours_per_s: float) -> list[Row]:
    """The peers on the same workloads; oqron_nats (guaranteed, concurrency 100) must be ahead."""
    rows = []
    for name in peers.available():
        figures = await peers.measure(
            name, url, enqueue_jobs=sizes.sequential, process_jobs=sizes.process
        )
        rows.append(Row(f"{figures.name}: enqueue one at a time", rate(figures.enqueue_per_s)))
        rows.append(Row(
            f"{figures.name}: process, concurrency 100", rate(figures.process_per_s),
            f"oqron_nats (guaranteed) is {ours_per_s / figures.process_per_s:.2f}x",
            "oqron_nats ahead", ours_per_s > figures.process_per_s,
        ))  # fmt: skip
        rows.append(Row(f"{figures.name}: worker peak RSS", f"{figures.peak_rss_mb:.0f} MB"))
        progress("peer", rows[-3:])
    missing = {"taskiq", "faststream"} - set(peers.available())
    if missing:
        rows.append(Row(f"peers not installed: {', '.join(sorted(missing))}", "-",
                        "pip install --group bench"))  # fmt: skip
    return rows


def progress(stage: str, what: object) -> None:
    """A line on stderr while the run goes on (the table goes to stdout at the end)."""
    print(f"[{stage}] {what}", file=sys.stderr, flush=True)


def main() -> None:
    """Start a server, run the suite, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--no-peers", action="store_true", help="skip taskiq and FastStream")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="oqron-bench-") as store:
        server = LocalServer(store_dir=Path(store)).start()
        try:
            rows = asyncio.run(measure(server.url, sizes, not args.no_peers))
        finally:
            server.close()
    print(header())
    print()
    print(render(rows))


if __name__ == "__main__":
    main()
