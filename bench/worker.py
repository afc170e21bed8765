"""The benchmark's worker process: ``python -m bench.worker --url U --namespace N --queue Q``.

It runs a no-op handler on queue Q (``--queue`` may be given more than once: one worker per
queue, on one client), prints ``ready`` once every worker's consumers are bound, and on SIGTERM
prints one JSON line of what it measured, taken before shutting down:

* ``count``, ``first``, ``last``: jobs handled, and the wall clock at the first handler start
  and the last handler end (throughput is measured inside the worker, without startup);
* ``cpu_per_job``: this process's CPU seconds from the first handler start on, per job, read
  every CPU_EVERY jobs (reading the process's CPU clock is a system call);
* ``requests_per_job``: the requests its connection sent (awaited round trips: KV reads and
  writes, acked publishes, API calls; background ones too) from the first handler start on,
  per job, read with the CPU clock;
* ``critical_per_job``: of those, the requests awaited by the jobs' own execution tasks (the
  critical path; concurrent ones in child tasks not counted), per job, from the connection's
  ``critical_requests_sent``; null where the library does not count them;
* ``latencies``: for jobs whose data carries ``t`` (the publisher's clock just before add()),
  the p50 and p99 seconds from then to the handler start;
* ``idle_cpu``: CPU seconds per wall second since ``ready`` (meaningful with an empty queue);
* ``maxrss_kb``: the peak resident set size (``VmHWM``, see ``procs.peak_rss_kb``);
* ``start_s``: the seconds its workers took to start (connect, create what is missing, bind).
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
from oqron_nats.ops.collector import settled_for_work

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
    critical: Callable[[], int | None] = lambda: None
    critical_first: int | None = None
    critical_last: int | None = None

    def started(self, data: Any) -> None:
        """Note a handler start."""
        now = time.time()
        if not self.first:
            self.first, self.cpu_first = now, time.process_time()
            self.requests_first, self.critical_first = self.requests(), self.critical()
        if isinstance(data, dict) and "t" in data:
            self.latencies.append(now - data["t"])

    def ended(self) -> None:
        """Note a handler end."""
        self.count += 1
        self.last = time.time()
        if self.count % CPU_EVERY == 0:
            self.cpu_last, self.cpu_count = time.process_time(), self.count
            self.requests_last, self.critical_last = self.requests(), self.critical()

    def report(self, ready_at: float, ready_cpu: float) -> dict[str, Any]:
        """The JSON-ready figures."""
        sampled = max(self.cpu_count, 1)
        critical = None
        if self.critical_first is not None and self.critical_last is not None:
            critical = (self.critical_last - self.critical_first) / sampled
        figures: dict[str, Any] = {
            "count": self.count,
            "first": self.first,
            "last": self.last,
            "cpu_per_job": (self.cpu_last - self.cpu_first) / sampled,
            "requests_per_job": (self.requests_last - self.requests_first) / sampled,
            "critical_per_job": critical,
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

    client = Client(args.url, namespace=args.namespace, replicas=args.replicas)
    consumers = [
        worker(
            name,
            handle,
            concurrency=args.concurrency,
            guaranteed_worker=args.guaranteed,
            strategy=args.strategy,
            client=client,
        )
        for name in args.queue
    ]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    starting = time.perf_counter()
    for consumer in consumers:  # one after the other, as ``oqron worker`` starts them
        await consumer.start()
    start_s = time.perf_counter() - starting
    conn = await client._connection()
    stats.requests = lambda: conn.requests_sent
    stats.critical = lambda: getattr(conn, "critical_requests_sent", None)
    with settled_for_work():  # as ``oqron worker`` does once its workers started
        ready_at, ready_cpu = time.time(), time.process_time()
        print("ready", flush=True)
        await stop.wait()
        print(json.dumps({**stats.report(ready_at, ready_cpu), "start_s": start_s}), flush=True)
    await asyncio.gather(*(consumer.stop(5.0) for consumer in consumers))


def log_like_production() -> None:
    """JSON lines at INFO on stderr, as a deployed worker logs (``oqron worker``)."""
    configure_logging(level="info", fmt="json")


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--queue", required=True, action="append", help="repeat for more")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--guaranteed", type=int, choices=(0, 1), default=1)
    parser.add_argument("--strategy", choices=("fifo", "lifo", "priority"), default="fifo")
    args = parser.parse_args()
    args.guaranteed = bool(args.guaranteed)
    log_like_production()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
