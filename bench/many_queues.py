"""Many queues on one server, or on a 3-node cluster: ``python -m bench.many_queues``.

For each number of queues (``--queues``, default 20 and 200), on a fresh nats-server (or, with
``--cluster``, a fresh 3-node loopback cluster, ``oqron_nats.testing.LocalCluster``, with
``replicas=3``: every stream and consumer is then a Raft group):

1. baseline: the server's RSS (``VmRSS``; on the cluster the sum of the three nodes), and its
   CPU (user + system, summed likewise) over ``--idle`` seconds, before any queue exists;
2. create: in one namespace, define the queues and add one job to each (which creates each
   queue's streams and bucket), then start one worker process serving them all
   (``bench/worker.py``: a worker per queue on one client, started one after the other as
   ``oqron worker`` starts them) and wait until it is ready: the seconds both take (the
   worker's start as it times it, without the process's own start-up and imports);
3. wait until every queue's job is completed;
4. idle: the server's CPU over ``--idle`` seconds with the worker idle (its pulls and
   heartbeats included), then its RSS.

Per queue: the creation seconds, the RSS above the baseline and the idle CPU above the baseline,
each divided by the queues. The target: at the largest number of queues, each per-queue figure
within 2x of the smallest number's.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass

from oqron_nats import Client, queue
from oqron_nats.testing import LocalCluster, LocalServer

from . import ours
from .procs import BenchProcess, cpu_seconds, rss_kb

STARTUP = 600.0
"""Seconds the worker process gets to start every queue's worker."""
CONCURRENCY = 10
WITHIN = 2.0
"""How much larger a per-queue figure may be at the most queues than at the fewest."""


@dataclass(frozen=True)
class Servers:
    """The server processes of one run and their client URLs."""

    urls: list[str]
    pids: list[int]
    replicas: int

    def cpu(self) -> float:
        """CPU seconds of every server process so far."""
        return sum(cpu_seconds(pid) for pid in self.pids)

    def rss_kb(self) -> int:
        """The resident set size of every server process, summed."""
        return sum(rss_kb(pid) for pid in self.pids)

    async def idle_cpu(self, seconds: float) -> float:
        """The servers' CPU over ``seconds`` of waiting, in CPU seconds per second."""
        before = self.cpu()
        await asyncio.sleep(seconds)  # the idle period being measured
        return (self.cpu() - before) / seconds


@contextmanager
def fresh_servers(cluster: bool) -> Iterator[Servers]:
    """A fresh nats-server, or a fresh 3-node cluster, stopped afterwards."""
    if cluster:
        with LocalCluster() as nodes:
            yield Servers(nodes.urls, [node.pid for node in nodes.nodes], replicas=3)
    else:
        with LocalServer() as server:
            yield Servers([server.url], [server.pid], replicas=1)


@dataclass(frozen=True)
class Footprint:
    """What a number of queues costs the server(s)."""

    queues: int
    add_s: float
    """Seconds to define the queues and add one job to each (creating their streams)."""
    start_s: float
    """Seconds the worker process took to start a worker per queue (as it times it)."""
    rss_kb: int
    """The servers' RSS once idle, above their RSS before any queue."""
    base_rss_kb: int
    idle_cpu: float
    """The servers' CPU seconds per second with the worker idle, above the baseline."""

    def per_queue(self) -> dict[str, float]:
        """Creation seconds, RSS KiB and idle CPU (share of a core), each per queue."""
        return {
            "create": (self.add_s + self.start_s) / self.queues,
            "rss": self.rss_kb / self.queues,
            "idle": self.idle_cpu / self.queues,
        }


async def measure(servers: Servers, queues: int, idle: float) -> Footprint:
    """Create ``queues`` queues with a job each and a worker serving them; see the docstring."""
    base_rss, base_idle = servers.rss_kb(), await servers.idle_cpu(idle)
    client = Client(
        servers.urls, namespace=f"many{uuid.uuid4().hex[:8]}", replicas=servers.replicas
    )
    names = tuple(f"q{n}" for n in range(queues))
    async with client, AsyncExitStack() as opened:
        started = time.perf_counter()
        defined = [await opened.enter_async_context(queue(name, client=client)) for name in names]
        for q in defined:
            await q.add({"n": 0})
        added = time.perf_counter()
        args = ours.worker_args(client, CONCURRENCY, guaranteed=True, queues=names)
        process = BenchProcess("bench.worker", *args)
        try:
            await asyncio.to_thread(process.wait_ready, STARTUP)
            for q in defined:
                await ours.until_completed(q, 1)
            idle_cpu = await servers.idle_cpu(idle) - base_idle
            rss = servers.rss_kb() - base_rss
            figures = await asyncio.to_thread(process.finish)
        finally:
            process.kill()
    return Footprint(queues, added - started, figures["start_s"], rss, base_rss, idle_cpu)


async def measure_sizes(cluster: bool, sizes: list[int], idle: float) -> list[Footprint]:
    """One footprint per number of queues, each on fresh servers."""
    footprints = []
    for queues in sizes:
        with fresh_servers(cluster) as servers:
            footprints.append(await measure(servers, queues, idle))
    return footprints


def ratios(small: Footprint, large: Footprint) -> dict[str, float]:
    """Each per-queue figure of ``large`` over the same of ``small``."""
    few, many = small.per_queue(), large.per_queue()
    return {key: ratio(many[key], few[key]) for key in few}


def ratio(many: float, few: float) -> float:
    """``many / few``; with nothing measured at ``few``: 1 if nothing at ``many`` either."""
    if few > 0:
        return many / few
    return 1.0 if many <= 0 else float("inf")


def within(small: Footprint, large: Footprint) -> bool:
    """Whether every per-queue figure of ``large`` is within WITHIN times that of ``small``."""
    return all(value <= WITHIN for value in ratios(small, large).values())


def describe(f: Footprint) -> str:
    """The per-queue figures, in a line."""
    per = f.per_queue()
    return (
        f"per queue: create {per['create'] * 1000:.0f} ms, RSS {per['rss'] / 1024:.2f} MB, "
        f"idle CPU {per['idle']:.3%} of a core"
    )


def describe_total(f: Footprint) -> str:
    """The totals, in a line."""
    return (
        f"add {f.add_s:.2f} s + worker start {f.start_s:.2f} s; RSS {f.rss_kb / 1024:+.0f} MB "
        f"(of {(f.base_rss_kb + f.rss_kb) / 1024:.0f} MB); idle CPU {f.idle_cpu:+.2%} of a core"
    )


def main() -> None:
    """Parse the options, measure, print a line per number of queues."""
    parser = argparse.ArgumentParser(prog="python -m bench.many_queues")
    parser.add_argument("--queues", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--cluster", action="store_true", help="on a 3-node loopback cluster")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of each idle window")
    args = parser.parse_args()
    footprints = asyncio.run(measure_sizes(args.cluster, args.queues, args.idle))
    for f in footprints:
        print(f"{f.queues} queues: {describe(f)}; {describe_total(f)}")
    if len(footprints) > 1:
        ratio_text = ", ".join(
            f"{k} {v:.2f}x" for k, v in ratios(footprints[0], footprints[-1]).items()
        )
        print(f"per queue, {footprints[-1].queues} against {footprints[0].queues}: {ratio_text}")


if __name__ == "__main__":
    main()
