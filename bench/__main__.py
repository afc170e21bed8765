"""The benchmark suite: ``python -m bench`` (or ``./dev.py bench``); ``--quick`` for a smoke run.

It starts its own nats-server, measures raw nats-py (the floor, as context), oqron_nats and its
peers (taskiq-nats and FastStream, each in its best configuration at concurrency 10 and 100) in
the same run, and prints one Markdown table of issue 14's targets (``bench/targets.py``), saying
for each whether it holds. Figures are only comparable within one run: absolute numbers drift
between machines.

Options:

``--quick``
    small sizes: a smoke run (CI runs ``--quick --no-peers``).
``--no-peers``
    skip taskiq-nats and FastStream; the processing rows then have no verdict.
``--instructions``
    also count the worker's instructions per guaranteed job under valgrind's callgrind (slow:
    the worker runs about 50 times slower; INSTRUCTION_RUNS runs, the median reported; noted
    and skipped where valgrind is missing). Without it the table points to
    ``python -m bench.profile --instructions``.
``--scale``
    also the many-queue part (``bench/many_queues.py``): 20 and 200 queues (``--scale-queues``)
    on a fresh server and on a fresh 3-node loopback cluster with ``replicas=3``. It takes
    minutes, so neither the default run nor ``--quick`` includes it; with ``--quick`` its idle
    windows are shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from oqron_nats import __version__
from oqron_nats.testing.server import LocalServer, find_binary

from . import assets, floor, many_queues, ours, peers, profile, targets
from .report import Row, render

CONCURRENCIES = (10, 100)
INSTRUCTION_RUNS = 3
"""Callgrind runs of ``--instructions``: one run's count moves by about 2 % from the next."""

PeerRuns = dict[str, dict[int, list[peers.ProcessFigures]]]
"""Each peer's runs by concurrency, the fastest configuration first."""


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does."""

    sequential: int = 2_000
    bulk: int = 10_000
    process: int = 20_000
    latency_seconds: float = 10.0
    idle_seconds: float = 10.0
    latency_rate: float = 500.0
    instructions_jobs: int = 2_000
    scale_idle_seconds: float = 10.0


QUICK = Sizes(
    sequential=200, bulk=1_000, process=1_000, latency_seconds=1.0, idle_seconds=1.0,
    instructions_jobs=200, scale_idle_seconds=2.0,
)  # fmt: skip


@dataclass(frozen=True)
class Options:
    """What the run includes."""

    sizes: Sizes
    peers: bool
    instructions: bool
    scale_queues: tuple[int, ...]
    """The numbers of queues of the many-queue part; empty: no such part."""


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


async def measure(url: str, server_pid: int, options: Options) -> list[Row]:
    """Run every workload and build the table."""
    sizes = options.sizes
    raw = await floor.measure(
        url, sequential=sizes.sequential, bulk=sizes.bulk, process=sizes.process
    )
    progress("floor", raw)
    one = await ours.add_sequential(url, sizes.sequential)
    rows = targets.enqueue_rows(raw, one, await ours.add_bulk(url, sizes.bulk), sizes.bulk)
    progress("enqueue", rows)
    best, peer_rows = await measure_peers(url, sizes) if options.peers else ({}, [])
    runs = await process_runs(url, server_pid, sizes)
    for (concurrency, guaranteed), run in runs.items():
        fastest = targets.fastest_peer(best, concurrency)
        rows.append(
            targets.process_row(run, concurrency, guaranteed, fastest, raw["raw_fetch_ack"])
        )
    rows += await cost_rows(url, server_pid, options, runs[100, True], runs[10, True])
    for strategy in ("priority", "lifo"):
        ordered = await ours.process(
            url, sizes.process, concurrency=100, guaranteed=True, server_pid=server_pid,
            strategy=strategy,
        )  # fmt: skip
        rows.append(targets.strategy_row(strategy, ordered, runs[100, True]))
        progress(f"process, strategy {strategy}", ordered)
    cuts = await ours.latency(
        url, rate=sizes.latency_rate, seconds=sizes.latency_seconds, concurrency=10
    )
    rows.append(targets.latency_row(cuts, sizes.latency_rate))
    idle = await ours.idle(url, sizes.idle_seconds)
    rows.append(targets.idle_row(idle["idle_cpu"]))
    rows += [targets.assets_row(found) for found in await assets.measure_all(url)]
    progress("latency, idle, assets", rows[-5:])
    rows += peer_rows + targets.floor_rows(raw, sizes.bulk)
    if options.scale_queues:
        rows += await scale_rows(options)
    return rows


async def process_runs(
    url: str, server_pid: int, sizes: Sizes
) -> dict[tuple[int, bool], ours.ProcessRun]:
    """One worker process at each concurrency, guaranteed_worker on and off."""
    runs = {}
    for concurrency in CONCURRENCIES:
        for guaranteed in (True, False):
            runs[concurrency, guaranteed] = run = await ours.process(
                url, sizes.process, concurrency=concurrency, guaranteed=guaranteed,
                server_pid=server_pid,
            )  # fmt: skip
            progress(f"process, concurrency {concurrency}, guaranteed {guaranteed}", run)
    return runs


async def cost_rows(
    url: str, server_pid: int, options: Options, one: ours.ProcessRun, ten: ours.ProcessRun
) -> list[Row]:
    """What a guaranteed job costs (``one``: concurrency 100, ``ten``: concurrency 10): CPU,
    instructions, round trips; two worker processes against one; the worker's memory."""
    hint, instructions = await count_instructions(url, options)
    rows = [targets.server_cpu_row(one, ten), targets.worker_cpu_row(one, ten, hint)]
    rows += [instructions] if instructions else []
    rows.append(targets.round_trips_row(one))
    two = await ours.process(
        url, options.sizes.process, concurrency=100, guaranteed=True, processes=2,
        server_pid=server_pid,
    )  # fmt: skip
    rows += [targets.two_processes_row(one, two), targets.capacity_row(two)]
    rows.append(targets.worker_rss_row(one))
    progress("costs", rows)
    return rows


