"""The benchmark's worker process: ``python -m bench.worker --url U --namespace N --queue Q``.

It runs a no-op handler, prints ``ready`` once its consumers are bound, and on SIGTERM prints
one JSON line of what it measured, taken before shutting down:

* ``count``, ``first``, ``last``: jobs handled, and the wall clock at the first handler start
  and the last handler end (throughput is measured inside the worker, without startup);
* ``cpu_per_job``: this process's CPU seconds from the first handler start on, per job, read
  every CPU_EVERY jobs (reading the process's CPU clock is a system call);
* ``requests_per_job``: the requests its connection sent (awaited round trips: KV reads and
  writes, acked publishes, API calls; background ones too) from the first handler start on,
  per job, read with the CPU clock;
* ``latencies``: for jobs whose data carries ``t`` (the publisher's clock just before add()),
  the p50 and p99 seconds from then to the handler start;
* ``idle_cpu``: CPU seconds per wall second since ``ready`` (meaningful with an empty queue);
* ``maxrss_kb``: the peak resident set size (``VmHWM``, see ``procs.peak_rss_kb``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from oqron_nats import Client, JobContext, worker
from oqron_nats.observe.logconfig import configure_logging

from .procs import peak_rss_kb

CPU_EVERY = 64


@dataclass
class Stats:
    """What the handler saw."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0
    cpu_first: float = 0.0
    cpu_last: float = 0.0
    cpu_count: int = 0
    latencies: list[float] = field(default_factory=list)
    requests: Callable[[], int] = lambda: 0
    requests_first: int = 0
    requests_last: int = 0

    def started(self, data: Any) -> None:
        """Note a handler start."""
        now = time.time()
        if not self.first:
            self.first, self.cpu_first = now, time.process_time()
            self.requests_first = self.requests()
        if isinstance(data, dict) and "t" in data:
            self.latencies.append(now - data["t"])

    def ended(self) -> None:
        """Note a handler end."""
        self.count += 1
        self.last = time.time()
        if self.count % CPU_EVERY == 0:
            self.cpu_last, self.cpu_count = time.process_time(), self.count
            self.requests_last = self.requests()

    def report(self, ready_at: float, ready_cpu: float) -> dict[str, Any]:
        """The JSON-ready figures."""
        figures: dict[str, Any] = {
            "count": self.count,
            "first": self.first,
            "last": self.last,
            "cpu_per_job": (self.cpu_last - self.cpu_first) / max(self.cpu_count, 1),
            "requests_per_job": (self.requests_last - self.requests_first) / max(self.cpu_count, 1),
            "idle_cpu": (time.process_time() - ready_cpu) / max(time.time() - ready_at, 1e-9),
            "maxrss_kb": peak_rss_kb(),
        }
        if len(self.latencies) >= 2:
            cuts = statistics.quantiles(self.latencies, n=100)
            figures["latencies"] = {"p50": cuts[49], "p99": cuts[98], "n": len(self.latencies)}
        return figures


async def run(args: argparse.Namespace) -> None:
    """Consume until SIGTERM, then print the figures."""
    stats = Stats()

    async def handle(ctx: JobContext[Any]) -> None:
        stats.started(ctx.data)
        stats.ended()

    consumer = worker(
        args.queue,
        handle,
        concurrency=args.concurrency,
        guaranteed_worker=args.guaranteed,
        client=Client(args.url, namespace=args.namespace),
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    conn = await consumer.queue.client._connection()
    stats.requests = lambda: conn.requests_sent
    ready_at, ready_cpu = time.time(), time.process_time()
    print("ready", flush=True)
    await stop.wait()
    print(json.dumps(stats.report(ready_at, ready_cpu)), flush=True)
    await consumer.stop(5.0)


def log_like_production() -> None:
    """JSON lines at INFO on stderr, as a deployed worker logs (``oqron worker``)."""
    configure_logging(level="info", fmt="json")


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--guaranteed", type=int, choices=(0, 1), default=1)
    args = parser.parse_args()
    args.guaranteed = bool(args.guaranteed)
    log_like_production()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