async def measure_peers(url: str, sizes: Sizes) -> tuple[PeerRuns, list[Row]]:
    """Each installed peer: its enqueue rate and its best configuration at each concurrency."""
    best: PeerRuns = {}
    rows = []
    for peer in peers.available():
        enqueue = await peers.enqueue_rate(peer, url, sizes.sequential)
        best[peer] = {
            concurrency: await peers.best_process(peer, url, sizes.process, concurrency)
            for concurrency in CONCURRENCIES
        }
        rows += targets.peer_rows(peer, enqueue, best[peer])
        progress("peer", rows[-3:])
    missing = set(peers.MODULES) - set(peers.available())
    if missing:
        rows.append(Row(f"peers not installed: {', '.join(sorted(missing))}", "-",
                        "pip install --group bench"))  # fmt: skip
    return best, rows


async def count_instructions(url: str, options: Options) -> tuple[str, Row | None]:
    """With ``--instructions`` and valgrind: a row of the worker's instructions per job; else
    a note saying where to get them."""
    target = f"instructions per job (<= {targets.INSTRUCTIONS_M} M)"
    if not options.instructions:
        return f"{target}: see {targets.INSTRUCTIONS_HINT}", None
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        return f"{target}: valgrind not found, see {targets.INSTRUCTIONS_HINT}", None
    jobs = options.sizes.instructions_jobs
    runs = []
    for _ in range(INSTRUCTION_RUNS):
        with tempfile.TemporaryDirectory(prefix="oqron-bench-callgrind-") as workdir:
            runs.append(
                await profile.instructions_per_job(
                    url, jobs, concurrency=100, guaranteed=True, workdir=Path(workdir)
                )
            )
    return f"{target}: see the row below", targets.instructions_row(runs, jobs)


async def scale_rows(options: Options) -> list[Row]:
    """The many-queue part, on a fresh server and on a fresh 3-node cluster."""
    rows = []
    for where, cluster in (("one server", False), ("a 3-node cluster, replicas=3", True)):
        footprints = await many_queues.measure_sizes(
            cluster, list(options.scale_queues), options.sizes.scale_idle_seconds
        )
        rows += targets.scale_rows(where, footprints)
        progress("scale", rows[-len(footprints) :])
    return rows


def progress(stage: str, what: object) -> None:
    """A line on stderr while the run goes on (the table goes to stdout at the end)."""
    print(f"[{stage}] {what}", file=sys.stderr, flush=True)


def main() -> None:
    """Start a server, run the suite, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--no-peers", action="store_true", help="skip taskiq and FastStream")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per job (valgrind)"
    )
    parser.add_argument(
        "--scale", action="store_true", help="also many queues, on a server and a cluster (slow)"
    )
    parser.add_argument("--scale-queues", type=int, nargs="+", default=[20, 200])
    args = parser.parse_args()
    options = Options(
        sizes=QUICK if args.quick else Sizes(),
        peers=not args.no_peers,
        instructions=args.instructions,
        scale_queues=tuple(args.scale_queues) if args.scale else (),
    )
    with tempfile.TemporaryDirectory(prefix="oqron-bench-") as store:
        server = LocalServer(store_dir=Path(store)).start()
        try:
            rows = asyncio.run(measure(server.url, server.pid, options))
        finally:
            server.close()
    print(header())
    print()
    print(render(rows))


if __name__ == "__main__":
    main()
